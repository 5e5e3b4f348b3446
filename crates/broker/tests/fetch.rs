//! Fetch (issue 12's "content on demand"), against the real broker over a
//! real websocket: files, directories and missing paths with P's bytes; a
//! fetch during a round's step 4 (interleaved, neither waits for the other,
//! both whole); hostile requests (`..`, absolute paths, symlinks out of the
//! home, 100 000 paths, ten at once, a stream id of the round's range);
//! and the session's counters.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use cs_broker::{BrokerHandle, SessionState};
use cs_protocol::{EntryKind, FetchReport, RelPath};
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, StreamItem, WireLimits, WsConn, FETCH_STREAM_BIT};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

const ROUND: Duration = Duration::from_secs(60);

fn rel(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

async fn session(b: &BrokerHandle, client: &str) -> SessionState {
    let s = b.observe().await.expect("broker answers");
    s.sessions.into_iter().find(|s| s.client == client).expect("session")
}

/// One fetch's stream and answer, as received.
#[derive(Debug, Default)]
struct Fetched {
    report: FetchReport,
    /// The stream's compressed bytes.
    stream: Vec<u8>,
}

impl Fetched {
    /// The stream's entries: path → (kind, mode, content).
    fn entries(&self) -> BTreeMap<String, (EntryKind, u32, Vec<u8>)> {
        let mut out = BTreeMap::new();
        cs_tarstream::unpack(&self.stream[..], &cs_tarstream::Limits::default(), |h, data| {
            let mut v = Vec::new();
            data.read_to_end(&mut v)?;
            out.insert(h.path.to_string(), (h.kind, h.mode, v));
            Ok(())
        })
        .expect("a whole tar stream");
        out
    }

    fn sent(&self) -> BTreeSet<String> {
        self.report.sent.iter().map(|v| v.path.to_string()).collect()
    }
}

/// Sends a fetch and collects its stream and its answer; an error answer is `Err`.
async fn fetch(c: &mut TestClient, paths: &[&str], stream: u32) -> Result<Fetched, (ErrorCode, String)> {
    let id = c.send(ClientMsg::Fetch { paths: paths.iter().map(|p| rel(p)).collect(), stream }).await.unwrap();
    let mut got = Fetched::default();
    let mut ended = false;
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), c.conn.recv()).await.expect("no stall").unwrap();
        match frame.expect("connection open") {
            Frame::Chunk { stream: s, data } if s == stream => got.stream.extend_from_slice(&data),
            Frame::End { stream: s, end } if s == stream => {
                assert_eq!(end, StreamEnd::Ok);
                ended = true;
            }
            Frame::Control(env) if env.id == id => match env.body {
                ServerMsg::FetchFollows { stream: s, report } => {
                    assert_eq!(s, stream);
                    assert!(ended, "the answer comes after the stream's end");
                    got.report = report;
                    return Ok(got);
                }
                ServerMsg::Error { code, message } => {
                    assert!(!ended && got.stream.is_empty(), "a refused fetch sends no stream");
                    return Err((code, message));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("unexpected {}", other.describe()),
        }
    }
}

