//! The broker over real websockets on 127.0.0.1, driven by the reference
//! client of `common` (a `ComputeSide` per client).

mod common;

use std::time::Duration;

use common::{connect, listing, noise, token, ClientError, Project, TestClient};
use cs_broker::{BrokerHandle, BrokerState, RoundStep, SessionState};
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, WireError, WireLimits, WsConn};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const ROUND: Duration = Duration::from_secs(30);

async fn state(b: &BrokerHandle) -> BrokerState {
    b.observe().await.expect("broker answers")
}

async fn session(b: &BrokerHandle, client: &str) -> Option<SessionState> {
    state(b).await.sessions.into_iter().find(|s| s.client == client)
}

/// Polls the broker's state until `cond` holds (or panics after `limit`).
async fn wait_for(b: &BrokerHandle, limit: Duration, what: &str, cond: impl Fn(&BrokerState) -> bool) -> BrokerState {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = state(b).await;
        if cond(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}; state: {}", serde_json::to_string_pretty(&s).unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn server_error(r: Result<ServerMsg, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

#[actix_rt::test]
async fn full_round_moves_files_both_ways_and_commits() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;

    // C → P.
    c.write("docs/a.txt", b"written on the compute server");
    let r = c.round_within(ROUND).await;
    assert_eq!(r.sent_entries, 2, "the directory and the file");
    assert!(r.conflicts.is_empty());
    assert_eq!(std::fs::read(p.home.join("docs/a.txt")).unwrap(), b"written on the compute server");

    // P → C: the project changes the file the client holds.
    std::fs::write(p.home.join("docs/a.txt"), b"changed on the project").unwrap();
    let r2 = c.round_within(ROUND).await;
    assert_eq!(r2.received_applied, 1);
    assert_eq!(c.read("docs/a.txt").unwrap(), b"changed on the project");
    assert_ne!(r2.cursor, r.cursor);

    // Deletes both ways.
    std::fs::remove_file(p.home.join("docs/a.txt")).unwrap();
    let r3 = c.round_within(ROUND).await;
    assert_eq!(r3.deletes_for_me.len(), 1);
    assert!(c.read("docs/a.txt").is_none());

    // An idle round ships nothing.
    let r4 = c.round_within(ROUND).await;
    assert_eq!((r4.sent_entries, r4.received_applied), (0, 0));

    let s = session(&b, "c1").await.expect("session");
    assert_eq!(s.rounds_committed, 4);
    assert_eq!(s.step, RoundStep::Idle);
    assert!(!s.busy);
    assert!(s.entries_in >= 2 && s.entries_out >= 1, "{s:?}");
    assert!(s.bytes_in > 0 && s.bytes_out > 0, "{s:?}");
    assert!(s.heartbeat_beats > 0);
    assert!(s.last_round_unix_ms.is_some() && s.last_round_duration_ms.is_some());
    assert_eq!(s.last_error, None);
    let json = serde_json::to_value(state(&b).await).unwrap();
    assert_eq!(json["sessions"][0]["client"], "c1");
    assert_eq!(json["sessions"][0]["step"], "idle");
    assert_eq!(json["tls"], false);
    b.shutdown().await.unwrap();
}

#[actix_rt::test]
async fn two_clients_at_once() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c2 = TestClient::new(b.local_addr, "c2").await;
    for i in 0..3 {
        c1.write(&format!("one/f{i}"), format!("c1 round {i}").as_bytes());
        c2.write(&format!("two/f{i}"), format!("c2 round {i}").as_bytes());
        let (r1, r2) = tokio::join!(c1.round_within(ROUND), c2.round_within(ROUND));
        assert!(r1.conflicts.is_empty() && r2.conflicts.is_empty());
    }
    for i in 0..3 {
        assert_eq!(std::fs::read(p.home.join(format!("one/f{i}"))).unwrap(), format!("c1 round {i}").as_bytes());
        assert_eq!(std::fs::read(p.home.join(format!("two/f{i}"))).unwrap(), format!("c2 round {i}").as_bytes());
    }
    let s = state(&b).await;
    assert_eq!(s.sessions.len(), 2);
    assert!(s.sessions.iter().all(|s| s.rounds_committed == 3), "{s:?}");
}

