//! The shaper does what it is asked: round trip = up + down delay, pipelined; throughput =
//! the cap, shared by the link's connections; cuts now and after exactly N bytes.
//!
//! Tolerances allow for a shared, loaded 2-core machine: a delay is never shorter than asked
//! (it can only be late), and is late by at most a few milliseconds at the median.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use cs_shaper::{CutStyle, LinkConfig, Shaper};

/// An echo server on 127.0.0.1 (a thread per connection, until the test process ends).
fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    addr
}

/// A server that reads everything until end of stream (or an error) and sends back the byte
/// count as 8 bytes; or, if the client's first byte is `b'S'`, sends `n` bytes (`n` in the
/// next 8 bytes) and closes.
fn sink_source_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            std::thread::spawn(move || {
                let mut first = [0u8; 1];
                if s.read_exact(&mut first).is_err() {
                    return;
                }
                if first[0] == b'S' {
                    let mut n = [0u8; 8];
                    s.read_exact(&mut n).unwrap();
                    let mut left = u64::from_le_bytes(n) as usize;
                    let buf = vec![7u8; 64 * 1024];
                    while left > 0 {
                        let k = left.min(buf.len());
                        if s.write_all(&buf[..k]).is_err() {
                            return;
                        }
                        left -= k;
                    }
                    let _ = s.shutdown(Shutdown::Write);
                } else {
                    let mut total = 1u64;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => total += n as u64,
                        }
                    }
                    let _ = s.write_all(&total.to_le_bytes());
                }
            });
        }
    });
    addr
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ping(s: &mut TcpStream, b: u8) -> Duration {
    let t = Instant::now();
    s.write_all(&[b]).unwrap();
    let mut r = [0u8; 1];
    s.read_exact(&mut r).unwrap();
    assert_eq!(r[0], b);
    t.elapsed()
}

#[test]
fn round_trip_is_the_sum_of_the_one_way_delays() {
    let up = Duration::from_millis(10);
    let down = Duration::from_millis(25);
    let cfg = LinkConfig { up_delay: up, down_delay: down, bandwidth: None };
    let (shaper, addr) = Shaper::start_route(cfg, echo_server()).unwrap();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let rtts: Vec<Duration> = (0..15u8).map(|i| ping(&mut s, i)).collect();
    let want = up + down;
    for r in &rtts {
        assert!(*r >= want, "round trip {r:?} shorter than {want:?}: {rtts:?}");
    }
    let m = median(rtts.clone());
    assert!(m <= want + Duration::from_millis(5), "median round trip {m:?}, asked {want:?}: {rtts:?}");

    // The shape can change on a live link.
    shaper.set_config(LinkConfig::rtt(Duration::from_millis(4)));
    let _ = ping(&mut s, 99); // may still carry the old delay for bytes in flight
    let rtts: Vec<Duration> = (0..15u8).map(|i| ping(&mut s, i)).collect();
    let m = median(rtts.clone());
    assert!(m >= Duration::from_millis(4) && m <= Duration::from_millis(9), "after set_config: {rtts:?}");

    // The directions really are separate: a one-way stream arrives after the up delay alone.
    let st = shaper.stats();
    assert_eq!(st.routes.len(), 1);
    assert_eq!(st.routes[0].accepted, 1);
    assert_eq!((st.routes[0].bytes_up, st.routes[0].bytes_down), (31, 31), "{st:?}");
    assert_eq!(st.routes[0].bytes_down, 31);
}

