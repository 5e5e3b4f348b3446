//! Snapshot (issue 12's replica metadata), against the real broker over a
//! real websocket: exactly what syncs, in pre-order, with P's metadata
//! (symlinks with their targets, never followed; a non-UTF-8 name; nothing
//! excluded, local-only or ignored; devices left out); the cursor, used by a
//! following round's hello, carries exactly the changes made after the
//! snapshot, and `JournalAt` answers that cursor, also in the middle of a
//! round; a 100 000-file home (numbers printed); hostile requests; the
//! compute side's `LinkHandle::snapshot` (visitor, visitor error, an older
//! broker).

mod common;

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use cs_broker::{BrokerHandle, SessionState};
use cs_protocol::{
    ClientId, EntryKind, Hello, PullPolicy, RelPath, SnapshotEntry, SnapshotReport, Timestamp, PROTOCOL_VERSION,
};
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, SnapshotDecoder, StreamEnd, FETCH_STREAM_BIT};

fn rel(s: impl Into<Vec<u8>>) -> RelPath {
    RelPath::new(s).unwrap()
}

async fn session(b: &BrokerHandle, client: &str) -> SessionState {
    let s = b.observe().await.expect("broker answers");
    s.sessions.into_iter().find(|s| s.client == client).expect("session")
}

/// One snapshot's entries (decoded and checked by the codec) and answer.
#[derive(Debug)]
struct Snapped {
    entries: Vec<SnapshotEntry>,
    report: SnapshotReport,
    /// The stream's compressed bytes.
    stream_bytes: usize,
}

/// Reads the frames of snapshot request `id` on `stream` until its answer.
async fn snapshot_answer(c: &mut TestClient, id: u64, stream: u32) -> Result<Snapped, (ErrorCode, String)> {
    let mut bytes = Vec::new();
    let mut ended = false;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(120), c.conn.recv()).await.expect("no stall").unwrap();
        match frame.expect("connection open") {
            Frame::Chunk { stream: s, data } if s == stream => bytes.extend_from_slice(&data),
            Frame::End { stream: s, end } if s == stream => {
                assert_eq!(end, StreamEnd::Ok);
                ended = true;
            }
            Frame::Control(env) if env.id == id => match env.body {
                ServerMsg::SnapshotFollows { stream: s, report } => {
                    assert_eq!(s, stream);
                    assert!(ended, "the answer comes after the stream's end");
                    let entries: Vec<SnapshotEntry> =
                        SnapshotDecoder::new(&bytes[..]).unwrap().collect::<Result<_, _>>().expect("a valid stream");
                    assert_eq!(report.entries, entries.len() as u64);
                    return Ok(Snapped { entries, report, stream_bytes: bytes.len() });
                }
                ServerMsg::Error { code, message } => {
                    assert!(!ended && bytes.is_empty(), "a refused snapshot sends no stream");
                    return Err((code, message));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("unexpected {}", other.describe()),
        }
    }
}

async fn snapshot(c: &mut TestClient, stream: u32) -> Result<Snapped, (ErrorCode, String)> {
    let id = c.send(ClientMsg::Snapshot { stream }).await.unwrap();
    snapshot_answer(c, id, stream).await
}

/// What P's `lstat` says of `p`, as a snapshot entry.
fn expected(home: &Path, p: &[u8]) -> SnapshotEntry {
    let abs = home.join(std::ffi::OsStr::from_bytes(p));
    let md = std::fs::symlink_metadata(&abs).unwrap();
    let ft = md.file_type();
    let (kind, target) = if ft.is_dir() {
        (EntryKind::Dir, None)
    } else if ft.is_symlink() {
        (EntryKind::Symlink, Some(std::fs::read_link(&abs).unwrap().as_os_str().as_bytes().to_vec()))
    } else {
        (EntryKind::File, None)
    };
    SnapshotEntry {
        path: rel(p),
        kind,
        mode: md.mode() & 0o7777,
        size: if kind == EntryKind::Dir { 0 } else { md.size() },
        mtime: Timestamp::new(md.mtime(), md.mtime_nsec() as u32),
        target,
    }
}

