//! Every message type, both streams, and split halves over a loopback ws://.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use cs_protocol::{
    CommitRequest, Cursor, DeleteReport, EntryKind, FetchReport, FileVersion, HeldDelta, HeldDigest, Hello, HelloReply,
    RelPath, SnapshotReport, Timestamp, PROTOCOL_VERSION,
};
use cs_wire::*;
use tokio::sync::mpsc;

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

const CODES: [ErrorCode; 6] = [
    ErrorCode::BadRequest,
    ErrorCode::Unauthorized,
    ErrorCode::TooLarge,
    ErrorCode::Busy,
    ErrorCode::Internal,
    ErrorCode::ProtocolVersion,
];

fn requests() -> Vec<ClientMsg> {
    let mut v = vec![
        ClientMsg::WasCommitted { round_id: 77 },
        ClientMsg::Hello(Hello {
            client: id("gpu-1"),
            protocol: PROTOCOL_VERSION,
            cursor: Some(Cursor { epoch: 5, seq: 9 }),
            held_digest: HeldDigest([7; 32]),
            held_count: 3,
            held_added: vec![p("new/from/step4")],
            held_removed: vec![p("gone")],
            hidden: vec![p("deleted/dir")],
            pull: cs_protocol::PullPolicy::Changed { max_file_size: Some(1 << 26) },
            follow: true,
        }),
        ClientMsg::HeldList(vec![p("a"), p("a/b"), p("dir with space/ü")]),
        ClientMsg::Deletes(vec![p("gone.txt")]),
        ClientMsg::AskDeletes,
        ClientMsg::SendWrites { stream: 1 },
        ClientMsg::AskWrites { stream: 2 },
        ClientMsg::Commit(CommitRequest {
            round_id: 77,
            held: HeldDelta { added: vec![p("new")], removed: vec![p("old")], digest: HeldDigest([1; 32]) },
            not_applied: vec![p("busy.txt")],
        }),
        ClientMsg::Ping { sent_ms: 123 },
        // Its stream is the broker's to send (crates/broker/tests/fetch.rs);
        // here the request and its answer.
        ClientMsg::Fetch { paths: vec![p("src/main.rs"), p("data"), p("caf\u{e9}")], stream: FETCH_STREAM_BIT | 3 },
        // Likewise (crates/broker/tests/snapshot.rs).
        ClientMsg::Snapshot { stream: FETCH_STREAM_BIT | 4 },
        ClientMsg::JournalAt,
    ];
    for k in 0..CODES.len() {
        v.push(ClientMsg::Ping { sent_ms: 1000 + k as u64 });
    }
    v
}

fn step4_payload() -> Vec<u8> {
    random_bytes(300 * 1024 + 17, 4)
}

fn step3_payload() -> Vec<u8> {
    random_bytes(1024 * 1024 + 5, 3)
}

fn reply(msg: &ClientMsg) -> ServerMsg {
    match msg {
        ClientMsg::WasCommitted { round_id } => ServerMsg::WasCommitted(*round_id == 77),
        ClientMsg::Hello(h) => ServerMsg::HelloReply(HelloReply {
            need_held_list: h.held_count == 3,
            cursor_unknown: false,
            ignore_rules: "node_modules/\n".into(),
            ignore_error: None,
            fetch: true,
            snapshot: true,
            follow: h.follow,
        }),
        ClientMsg::HeldList(_) => ServerMsg::HeldListOk,
        ClientMsg::Deletes(paths) => ServerMsg::DeleteReport(DeleteReport {
            deleted: paths.clone(),
            kept: vec![p("kept")],
            refused: vec![(p(".cs-actor/x"), "excluded".into())],
        }),
        ClientMsg::AskDeletes => ServerMsg::DeletesForYou(vec![p("p-deleted")]),
        ClientMsg::SendWrites { .. } => unreachable!("answered after the stream"),
        ClientMsg::AskWrites { stream } => {
            ServerMsg::WritesFollow { stream: *stream, cursor: Cursor { epoch: 5, seq: 10 } }
        }
        ClientMsg::Commit(c) => ServerMsg::Committed { cursor: Cursor { epoch: 5, seq: c.round_id } },
        ClientMsg::Ping { sent_ms } if *sent_ms >= 1000 => {
            ServerMsg::Error { code: CODES[(*sent_ms - 1000) as usize], message: format!("code {sent_ms}") }
        }
        ClientMsg::Ping { sent_ms } => ServerMsg::Pong { sent_ms: *sent_ms },
        ClientMsg::JournalAt => ServerMsg::JournalAt { cursor: Cursor { epoch: 5, seq: 11 } },
        ClientMsg::Fetch { paths, stream } => ServerMsg::FetchFollows {
            stream: *stream,
            report: FetchReport {
                sent: vec![FileVersion {
                    path: paths[0].clone(),
                    kind: EntryKind::File,
                    size: 42,
                    mtime: Timestamp::new(1_700_000_000, 123_456_789),
                }],
                missing: vec![paths[1].clone()],
                refused: vec![(paths[2].clone(), "a symlink".into())],
            },
        },
        ClientMsg::Snapshot { stream } => ServerMsg::SnapshotFollows {
            stream: *stream,
            report: SnapshotReport {
                entries: 7,
                cursor: Cursor { epoch: 5, seq: 9 },
                refused: vec![(p("unreadable"), "cannot read it on the project side".into())],
                refused_count: 3,
            },
        },
    }
}