#[test]
fn delay_is_pipelined_not_serialised() {
    // 40 one-byte messages 5 ms apart over a 60 ms round trip: each comes back 60 ms after it
    // was sent (a serial delay would take 40 × 60 ms).
    let rtt = Duration::from_millis(60);
    let (_shaper, addr) = Shaper::start_route(LinkConfig::rtt(rtt), echo_server()).unwrap();
    let s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let n = 40usize;
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for i in 0..n {
            std::thread::sleep((start + Duration::from_millis(5 * i as u64)).saturating_duration_since(Instant::now()));
            sent.push(start.elapsed());
            w.write_all(&[i as u8]).unwrap();
        }
        sent
    });
    let mut r = s;
    let mut back = Vec::new();
    for _ in 0..n {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        back.push((b[0] as usize, start.elapsed()));
    }
    let sent = sender.join().unwrap();
    let mut lateness = Vec::new();
    for (i, at) in back {
        let rt = at - sent[i];
        assert!(rt >= rtt, "message {i}: {rt:?} < {rtt:?}");
        lateness.push(rt - rtt);
    }
    let m = median(lateness.clone());
    assert!(m <= Duration::from_millis(5), "median lateness {m:?}: {lateness:?}");
    assert!(start.elapsed() < Duration::from_millis(5 * n as u64) + rtt + Duration::from_millis(150));
}

fn upload(addr: SocketAddr, bytes: usize) -> (Duration, u64) {
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    let buf = vec![1u8; 64 * 1024];
    s.write_all(b"U").unwrap();
    let mut left = bytes - 1;
    while left > 0 {
        let k = left.min(buf.len());
        s.write_all(&buf[..k]).unwrap();
        left -= k;
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut n = [0u8; 8];
    s.read_exact(&mut n).unwrap();
    (t.elapsed(), u64::from_le_bytes(n))
}

fn download(addr: SocketAddr, bytes: usize) -> (Duration, usize) {
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    s.write_all(b"S").unwrap();
    s.write_all(&(bytes as u64).to_le_bytes()).unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    (t.elapsed(), got)
}

fn within(d: Duration, want: Duration, tolerance: f64) -> bool {
    let (d, w) = (d.as_secs_f64(), want.as_secs_f64());
    d >= w * (1.0 - tolerance) && d <= w * (1.0 + tolerance)
}

#[test]
fn bandwidth_is_the_cap_each_way_and_shared_by_connections() {
    let rate = 4u64 << 20; // 4 MiB/s
    let delay = Duration::from_millis(10);
    let cfg = LinkConfig::rtt(2 * delay).with_bandwidth(rate);
    let (shaper, addr) = Shaper::start_route(cfg, sink_source_server()).unwrap();
    let size = 4usize << 20; // one second at the cap

    // Up: one second of transmission, one delay up, then the 8-byte count comes down.
    let (t, n) = upload(addr, size);
    assert_eq!(n, size as u64);
    let want = Duration::from_secs(1) + 2 * delay;
    assert!(within(t, want, 0.10), "upload of 4 MiB at 4 MiB/s took {t:?}, want {want:?} ± 10%");

    // Down.
    let (t, n) = download(addr, size);
    assert_eq!(n, size);
    assert!(within(t, want, 0.10), "download of 4 MiB at 4 MiB/s took {t:?}, want {want:?} ± 10%");

    // Two connections at once share the cap: 2 × 2 MiB take one second together.
    let start = Instant::now();
    let a = std::thread::spawn(move || upload(addr, size / 2));
    let b = std::thread::spawn(move || upload(addr, size / 2));
    let (_, na) = a.join().unwrap();
    let (_, nb) = b.join().unwrap();
    let both = start.elapsed();
    assert_eq!(na + nb, size as u64);
    assert!(within(both, want, 0.15), "2 × 2 MiB at 4 MiB/s took {both:?}, want {want:?} ± 15%");

    // Without the cap the same transfer is far faster than the cap allowed.
    shaper.set_config(LinkConfig::rtt(2 * delay));
    let (t, n) = upload(addr, size);
    assert_eq!(n, size as u64);
    assert!(t < Duration::from_millis(500), "uncapped upload of 4 MiB took {t:?}");

    let st = shaper.stats();
    assert_eq!(st.routes[0].bytes_up, 3 * size as u64 + 9);
}

#[test]
fn cut_all_closes_every_connection_and_new_ones_work() {
    let (shaper, addr) = Shaper::start_route(LinkConfig::rtt(Duration::from_millis(10)), echo_server()).unwrap();
    let mut a = TcpStream::connect(addr).unwrap();
    let mut b = TcpStream::connect(addr).unwrap();
    ping(&mut a, 1);
    ping(&mut b, 2);
    assert_eq!(shaper.stats().routes[0].open, 2);
    shaper.cut_all();
    assert_eq!(shaper.stats().routes[0].open, 0);
    assert_eq!(shaper.stats().cuts, 1);
    for s in [&mut a, &mut b] {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"x");
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("read {n} bytes from a cut connection"),
        }
    }
    let mut c = TcpStream::connect(addr).unwrap();
    ping(&mut c, 3);

    // Reset style: the peer sees a reset rather than an orderly end.
    shaper.set_cut_style(CutStyle::Reset);
    shaper.cut_all();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1];
    let r = c.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