/// A home with what a snapshot must show and what it must leave out.
fn seed(p: &Project) {
    let h = &p.home;
    std::fs::write(h.join("a.txt"), b"hello").unwrap();
    std::fs::set_permissions(h.join("a.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir_all(h.join("src/lib")).unwrap();
    std::fs::write(h.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(h.join("src/lib/x.rs"), b"pub fn x() {}\n").unwrap();
    std::fs::set_permissions(h.join("src/lib/x.rs"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(h.join("src/lib"), std::fs::Permissions::from_mode(0o750)).unwrap();
    // Out of the home: a target kept as it is, never followed.
    let outside = p.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"not P's").unwrap();
    symlink("../../outside/secret", h.join("src/link")).unwrap();
    symlink(&outside, h.join("src/out")).unwrap();
    std::fs::write(h.join(std::ffi::OsStr::from_bytes(b"bin\xff")), b"raw name").unwrap();
    std::fs::create_dir_all(h.join("empty")).unwrap();
    // Excluded, local-only, ignored: never in a snapshot.
    std::fs::create_dir_all(h.join(".cs-actor")).unwrap();
    std::fs::write(h.join(".cs-actor/state"), b"x").unwrap();
    std::fs::create_dir_all(h.join("scratch/deep")).unwrap();
    std::fs::write(h.join("scratch/deep/tmp"), b"x").unwrap();
    std::fs::write(h.join(".csignore"), b"*.log\nnode_modules/\n").unwrap();
    std::fs::write(h.join("build.log"), b"log").unwrap();
    std::fs::create_dir_all(h.join("node_modules/pkg")).unwrap();
    std::fs::write(h.join("node_modules/pkg/index.js"), b"js").unwrap();
    // Not a file, a directory or a symlink: left out.
    let st = std::process::Command::new("mkfifo").arg(h.join("fifo")).status().unwrap();
    assert!(st.success());
}

/// The paths `seed` makes that a snapshot shows, in pre-order (names in
/// byte order).
const SHOWN: [&[u8]; 11] = [
    b".csignore",
    b"a.txt",
    b"bin\xff",
    b"empty",
    b"src",
    b"src/lib",
    b"src/lib/x.rs",
    b"src/link",
    b"src/main.rs",
    b"src/out",
    b"src/zz-last",
];

/// A raw hello for `client` holding nothing, with `cursor`, pulling every change.
fn hello(client: &str, cursor: cs_protocol::Cursor) -> ClientMsg {
    ClientMsg::Hello(Hello {
        client: ClientId::new(client).unwrap(),
        protocol: PROTOCOL_VERSION,
        cursor: Some(cursor),
        held_digest: cs_engine::sig::held_digest(std::iter::empty()),
        held_count: 0,
        held_added: vec![],
        held_removed: vec![],
        hidden: vec![],
        pull: PullPolicy::Changed { max_file_size: None },
        follow: false,
    })
}

/// `ClientMsg::JournalAt`'s answer.
async fn journal_at(c: &mut TestClient) -> cs_protocol::Cursor {
    match c.request(ClientMsg::JournalAt).await.expect("journal at") {
        ServerMsg::JournalAt { cursor } => cursor,
        other => panic!("{other:?}"),
    }
}

#[actix_rt::test]
async fn a_snapshot_shows_what_syncs_in_pre_order_and_its_cursor_starts_the_next_round() {
    let p = Project::new();
    seed(&p);
    std::fs::write(p.home.join("src/zz-last"), b"z").unwrap();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;

    // Before any round: a snapshot needs no hello.
    let got = snapshot(&mut c, FETCH_STREAM_BIT | 1).await.expect("served");
    let want: Vec<SnapshotEntry> = SHOWN.iter().map(|s| expected(&p.home, s)).collect();
    assert_eq!(got.entries, want);
    let link = got.entries.iter().find(|e| e.path == rel("src/link")).unwrap();
    assert_eq!(link.target.as_deref(), Some(&b"../../outside/secret"[..]));
    assert_eq!(link.size, 20);
    assert_eq!(got.entries.iter().find(|e| e.path == rel("src/lib")).unwrap().mode, 0o750);
    assert_eq!(got.entries.iter().find(|e| e.path == rel("src/lib/x.rs")).unwrap().mode, 0o600);
    assert!(got.report.refused.is_empty() && got.report.refused_count == 0, "{:?}", got.report);
    assert!(got.report.cursor.seq > 0, "the refresh journalled the home: {:?}", got.report.cursor);

    // Nothing changed: a second snapshot has the same cursor, and so has the journal.
    let again = snapshot(&mut c, FETCH_STREAM_BIT | 2).await.expect("served");
    assert_eq!((again.report.cursor, again.entries.len()), (got.report.cursor, got.entries.len()));
    assert_eq!(journal_at(&mut c).await, got.report.cursor, "the journal's position after the snapshot");

    // Changes after the snapshot: the round whose hello has its cursor
    // carries exactly those (a delete in step 2, the writes in step 4), and
    // nothing the snapshot already showed.
    std::fs::remove_file(p.home.join("a.txt")).unwrap();
    std::fs::write(p.home.join("new.txt"), b"made after").unwrap();
    std::fs::write(p.home.join("src/main.rs"), b"fn main() { changed() }\n").unwrap();
    let reply = match c.request(hello("c1", got.report.cursor)).await.expect("hello") {
        ServerMsg::HelloReply(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(!reply.cursor_unknown && !reply.need_held_list, "{reply:?}");
    assert!(reply.snapshot && reply.fetch, "{reply:?}");
    match c.request(ClientMsg::Deletes(vec![])).await.expect("step 1") {
        ServerMsg::DeleteReport(_) => {}
        other => panic!("{other:?}"),
    }
    match c.request(ClientMsg::AskDeletes).await.expect("step 2") {
        ServerMsg::DeletesForYou(v) => assert_eq!(v, vec![rel("a.txt")]),
        other => panic!("{other:?}"),
    }
    // Asked in the middle of the round, which goes on: the hello's refresh journalled the
    // three changes in the same journal.
    let mid = journal_at(&mut c).await;
    assert_eq!(mid.epoch, got.report.cursor.epoch, "{mid:?}");
    assert!(mid.seq >= got.report.cursor.seq + 3, "three changes after {:?}: {mid:?}", got.report.cursor);
    let empty = cs_tarstream::PackWriter::new(Vec::new(), 3).unwrap().finish().unwrap().0;
    c.step3_raw([empty]).await.expect("step 3");
    let stream = 77;
    let id = c.send(ClientMsg::AskWrites { stream }).await.unwrap();
    let mut tar = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(30), c.conn.recv()).await.unwrap().unwrap().unwrap() {
            Frame::Chunk { stream: s, data } if s == stream => tar.extend_from_slice(&data),
            Frame::End { stream: s, end } if s == stream => assert_eq!(end, StreamEnd::Ok),
            Frame::Control(env) if env.id == id => match env.body {
                ServerMsg::WritesFollow { .. } => break,
                other => panic!("{other:?}"),
            },
            other => panic!("{}", other.describe()),
        }
    }
    let mut sent = BTreeSet::new();
    cs_tarstream::unpack(&tar[..], &cs_tarstream::Limits::default(), |h, _| {
        if h.kind != EntryKind::Dir {
            sent.insert(h.path.to_string());
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(sent, ["new.txt", "src/main.rs"].map(String::from).into());
    let s = session(&b, "c1").await;
    assert_eq!((s.snapshot.served, s.snapshot.refused, s.snapshot.failed, s.snapshot.in_flight), (2, 0, 0, 0));
    assert_eq!(s.snapshot.entries_sent, 2 * SHOWN.len() as u64);
    assert_eq!(s.snapshot.bytes_sent, (got.stream_bytes + again.stream_bytes) as u64);
}

#[actix_rt::test]
async fn hostile_snapshots_are_refused_and_the_session_goes_on() {
    let p = Project::new();
    for d in 0..10 {
        std::fs::create_dir_all(p.home.join(format!("d{d}"))).unwrap();
        for f in 0..500 {
            std::fs::write(p.home.join(format!("d{d}/f{f}")), b"x").unwrap();
        }
    }
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;

    // A stream id of the round's range.
    let (code, message) = snapshot(&mut c, 5).await.unwrap_err();
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("bit 31"), "{message}");

    // A second snapshot while one is in flight: told to wait; the first is whole.
    let first = c.send(ClientMsg::Snapshot { stream: FETCH_STREAM_BIT | 1 }).await.unwrap();
    let second = c.send(ClientMsg::Snapshot { stream: FETCH_STREAM_BIT | 2 }).await.unwrap();
    let (id, body) = c.recv_control().await.expect("an answer");
    assert_eq!(id, second, "{body:?}");
    match body {
        ServerMsg::Error { code: ErrorCode::Busy, message } => assert!(message.contains("in flight"), "{message}"),
        other => panic!("{other:?}"),
    }
    let got = snapshot_answer(&mut c, first, FETCH_STREAM_BIT | 1).await.expect("the first is served");
    assert_eq!(got.entries.len(), 10 + 10 * 500);

    // The session goes on: a ping, a fetch and another snapshot.
    match c.request(ClientMsg::Ping { sent_ms: 3 }).await.unwrap() {
        ServerMsg::Pong { sent_ms: 3 } => {}
        other => panic!("{other:?}"),
    }
    let again = snapshot(&mut c, FETCH_STREAM_BIT | 2).await.expect("served");
    assert_eq!(again.entries, got.entries);
    let s = session(&b, "c1").await;
    assert_eq!((s.snapshot.served, s.snapshot.refused, s.snapshot.failed, s.snapshot.in_flight), (2, 2, 0, 0));
}

/// 100 000 files: numbers printed, not asserted (timings vary).
#[actix_rt::test]
async fn a_hundred_thousand_files() {
    let p = Project::new();
    let t = Instant::now();
    for d in 0..100 {
        let dir = p.home.join(format!("dir{d:03}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..1000 {
            std::fs::write(dir.join(format!("file{f:04}.txt")), b"x").unwrap();
        }
    }
    eprintln!("100k: home made in {:.1} s", t.elapsed().as_secs_f64());
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    let t = Instant::now();
    let got = snapshot(&mut c, FETCH_STREAM_BIT | 1).await.expect("served");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got.entries.len(), 100 + 100_000);
    eprintln!(
        "100k: {} entries, {} compressed bytes ({:.1} bytes/entry), {secs:.2} s (journal refresh, walk, stream, decode)",
        got.entries.len(),
        got.stream_bytes,
        got.stream_bytes as f64 / got.entries.len() as f64
    );
    let t = Instant::now();
    let again = snapshot(&mut c, FETCH_STREAM_BIT | 2).await.expect("served");
    eprintln!("100k: again (partial refresh): {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(again.report.cursor, got.report.cursor);
}

async fn linked(b: &BrokerHandle, client: &str) -> cs_compute::connection::LinkHandle {
    use cs_compute::connection::{Connection, ConnectionConfig};
    use cs_compute::round::Link;
    let conn = Connection::new(ConnectionConfig::new(url(b.local_addr), token(client).to_string()));
    let link = conn.link();
    // The actor lives as long as the test's system.
    std::mem::forget(cs_supervision::spawn(conn));
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = link.request(ClientMsg::Ping { sent_ms: 1 }).await {
        assert!(Instant::now() < deadline, "never connected: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link
}

/// The compute side's [`LinkHandle::snapshot`](cs_compute::connection::LinkHandle::snapshot):
/// the visitor sees each entry, the report matches; a visitor error stops
/// it cleanly and the link goes on; the hello's capability is recorded.
#[actix_rt::test]
async fn the_compute_link_snapshots_into_a_visitor() {
    use cs_compute::round::Link;
    use cs_compute::snapshot::SnapshotError;
    let p = Project::new();
    seed(&p);
    std::fs::write(p.home.join("src/zz-last"), b"z").unwrap();
    for f in 0..3000 {
        std::fs::write(p.home.join(format!("empty/f{f:05}")), b"x").unwrap();
    }
    let b = p.start(|_| {}).await;
    let link = linked(&b, "c3").await;
    assert_eq!(link.broker_serves_snapshot(), None, "no hello yet on this connection");

    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let report = link
        .snapshot(move |e| {
            sink.lock().unwrap().push(e);
            Ok(())
        })
        .await
        .expect("snapshot");
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert_eq!(report.entries, seen.len() as u64);
    assert_eq!(seen.len(), SHOWN.len() + 3000);
    let paths: Vec<&[u8]> = seen.iter().map(|e| e.path.as_bytes()).filter(|p| !p.starts_with(b"empty/")).collect();
    assert_eq!(paths, SHOWN.to_vec());

    // The visitor stops at the third entry: a typed error, and the link goes on.
    let mut n = 0;
    let e = link
        .snapshot(move |_| {
            n += 1;
            if n == 3 {
                Err("enough".into())
            } else {
                Ok(())
            }
        })
        .await
        .unwrap_err();
    assert!(matches!(&e, SnapshotError::Visitor(m) if m == "enough"), "{e:?}");
    let again = link.snapshot(|_| Ok(())).await.expect("the link goes on");
    assert_eq!(again.entries, report.entries);
    assert!(link.request(ClientMsg::Ping { sent_ms: 2 }).await.is_ok());

    // A hello records what the broker serves.
    match link.request(hello("c3", report.cursor)).await.unwrap() {
        ServerMsg::HelloReply(r) => assert!(r.snapshot),
        other => panic!("{other:?}"),
    }
    assert_eq!(link.broker_serves_snapshot(), Some(true));
    let s = session(&b, "c3").await;
    assert_eq!((s.snapshot.served, s.snapshot.failed, s.snapshot.in_flight), (3, 0, 0), "{:?}", s.snapshot);
}

/// An older broker: before a hello the request goes and its "unknown
/// message" answer is `NotSupported`; once its hello answer said
/// `snapshot: false`, nothing is sent.
#[actix_rt::test]
async fn an_older_broker_is_not_asked() {
    use cs_compute::connection::{Connection, ConnectionConfig};
    use cs_compute::round::Link;
    use cs_compute::snapshot::SnapshotError;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = asked.clone();
    // A broker of before snapshots: it answers hello without the field and
    // does not know the request.
    actix_rt::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            let Message::Binary(bytes) = msg else { continue };
            let Ok(Frame::Control(env)) = Frame::<ClientMsg>::decode(&bytes) else { continue };
            let answer = match env.body {
                ClientMsg::Ping { sent_ms } => ServerMsg::Pong { sent_ms },
                ClientMsg::Hello(_) => ServerMsg::HelloReply(cs_protocol::HelloReply {
                    need_held_list: false,
                    cursor_unknown: false,
                    ignore_rules: String::new(),
                    ignore_error: None,
                    fetch: true,
                    snapshot: false,
                    follow: false,
                }),
                other => {
                    log.lock().unwrap().push(format!("{other:?}"));
                    ServerMsg::Error {
                        code: ErrorCode::BadRequest,
                        message: format!(
                            "unknown control message (request {}): unknown variant `{}`",
                            env.id,
                            format!("{other:?}").split_whitespace().next().unwrap_or("")
                        ),
                    }
                }
            };
            let f = Frame::control(env.id, answer).encode().unwrap();
            if ws.send(Message::Binary(f)).await.is_err() {
                break;
            }
        }
    });
    let conn = Connection::new(ConnectionConfig::new(format!("ws://{addr}/"), token("c1").to_string()));
    let link = conn.link();
    let _conn = cs_supervision::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = link.request(ClientMsg::Ping { sent_ms: 1 }).await {
        assert!(Instant::now() < deadline, "never connected: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let e = link.snapshot(|_| Ok(())).await.unwrap_err();
    assert!(matches!(e, SnapshotError::NotSupported(_)), "{e:?}");
    assert_eq!(asked.lock().unwrap().len(), 1, "asked once, before any hello");
    let cursor = cs_protocol::Cursor { epoch: 1, seq: 1 };
    match link.request(hello("c1", cursor)).await.unwrap() {
        ServerMsg::HelloReply(r) => assert!(!r.snapshot),
        other => panic!("{other:?}"),
    }
    assert_eq!(link.broker_serves_snapshot(), Some(false));
    let e = link.snapshot(|_| Ok(())).await.unwrap_err();
    assert!(matches!(e, SnapshotError::NotSupported(ref m) if m.contains("snapshot: false")), "{e:?}");
    assert_eq!(asked.lock().unwrap().len(), 1, "nothing sent once the hello said no");
}