#[actix_rt::test]
async fn a_client_stalled_in_its_step3_stream_does_not_block_the_others() {
    let p = Project::new();
    // One tar slot for everybody: the stalled stream must not keep it.
    let b = p.start(|c| c.max_concurrent_tar = 1).await;
    let mut slow = TestClient::new(b.local_addr, "c1").await;
    let mut fast = TestClient::new(b.local_addr, "c2").await;

    slow.write("big.bin", &noise(4 << 20, 7));
    slow.hello().await.unwrap();
    slow.step1().await.unwrap();
    slow.step2().await.unwrap();
    let tar = slow.pack_to_vec().await;
    assert!(tar.len() > 1 << 20);
    slow.send(ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    for part in tar[..256 << 10].chunks(64 << 10) {
        slow.conn.send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(part) }).await.unwrap();
    }
    // The broker has taken the stream in and waits for more, silently.
    wait_for(&b, ROUND, "the stalled session to be in step 3", |s| {
        s.sessions.iter().any(|x| x.client == "c1" && x.step == RoundStep::WritesIn && x.busy && x.bytes_in == 0)
    })
    .await;

    for i in 0..3 {
        fast.write(&format!("f{i}"), format!("fast {i}").as_bytes());
        std::fs::write(p.home.join(format!("f{i}")), b"x").ok();
        let r = tokio::time::timeout(Duration::from_secs(20), fast.round())
            .await
            .expect("the other client's round completes while c1 stalls")
            .unwrap();
        let _ = r;
    }
    let s = state(&b).await;
    assert_eq!(s.tar_in_use, 0, "a stalled stream holds no tar slot");
    let slow_state = s.sessions.iter().find(|x| x.client == "c1").unwrap();
    assert_eq!(slow_state.step, RoundStep::WritesIn);
    assert!(slow_state.busy);
    assert!(!p.home.join("big.bin").exists(), "nothing of the cut stream is in place");

    // The slow client gives up its stream: an error, the round is
    // abandoned, the session goes on.
    slow.conn.send(&Frame::End { stream: 1, end: StreamEnd::Abort("gave up".into()) }).await.unwrap();
    let (_, answer) = slow.recv_control().await.unwrap();
    match answer {
        ServerMsg::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("gave up") && message.contains("abandoned"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!p.home.join("big.bin").exists());
    assert!(listing(&p.home).iter().all(|(n, _)| !n.contains(".csa-tmp")), "no temporary file left");
    slow.abandon().await;
    slow.round_within(ROUND).await;
    assert_eq!(std::fs::read(p.home.join("big.bin")).unwrap(), noise(4 << 20, 7));
    let s = session(&b, "c1").await.unwrap();
    assert_eq!((s.rounds_committed, s.rounds_failed), (1, 1));
}

#[actix_rt::test]
async fn a_client_that_stops_reading_its_step4_stream_does_not_block_the_others() {
    let p = Project::new();
    let b = p.start(|c| c.max_concurrent_tar = 1).await;
    let mut slow = TestClient::new(b.local_addr, "c1").await;
    let mut fast = TestClient::new(b.local_addr, "c2").await;
    slow.write("data.bin", b"small");
    slow.round_within(ROUND).await;
    // P's new version is far larger than what the sockets buffer.
    std::fs::write(p.home.join("data.bin"), noise(24 << 20, 11)).unwrap();
    slow.hello().await.unwrap();
    slow.step1().await.unwrap();
    slow.step2().await.unwrap();
    slow.step3().await.unwrap();
    slow.send(ClientMsg::AskWrites { stream: 7 }).await.unwrap();
    // c1 never reads: the broker's writer blocks, then the packer.
    wait_for(&b, ROUND, "c1 to be stuck in step 4", |s| {
        s.sessions
            .iter()
            .any(|x| x.client == "c1" && x.step == RoundStep::WritesOut && x.busy && x.heartbeat_silent_ms > 300)
    })
    .await;
    for i in 0..3 {
        fast.write(&format!("g{i}"), b"fast");
        tokio::time::timeout(Duration::from_secs(20), fast.round())
            .await
            .expect("the other client's round completes while c1 does not read")
            .unwrap();
    }
    assert_eq!(state(&b).await.tar_in_use, 0, "a stream blocked on its client holds no tar slot");
}

