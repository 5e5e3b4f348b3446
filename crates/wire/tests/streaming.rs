//! Tar-sized streams through ChunkWriter → websocket → ChunkReader between
//! blocking threads: integrity, bounded memory, and cut streams.

mod common;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use cs_wire::*;
use tokio::sync::oneshot;

const MIB: usize = 1 << 20;

#[derive(Default)]
struct InFlight {
    produced: AtomicU64,
    consumed: AtomicU64,
    peak: AtomicU64,
}

impl InFlight {
    fn note(&self) {
        let now = self.produced.load(Ordering::SeqCst).saturating_sub(self.consumed.load(Ordering::SeqCst));
        self.peak.fetch_max(now, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mib_arrive_byte_identical_with_bounded_memory() {
    const LEN: usize = 50 * MIB;
    let data = Arc::new(random_bytes(LEN, 0x5eed));
    let expected = blake3::hash(&data);
    let meter = Arc::new(InFlight::default());
    let (result_tx, result_rx) = oneshot::channel::<(u64, blake3::Hash)>();
    let result_tx = Arc::new(std::sync::Mutex::new(Some(result_tx)));

    let reader_meter = meter.clone();
    let (addr, _accepted) = spawn_server(WireLimits::default(), Duration::from_secs(5), move |_c, mut conn| {
        let meter = reader_meter.clone();
        let result_tx = result_tx.clone();
        async move {
            let Some(Frame::Control(Envelope { id, body: ClientMsg::SendWrites { stream } })) =
                conn.recv().await.unwrap()
            else {
                panic!("expected SendWrites")
            };
            let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
            // A slow consumer: it starts late, then takes 1 ms per 128 KiB.
            let reader = tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_millis(1000));
                let mut r = ChunkReader::new(rx);
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; 128 * 1024];
                let mut total = 0u64;
                loop {
                    let n = r.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    total += n as u64;
                    meter.consumed.fetch_add(n as u64, Ordering::SeqCst);
                    meter.note();
                    std::thread::sleep(Duration::from_millis(1));
                }
                (total, hasher.finalize())
            });
            assert_eq!(conn.recv_stream(stream, &tx).await.unwrap(), StreamEnd::Ok);
            let got = reader.await.unwrap();
            conn.send_msg(
                id,
                ServerMsg::WritesApplied { applied: 0, unchanged: 0, conflicts: vec![], refused: vec![] },
            )
            .await
            .unwrap();
            result_tx.lock().unwrap().take().unwrap().send(got).unwrap();
        }
    })
    .await;

    let mut conn = connect(&url(addr), TOKEN_A, None, WireLimits::default()).await.unwrap();
    conn.send_msg(1, ClientMsg::SendWrites { stream: 7 }).await.unwrap();
    let (tx, mut rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
    let max = conn.limits().max_chunk_bytes;
    let writer_meter = meter.clone();
    let writer = std::thread::spawn(move || {
        let mut w = ChunkWriter::new(tx, max);
        // Like a tar writer: 10 KiB blocks.
        for block in data.chunks(10 * 1024) {
            w.write_all(block).unwrap();
            writer_meter.produced.fetch_add(block.len() as u64, Ordering::SeqCst);
            writer_meter.note();
        }
        w.finish().unwrap();
    });
    assert_eq!(conn.send_stream(7, &mut rx).await.unwrap(), StreamEnd::Ok);
    writer.join().unwrap();
    let answer = conn.recv().await.unwrap().unwrap();
    assert!(matches!(answer, Frame::Control(Envelope { id: 1, body: ServerMsg::WritesApplied { .. } })));

    let (total, hash) = result_rx.await.unwrap();
    assert_eq!(total, LEN as u64);
    assert_eq!(hash, expected, "the stream arrived byte-identical");
    let peak = meter.peak.load(Ordering::SeqCst) as usize;
    eprintln!(
        "peak in flight: {:.1} MiB of {} MiB ({} chunks of 256 KiB)",
        peak as f64 / MIB as f64,
        LEN / MIB,
        peak / max
    );
    // Two channels of 8 chunks (4 MiB), the tasks' and websocket's buffers,
    // and the kernel's loopback socket buffers: far less than the stream.
    assert!(peak < 24 * MIB, "peak in flight {peak} bytes: memory is not bounded");
}

/// Server side of the cut-stream tests: reads stream 1 into a ChunkReader
/// and reports what the reader saw.
async fn cut_stream_server(
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<(std::io::Result<usize>, Result<StreamEnd, String>)>) {
    let (rep_tx, rep_rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr, _accepted) = spawn_server(WireLimits::default(), Duration::from_secs(5), move |_c, mut conn| {
        let rep_tx = rep_tx.clone();
        async move {
            let Some(Frame::Control(Envelope { body: ClientMsg::SendWrites { stream }, .. })) =
                conn.recv().await.unwrap()
            else {
                panic!()
            };
            let (tx, rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
            let reader = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                ChunkReader::new(rx).read_to_end(&mut out)
            });
            let end = conn.recv_stream(stream, &tx).await.map_err(|e| e.to_string());
            drop(tx);
            rep_tx.send((reader.await.unwrap(), end)).unwrap();
        }
    })
    .await;
    (addr, rep_rx)
}

#[tokio::test]
async fn a_writer_dropped_mid_stream_fails_the_reader() {
    let (addr, mut reports) = cut_stream_server().await;
    let mut conn = connect(&url(addr), TOKEN_A, None, WireLimits::default()).await.unwrap();
    conn.send_msg(1, ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    let (tx, mut rx) = stream_channel(DEFAULT_STREAM_CHANNEL);
    let writer = std::thread::spawn(move || {
        let mut w = ChunkWriter::new(tx, 256 * 1024);
        w.write_all(&random_bytes(MIB + 3, 1)).unwrap();
        // Dropped without finish(), e.g. the tar packer failed.
    });
    let end = conn.send_stream(1, &mut rx).await.unwrap();
    writer.join().unwrap();
    assert!(matches!(&end, StreamEnd::Abort(r) if r.contains("writer dropped")), "{end:?}");

    let (read, end) = reports.recv().await.unwrap();
    let e = read.expect_err("a cut stream must not read as complete");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(e.to_string().contains("writer dropped"), "{e}");
    assert!(matches!(end, Ok(StreamEnd::Abort(_))), "{end:?}");
}

#[tokio::test]
async fn a_connection_lost_mid_stream_fails_the_reader() {
    let (addr, mut reports) = cut_stream_server().await;
    let mut conn = connect(&url(addr), TOKEN_A, None, WireLimits::default()).await.unwrap();
    conn.send_msg(1, ClientMsg::SendWrites { stream: 1 }).await.unwrap();
    for i in 0..4 {
        let data = bytes::Bytes::from(random_bytes(100_000, i));
        conn.send(&Frame::Chunk { stream: 1, data }).await.unwrap();
    }
    drop(conn); // no end frame, no close handshake

    let (read, end) = reports.recv().await.unwrap();
    let e = read.expect_err("a cut stream must not read as complete");
    assert!(e.to_string().contains("cut"), "{e}");
    assert!(end.is_err(), "{end:?}");
}
