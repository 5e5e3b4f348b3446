//! A session that ends in the middle of a tar stream must not leave its
//! blocking engine call behind: the call has to return promptly, giving
//! back the client's lock and its tar slot, so that the same client's next
//! connection is served at once (and everybody else all along).
//!
//! Each test runs its own actix system on a thread of its own and fails
//! (instead of hanging) when that does not finish in time: a stuck engine
//! call would otherwise also hang the runtime's shutdown.

mod common;

use std::time::Duration;

use common::{noise, Project, TestClient};
use cs_broker::{BrokerHandle, BrokerState, RoundStep};
use cs_wire::{ClientMsg, Frame};

/// Far more than what these steps need, far less than the idle timeout
/// (which would end a stuck session and hide the bug).
const QUICK: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(600);

/// Runs `body` in a fresh actix system on its own thread; fails if the
/// whole (the system's shutdown included) takes more than `limit`.
fn bounded<F: std::future::Future<Output = ()>>(limit: Duration, body: impl FnOnce() -> F + Send + 'static) {
    bounded_with(limit, move || actix_rt::System::new().block_on(body()))
}

fn bounded_with(limit: Duration, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("hung for more than {limit:?}: an engine call outlived its session?"),
    }
}

/// A broker with one tar slot (so a stuck engine call would block everyone)
/// and the given idle timeout.
async fn one_tar_slot(p: &Project, idle: Duration) -> BrokerHandle {
    p.start(|c| {
        c.max_concurrent_tar = 1;
        c.idle_timeout = idle;
    })
    .await
}

async fn state(b: &BrokerHandle) -> BrokerState {
    b.observe().await.expect("broker answers")
}

async fn wait_for(b: &BrokerHandle, what: &str, cond: impl Fn(&BrokerState) -> bool) -> BrokerState {
    let deadline = tokio::time::Instant::now() + QUICK;
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

async fn quick_round(c: &mut TestClient, what: &str) {
    match tokio::time::timeout(QUICK, c.round()).await {
        Err(_) => panic!("{what}: {}'s round did not complete within {QUICK:?}", c.id),
        Ok(Err(e)) => panic!("{what}: {}'s round failed: {e:?}", c.id),
        Ok(Ok(_)) => {}
    }
}

/// c1 opens its step-3 stream, sends part of it, and stops there (the
/// broker's step-3 reader waits for more, on a blocking thread).
async fn c1_stalled_in_step3(b: &BrokerHandle, seed: u64) -> TestClient {
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write(&format!("big{seed}.bin"), &noise(4 << 20, seed));
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    let tar = c.pack_to_vec().await;
    c.send(ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    for part in tar[..256 << 10].chunks(64 << 10) {
        c.conn.send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(part) }).await.unwrap();
    }
    wait_for(b, "c1 to be in step 3", |s| {
        s.sessions.iter().any(|x| x.client == "c1" && x.step == RoundStep::WritesIn && x.busy)
    })
    .await;
    c
}

/// c1 asks for a step-4 stream far larger than the sockets buffer and does
/// not read it (the broker's packer blocks on the full channel).
async fn c1_stalled_in_step4(p: &Project, b: &BrokerHandle, seed: u64) -> TestClient {
    let mut c = TestClient::new(b.local_addr, "c1").await;
    let name = format!("data{seed}.bin");
    c.write(&name, b"small");
    quick_round(&mut c, "c1's first round").await;
    std::fs::write(p.home.join(&name), noise(24 << 20, seed)).unwrap();
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    c.step3().await.unwrap();
    c.send(ClientMsg::AskWrites { stream: 7 }).await.unwrap();
    wait_for(b, "c1 to be stuck in step 4", |s| {
        s.sessions
            .iter()
            .any(|x| x.client == "c1" && x.step == RoundStep::WritesOut && x.busy && x.heartbeat_silent_ms > 300)
    })
    .await;
    c
}