#[actix_rt::test]
async fn bad_tokens_are_refused_and_nothing_is_touched() {
    let p = Project::new();
    std::fs::write(p.home.join("keep"), b"project file").unwrap();
    let b = p.start(|_| {}).await;
    let before = listing(&p.home);

    // A wrong token, a token too short to be anyone's.
    for bad in ["token-of-nobody-at-all-0123456789", "short"] {
        match connect(b.local_addr, bad).await {
            Err(WireError::Rejected { status: 401 }) => {}
            Err(other) => panic!("{bad}: {other}"),
            Ok(_) => panic!("{bad}: accepted"),
        }
    }
    // No Authorization header, and another scheme.
    let url = common::url(b.local_addr);
    for header in [None, Some(format!("Basic {}", token("c1")))] {
        let mut req = url.as_str().into_client_request().unwrap();
        if let Some(h) = &header {
            req.headers_mut().insert("authorization", h.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
            other => panic!("{header:?}: {:?}", other.map(|_| ())),
        }
    }
    let s = wait_for(&b, ROUND, "four refusals", |s| s.refused.values().sum::<u64>() == 4).await;
    assert_eq!(s.refused.get("unknown_token"), Some(&2), "{:?}", s.refused);
    assert_eq!(s.refused.get("missing_token"), Some(&1), "{:?}", s.refused);
    assert_eq!(s.refused.get("not_bearer"), Some(&1), "{:?}", s.refused);
    assert!(s.sessions.is_empty());
    assert_eq!(s.accepted, 0);

    // A token of another client: it authenticates as that client, and a
    // hello naming c1 is refused, the connection closed.
    let conn = connect(b.local_addr, token("c2")).await.unwrap();
    let mut liar = TestClient::with_conn("c1", conn);
    liar.write("evil", b"should never arrive");
    match liar.hello().await {
        Err(ClientError::Server { code: ErrorCode::Unauthorized, message }) => {
            assert!(message.contains("c2") && message.contains("c1"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(liar.closed_within(Duration::from_secs(10)).await, "the connection is closed");
    assert_eq!(listing(&p.home), before, "nothing touched in the home");
    assert!(!p.state.join("clients/c1.msgpack").exists());
    assert!(!p.state.join("clients/c2.msgpack").exists());
    let s = wait_for(&b, ROUND, "the liar's session to end", |s| s.sessions.is_empty()).await;
    assert_eq!(s.refused.get("hello_other_client"), Some(&1), "{:?}", s.refused);
}

#[actix_rt::test]
async fn garbage_frames_get_an_error_and_the_broker_goes_on() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut req = common::url(b.local_addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", format!("Bearer {}", token("c3")).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    async fn answer(
        ws: &mut tokio_tungstenite::WebSocketStream<cs_wire::MaybeTlsStream<tokio::net::TcpStream>>,
    ) -> (u64, ServerMsg) {
        use futures_util::StreamExt;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("an answer") {
                Some(Ok(Message::Binary(b))) => match Frame::<ServerMsg>::decode(&b).unwrap() {
                    Frame::Control(env) => return (env.id, env.body),
                    other => panic!("{other:?}"),
                },
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    let garbage: Vec<Message> = vec![
        Message::Binary(vec![9, 1, 2, 3].into()),
        Message::Binary(vec![0, 0xc1, 0xc1].into()),
        Message::Text("hello?".into()),
        Message::Binary(Vec::new().into()),
        Message::Binary(vec![2, 1, 0].into()),
    ];
    for m in garbage {
        ws.send(m).await.unwrap();
        match answer(&mut ws).await.1 {
            ServerMsg::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
            other => panic!("{other:?}"),
        }
    }
    // An unknown message, with a readable id: the error answers that id.
    #[derive(serde::Serialize)]
    enum Future {
        Teleport { to: u32 },
    }
    ws.send(Message::Binary(Frame::control(77, Future::Teleport { to: 1 }).encode().unwrap())).await.unwrap();
    match answer(&mut ws).await {
        (77, ServerMsg::Error { code: ErrorCode::BadRequest, message }) => {
            assert!(message.contains("Teleport"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // A chunk for a stream nobody opened.
    ws.send(Message::Binary(
        Frame::<ClientMsg>::Chunk { stream: 5, data: bytes::Bytes::from_static(b"x") }.encode().unwrap(),
    ))
    .await
    .unwrap();
    assert!(matches!(answer(&mut ws).await.1, ServerMsg::Error { code: ErrorCode::BadRequest, .. }));

    // Another client is served meanwhile, and so is this one, on the same connection.
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    c1.write("a", b"a");
    c1.round_within(ROUND).await;
    let mut c3 = TestClient::with_conn("c3", WsConn::from_websocket(ws, WireLimits::default()));
    c3.write("b", b"b");
    c3.round_within(ROUND).await;
    assert!(p.home.join("a").exists() && p.home.join("b").exists());
    let s = session(&b, "c3").await.unwrap();
    assert_eq!(s.rounds_committed, 1);
    assert!(s.last_error.is_some());
}

#[actix_rt::test]
async fn out_of_order_messages_get_bad_request_and_the_session_goes_on() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write("f", b"one");

    for msg in [
        ClientMsg::Deletes(vec![]),
        ClientMsg::AskDeletes,
        ClientMsg::AskWrites { stream: 3 },
        ClientMsg::Commit(Default::default()),
    ] {
        let (code, message) = server_error(c.request(msg).await);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("Hello first"), "{message}");
    }
    c.hello().await.unwrap();
    let (code, message) = server_error(c.request(ClientMsg::Commit(Default::default())).await);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("out of order") && message.contains("step hello"), "{message}");
    let (code, _) = server_error(c.request(ClientMsg::AskWrites { stream: 3 }).await);
    assert_eq!(code, ErrorCode::BadRequest);
    // A step-3 stream at the wrong time: refused, its frames dropped.
    let id = c.send(ClientMsg::SendWrites { stream: 9 }).await.unwrap();
    c.conn.send(&Frame::Chunk { stream: 9, data: bytes::Bytes::from_static(b"not a tar") }).await.unwrap();
    c.conn.send(&Frame::End { stream: 9, end: StreamEnd::Ok }).await.unwrap();
    let (rid, body) = c.recv_control().await.unwrap();
    assert_eq!(rid, id);
    assert!(matches!(body, ServerMsg::Error { code: ErrorCode::BadRequest, .. }), "{body:?}");
    // The round goes on from where it was.
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    c.step3().await.unwrap();
    let (cursor, _) = c.step4().await.unwrap();
    c.step5(cursor).await.unwrap();
    assert_eq!(std::fs::read(p.home.join("f")).unwrap(), b"one");

    // A second hello mid-round restarts the round.
    c.write("g", b"two");
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.abandon().await;
    let r = c.round_within(ROUND).await;
    assert_eq!(r.sent_entries, 1);
    assert_eq!(std::fs::read(p.home.join("g")).unwrap(), b"two");
    let s = session(&b, "c1").await.unwrap();
    assert_eq!(s.rounds_committed, 2);
    assert!(s.last_error.as_deref().unwrap_or("").contains("BadRequest"), "{s:?}");
}

#[actix_rt::test]
async fn max_connections_exceeded_is_refused() {
    let p = Project::new();
    let b = p.start(|c| c.max_connections = 2).await;
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c2 = TestClient::new(b.local_addr, "c2").await;
    for c in [&mut c1, &mut c2] {
        assert!(matches!(c.request(ClientMsg::Ping { sent_ms: 1 }).await.unwrap(), ServerMsg::Pong { sent_ms: 1 }));
    }
    let mut c3 = TestClient::new(b.local_addr, "c3").await;
    match c3.recv_control().await {
        Ok((_, ServerMsg::Error { code: ErrorCode::Busy, message })) => {
            assert!(message.contains("max_connections"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(c3.closed_within(Duration::from_secs(10)).await);
    let s = state(&b).await;
    assert_eq!(s.refused.get("busy"), Some(&1));
    assert_eq!(s.sessions.len(), 2);

    // A connected client may reconnect at the limit: its new connection
    // replaces its session.
    c1.reconnect(b.local_addr).await;
    c1.write("x", b"x");
    c1.round_within(ROUND).await;
    let s = state(&b).await;
    assert_eq!(s.sessions.len(), 2);
    assert_eq!(s.refused.get("busy"), Some(&1));

    // Once c2 leaves, c3 gets in.
    c2.conn.close().await.unwrap();
    wait_for(&b, ROUND, "c2's session to end", |s| s.sessions.len() == 1).await;
    let mut c3 = TestClient::new(b.local_addr, "c3").await;
    c3.round_within(ROUND).await;
}

#[actix_rt::test]
async fn an_idle_client_is_dropped_after_the_idle_timeout() {
    let p = Project::new();
    let b = p.start(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let mut idle = TestClient::new(b.local_addr, "c1").await;
    let mut busy = TestClient::new(b.local_addr, "c2").await;
    idle.request(ClientMsg::Ping { sent_ms: 0 }).await.unwrap();
    // c2 keeps talking for longer than the timeout and stays.
    for i in 0..20 {
        busy.request(ClientMsg::Ping { sent_ms: i }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(idle.closed_within(Duration::from_secs(5)).await, "the idle client was dropped");
    let s = wait_for(&b, ROUND, "c1's session to end", |s| s.sessions.len() == 1).await;
    assert_eq!(s.sessions[0].client, "c2");
    let ended = s.ended.iter().find(|e| e.client == "c1").expect("c1's end is recorded");
    assert!(matches!(&ended.exit, cs_supervision::ExitStatus::Failure(r) if r.contains("idle")), "{ended:?}");
    busy.round_within(ROUND).await;

    // A client silent in the middle of its step-3 stream is idle too; its
    // round is abandoned, and its next connection rounds normally.
    let mut stalled = TestClient::new(b.local_addr, "c3").await;
    stalled.write("big.bin", &noise(1 << 20, 5));
    stalled.hello().await.unwrap();
    stalled.step1().await.unwrap();
    stalled.step2().await.unwrap();
    let tar = stalled.pack_to_vec().await;
    stalled.send(ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    stalled.conn.send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(&tar[..50_000]) }).await.unwrap();
    assert!(stalled.closed_within(Duration::from_secs(5)).await, "the stalled client was dropped");
    assert!(!p.home.join("big.bin").exists());
    stalled.abandon().await;
    stalled.reconnect(b.local_addr).await;
    stalled.round_within(ROUND).await;
    assert_eq!(std::fs::read(p.home.join("big.bin")).unwrap(), noise(1 << 20, 5));
}

#[actix_rt::test]
async fn a_new_connection_replaces_the_session_and_its_round() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write("f", b"v1");
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    // The compute server restarts mid-round.
    c.abandon().await;
    let old = std::mem::replace(&mut c.conn, connect(b.local_addr, token("c1")).await.unwrap());
    let r = c.round_within(ROUND).await;
    assert_eq!(r.sent_entries, 1);
    assert_eq!(std::fs::read(p.home.join("f")).unwrap(), b"v1");
    let mut old = TestClient::with_conn("c1", old);
    assert!(old.closed_within(Duration::from_secs(10)).await, "the old connection is closed");
    let s = state(&b).await;
    assert_eq!(s.sessions.len(), 1);
    assert_eq!(s.sessions[0].rounds_committed, 1);
    assert_eq!(s.accepted, 2);
}

#[actix_rt::test]
async fn a_hello_in_the_middle_of_a_step3_stream_restarts_the_round() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write("big.bin", &noise(2 << 20, 3));
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    let tar = c.pack_to_vec().await;
    let sw = c.send(ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    c.conn.send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(&tar[..100_000]) }).await.unwrap();
    wait_for(&b, ROUND, "step 3 to be under way", |s| {
        s.sessions.iter().any(|x| x.step == RoundStep::WritesIn && x.busy)
    })
    .await;
    // The client restarts without finishing its stream.
    // A hello by hand: the first answer is the cancelled step's error.
    let hello = c.begin().await;
    let hid = c.send(ClientMsg::Hello(hello)).await.unwrap();
    let (rid, body) = c.recv_control().await.unwrap();
    assert_eq!(rid, sw);
    match body {
        ServerMsg::Error { message, .. } => assert!(message.contains("abandoned"), "{message}"),
        other => panic!("{other:?}"),
    }
    let (rid, body) = c.recv_control().await.unwrap();
    assert_eq!(rid, hid);
    assert!(matches!(body, ServerMsg::HelloReply(_)), "{body:?}");
    // The rest of the cut stream is dropped quietly; a full round follows.
    c.conn
        .send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(&tar[100_000..200_000]) })
        .await
        .unwrap();
    c.conn.send(&Frame::End { stream: 1, end: StreamEnd::Ok }).await.unwrap();
    c.round_within(ROUND).await;
    assert_eq!(std::fs::read(p.home.join("big.bin")).unwrap(), noise(2 << 20, 3));
    let s = session(&b, "c1").await.unwrap();
    assert_eq!(s.rounds_committed, 1);
}

#[actix_rt::test]
async fn was_committed_resolves_a_crash_between_the_two_commits() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write("f", b"v1");
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    c.step3().await.unwrap();
    let (cursor, _) = c.step4().await.unwrap();
    // P commits; C "dies" before adopting its pending manifest.
    c.step5_project_only(cursor).await.unwrap();
    c.reconnect(b.local_addr).await;
    // The next round asks WasCommitted first, and nothing is re-sent.
    let r = c.round_within(ROUND).await;
    assert_eq!((r.sent_entries, r.received_applied), (0, 0), "{r:?}");
    assert!(r.conflicts.is_empty());
    let s = session(&b, "c1").await.unwrap();
    assert_eq!(s.rounds_committed, 1, "this session committed one round");
}

#[actix_rt::test]
async fn a_round_over_tls() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = p.dir.path().join("broker.crt");
    let key = p.dir.path().join("broker.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let b = p.start(|c| c.tls = Some(cs_broker::TlsFiles { cert: cert.clone(), key: key.clone() })).await;
    let url = format!("wss://localhost:{}/", b.local_addr.port());
    let conn = cs_wire::connect(&url, token("c1"), Some(&cert), WireLimits::default()).await.unwrap();
    let mut c = TestClient::with_conn("c1", conn);
    c.write("secret", b"over tls");
    c.round_within(ROUND).await;
    assert_eq!(std::fs::read(p.home.join("secret")).unwrap(), b"over tls");
    // Plain ws:// to a TLS broker does not get in.
    assert!(connect(b.local_addr, token("c2")).await.is_err());
    let s = wait_for(&b, ROUND, "the plain connection's refusal", |s| s.refused.values().sum::<u64>() == 1).await;
    assert!(s.tls);
    assert_eq!(s.refused.get("tls"), Some(&1), "{:?}", s.refused);
}

#[test]
fn the_config_reads_from_toml() {
    let text = r#"
        home = "/srv/home"
        state_dir = "/srv/state"
        listen = "127.0.0.1:7443"
        tokens_file = "/etc/cs-actor/tokens"
        max_concurrent_tar = 3
        hello_timeout = "2500ms"
        idle_timeout = 30
        tls = { cert = "/etc/cs-actor/cert.pem", key = "/etc/cs-actor/key.pem" }
        [limits]
        max_chunk_bytes = 65536
    "#;
    let cfg: cs_broker::BrokerConfig = toml::from_str(text).unwrap();
    assert_eq!(cfg.max_connections, 64);
    assert_eq!(cfg.max_concurrent_tar, 3);
    assert_eq!(cfg.hello_timeout, Duration::from_millis(2500));
    assert_eq!(cfg.idle_timeout, Duration::from_secs(30));
    assert_eq!(cfg.limits.max_chunk_bytes, 65536);
    assert_eq!(cfg.limits.max_message_bytes, WireLimits::default().max_message_bytes);
    assert_eq!(cfg.tls.unwrap().key, std::path::PathBuf::from("/etc/cs-actor/key.pem"));
    let minimal: cs_broker::BrokerConfig =
        toml::from_str("home = \"/h\"\nstate_dir = \"/s\"\nlisten = \"127.0.0.1:1\"\ntokens_file = \"/t\"\n").unwrap();
    assert_eq!(minimal.idle_timeout, Duration::from_secs(90));
    assert_eq!(minimal.hello_timeout, Duration::from_secs(10));
    assert_eq!(minimal.max_concurrent_tar, 2);
    assert!(minimal.tls.is_none());
    assert!(toml::from_str::<cs_broker::BrokerConfig>(
        "home = \"/h\"\nstate_dir = \"/s\"\nlisten = \"127.0.0.1:1\"\ntokens_file = \"/t\"\nbogus = 1\n"
    )
    .is_err());
}