#[test]
fn cut_after_lets_exactly_n_bytes_through_then_cuts() {
    let (shaper, addr) = Shaper::start_route(LinkConfig::rtt(Duration::from_millis(4)), sink_source_server()).unwrap();
    let budget = 100_000u64;
    shaper.cut_after(budget);
    // An upload of 1 MiB: the server receives exactly `budget` bytes, then the connection is
    // cut (its count never comes back).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let buf = vec![1u8; 1 << 20];
    let _ = s.write_all(b"U");
    let _ = s.write_all(&buf);
    let mut n = [0u8; 8];
    assert!(s.read_exact(&mut n).is_err(), "the connection was not cut");
    assert!(cs_wait(Duration::from_secs(5), || shaper.stats().cuts == 1));
    let st = shaper.stats();
    assert_eq!(st.routes[0].bytes_up, budget, "{st:?}");
    assert_eq!(shaper.budget(), None);

    // Afterwards the link is whole again.
    let (_, got) = download(addr, 300_000);
    assert_eq!(got, 300_000);

    // A budget counts both directions: a download is cut after the request (9 bytes up) and
    // budget − 9 bytes down.
    shaper.cut_after(50_000);
    let (_, got) = download(addr, 1 << 20);
    assert_eq!(got, 50_000 - 9);
    assert_eq!(shaper.stats().cuts, 2);

    // cut_after(0) is a cut now.
    let mut e = TcpStream::connect(addr).unwrap();
    e.write_all(b"U").unwrap();
    assert!(cs_wait(Duration::from_secs(2), || shaper.stats().routes[0].open == 1));
    shaper.cut_after(0);
    assert_eq!(shaper.stats().cuts, 3);
    e.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 8];
    assert!(matches!(e.read(&mut buf), Ok(0) | Err(_)));

    // disarm removes a budget that has not run out.
    shaper.cut_after(10);
    shaper.disarm();
    let (_, got) = download(addr, 1000);
    assert_eq!(got, 1000);
}

#[test]
fn routes_share_the_link_and_count_separately() {
    let shaper = Shaper::start(LinkConfig::rtt(Duration::from_millis(20))).unwrap();
    let a = shaper.route(echo_server()).unwrap();
    let b = shaper.route(echo_server()).unwrap();
    let mut sa = TcpStream::connect(a).unwrap();
    let mut sb = TcpStream::connect(b).unwrap();
    sa.set_nodelay(true).unwrap();
    sb.set_nodelay(true).unwrap();
    assert!(ping(&mut sa, 1) >= Duration::from_millis(20));
    assert!(ping(&mut sb, 2) >= Duration::from_millis(20));
    ping(&mut sb, 3);
    let st = shaper.stats();
    assert_eq!(st.route(a).unwrap().bytes_up, 1);
    assert_eq!(st.route(b).unwrap().bytes_down, 2);
    assert_eq!(st.total_bytes(), 6);
    // One cut cuts both routes.
    shaper.cut_all();
    assert_eq!(shaper.stats().routes.iter().map(|r| r.open).sum::<u64>(), 0);
}

fn cs_wait(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}
