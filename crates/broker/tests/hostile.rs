//! Hostile input against the broker (issue 5, item 3): stolen and made-up
//! identities, unsafe paths in every message and tar entry, a symlink in
//! the home, special tar entries, a decompression bomb, lying MessagePack,
//! silent connections and a connection flood.
//!
//! Every test also shows that the broker keeps serving its other clients
//! (a well-behaved client completes a round with a file going each way,
//! during or right after the attack) and that the project home outside the
//! good clients' files is byte-for-byte unchanged, and a directory next to
//! the home too.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cs_broker::{BrokerHandle, BrokerState};
use cs_protocol::{Cursor, HeldDigest, RelPath};
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, WireError, WireLimits, WsConn};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const ROUND: Duration = Duration::from_secs(60);

/// The bomb and the flood measure or load the whole process: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn state(b: &BrokerHandle) -> BrokerState {
    b.observe().await.expect("broker answers")
}

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

fn is_good(name: &str) -> bool {
    name == "good" || name.starts_with("good/")
}

/// The home without what the well-behaved clients write.
fn frozen(p: &Project) -> Vec<(String, Option<Vec<u8>>)> {
    listing(&p.home).into_iter().filter(|(n, _)| !is_good(n)).collect()
}

/// A home with some content to protect, and a canary directory beside it.
fn seed(p: &Project) -> std::path::PathBuf {
    std::fs::create_dir_all(p.home.join("keep/deep")).unwrap();
    std::fs::write(p.home.join("keep/file"), b"project file").unwrap();
    std::fs::write(p.home.join("keep/deep/x"), noise(10_000, 1)).unwrap();
    std::fs::write(p.home.join("top"), b"top").unwrap();
    p.outside()
}

/// A round of a well-behaved client with a file going each way: a new
/// file C → P, and P's change of a file the client holds P → C (step 4
/// sends only what the client holds; the first call seeds that file with
/// a round of its own).
async fn good_round(p: &Project, c: &mut TestClient, tag: &str) {
    let seed = format!("good/{}/seed", c.id);
    if c.read(&seed).is_none() {
        c.write(&seed, b"seed");
        c.round_within(ROUND).await;
        assert_eq!(std::fs::read(p.home.join(&seed)).unwrap(), b"seed");
    }
    let up = format!("good/{}/{tag}", c.id);
    c.write(&up, format!("{tag} from {}", c.id).as_bytes());
    let down = format!("project's version for {tag}");
    std::fs::write(p.home.join(&seed), &down).unwrap();
    let r = c.round_within(ROUND).await;
    assert!(r.conflicts.is_empty() && r.refused.is_empty(), "{r:?}");
    assert_eq!(r.received_applied, 1, "{}: {r:?}", c.id);
    assert_eq!(std::fs::read(p.home.join(&up)).unwrap(), format!("{tag} from {}", c.id).as_bytes());
    assert_eq!(c.read(&seed).unwrap(), down.as_bytes());
}