#[tokio::test]
async fn every_message_and_both_streams_round_trip() {
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, ClientMsg)>();
    let (addr, mut accepted) = spawn_server(WireLimits::default(), Duration::from_secs(5), move |client, mut conn| {
        let seen_tx = seen_tx.clone();
        async move {
            assert_eq!(client, id("gpu-1"));
            while let Some(frame) = conn.recv().await.unwrap() {
                let Frame::Control(Envelope { id, body }) = frame else { panic!("unexpected {frame:?}") };
                seen_tx.send((id, body.clone())).unwrap();
                match body {
                    ClientMsg::SendWrites { stream } => {
                        // Step 3: C's stream → ChunkReader on a blocking thread.
                        let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
                        let reader = tokio::task::spawn_blocking(move || {
                            let mut data = Vec::new();
                            ChunkReader::new(rx).read_to_end(&mut data).map(|_| data)
                        });
                        let end = conn.recv_stream(stream, &tx).await.unwrap();
                        assert_eq!(end, StreamEnd::Ok);
                        let data = reader.await.unwrap().unwrap();
                        let tag = blake3::hash(&data).to_hex()[..16].to_string();
                        let answer = ServerMsg::WritesApplied {
                            applied: data.len() as u64,
                            unchanged: 1,
                            conflicts: vec![p(&format!("received/{tag}")), p("c.conflict-gpu-1-x")],
                            refused: vec![(p("dev"), "device".into())],
                        };
                        conn.send_msg(id, answer).await.unwrap();
                    }
                    ClientMsg::AskWrites { stream } => {
                        conn.send_msg(id, reply(&body)).await.unwrap();
                        // Step 4: P's stream from a ChunkWriter on a blocking thread.
                        let (tx, mut rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
                        let max = conn.limits().max_chunk_bytes;
                        let writer = tokio::task::spawn_blocking(move || {
                            let mut w = ChunkWriter::new(tx, max);
                            w.write_all(&step4_payload())?;
                            w.finish()
                        });
                        assert_eq!(conn.send_stream(stream, &mut rx).await.unwrap(), StreamEnd::Ok);
                        writer.await.unwrap().unwrap();
                    }
                    other => conn.send_msg(id, reply(&other)).await.unwrap(),
                }
            }
        }
    })
    .await;

    let mut conn = connect(&url(addr), TOKEN_A, None, WireLimits::default()).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), id("gpu-1"));
    let mut answers = Vec::new();
    for (i, msg) in requests().into_iter().enumerate() {
        let req_id = 100 + i as u64;
        conn.send_msg(req_id, msg.clone()).await.unwrap();
        match &msg {
            ClientMsg::SendWrites { stream } => {
                let (tx, mut rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
                let max = conn.limits().max_chunk_bytes;
                let writer = tokio::task::spawn_blocking(move || {
                    let mut w = ChunkWriter::new(tx, max);
                    w.write_all(&step3_payload())?;
                    w.finish()
                });
                assert_eq!(conn.send_stream(*stream, &mut rx).await.unwrap(), StreamEnd::Ok);
                writer.await.unwrap().unwrap();
            }
            ClientMsg::AskWrites { stream } => {
                let Frame::Control(env) = conn.recv().await.unwrap().unwrap() else { panic!() };
                assert_eq!(env.id, req_id);
                assert_eq!(env.body, reply(&msg));
                let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
                let reader = tokio::task::spawn_blocking(move || {
                    let mut data = Vec::new();
                    ChunkReader::new(rx).read_to_end(&mut data).map(|_| data)
                });
                assert_eq!(conn.recv_stream(*stream, &tx).await.unwrap(), StreamEnd::Ok);
                assert_eq!(reader.await.unwrap().unwrap(), step4_payload());
                answers.push(env.body);
                continue;
            }
            _ => {}
        }
        let Frame::Control(env) = conn.recv().await.unwrap().unwrap() else { panic!() };
        assert_eq!(env.id, req_id, "answer correlates with its request");
        answers.push(env.body);
    }
    conn.close().await.unwrap();

    // P saw exactly what C sent, with the ids C chose.
    let mut seen = Vec::new();
    while let Some(s) = seen_rx.recv().await {
        seen.push(s);
        if seen.len() == requests().len() {
            break;
        }
    }
    let expected: Vec<_> = requests().into_iter().enumerate().map(|(i, m)| (100 + i as u64, m)).collect();
    assert_eq!(seen, expected);

    // C got every kind of answer, as sent.
    let step3 = step3_payload();
    let tag = blake3::hash(&step3).to_hex()[..16].to_string();
    let expected: Vec<ServerMsg> = requests()
        .iter()
        .map(|m| match m {
            ClientMsg::SendWrites { .. } => ServerMsg::WritesApplied {
                applied: step3.len() as u64,
                unchanged: 1,
                conflicts: vec![p(&format!("received/{tag}")), p("c.conflict-gpu-1-x")],
                refused: vec![(p("dev"), "device".into())],
            },
            other => reply(other),
        })
        .collect();
    assert_eq!(answers, expected);
    let kinds: std::collections::BTreeSet<_> =
        answers.iter().map(|a| format!("{a:?}").split(['(', ' ', '{']).next().unwrap().to_owned()).collect();
    assert_eq!(kinds.len(), 13, "all thirteen ServerMsg variants but the unsolicited one: {kinds:?}");
}