/// c1 opens its step-3 stream, sends one chunk and vanishes at once (as a
/// compute server killed there): the session may end before the broker's
/// step-3 reader has even started, or while it works on that chunk.
async fn c1_vanishes_while_sending_step3(b: &BrokerHandle, seed: u64) {
    let mut c = TestClient::new(b.local_addr, "c1").await;
    c.write(&format!("huge{seed}.bin"), &noise(1 << 20, seed));
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    let tar = c.pack_to_vec().await;
    c.send(ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    c.conn.send(&Frame::Chunk { stream: 1, data: bytes::Bytes::copy_from_slice(&tar[..64 << 10]) }).await.unwrap();
    drop(c);
}

/// c1 reads part of a large step-4 stream and vanishes: the broker's
/// packer is still at work when the session ends.
async fn c1_vanishes_while_reading_step4(p: &Project, b: &BrokerHandle, seed: u64) {
    let mut c = TestClient::new(b.local_addr, "c1").await;
    let name = format!("data{seed}.bin");
    c.write(&name, b"small");
    quick_round(&mut c, "c1's first round").await;
    std::fs::write(p.home.join(&name), noise(40 << 20, seed)).unwrap();
    c.hello().await.unwrap();
    c.step1().await.unwrap();
    c.step2().await.unwrap();
    c.step3().await.unwrap();
    c.send(ClientMsg::AskWrites { stream: 7 }).await.unwrap();
    let mut got = 0usize;
    while got < 8 << 20 {
        match tokio::time::timeout(QUICK, c.conn.recv()).await {
            Ok(Ok(Some(Frame::Chunk { data, .. }))) => got += data.len(),
            other => panic!("expected step 4's chunks, got {other:?}"),
        }
    }
    drop(c);
}

/// After c1's session ended: the slot is free, c1's new connection rounds
/// at once, c2 too.
async fn everybody_served(p: &Project, b: &BrokerHandle, other: &mut TestClient, what: &str) {
    let mut again = TestClient::new(b.local_addr, "c1").await;
    quick_round(&mut again, what).await;
    other.write("other.txt", what.as_bytes());
    quick_round(other, what).await;
    assert_eq!(std::fs::read(p.home.join("other.txt")).unwrap(), what.as_bytes());
    let s = wait_for(b, "no tar slot in use", |s| s.tar_in_use == 0).await;
    assert!(s.sessions.iter().all(|x| !x.busy), "{s:?}");
}

#[test]
fn a_client_vanishing_mid_step3_stream_releases_its_engine_call() {
    bounded(Duration::from_secs(90), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        for seed in 1..=3 {
            let c = c1_stalled_in_step3(&b, seed).await;
            quick_round(&mut other, "c2 while c1 stalls in step 3").await;
            // The compute server dies: its socket is closed under the stream.
            drop(c);
            everybody_served(&p, &b, &mut other, &format!("after c1 vanished in step 3 ({seed})")).await;
            assert!(!p.home.join(format!("big{seed}.bin")).exists(), "nothing of a cut stream is in place");
        }
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_client_vanishing_right_after_its_first_step3_chunk_releases_its_engine_call() {
    bounded(Duration::from_secs(120), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        for seed in 1..=12 {
            c1_vanishes_while_sending_step3(&b, seed).await;
            everybody_served(&p, &b, &mut other, &format!("after c1 vanished sending step 3 ({seed})")).await;
            assert!(!p.home.join(format!("huge{seed}.bin")).exists(), "nothing of a cut stream is in place");
        }
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_client_vanishing_while_reading_its_step4_stream_releases_its_engine_call() {
    bounded(Duration::from_secs(150), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        for seed in 1..=3 {
            c1_vanishes_while_reading_step4(&p, &b, seed).await;
            everybody_served(&p, &b, &mut other, &format!("after c1 vanished reading step 4 ({seed})")).await;
        }
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_client_replaced_mid_step3_stream_releases_its_engine_call() {
    bounded(Duration::from_secs(90), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        // The compute server restarts, its old connection still open: the
        // new connection replaces the session in the middle of the stream.
        let old = c1_stalled_in_step3(&b, 1).await;
        everybody_served(&p, &b, &mut other, "after c1 was replaced in step 3").await;
        drop(old);
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_client_vanishing_mid_step4_stream_releases_its_engine_call() {
    bounded(Duration::from_secs(120), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        for seed in 1..=2 {
            let c = c1_stalled_in_step4(&p, &b, seed).await;
            quick_round(&mut other, "c2 while c1 does not read step 4").await;
            drop(c);
            everybody_served(&p, &b, &mut other, &format!("after c1 vanished in step 4 ({seed})")).await;
        }
        let _ = b.shutdown().await;
    });
}

#[test]
fn a_client_replaced_mid_step4_stream_releases_its_engine_call() {
    bounded(Duration::from_secs(90), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, IDLE).await;
        let mut other = TestClient::new(b.local_addr, "c2").await;
        let old = c1_stalled_in_step4(&p, &b, 1).await;
        everybody_served(&p, &b, &mut other, "after c1 was replaced in step 4").await;
        drop(old);
        let _ = b.shutdown().await;
    });
}

/// A session that goes silent in the middle of its stream is ended by the
/// idle timeout; its engine call ends with it.
#[test]
fn an_idle_timeout_mid_stream_releases_the_engine_call() {
    bounded(Duration::from_secs(90), || async {
        let p = Project::new();
        let b = one_tar_slot(&p, Duration::from_secs(1)).await;
        let mut c = c1_stalled_in_step3(&b, 1).await;
        assert!(c.closed_within(QUICK).await, "the silent client is dropped");
        let mut other = TestClient::new(b.local_addr, "c2").await;
        quick_round(&mut other, "c2 after c1's idle timeout").await;
        let mut again = TestClient::new(b.local_addr, "c1").await;
        quick_round(&mut again, "c1 after its idle timeout in step 3").await;
        let _ = b.shutdown().await;
    });
}

/// The broker's shutdown ends the sessions in the middle of their streams
/// and does not wait for ever for their engine calls.
#[test]
fn shutdown_mid_streams_is_not_blocked_by_engine_calls() {
    bounded(Duration::from_secs(60), || async {
        let p = Project::new();
        let b = p
            .start(|c| {
                c.max_concurrent_tar = 2;
                c.idle_timeout = IDLE;
            })
            .await;
        let _c1 = c1_stalled_in_step3(&b, 1).await;
        let t0 = std::time::Instant::now();
        tokio::time::timeout(QUICK, b.shutdown()).await.expect("shutdown within 10 s").expect("broker answers");
        assert!(t0.elapsed() < QUICK);
    });
}