fn server_error<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
    match r {
        Err(ClientError::Server { code, message }) => (code, message),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

// ---- 1 ----

#[actix_rt::test]
async fn another_clients_identity_is_refused_while_the_others_round() {
    let p = Project::new();
    let outside = seed(&p);
    let b = p.start(|_| {}).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);

    // c1 is in the middle of its round when the impostors come.
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    good_round(&p, &mut c1, "before").await;
    c1.write("good/c1/mid", b"written before the attack");
    std::fs::write(p.home.join("good/c1/seed"), b"for c1, mid").unwrap();
    c1.hello().await.unwrap();
    c1.step1().await.unwrap();
    c1.step2().await.unwrap();

    // With c3's token: a hello naming c1 (a connected client), then one
    // naming c9, a well-formed id that is in no token file.
    for claimed in ["c1", "c9"] {
        let conn = connect(b.local_addr, token("c3")).await.unwrap();
        let mut liar = TestClient::with_conn(claimed, conn);
        liar.write("evil", b"should never arrive");
        match liar.hello().await {
            Err(ClientError::Server { code: ErrorCode::Unauthorized, message }) => {
                assert!(message.contains(claimed) && message.contains("c3"), "{message}")
            }
            other => panic!("{claimed}: {other:?}"),
        }
        assert!(liar.closed_within(Duration::from_secs(10)).await, "{claimed}: the connection is closed");
    }
    let s = wait_for(&b, ROUND, "the impostors' sessions to end", |s| s.sessions.len() == 1).await;
    assert_eq!(s.refused.get("hello_other_client"), Some(&2), "{:?}", s.refused);
    assert_eq!(s.sessions[0].client, "c1");
    let impostors: Vec<_> = s.ended.iter().filter(|e| e.client == "c3").collect();
    assert_eq!(impostors.len(), 2, "{:?}", s.ended);
    assert!(impostors
        .iter()
        .all(|e| matches!(&e.exit, cs_supervision::ExitStatus::Failure(r) if r.contains("hello names client"))));

    // c1's round goes on where it was, untouched.
    c1.step3().await.unwrap();
    let (cursor, n) = c1.step4().await.unwrap();
    assert_eq!(n, 1, "P's change of good/c1/seed");
    c1.step5(cursor).await.unwrap();
    assert_eq!(std::fs::read(p.home.join("good/c1/mid")).unwrap(), b"written before the attack");
    assert_eq!(c1.read("good/c1/seed").unwrap(), b"for c1, mid");
    good_round(&p, &mut c1, "after").await;

    assert_eq!(frozen(&p), before, "nothing of the impostors in the home");
    assert_eq!(listing(&outside), outside_before);
    for c in ["c3", "c9"] {
        assert!(!p.state.join(format!("clients/{c}.msgpack")).exists(), "no state for {c}");
    }
    assert_eq!(state(&b).await.sessions[0].rounds_committed, 4, "seed, before, mid, after");
}

// ---- 2 ----

/// The messages that carry paths, written by hand (the real types cannot
/// hold an unsafe path).
#[derive(serde::Serialize)]
enum Evil {
    Hello(EvilHello),
    HeldList(Vec<String>),
    Deletes(Vec<String>),
    Commit(EvilCommit),
}

#[derive(serde::Serialize)]
struct EvilHello {
    client: String,
    protocol: u32,
    cursor: Option<Cursor>,
    held_digest: HeldDigest,
    held_count: u64,
    held_added: Vec<String>,
    held_removed: Vec<String>,
}

#[derive(serde::Serialize)]
struct EvilDelta {
    added: Vec<String>,
    removed: Vec<String>,
    digest: HeldDigest,
}

#[derive(serde::Serialize)]
struct EvilCommit {
    round_id: u64,
    held: EvilDelta,
    not_applied: Vec<String>,
}

/// Unsafe paths, each with a word its refusal must contain.
fn bad_paths() -> Vec<(String, &'static str)> {
    vec![
        ("..".into(), "`..`"),
        ("a/../../x".into(), "`..`"),
        ("../outside/canary".into(), "`..`"),
        ("/etc/passwd".into(), "absolute"),
        ("a\0b".into(), "NUL"),
        ("./a".into(), "not normalised"),
        ("a//b".into(), "not normalised"),
        ("".into(), "empty"),
        ("d/".repeat(2100) + "f", "limit is 4096"),
        (format!("dir/{}", "x".repeat(300)), "limit is 255"),
    ]
}

