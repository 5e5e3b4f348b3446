//! Follow (issue 12: project changes reach the compute side within about a
//! second), against the real broker over a real websocket: a client whose
//! hello asked `follow` gets `ProjectChanged` after a change in the home,
//! once per change, debounced; never for its own round's writes (the loop
//! hazard: they would start a round that writes, forever), nor for
//! excluded or local-only paths; another client's round writes are its
//! news; a client that does not follow gets nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use cs_broker::{BrokerHandle, SessionState};

const ROUND: Duration = Duration::from_secs(60);
/// A push that is due comes within this (debounce cap 1 s, polls of 250 ms).
const PUSH: Duration = Duration::from_secs(3);
/// How long the absence of a push is watched: several polls and the cap.
const NONE: Duration = Duration::from_millis(1500);

async fn session(b: &BrokerHandle, client: &str) -> SessionState {
    let s = b.observe().await.expect("broker answers");
    s.sessions.into_iter().find(|s| s.client == client).expect("session")
}

fn put(p: &Project, rel: &str, data: &[u8]) {
    let path = p.home.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
}

#[actix_rt::test]
async fn a_follower_is_told_of_project_changes_but_never_of_its_own_writes_nor_of_unsynced_paths() {
    let p = Project::new();
    put(&p, "seed", b"seed");
    let b = p.start(|_| {}).await;
    let mut f = TestClient::new(b.local_addr, "c1").await;
    f.follow = true;
    let mut other = TestClient::new(b.local_addr, "c2").await;
    other.follow = true;
    let mut quiet = TestClient::new(b.local_addr, "c3").await;
    let hello = f.round_within(ROUND).await.hello.expect("hello");
    assert!(hello.follow, "the broker says it pushes");
    other.round_within(ROUND).await;
    quiet.round_within(ROUND).await;
    assert_eq!(f.wait_push(NONE).await, None, "nothing changed since its round");

    // A write on the project: pushed after the journal was quiet a moment.
    let t = Instant::now();
    put(&p, "from-p.txt", b"written on the project");
    assert_eq!(f.wait_push(PUSH).await, Some(1));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_millis(1500), "pushed after {took:?}");
    assert_eq!(f.wait_push(NONE).await, None, "once per change");
    assert_eq!(other.wait_push(PUSH).await, Some(1), "every follower");

    // The follower's round carries it and writes its own file: no push to
    // it for those writes, during the round or after.
    f.write("from-c1.txt", b"written on c1");
    f.round_within(ROUND).await;
    assert!(p.home.join("from-c1.txt").exists());
    assert_eq!(f.pushes, Vec::<u64>::new(), "nothing during its round");
    assert_eq!(f.wait_push(NONE).await, None, "its own round's writes are not news to it");
    // ...but they are to the other follower (what it was told of before is not told again).
    assert_eq!(other.wait_push(PUSH).await, Some(1), "c1's write");

    // Paths never synced: the journal never has them, no push.
    for rel in [".cache/x", "scratch/y", ".local/z", ".cs-actor/w", ".csa-tmp-9"] {
        put(&p, rel, b"never synced");
    }
    assert_eq!(f.wait_push(NONE).await, None, "local-only and excluded paths");
    assert_eq!(other.wait_push(Duration::from_millis(100)).await, None);

    // A change while the follower's round is open: no push during the
    // round, nor after it: c2's checks meanwhile recorded it in the
    // journal, so f's step 4 cursor covers it.
    f.hello().await.expect("hello");
    put(&p, "during-the-round.txt", b"x");
    tokio::time::sleep(NONE).await;
    f.step1().await.expect("step 1");
    f.step2().await.expect("step 2");
    f.step3().await.expect("step 3");
    let (cursor, _) = f.step4().await.expect("step 4");
    f.step5(cursor).await.expect("step 5");
    assert_eq!(f.pushes, Vec::<u64>::new(), "nothing during its round");
    assert_eq!(f.wait_push(NONE).await, None, "nor after it: its cursor covers the change");
    assert_eq!(other.wait_push(PUSH).await, Some(1), "the other follower is told");

    // A deletion is news.
    std::fs::remove_file(p.home.join("seed")).unwrap();
    assert_eq!(f.wait_push(PUSH).await, Some(1), "a deletion");

    // The client that does not follow got nothing at all.
    assert_eq!(quiet.wait_push(Duration::from_millis(300)).await, None);
    let (fs, qs) = (session(&b, "c1").await, session(&b, "c3").await);
    assert!(fs.follow.asked && !qs.follow.asked);
    assert_eq!((fs.follow.pushes, qs.follow.pushes), (2, 0));
    assert!(fs.follow.last_push_unix_ms.is_some());
    b.shutdown().await.expect("broker stops");
}

/// A burst of writes is one push; a file written without pause still gets
/// one about every second, not one per write nor none.
#[actix_rt::test]
async fn a_burst_is_one_push_and_a_file_that_keeps_changing_one_a_second() {
    let p = Project::new();
    let b = p.start(|_| {}).await;
    let mut f = TestClient::new(b.local_addr, "c1").await;
    f.follow = true;
    f.round_within(ROUND).await;
    for i in 0..50 {
        put(&p, &format!("burst/{i}"), b"x");
    }
    assert_eq!(f.wait_push(PUSH).await, Some(51), "the directory and its 50 files, at once");
    assert_eq!(f.wait_push(NONE).await, None);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), p.home.join("log"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                std::fs::write(&path, n.to_string()).unwrap();
                // Well under the debounce's 100 ms of quiet: never quiet, so the cap decides.
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    let t = Instant::now();
    let mut pushes = 0;
    while t.elapsed() < Duration::from_secs(4) {
        if f.wait_push(Duration::from_millis(200)).await.is_some() {
            pushes += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!((2..=6).contains(&pushes), "{pushes} pushes in 4 s of writes every 30 ms");
    b.shutdown().await.expect("broker stops");
}