fn seed(p: &Project) {
    std::fs::create_dir_all(p.home.join("src/sub")).unwrap();
    std::fs::write(p.home.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(p.home.join("src/lib.rs"), noise(70_000, 2)).unwrap();
    std::fs::write(p.home.join("src/sub/deep.rs"), b"deeper: not fetched with src").unwrap();
    std::fs::create_dir_all(p.home.join("data")).unwrap();
    std::fs::write(p.home.join("data/big"), noise(3 << 20, 3)).unwrap();
    std::fs::write(p.home.join("data/empty"), b"").unwrap();
    std::fs::write(p.home.join("data/run.sh"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(p.home.join("data/run.sh"), std::fs::Permissions::from_mode(0o751)).unwrap();
    std::fs::write(p.home.join("caf\u{e9} \u{1F600}.txt"), b"any name").unwrap();
}

#[actix_rt::test]
async fn files_directories_and_missing_paths_come_with_the_projects_bytes() {
    let p = Project::new();
    seed(&p);
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;

    // Before any round: a fetch needs no hello.
    let got = fetch(&mut c, &["src/main.rs", "data", "no/such/file", "caf\u{e9} \u{1F600}.txt"], FETCH_STREAM_BIT | 1)
        .await
        .expect("served");
    assert_eq!(
        got.sent(),
        ["src/main.rs", "data", "data/big", "data/empty", "data/run.sh", "caf\u{e9} \u{1F600}.txt"]
            .map(String::from)
            .into(),
        "{:?}",
        got.report
    );
    assert_eq!(got.report.missing, vec![rel("no/such/file")]);
    assert!(got.report.refused.is_empty(), "{:?}", got.report.refused);
    // Each version as P's lstat has it; the stream holds exactly P's bytes.
    let entries = got.entries();
    for v in &got.report.sent {
        let md = std::fs::symlink_metadata(p.home.join(v.path.as_path())).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((v.mtime.sec, v.mtime.nsec as i64), (md.mtime(), md.mtime_nsec()), "{}", v.path);
        let (kind, mode, data) = &entries[&v.path.to_string()];
        assert_eq!(*kind, v.kind);
        assert_eq!(*mode, md.mode() & 0o7777, "{}", v.path);
        if v.kind == EntryKind::File {
            assert_eq!(v.size, md.len());
            assert_eq!(data, &std::fs::read(p.home.join(v.path.as_path())).unwrap(), "{}", v.path);
        }
    }

    // A directory brings its regular files, not deeper.
    let got = fetch(&mut c, &["src"], FETCH_STREAM_BIT | 2).await.expect("served");
    assert_eq!(got.sent(), ["src", "src/lib.rs", "src/main.rs"].map(String::from).into());

    // The compute side's unpacking writes them, whole, beneath the target.
    let target = tempfile::tempdir().unwrap();
    let asked = [rel("src")];
    let r = cs_compute::fetch::unpack_into(&got.stream[..], target.path(), &asked).expect("unpacks");
    assert_eq!(r.written.len(), 3);
    assert_eq!(
        std::fs::read(target.path().join("src/lib.rs")).unwrap(),
        std::fs::read(p.home.join("src/lib.rs")).unwrap()
    );
    assert!(!target.path().join("src/sub").exists());
    // …and refuses a stream that brings what was not asked.
    let other = tempfile::tempdir().unwrap();
    let e = cs_compute::fetch::unpack_into(&got.stream[..], other.path(), &[rel("data")]).unwrap_err();
    let chain = cs_supervision::error_chain(&e);
    assert!(chain.contains("not asked for"), "{chain}");

    // The same connection rounds, and says it serves fetches.
    c.write("from-c", b"c");
    let r = c.round_within(ROUND).await;
    assert!(r.hello.as_ref().unwrap().fetch, "HelloReply.fetch");
    let s = session(&b, "c1").await;
    assert_eq!((s.fetch.served, s.fetch.refused, s.fetch.failed, s.fetch.in_flight), (2, 0, 0, 0), "{:?}", s.fetch);
    assert_eq!((s.fetch.entries_sent, s.fetch.paths_missing, s.fetch.paths_refused), (9, 1, 0), "{:?}", s.fetch);
    assert!(s.fetch.bytes_sent > 3 << 20, "{:?}", s.fetch);
    assert_eq!(s.rounds_committed, 1);
}

/// Step 4 streams a file too large for the socket's buffers while a fetch
/// runs on the same connection: the fetch's stream and answer arrive before
/// step 4's end (they are interleaved, not queued behind it), and both
/// streams are whole. (With the writer forwarding one stream at a time, as
/// before, the fetch's end came after step 4's.)
#[actix_rt::test]
async fn a_fetch_during_step4_moves_beside_it_and_both_arrive_whole() {
    let p = Project::new();
    seed(&p);
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    // The client holds `round/big`; P changes it: the next step 4 sends it.
    c.write("round/big", b"small at first");
    c.round_within(ROUND).await;
    let big = noise(48 << 20, 7);
    std::fs::write(p.home.join("round/big"), &big).unwrap();

    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    c.step3().await.unwrap();
    let s4 = 77;
    let fs = FETCH_STREAM_BIT | 5;
    let ask = c.send(ClientMsg::AskWrites { stream: s4 }).await.unwrap();
    // Let step 4 start filling the socket before the fetch is asked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fid = c.send(ClientMsg::Fetch { paths: vec![rel("src/main.rs"), rel("data/big")], stream: fs }).await.unwrap();
    let (tx, applier) = c.step4_applier();
    let mut tx = Some(tx);
    let mut fetched = Fetched::default();
    let mut order = Vec::new();
    let mut step4_chunks_before_fetch_end = 0;
    let mut cursor = None;
    while cursor.is_none() {
        let frame = tokio::time::timeout(Duration::from_secs(30), c.conn.recv()).await.expect("no stall").unwrap();
        match frame.expect("open") {
            Frame::Chunk { stream, data } if stream == s4 => {
                if !order.contains(&"fetch end") {
                    step4_chunks_before_fetch_end += 1;
                }
                // The applier may be done (the tar's end read) before the stream's end: as step4().
                let _ = tx.as_ref().unwrap().send(StreamItem::Chunk(data)).await;
            }
            Frame::End { stream, end } if stream == s4 => {
                order.push("step 4 end");
                let _ = tx.take().unwrap().send(StreamItem::End(end)).await;
            }
            Frame::Chunk { stream, data } if stream == fs => fetched.stream.extend_from_slice(&data),
            Frame::End { stream, end } if stream == fs => {
                assert_eq!(end, StreamEnd::Ok);
                order.push("fetch end");
            }
            Frame::Control(env) if env.id == fid => match env.body {
                ServerMsg::FetchFollows { report, .. } => {
                    order.push("fetch answer");
                    fetched.report = report;
                }
                other => panic!("{other:?}"),
            },
            Frame::Control(env) if env.id == ask => match env.body {
                ServerMsg::WritesFollow { cursor: cur, .. } => {
                    order.push("step 4 answer");
                    cursor = Some(cur);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("unexpected {}", other.describe()),
        }
    }
    assert_eq!(applier.await.unwrap().expect("step 4's stream is whole"), 1);
    assert_eq!(
        order,
        ["fetch end", "fetch answer", "step 4 end", "step 4 answer"],
        "the fetch did not wait for step 4"
    );
    assert!(step4_chunks_before_fetch_end > 0, "step 4 was under way when the fetch went");
    // Both whole: the fetch has P's bytes, step 4 applied P's version, and
    // the round commits.
    let entries = fetched.entries();
    assert_eq!(entries["data/big"].2, std::fs::read(p.home.join("data/big")).unwrap());
    assert_eq!(entries["src/main.rs"].2, b"fn main() {}\n");
    let committed = c.step5(cursor.unwrap()).await.expect("commits");
    assert_eq!(Some(committed), cursor);
    assert!(c.read("round/big").unwrap() == big, "step 4 wrote P's bytes");
    let s = session(&b, "c1").await;
    assert_eq!((s.fetch.served, s.rounds_committed, s.rounds_failed), (1, 2, 0), "{s:?}");
}

/// A fetch as a hostile client spells it: paths as any strings.
#[derive(serde::Serialize)]
enum Evil {
    Fetch { paths: Vec<String>, stream: u32 },
}

#[actix_rt::test]
async fn hostile_fetches_are_refused_and_the_session_goes_on() {
    let p = Project::new();
    seed(&p);
    let outside = p.outside();
    std::os::unix::fs::symlink("../outside", p.home.join("link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p.home.join("passwd")).unwrap();
    std::fs::create_dir_all(p.home.join(".cs-actor")).unwrap();
    std::fs::write(p.home.join(".cs-actor/secret"), b"state").unwrap();
    std::fs::create_dir_all(p.home.join("scratch")).unwrap();
    std::fs::write(p.home.join("scratch/local"), b"local-only").unwrap();
    let fifo = std::ffi::CString::new(p.home.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    let b = p.start(|_| {}).await;
    let home_before = listing(&p.home.join("src"));
    let outside_before = listing(&outside);

    // Paths that are not project paths never decode: `..`, absolute, NUL, empty.
    let mut ws = raw_ws(b.local_addr, token("c2")).await;
    let bad = ["../outside/canary", "/etc/passwd", "src/../../outside/canary", "a\0b", "", "./src/main.rs"];
    for (i, bad) in bad.iter().enumerate() {
        let id = 10 + i as u64;
        let msg =
            Evil::Fetch { paths: vec!["src/main.rs".into(), bad.to_string()], stream: FETCH_STREAM_BIT | id as u32 };
        ws.send(Message::Binary(Frame::control(id, msg).encode().unwrap())).await.unwrap();
        match answer(&mut ws).await {
            (rid, ServerMsg::Error { code: ErrorCode::BadRequest, message }) if rid == id => {
                assert!(message.contains("field body.Fetch.paths[1]:"), "{bad:?}: {message}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let mut c2 = TestClient::with_conn("c2", WsConn::from_websocket(ws, WireLimits::default()));

    // Symlinks (as the path, or on the way), fifos, excluded and local-only paths: refused, with why.
    let got = fetch(
        &mut c2,
        &["link/canary", "link/sub", "link", "passwd", "fifo", ".cs-actor/secret", "scratch/local", "src/main.rs"],
        FETCH_STREAM_BIT | 100,
    )
    .await
    .expect("answered");
    assert_eq!(got.sent(), BTreeSet::from(["src/main.rs".to_string()]), "{:?}", got.report);
    let refused: BTreeMap<String, String> =
        got.report.refused.iter().map(|(p, w)| (p.to_string(), w.clone())).collect();
    assert!(refused["link/canary"].contains("through a symlink"), "{refused:?}");
    assert!(refused["link/sub"].contains("through a symlink"), "{refused:?}");
    assert!(refused["link"].contains("a symlink"), "{refused:?}");
    assert!(refused["passwd"].contains("a symlink"), "{refused:?}");
    assert!(refused["fifo"].contains("not a regular file"), "{refused:?}");
    assert!(refused[".cs-actor/secret"].contains("never served"), "{refused:?}");
    assert!(refused["scratch/local"].contains("never served"), "{refused:?}");
    assert_eq!(refused.len(), 7);
    assert!(refused.values().all(|w| !w.contains(p.home.to_str().unwrap())), "no path of P's: {refused:?}");
    assert_eq!(got.entries().len(), 1, "nothing else in the stream");

    // Too many paths: one clear answer.
    let many: Vec<String> = (0..100_000).map(|i| format!("d{}/file-{i}", i % 100)).collect();
    let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
    let (code, message) = fetch(&mut c2, &many, FETCH_STREAM_BIT | 101).await.unwrap_err();
    assert_eq!(code, ErrorCode::TooLarge);
    assert!(message.contains("100000 paths, at most 1024 per fetch"), "{message}");
    // A stream id of the round's range: refused (it could collide with step 4's).
    let (code, message) = fetch(&mut c2, &["src/main.rs"], 4).await.unwrap_err();
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("bit 31"), "{message}");
    // 1024 paths are fine (missing ones reported).
    let limit: Vec<String> = (0..1024).map(|i| format!("nope/{i}")).collect();
    let limit: Vec<&str> = limit.iter().map(|s| s.as_str()).collect();
    let got = fetch(&mut c2, &limit, FETCH_STREAM_BIT | 102).await.expect("at the limit");
    assert_eq!(got.report.missing.len(), 1024);
    // A directory's excluded files (a step-3 temporary, say) are skipped without being named.
    std::fs::write(p.home.join("data/.csa-tmp-leftover"), b"half-applied").unwrap();
    let got = fetch(&mut c2, &["data"], FETCH_STREAM_BIT | 104).await.expect("served");
    assert_eq!(
        got.sent(),
        ["data", "data/big", "data/empty", "data/run.sh"].map(String::from).into(),
        "{:?}",
        got.report
    );
    assert!(got.report.refused.is_empty(), "{:?}", got.report.refused);

    // A token the broker does not know gets no connection, let alone a fetch.
    match connect(b.local_addr, "not-a-token-of-this-project-000").await {
        Err(cs_wire::WireError::Rejected { status: 401 }) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("an unknown token connected"),
    }

    // The session goes on: a round, and a fetch.
    c2.write("from-c2", b"c2");
    c2.round_within(ROUND).await;
    assert!(fetch(&mut c2, &["src/lib.rs"], FETCH_STREAM_BIT | 103).await.is_ok());
    let s = session(&b, "c2").await;
    assert_eq!((s.fetch.served, s.fetch.refused, s.fetch.failed), (4, 2, 0), "{:?}", s.fetch);
    assert_eq!(s.fetch.paths_refused, 7);
    assert_eq!(s.rounds_committed, 1);
    assert_eq!(listing(&p.home.join("src")), home_before);
    assert_eq!(listing(&outside), outside_before);
}

/// Ten fetches at once on one connection: four are served, whole; six get
/// `Busy` naming the bound, at once; nothing hangs; later fetches are served.
#[actix_rt::test]
async fn ten_fetches_at_once_four_are_served_and_six_told_to_wait() {
    let p = Project::new();
    seed(&p);
    // Large enough that four streams cannot all sit in the socket's buffers.
    std::fs::write(p.home.join("huge"), noise(24 << 20, 9)).unwrap();
    let b = p.start(|_| {}).await;
    let mut c = TestClient::new(b.local_addr, "c1").await;
    let mut ids = BTreeMap::new();
    for k in 1..=10u32 {
        let id = c.send(ClientMsg::Fetch { paths: vec![rel("huge")], stream: FETCH_STREAM_BIT | k }).await.unwrap();
        ids.insert(id, FETCH_STREAM_BIT | k);
    }
    let mut streams: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut ended = BTreeSet::new();
    let mut served = BTreeSet::new();
    let mut busy = Vec::new();
    while served.len() + busy.len() < 10 {
        let frame = tokio::time::timeout(Duration::from_secs(60), c.conn.recv()).await.expect("no hang").unwrap();
        match frame.expect("open") {
            Frame::Chunk { stream, data } => streams.entry(stream).or_default().extend_from_slice(&data),
            Frame::End { stream, end } => {
                assert_eq!(end, StreamEnd::Ok);
                ended.insert(stream);
            }
            Frame::Control(env) => match env.body {
                ServerMsg::FetchFollows { stream, report } => {
                    assert_eq!(ids[&env.id], stream);
                    assert!(ended.contains(&stream));
                    assert_eq!(report.sent.len(), 1);
                    served.insert(stream);
                }
                ServerMsg::Error { code, message } => {
                    assert_eq!(code, ErrorCode::Busy, "{message}");
                    assert!(message.contains("at most 4 per connection"), "{message}");
                    busy.push(ids[&env.id]);
                }
                other => panic!("{other:?}"),
            },
        }
    }
    assert_eq!(served.len(), 4, "served {served:?}, busy {busy:?}");
    assert_eq!(busy.len(), 6);
    assert!(busy.iter().all(|s| !streams.contains_key(s)), "no stream for a refused fetch");
    let huge = std::fs::read(p.home.join("huge")).unwrap();
    for s in &served {
        let f = Fetched { stream: streams.remove(s).unwrap(), ..Default::default() };
        assert!(f.entries()["huge"].2 == huge, "stream {s:#x} whole");
    }
    // Nothing stuck: the next fetches are served.
    for k in 11..=12 {
        assert!(fetch(&mut c, &["src/main.rs"], FETCH_STREAM_BIT | k).await.is_ok());
    }
    let s = session(&b, "c1").await;
    assert_eq!((s.fetch.served, s.fetch.refused, s.fetch.in_flight), (6, 6, 0), "{:?}", s.fetch);
}

/// The compute side's [`LinkHandle::fetch`](cs_compute::connection::LinkHandle::fetch)
/// over its own connection actor and a real broker: P's bytes, modes and
/// mtimes land beneath the target, P's reports come back; a target holding
/// a symlink is not written through (the fetch fails, the link goes on);
/// too many paths are refused before anything is sent.
#[actix_rt::test]
async fn the_compute_link_fetches_into_a_directory() {
    use cs_compute::connection::{Connection, ConnectionConfig};
    use cs_compute::fetch::FetchError;
    use cs_compute::round::Link;
    use std::os::unix::fs::MetadataExt;

    let p = Project::new();
    seed(&p);
    let outside = p.outside();
    std::os::unix::fs::symlink("../outside", p.home.join("link")).unwrap();
    let b = p.start(|_| {}).await;
    let conn = Connection::new(ConnectionConfig::new(url(b.local_addr), token("c3").to_string()));
    let link = conn.link();
    let _conn = cs_supervision::spawn(conn);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = link.request(ClientMsg::Ping { sent_ms: 1 }).await {
        assert!(std::time::Instant::now() < deadline, "never connected: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let target = tempfile::tempdir().unwrap();
    let asked = vec![rel("src/main.rs"), rel("data"), rel("no/such"), rel("link/canary")];
    let r = link.fetch(asked, target.path()).await.expect("fetched");
    let written: BTreeSet<String> = r.written.iter().map(|p| p.to_string()).collect();
    let files = ["src/main.rs", "data/big", "data/empty", "data/run.sh"];
    let mut expected: BTreeSet<String> = files.map(String::from).into();
    expected.insert("data".into());
    assert_eq!(written, expected, "{r:?}");
    assert_eq!(r.sent.len(), 5, "{r:?}");
    let mut bytes = 0;
    for f in files {
        let (theirs, ours) = (p.home.join(f), target.path().join(f));
        assert!(std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(), "{f}: P's bytes");
        let (pm, cm) = (std::fs::metadata(&theirs).unwrap(), std::fs::metadata(&ours).unwrap());
        assert_eq!(
            (cm.mode() & 0o7777, cm.mtime(), cm.mtime_nsec()),
            (pm.mode() & 0o7777, pm.mtime(), pm.mtime_nsec()),
            "{f}"
        );
        bytes += pm.len();
    }
    assert_eq!(r.file_bytes, bytes);
    assert!(r.stream_bytes > 0);
    assert_eq!(r.missing, vec![rel("no/such")]);
    assert_eq!(r.refused.len(), 1, "{:?}", r.refused);
    assert!(r.refused[0].1.contains("through a symlink"), "{:?}", r.refused);
    assert!(r.withdrawn.is_empty());
    let left: Vec<_> = listing(target.path()).into_iter().filter(|(n, _)| n.contains(".csa-tmp")).collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");

    // A target whose `src` is a symlink out of it: nothing is written through it.
    let evil = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&outside, evil.path().join("src")).unwrap();
    let outside_before = listing(&outside);
    let e = link.fetch(vec![rel("src/main.rs")], evil.path()).await.unwrap_err();
    assert!(matches!(e, FetchError::Unpack(..)), "{e:?}");
    assert_eq!(listing(&outside), outside_before);
    assert!(!outside.join("main.rs").exists());

    // Too many paths: refused here, nothing sent.
    let many: Vec<RelPath> = (0..1025).map(|i| rel(&format!("f{i}"))).collect();
    assert!(matches!(link.fetch(many, target.path()).await, Err(FetchError::TooManyPaths(1025))));

    // The link goes on: another fetch, into the good target.
    let r = link.fetch(vec![rel("src")], target.path()).await.expect("fetched again");
    assert_eq!(r.written.len(), 3, "{r:?}");
    assert_eq!(
        std::fs::read(target.path().join("src/lib.rs")).unwrap(),
        std::fs::read(p.home.join("src/lib.rs")).unwrap()
    );
    let s = session(&b, "c3").await;
    assert_eq!((s.fetch.served, s.fetch.refused, s.fetch.failed, s.fetch.in_flight), (3, 0, 0, 0), "{:?}", s.fetch);
}
