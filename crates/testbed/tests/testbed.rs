//! The testbed's own guarantees: sshd accepts its key and serves sftp, sshfs mounts and
//! unmounts, the proxy's round trip is twice its delay and it pipelines, `cut_all` cuts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use cs_testbed::{real_tools_available, sshfs_mount, DelayProxy, Sshd};

/// An echo server on 127.0.0.1 (one thread per connection, until the process ends).
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

fn mounted(p: &Path) -> bool {
    let p = std::fs::canonicalize(p).unwrap();
    cs_union::is_mounted(&p).unwrap()
}

#[test]
fn proxy_round_trip_is_twice_the_delay() {
    let delay = Duration::from_millis(50);
    let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), echo_server(), delay).unwrap();
    let mut s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let mut rtts = Vec::new();
    for i in 0..7u8 {
        let t = Instant::now();
        s.write_all(&[i]).unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i);
        rtts.push(t.elapsed());
    }
    for rtt in &rtts {
        assert!(*rtt >= 2 * delay, "rtt {rtt:?} below 2 × {delay:?}");
    }
    // The median (robust to a scheduling hiccup on a loaded machine) is 2 × delay + a little.
    let mut sorted = rtts.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    assert!(median < 2 * delay + Duration::from_millis(25), "median rtt {median:?} far above 2 × {delay:?}: {rtts:?}");
}

#[test]
fn proxy_pipelines_instead_of_serialising() {
    let delay = Duration::from_millis(50);
    let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), echo_server(), delay).unwrap();
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();

    // 20 one-byte messages, 10 ms apart: each must come back 2 × delay after it was sent, not
    // queued behind the previous ones' delays.
    let n = 20usize;
    let start = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut sent = Vec::new();
        for i in 0..n {
            std::thread::sleep(
                (start + Duration::from_millis(10 * i as u64)).saturating_duration_since(Instant::now()),
            );
            sent.push(start.elapsed());
            w.write_all(&[i as u8]).unwrap();
        }
        (w, sent)
    });
    let mut r = s;
    let mut back = Vec::new();
    for _ in 0..n {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        back.push((b[0] as usize, start.elapsed()));
    }
    let (mut w, sent) = sender.join().unwrap();
    let mut rtts: Vec<Duration> = back.iter().map(|&(i, at)| at - sent[i]).collect();
    for (i, rtt) in rtts.iter().enumerate() {
        assert!(*rtt >= 2 * delay, "message {i}: rtt {rtt:?} below 2 × {delay:?}");
    }
    // Serialised, message i would come back after ≥ (i + 1) × delay; pipelined, each takes
    // 2 × delay: the last one and the median stay close to that.
    let last = *rtts.last().unwrap();
    assert!(last < 2 * delay + Duration::from_millis(100), "last message: rtt {last:?}: {rtts:?}");
    rtts.sort();
    let median = rtts[n / 2];
    assert!(median < 2 * delay + Duration::from_millis(25), "median rtt {median:?}: {rtts:?}");

    // Bulk: 8 MiB round trip in far less than one delay per chunk.
    let total = 8 << 20;
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let t = Instant::now();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            w.write_all(&data).unwrap();
            w
        })
    };
    let mut got = vec![0u8; total];
    r.read_exact(&mut got).unwrap();
    let elapsed = t.elapsed();
    writer.join().unwrap();
    assert!(got == data, "data corrupted through the proxy");
    // 8 MiB is at least 128 chunks of 64 KiB: serialised, that would take > 128 × 100 ms.
    assert!(elapsed < Duration::from_secs(3), "8 MiB took {elapsed:?}");
}

#[test]
fn proxy_cut_all_closes_connections() {
    let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), echo_server(), Duration::from_millis(5)).unwrap();
    let mut a = TcpStream::connect(proxy.addr()).unwrap();
    a.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    a.read_exact(&mut b).unwrap();
    proxy.cut_all();
    a.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    match a.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection not cut: {other:?}"),
    }
    // New connections still work.
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(b"y").unwrap();
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"y");
}

#[test]
fn sshd_serves_sshfs_directly_and_through_the_proxy() {
    if !real_tools_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (keys, home, mnt) = (t.path().join("keys"), t.path().join("home"), t.path().join("mnt"));
    for d in [&keys, &home, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(home.join("hello"), b"from P\n").unwrap();
    let sshd = Sshd::start(&keys).unwrap();

    // ssh itself works with ssh_args().
    let out = std::process::Command::new("ssh")
        .args(sshd.ssh_args())
        .arg(format!("{}@127.0.0.1", cs_testbed::current_user()))
        .arg("echo ok")
        .output()
        .unwrap();
    assert!(out.status.success(), "ssh failed: {} {}", String::from_utf8_lossy(&out.stderr), sshd.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    {
        let m = sshfs_mount(&home, sshd.port(), sshd.identity(), &mnt, &[]).unwrap();
        assert!(m.pid().is_some());
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from P\n");
        std::fs::write(mnt.join("from-c"), b"from C\n").unwrap();
        assert_eq!(std::fs::read(home.join("from-c")).unwrap(), b"from C\n");
    }
    assert!(!mounted(&mnt), "SshfsMount's Drop left the mount");

    let proxy = DelayProxy::start("127.0.0.1:0".parse().unwrap(), sshd.addr(), Duration::from_millis(5)).unwrap();
    let m = sshfs_mount(&home, proxy.port(), sshd.identity(), &mnt, &["reconnect".into()]).unwrap();
    let t0 = Instant::now();
    std::fs::read_dir(&mnt).unwrap().count();
    assert!(t0.elapsed() >= Duration::from_millis(10), "a listing through a 10 ms RTT link took {:?}", t0.elapsed());
    assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from P\n");
    m.unmount().unwrap();
    assert!(!mounted(&mnt));
}

#[test]
fn killed_sshfs_leaves_no_mount_after_drop() {
    if !real_tools_available() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (keys, home, mnt) = (t.path().join("keys"), t.path().join("home"), t.path().join("mnt"));
    for d in [&keys, &home, &mnt] {
        std::fs::create_dir_all(d).unwrap();
    }
    let sshd = Sshd::start(&keys).unwrap();
    let m = sshfs_mount(&home, sshd.port(), sshd.identity(), &mnt, &[]).unwrap();
    // SAFETY: kill(2) of the sshfs child we started.
    unsafe { libc::kill(m.pid().unwrap() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(100));
    let e = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    drop(m);
    assert!(!mounted(&mnt));
}