#[actix_rt::test]
async fn unsafe_paths_in_every_message_are_refused_naming_the_field() {
    let p = Project::new();
    let outside = seed(&p);
    let b = p.start(|_| {}).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;

    let mut ws = raw_ws(b.local_addr, token("c3")).await;
    let hello = |added: Vec<String>, removed: Vec<String>, client: &str| EvilHello {
        client: client.into(),
        protocol: cs_protocol::PROTOCOL_VERSION,
        cursor: None,
        held_digest: HeldDigest::default(),
        held_count: 0,
        held_added: added,
        held_removed: removed,
    };
    let ok = || vec!["fine/path".to_string()];
    let mut id = 100;
    let mut sent = 0;
    for (bad, word) in bad_paths() {
        let two = || vec!["fine/path".to_string(), bad.clone()];
        let cases: Vec<(Evil, &str)> = vec![
            (Evil::Hello(hello(two(), ok(), "c3")), "body.Hello.held_added[1]"),
            (Evil::Hello(hello(ok(), two(), "c3")), "body.Hello.held_removed[1]"),
            (Evil::HeldList(two()), "body.HeldList[1]"),
            (Evil::Deletes(two()), "body.Deletes[1]"),
            (
                Evil::Commit(EvilCommit {
                    round_id: 1,
                    held: EvilDelta { added: two(), removed: ok(), digest: HeldDigest::default() },
                    not_applied: ok(),
                }),
                "body.Commit.held.added[1]",
            ),
            (
                Evil::Commit(EvilCommit {
                    round_id: 1,
                    held: EvilDelta { added: ok(), removed: two(), digest: HeldDigest::default() },
                    not_applied: ok(),
                }),
                "body.Commit.held.removed[1]",
            ),
            (
                Evil::Commit(EvilCommit {
                    round_id: 1,
                    held: EvilDelta { added: ok(), removed: ok(), digest: HeldDigest::default() },
                    not_applied: two(),
                }),
                "body.Commit.not_applied[1]",
            ),
        ];
        for (msg, field) in cases {
            id += 1;
            sent += 1;
            ws.send(Message::Binary(Frame::control(id, msg).encode().unwrap())).await.unwrap();
            match answer(&mut ws).await {
                (rid, ServerMsg::Error { code: ErrorCode::BadRequest, message }) if rid == id => {
                    assert!(message.contains(&format!("field {field}:")), "{field} / {bad:.40?}: {message}");
                    assert!(message.contains(word), "{field} / {bad:.40?}: {message}");
                }
                other => panic!("{field} / {bad:.40?}: {other:?}"),
            }
        }
    }
    // The client id of the hello is checked the same way.
    for bad in ["../c1", "", "c1/../../x", "c\u{0}1"] {
        id += 1;
        sent += 1;
        ws.send(Message::Binary(Frame::control(id, Evil::Hello(hello(ok(), ok(), bad))).encode().unwrap()))
            .await
            .unwrap();
        match answer(&mut ws).await {
            (rid, ServerMsg::Error { code: ErrorCode::BadRequest, message }) if rid == id => {
                assert!(message.contains("field body.Hello.client:") && message.contains("client id"), "{message}")
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(sent, bad_paths().len() * 7 + 4);

    // Meanwhile a good client rounds; the attacked session survives and rounds too.
    good_round(&p, &mut c1, "during").await;
    let mut c3 = TestClient::with_conn("c3", WsConn::from_websocket(ws, WireLimits::default()));
    good_round(&p, &mut c3, "after").await;
    let s = state(&b).await;
    let s3 = s.sessions.iter().find(|s| s.client == "c3").unwrap();
    assert_eq!((s3.rounds_committed, s3.rounds_failed), (2, 0));
    assert!(s3.last_error.as_deref().unwrap_or("").contains("BadRequest"), "{s3:?}");
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
}

/// One step-3 stream per hostile entry: each refused, naming the entry.
#[actix_rt::test]
async fn unsafe_paths_in_step3_tar_entries_are_refused() {
    let p = Project::new();
    let outside = seed(&p);
    let b = p.start(|_| {}).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c3 = TestClient::new(b.local_addr, "c3").await;

    let long = "d/".repeat(2100) + "f";
    let comp = format!("dir/{}", "x".repeat(300));
    let gnu_long = {
        let name = b"../../outside/gnu".to_vec();
        let mut v = tar_header(b"././@LongLink", b'L', name.len() as u64, b"").to_vec();
        v.extend_from_slice(&name);
        v.resize(1024, 0);
        v
    };
    let streams: Vec<(&str, Vec<u8>, &str)> = vec![
        ("`..`", tar_file(b"..", b"x"), "`..`"),
        ("a/../../x", tar_file(b"a/../../x", b"x"), "`..`"),
        ("../outside/canary", tar_file(b"../outside/canary", b"overwritten"), "`..`"),
        ("absolute", tar_file(b"/tmp/cs-hostile-abs", b"x"), "absolute"),
        ("absolute dir", tar_header(b"/tmp/cs-hostile-dir/", T_DIR, 0, b"").to_vec(), "absolute"),
        ("symlink ..", tar_header(b"../l", T_SYMLINK, 0, b"/etc").to_vec(), "`..`"),
        ("PAX NUL", [pax_header(&[("path", b"a\0b")]), tar_file(b"a", b"x")].concat(), "NUL"),
        ("PAX ..", [pax_header(&[("path", b"ok/../../../outside/x")]), tar_file(b"ok", b"x")].concat(), "`..`"),
        ("PAX overlong", [pax_header(&[("path", long.as_bytes())]), tar_file(b"d", b"x")].concat(), "limit is 4096"),
        ("PAX component", [pax_header(&[("path", comp.as_bytes())]), tar_file(b"dir", b"x")].concat(), "limit is 255"),
        ("GNU long name", [gnu_long, tar_file(b"x", b"x")].concat(), "`..`"),
    ];
    let n = streams.len();
    for (i, (what, entries, word)) in streams.into_iter().enumerate() {
        let tar = [entries, tar_end()].concat();
        c3.hello().await.unwrap();
        c3.step1().await.unwrap();
        c3.step2().await.unwrap();
        let (code, message) = server_error(c3.step3_raw([zstd_stored(&tar)]).await);
        assert_eq!(code, ErrorCode::BadRequest, "{what}: {message}");
        assert!(message.contains("entry #0") && message.contains("refused path"), "{what}: {message}");
        assert!(message.contains(word) && message.contains("abandoned"), "{what}: {message}");
        c3.abandon().await;
        assert_eq!(frozen(&p), before, "{what}");
        if i == n / 2 {
            good_round(&p, &mut c1, "during").await;
        }
    }
    assert!(
        !std::path::Path::new("/tmp/cs-hostile-abs").exists() && !std::path::Path::new("/tmp/cs-hostile-dir").exists()
    );
    good_round(&p, &mut c1, "after").await;
    good_round(&p, &mut c3, "after").await;
    let s = state(&b).await;
    let s3 = s.sessions.iter().find(|s| s.client == "c3").unwrap();
    assert_eq!((s3.rounds_committed, s3.rounds_failed), (2, n as u64));
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
    assert!(listing(&p.home).iter().all(|(n, _)| !n.contains(".csa-tmp")), "no temporary file left");
}

// ---- 3 ----

#[actix_rt::test]
async fn a_symlink_in_the_home_is_no_way_out() {
    let p = Project::new();
    let outside = seed(&p);
    std::os::unix::fs::symlink("../outside", p.home.join("link")).unwrap();
    let b = p.start(|_| {}).await;
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c3 = TestClient::new(b.local_addr, "c3").await;

    // Deletes through the link: refused.
    c3.hello().await.unwrap();
    let report = match c3
        .request(ClientMsg::Deletes(vec![
            RelPath::new("link/canary").unwrap(),
            RelPath::new("link/sub").unwrap(),
            RelPath::new("link/sub/canary2").unwrap(),
        ]))
        .await
        .unwrap()
    {
        ServerMsg::DeleteReport(r) => r,
        other => panic!("{other:?}"),
    };
    assert!(report.deleted.is_empty() && report.kept.is_empty(), "{report:?}");
    let refused: Vec<&str> = report.refused.iter().map(|(p, _)| p.to_str().unwrap()).collect();
    assert_eq!(refused, ["link/canary", "link/sub"], "{report:?}");
    assert!(report.refused.iter().all(|(_, why)| why.contains("symlink")), "{report:?}");
    assert_eq!(listing(&outside), outside_before);

    // Writes through the link, and through a symlink the same stream plants.
    c3.step2().await.unwrap();
    let tar = [
        tar_file(b"link/evil", b"through the home's link"),
        tar_file(b"link/canary", b"overwritten through the link"),
        tar_header(b"link2", T_SYMLINK, 0, b"../outside").to_vec(),
        tar_file(b"link2/evil2", b"through a planted link"),
        tar_file(b"link2/canary", b"overwritten through a planted link"),
        tar_end(),
    ]
    .concat();
    let r = c3.step3_raw([zstd_stored(&tar)]).await.unwrap();
    c3.abandon().await;
    assert_eq!(listing(&outside), outside_before, "nothing outside the home changed: {r:?}");
    assert_eq!(std::fs::read_link(p.home.join("link")).unwrap(), std::path::Path::new("../outside"));
    // The client's entries went beside the links (P's entries win),
    // inside the home.
    let home = listing(&p.home);
    let placed: Vec<&String> = home.iter().map(|(n, _)| n).filter(|n| n.contains("evil")).collect();
    eprintln!("placed beside the links: {placed:?}; {r:?}");
    assert_eq!(placed.len(), 2, "{placed:?} / {r:?}");
    assert!(placed.iter().all(|n| !n.starts_with("link/") && !n.starts_with("link2/")), "{placed:?}");
    let home_after_attack = frozen(&p);

    good_round(&p, &mut c1, "after").await;
    assert_eq!(listing(&outside), outside_before);
    assert_eq!(frozen(&p), home_after_attack, "nothing else changed in the home");
    assert_eq!(std::fs::read_link(p.home.join("link")).unwrap(), std::path::Path::new("../outside"));
}

// ---- 4 ----

#[actix_rt::test]
async fn devices_fifos_and_hard_links_in_step3_are_refused() {
    let p = Project::new();
    let outside = seed(&p);
    let b = p.start(|_| {}).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c3 = TestClient::new(b.local_addr, "c3").await;

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("char device", tar_header(b"null", T_CHAR, 0, b"").to_vec(), "null"),
        ("block device", tar_header(b"sda", T_BLOCK, 0, b"").to_vec(), "sda"),
        ("fifo", tar_header(b"pipe", T_FIFO, 0, b"").to_vec(), "pipe"),
        ("hard link in the home", tar_header(b"hard", T_HARDLINK, 0, b"keep/file").to_vec(), "hard"),
        ("hard link out", tar_header(b"hard2", T_HARDLINK, 0, b"../outside/canary").to_vec(), "hard2"),
        // After a good entry: the stream still fails, nothing of it lands.
        ("fifo second", [tar_file(b"innocent", b"x"), tar_header(b"pipe2", T_FIFO, 0, b"").to_vec()].concat(), "pipe2"),
    ];
    for (what, entries, name) in cases {
        c3.hello().await.unwrap();
        c3.step1().await.unwrap();
        c3.step2().await.unwrap();
        let tar = [entries, tar_end()].concat();
        let (code, message) = server_error(c3.step3_raw([zstd_stored(&tar)]).await);
        assert_eq!(code, ErrorCode::BadRequest, "{what}: {message}");
        assert!(message.contains("unsupported entry type") && message.contains(name), "{what}: {message}");
        c3.abandon().await;
        assert_eq!(frozen(&p), before, "{what}: nothing created");
    }
    // Refused at its first entry while the client is still sending: the
    // rest of the stream is dropped quietly (no stray answer follows the
    // step's error), and the session answers the next request in step.
    c3.hello().await.unwrap();
    c3.step1().await.unwrap();
    c3.step2().await.unwrap();
    let sw = c3.send(ClientMsg::SendWrites { stream: 900 }).await.unwrap();
    let mut head = ZSTD_HEADER.to_vec();
    head.extend_from_slice(&[0x00, 0x40, 0x00]); // a raw block of 512 bytes, not the last
    head.extend_from_slice(&tar_header(b"pipe9", T_FIFO, 0, b""));
    c3.conn.send(&Frame::Chunk { stream: 900, data: head.into() }).await.unwrap();
    match c3.recv_control().await.unwrap() {
        (rid, ServerMsg::Error { code: ErrorCode::BadRequest, message }) if rid == sw => {
            assert!(message.contains("unsupported entry type"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    for i in 0..16 {
        c3.conn.send(&Frame::Chunk { stream: 900, data: noise(32 << 10, i).into() }).await.unwrap();
    }
    c3.conn.send(&Frame::End { stream: 900, end: cs_wire::StreamEnd::Ok }).await.unwrap();
    match c3.request(ClientMsg::Ping { sent_ms: 9 }).await {
        Ok(ServerMsg::Pong { sent_ms: 9 }) => {}
        other => panic!("the answer after the dropped stream: {other:?}"),
    }
    c3.abandon().await;
    assert_eq!(frozen(&p), before);

    // During: c3 is stopped in the middle of its round while c1 rounds.
    c3.hello().await.unwrap();
    c3.step1().await.unwrap();
    c3.step2().await.unwrap();
    let tar = [tar_header(b"pipe3", T_FIFO, 0, b"").to_vec(), tar_end()].concat();
    let (attack, ()) = tokio::join!(c3.step3_raw([zstd_stored(&tar)]), good_round(&p, &mut c1, "during"));
    assert!(server_error(attack).1.contains("unsupported entry type"));
    c3.abandon().await;
    good_round(&p, &mut c3, "after").await;
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
    assert!(listing(&p.home).iter().all(|(n, _)| !n.contains(".csa-tmp")), "no temporary file left");
}

// ---- 5 ----

#[actix_rt::test]
async fn a_decompression_bomb_is_stopped_with_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    let p = Project::new();
    let outside = seed(&p);
    let b = p.start(|_| {}).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    let mut c3 = TestClient::new(b.local_addr, "c3").await;
    c3.hello().await.unwrap();
    c3.step1().await.unwrap();
    c3.step2().await.unwrap();

    // 4 GiB of zeros in 128 KiB of zstd.
    let size: u64 = 4 << 30;
    let compressed: usize = zstd_bomb(b"bomb", size, 64 << 10).map(|c| c.len()).sum();
    assert!(compressed < 200 << 10, "{compressed}");
    let rss0 = rss_bytes();
    let sampler = RssSampler::start();
    let started = Instant::now();
    let (attack, ()) =
        tokio::join!(c3.step3_raw(zstd_bomb(b"bomb", size, 64 << 10)), good_round(&p, &mut c1, "during"));
    let elapsed = started.elapsed();
    let peak = sampler.stop();
    let (code, message) = server_error(attack);
    assert_eq!(code, ErrorCode::BadRequest, "{message}");
    assert!(message.contains("decompression ratio") && message.contains("abandoned"), "{message}");
    let growth = peak.saturating_sub(rss0);
    eprintln!("bomb stopped in {elapsed:?}; RSS {} MiB -> peak {} MiB; {message}", rss0 >> 20, peak >> 20);
    assert!(growth < 256 << 20, "RSS grew by {} MiB", growth >> 20);
    c3.abandon().await;

    assert!(!p.home.join("bomb").exists());
    assert!(listing(&p.home).iter().all(|(n, _)| !n.contains(".csa-tmp")), "no partial file left");
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
    let s = state(&b).await;
    assert_eq!(s.tar_in_use, 0);
    let s3 = s.sessions.iter().find(|s| s.client == "c3").unwrap();
    assert_eq!(s3.rounds_failed, 1);
    assert!((s3.bytes_in as usize) <= compressed, "{s3:?}");
    // The session goes on, on the same connection.
    good_round(&p, &mut c3, "after").await;
    good_round(&p, &mut c1, "after").await;
}

// ---- 6 ----

#[actix_rt::test]
async fn oversized_and_lying_msgpack_frames_are_answered_or_closed() {
    let _heavy = HEAVY.lock().await;
    let p = Project::new();
    let outside = seed(&p);
    let limits = WireLimits { max_message_bytes: 16 << 10, max_chunk_bytes: 64 << 10 };
    let b = p.start(|c| c.limits = limits).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::with_conn("c1", connect_with(b.local_addr, token("c1"), limits).await.unwrap());
    let rss0 = rss_bytes();
    let sampler = RssSampler::start();

    let mut ws = raw_ws(b.local_addr, token("c3")).await;
    // A control message over max_message_bytes (but within what the
    // websocket layer takes): TooLarge, the session goes on.
    let big =
        Frame::control(1, ClientMsg::Deletes((0..2000).map(|i| RelPath::new(format!("p/{i:08}")).unwrap()).collect()));
    let big = big.encode().unwrap();
    assert!(big.len() > 16 << 10 && big.len() < 64 << 10);
    ws.send(Message::Binary(big)).await.unwrap();
    match answer(&mut ws).await.1 {
        ServerMsg::Error { code: ErrorCode::TooLarge, message } => assert!(message.contains("limit"), "{message}"),
        other => panic!("{other:?}"),
    }
    // MessagePack announcing huge lengths with a few bytes behind them.
    let env = |body: &[u8]| -> Vec<u8> {
        // tag 0, {"id": 7, "body": <body>}
        let mut v = vec![0u8, 0x82, 0xa2, b'i', b'd', 0x07, 0xa4, b'b', b'o', b'd', b'y'];
        v.extend_from_slice(body);
        v
    };
    let lies: Vec<(&str, Vec<u8>)> = vec![
        ("array32 of 4G paths", [&[0x81, 0xa8][..], b"HeldList", &[0xdd, 0xff, 0xff, 0xff, 0xff, 0xa1, b'x']].concat()),
        ("str32 of 4 GiB", [&[0x81, 0xa7][..], b"Deletes", &[0x91, 0xdb, 0xff, 0xff, 0xff, 0xff, b'a', b'b']].concat()),
        ("bin32 of 4 GiB", [&[0x81, 0xa7][..], b"Deletes", &[0x91, 0xc6, 0xff, 0xff, 0xff, 0xff, b'a']].concat()),
        ("map32 of 4G entries", [&[0x81, 0xa5][..], b"Hello", &[0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'x']].concat()),
        ("array16 of 65535 paths", [&[0x81, 0xa7][..], b"Deletes", &[0xdc, 0xff, 0xff]].concat()),
        ("deep nesting", [&[0x81, 0xa8][..], b"HeldList", &[0x91; 15000]].concat()),
        ("ext32 of 4 GiB", [&[0x81, 0xa7][..], b"Deletes", &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]].concat()),
    ];
    for (what, body) in lies {
        let frame = env(&body);
        assert!(frame.len() < 16 << 10, "{what}");
        ws.send(Message::Binary(frame.into())).await.unwrap();
        match answer(&mut ws).await {
            (7, ServerMsg::Error { code: ErrorCode::BadRequest, message }) => {
                assert!(message.contains("request 7"), "{what}: {message}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // The session still works on this connection.
    ws.send(Message::Binary(Frame::control(8, ClientMsg::Ping { sent_ms: 5 }).encode().unwrap())).await.unwrap();
    assert!(matches!(answer(&mut ws).await, (8, ServerMsg::Pong { sent_ms: 5 })));
    good_round(&p, &mut c1, "during").await;

    // A websocket message over the frame limit: the connection is closed
    // (the websocket layer refuses it from its header, before buffering).
    ws.send(Message::Binary(vec![0u8; 8 << 20].into())).await.ok();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed");
    let peak = sampler.stop();
    let growth = peak.saturating_sub(rss0);
    eprintln!("RSS {} MiB -> peak {} MiB", rss0 >> 20, peak >> 20);
    assert!(growth < 64 << 20, "RSS grew by {} MiB", growth >> 20);
    let s = wait_for(&b, ROUND, "c3's session to end", |s| s.sessions.len() == 1).await;
    let ended = s.ended.iter().find(|e| e.client == "c3").expect("c3's end is recorded");
    assert!(
        matches!(&ended.exit, cs_supervision::ExitStatus::Failure(r) if r.contains("exceeds the limit")),
        "{ended:?}"
    );

    good_round(&p, &mut c1, "after").await;
    let mut c3 = TestClient::with_conn("c3", connect_with(b.local_addr, token("c3"), limits).await.unwrap());
    good_round(&p, &mut c3, "after").await;
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
}

// ---- 7 ----

#[actix_rt::test]
async fn silent_connections_are_dropped_after_their_timeouts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Project::new();
    let outside = seed(&p);
    let hello_timeout = Duration::from_millis(700);
    let idle_timeout = Duration::from_millis(1500);
    let b = p
        .start(|c| {
            c.hello_timeout = hello_timeout;
            c.idle_timeout = idle_timeout;
        })
        .await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let started = Instant::now();

    // TCP only; TCP and half an HTTP request; a complete upgrade, then nothing.
    let mut silent = tokio::net::TcpStream::connect(b.local_addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(b.local_addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut mute = TestClient::with_conn("c2", connect(b.local_addr, token("c2")).await.unwrap());

    // Meanwhile a good client connects and rounds.
    let mut c1 = TestClient::new(b.local_addr, "c1").await;
    good_round(&p, &mut c1, "during").await;

    for (what, s) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(hello_timeout * 4, s.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{what}: dropped: {r:?}");
        assert!(started.elapsed() >= hello_timeout.mul_f32(0.9), "{what}: not before the timeout");
    }
    let s = wait_for(&b, ROUND, "two handshake timeouts", |s| s.refused.get("timeout") == Some(&2)).await;
    assert_eq!(s.accepted, 2, "c1 and c2 only");

    assert!(mute.closed_within(idle_timeout * 4).await, "the mute client was dropped");
    assert!(started.elapsed() >= idle_timeout.mul_f32(0.9));
    let s = wait_for(&b, ROUND, "c2's session to end", |s| s.sessions.iter().all(|x| x.client != "c2")).await;
    let ended = s.ended.iter().find(|e| e.client == "c2").expect("c2's end is recorded");
    assert!(matches!(&ended.exit, cs_supervision::ExitStatus::Failure(r) if r.contains("idle")), "{ended:?}");

    let mut c4 = TestClient::new(b.local_addr, "c4").await;
    good_round(&p, &mut c4, "after").await;
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
}

// ---- 8 ----

#[actix_rt::test]
async fn a_flood_of_200_connections_is_bounded_and_recovers() {
    let _heavy = HEAVY.lock().await;
    const FLOOD: usize = 200;
    const MAX: usize = 8;
    let p = Project::with_extra_clients(FLOOD);
    let outside = seed(&p);
    let b = p.start(|c| c.max_connections = MAX).await;
    let before = frozen(&p);
    let outside_before = listing(&outside);
    let mut c1 = TestClient::new(b.local_addr, "c1").await;

    // Watch the bound while the flood lasts.
    let watching = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let b = b.clone();
        let watching = watching.clone();
        actix_rt::spawn(async move {
            let mut max = 0;
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(state(&b).await.sessions.len());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            max
        })
    };

    enum Outcome {
        Session(Box<cs_wire::ClientConn>),
        Busy(String),
        Http(u16),
        Other(String),
    }
    let attempts = (0..FLOOD).map(|i| {
        let addr = b.local_addr;
        async move {
            match connect(addr, &extra_token(i)).await {
                Err(WireError::Rejected { status }) => Outcome::Http(status),
                Err(e) => Outcome::Other(e.to_string()),
                Ok(mut conn) => match tokio::time::timeout(Duration::from_secs(3), conn.recv()).await {
                    Err(_) => Outcome::Session(Box::new(conn)),
                    Ok(Ok(Some(Frame::Control(env)))) => match env.body {
                        ServerMsg::Error { code: ErrorCode::Busy, message } => Outcome::Busy(message),
                        other => Outcome::Other(format!("{other:?}")),
                    },
                    Ok(other) => Outcome::Other(format!("{other:?}")),
                },
            }
        }
    });
    let (outcomes, ()) = tokio::join!(futures_util::future::join_all(attempts), good_round(&p, &mut c1, "during"));
    let mut sessions = Vec::new();
    let (mut busy, mut http, mut other) = (0, 0, Vec::new());
    for o in outcomes {
        match o {
            Outcome::Session(c) => sessions.push(c),
            Outcome::Busy(m) => {
                assert!(m.contains("max_connections"), "{m}");
                busy += 1;
            }
            Outcome::Http(503) => http += 1,
            Outcome::Http(s) => other.push(format!("HTTP {s}")),
            Outcome::Other(e) => other.push(e),
        }
    }
    eprintln!("flood: {} sessions, {busy} busy, {http} HTTP 503, other {other:?}", sessions.len());
    assert!(other.is_empty(), "every refusal is clear: {other:?}");
    assert_eq!(sessions.len(), MAX - 1, "the bound is filled, not exceeded");
    assert_eq!(sessions.len() + busy + http, FLOOD);
    let s = state(&b).await;
    assert_eq!(s.sessions.len(), MAX);
    assert_eq!(s.refused.get("busy"), Some(&((busy + http) as u64)), "{:?}", s.refused);

    // The good client still rounds with the bound full.
    good_round(&p, &mut c1, "full").await;

    // The flood leaves; new connections are accepted again.
    for c in sessions {
        drop(c);
    }
    wait_for(&b, ROUND, "the flood's sessions to end", |s| s.sessions.len() == 1).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let max_seen = watcher.await.unwrap();
    assert!(max_seen <= MAX, "{max_seen} sessions at once (max_connections {MAX})");
    let mut back = Vec::new();
    for i in 0..MAX - 1 {
        let name = format!("x{}", FLOOD - 1 - i);
        back.push(TestClient::with_conn(&name, connect(b.local_addr, &extra_token(FLOOD - 1 - i)).await.unwrap()));
    }
    for c in back.iter_mut() {
        assert!(matches!(c.request(ClientMsg::Ping { sent_ms: 1 }).await.unwrap(), ServerMsg::Pong { sent_ms: 1 }));
    }
    good_round(&p, &mut back[0], "back").await;
    assert_eq!(state(&b).await.sessions.len(), MAX);
    assert_eq!(frozen(&p), before);
    assert_eq!(listing(&outside), outside_before);
}