/// `ProjectChanged` is P's own: it comes unasked, with the id no request
/// uses, and may arrive between a request and its answer.
#[tokio::test]
async fn an_unsolicited_project_changed_arrives_between_a_request_and_its_answer() {
    let (addr, _accepted) =
        spawn_server(WireLimits::default(), Duration::from_secs(5), |_client, mut conn| async move {
            while let Some(Frame::Control(Envelope { id, body: ClientMsg::Ping { sent_ms } })) =
                conn.recv().await.unwrap()
            {
                conn.send_msg(UNSOLICITED_ID, ServerMsg::ProjectChanged { changes: sent_ms }).await.unwrap();
                conn.send_msg(id, ServerMsg::Pong { sent_ms }).await.unwrap();
            }
        })
        .await;
    let mut conn = connect(&url(addr), TOKEN_B, None, WireLimits::default()).await.unwrap();
    conn.send_msg(1, ClientMsg::Ping { sent_ms: 3 }).await.unwrap();
    let Frame::Control(first) = conn.recv().await.unwrap().unwrap() else { panic!("a control frame") };
    assert_eq!(first, Envelope::new(UNSOLICITED_ID, ServerMsg::ProjectChanged { changes: 3 }));
    assert!(first.body.is_unsolicited());
    let Frame::Control(answer) = conn.recv().await.unwrap().unwrap() else { panic!("a control frame") };
    assert_eq!(answer, Envelope::new(1, ServerMsg::Pong { sent_ms: 3 }));
    assert!(!answer.body.is_unsolicited());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn split_halves_work_from_two_tasks() {
    let (addr, _accepted) = spawn_server(WireLimits::default(), Duration::from_secs(5), |_client, conn| async move {
        // The server splits too: a reader task feeds a writer task.
        let (mut tx, mut rx) = conn.split();
        let (q_tx, mut q_rx) = mpsc::channel::<(u64, u64)>(4);
        let writer = tokio::spawn(async move {
            while let Some((id, sent_ms)) = q_rx.recv().await {
                tx.send_msg(id, ServerMsg::Pong { sent_ms }).await.unwrap();
            }
            tx.close().await.unwrap();
        });
        while let Some(Frame::Control(Envelope { id, body: ClientMsg::Ping { sent_ms } })) = rx.recv().await.unwrap() {
            q_tx.send((id, sent_ms)).await.unwrap();
        }
        drop(q_tx);
        writer.await.unwrap();
    })
    .await;

    let conn = connect(&url(addr), TOKEN_B, None, WireLimits::default()).await.unwrap();
    let (mut tx, mut rx) = conn.split();
    let sender = tokio::spawn(async move {
        for i in 0..200u64 {
            tx.send_msg(i, ClientMsg::Ping { sent_ms: i * 3 }).await.unwrap();
        }
        tx
    });
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.len() < 200 {
            match rx.recv().await.unwrap().unwrap() {
                Frame::Control(Envelope { id, body: ServerMsg::Pong { sent_ms } }) => got.push((id, sent_ms)),
                other => panic!("{other:?}"),
            }
        }
        (got, rx)
    });
    let tx = sender.await.unwrap();
    let (got, mut rx) = receiver.await.unwrap();
    assert_eq!(got, (0..200u64).map(|i| (i, i * 3)).collect::<Vec<_>>());
    // Closing the sending half ends the server's loop, whose close ends ours.
    tx.close().await.unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap().is_none());
}
