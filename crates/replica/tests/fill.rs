//! The fill service, really: a loop image, kernel overlayfs over a placeholder tree,
//! fanotify, and an unprivileged reader going through the merged view.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use cs_replica::ReplicaFs;

fn copy(p: &std::path::Path) -> CopySource {
    CopySource::new(p, Behaviour::Copy)
}

#[test]
fn every_way_of_reading_gets_the_projects_bytes_and_stat_asks_nothing() {
    if !root_or_skip("every_way_of_reading_gets_the_projects_bytes_and_stat_asks_nothing") {
        return;
    }
    // Read-ahead off: each file below is one never opened (or filled) before.
    let (bed, src) = Bed::full(make_project, copy, no_read_ahead);
    let (m, p) = (bed.merged.clone(), bed.project.clone());

    // stat of unfilled files: the snapshot's size and mtime, no fetch.
    for name in ["a.txt", "big/big.bin", "sub/deep/file.bin", "run.sh", "empty"] {
        let (got, want) = (fs::metadata(m.join(name)).unwrap(), fs::metadata(p.join(name)).unwrap());
        assert_eq!((got.len(), got.mtime(), got.mtime_nsec()), (want.len(), want.mtime(), want.mtime_nsec()), "{name}");
        assert_eq!(got.mode() & 0o7777, want.mode() & 0o7777, "{name}");
    }
    assert_eq!(src.calls(), 0, "stat must not fetch");

    // cat, of plain, empty, read-only, non-UTF-8 names, and through a symlink.
    for name in [OsStr::new("a.txt"), OsStr::new("empty"), OsStr::new("ro.txt"), OsStr::from_bytes(b"caf\xe9")] {
        assert_eq!(cat(&m.join(name)).unwrap(), fs::read(p.join(name)).unwrap(), "{name:?}");
    }
    assert_eq!(cat(&m.join("sub/link")).unwrap(), fs::read(p.join("a.txt")).unwrap());

    // Python's mmap of a file never opened (overlayfs's mmap path raises no read event).
    let py = "import mmap,sys\nf=open(sys.argv[1],'rb')\nm=mmap.mmap(f.fileno(),0,prot=mmap.PROT_READ)\nsys.stdout.buffer.write(m[:])";
    let o = as_nobody(&[
        OsStr::new("/usr/bin/python3"),
        OsStr::new("-c"),
        OsStr::new(py),
        m.join("sub/deep/file.bin").as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == fs::read(p.join("sub/deep/file.bin")).unwrap(), "mmap read other bytes");

    // cp (copy_file_range) of a file never opened, into a directory nobody may write.
    let out = bed.dir.join("cp-out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let o = as_nobody(&[OsStr::new("cp"), m.join("big/big.bin").as_os_str(), out.join("big.bin").as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        fs::read(out.join("big.bin")).unwrap() == fs::read(p.join("big/big.bin")).unwrap(),
        "cp copied other bytes"
    );

    // exec of a script never opened.
    let o = as_nobody(&[m.join("run.sh")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, b"script-ran\n");

    // A second open of each: no more fetches.
    let calls = src.calls();
    for name in ["a.txt", "big/big.bin", "sub/deep/file.bin", "run.sh", "empty"] {
        assert_eq!(cat(&m.join(name)).unwrap(), fs::read(p.join(name)).unwrap(), "{name}");
    }
    assert_eq!(src.calls(), calls, "a filled file must not be fetched again");
    let s = bed.settled();
    assert_eq!(s.denied, 0, "{s:?}");
    assert_eq!((s.in_flight, s.waiting), (0, 0), "{s:?}");
    eprintln!("stats: {s:?}");
}

#[test]
fn twenty_concurrent_readers_of_one_file_make_one_fetch() {
    if !root_or_skip("twenty_concurrent_readers_of_one_file_make_one_fetch") {
        return;
    }
    let slow = |p: &std::path::Path| CopySource { delay: Duration::from_millis(500), ..copy(p) };
    let (bed, src) = Bed::full(make_project, slow, no_read_ahead);
    let f = bed.merged.join("hot/hot.txt");
    let kids: Vec<_> = (0..20)
        .map(|_| {
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
                .arg(&f)
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let want = fs::read(bed.project.join("hot/hot.txt")).unwrap();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success());
        assert!(o.stdout == want, "a concurrent reader got other bytes");
    }
    assert_eq!(src.calls(), 1, "asked: {:?}", src.asked.lock().unwrap());
    assert_eq!(bed.settled().fills, 1);
}

/// A tree for read-ahead: the file opened is `proj/set/d01/f03`.
fn make_neighbourhood(p: &std::path::Path) {
    put(p, "far.txt", b"three levels up: never read ahead\n", 0o644);
    put(p, "proj/top.txt", b"two levels up\n", 0o644);
    put(p, "proj/other/o0", b"o0\n", 0o644);
    put(p, "proj/other/o1", b"o1\n", 0o644);
    put(p, "proj/set/index.txt", b"one level up\n", 0o644);
    for d in ["d00", "d01", "d02"] {
        for i in 0..10 {
            put(p, format!("proj/set/{d}/f{i:02}"), format!("{d} {i}\n").as_bytes(), 0o644);
        }
    }
    for i in 0..3 {
        put(p, format!("proj/set/d00/inner/g{i}"), format!("g{i}\n").as_bytes(), 0o644);
    }
    // Over the per-file cap, and a symlink: neither is read ahead.
    put(p, "proj/set/d01/huge.bin", &bytes(2 << 20, 1), 0o644);
    std::os::unix::fs::symlink("f00", p.join("proj/set/d01/link")).unwrap();
}

/// What a read-ahead from `proj/set/d01/f03` claims, in order: its directory, then one
/// level up (the siblings after d01 first, then before, breadth first), then two.
fn neighbourhood_order() -> Vec<String> {
    let mut v: Vec<String> = (0..10).filter(|i| *i != 3).map(|i| format!("proj/set/d01/f{i:02}")).collect();
    v.push("proj/set/index.txt".into());
    v.extend((0..10).map(|i| format!("proj/set/d02/f{i:02}")));
    v.extend((0..10).map(|i| format!("proj/set/d00/f{i:02}")));
    v.extend((0..3).map(|i| format!("proj/set/d00/inner/g{i}")));
    v.push("proj/top.txt".into());
    v.extend(["proj/other/o0".into(), "proj/other/o1".into()]);
    v
}

#[test]
fn one_open_fills_the_small_files_near_it_nearest_first_in_one_more_fetch() {
    if !root_or_skip("one_open_fills_the_small_files_near_it_nearest_first_in_one_more_fetch") {
        return;
    }
    let (bed, src) = Bed::full(make_neighbourhood, copy, |c| c);
    let t = Instant::now();
    assert_eq!(cat(&bed.merged.join("proj/set/d01/f03")).unwrap(), b"d01 3\n");
    eprintln!("first open with its read-ahead: {:?}", t.elapsed());
    let order = neighbourhood_order();
    for rel in &order {
        assert!(cat(&bed.merged.join(rel)).is_ok(), "{rel}");
    }
    // Two fetches sent together: the opened file alone (its open waits for nothing
    // else), and the files near it, nearest first; no more when they are read.
    let asked = src.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "asked: {asked:?}");
    let opened = cs_protocol::RelPath::new("proj/set/d01/f03").unwrap();
    assert!(asked.iter().any(|a| a == &vec![opened.clone()]), "the opened file alone: {asked:?}");
    let ahead: Vec<String> =
        asked.iter().find(|a| a.len() > 1).expect("a read-ahead fetch").iter().map(|p| p.to_string()).collect();
    assert_eq!(ahead, order, "read ahead, in this order");
    let s = bed.settled();
    assert_eq!((s.fills, s.read_ahead_fills), (1 + order.len() as u64, order.len() as u64), "{s:?}");

    // Three levels up, over the per-file cap: each fetched on its own open.
    for rel in ["far.txt", "proj/set/d01/huge.bin"] {
        assert!(cat(&bed.merged.join(rel)).is_ok(), "{rel}");
        assert_eq!(calls_for(&src, rel), 1, "{rel} was not read ahead: asked {:?}", src.asked.lock().unwrap());
    }
}

#[test]
fn a_read_ahead_stops_at_its_file_cap_nearest_first() {
    if !root_or_skip("a_read_ahead_stops_at_its_file_cap_nearest_first") {
        return;
    }
    let (bed, src) = Bed::full(make_neighbourhood, copy, |mut c| {
        c.read_ahead.max_files = 12;
        c
    });
    assert_eq!(cat(&bed.merged.join("proj/set/d01/f03")).unwrap(), b"d01 3\n");
    // The read-ahead runs beside the open: wait for its fills.
    let t = Instant::now();
    while bed.stats().read_ahead_fills < 12 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let asked = src.asked.lock().unwrap().clone();
    let ahead: Vec<String> =
        asked.iter().find(|a| a.len() > 1).expect("a read-ahead fetch").iter().map(|p| p.to_string()).collect();
    assert_eq!(ahead, neighbourhood_order()[..12].to_vec(), "the 12 nearest");
    assert_eq!(bed.stats().read_ahead_fills, 12);
}

/// A read-ahead's writes into the image after `stop` are events too: the reader must
/// still answer them, or the read-ahead waits on the group its own thread holds and the
/// image stays busy (seen: "target is busy" when a read-ahead fetch landed just as the
/// service stopped). Stopped at moments around the read-ahead's fetch, 15 times.
#[test]
fn stop_at_any_moment_of_a_read_ahead_leaves_the_image_free() {
    if !root_or_skip("stop_at_any_moment_of_a_read_ahead_leaves_the_image_free") {
        return;
    }
    for i in 0..15u64 {
        let delay = Duration::from_millis(2 * i);
        let (mut bed, _src) = Bed::full(make_project, move |p| CopySource { batch_delay: delay, ..copy(p) }, |c| c);
        assert!(cat(&bed.merged.join("sub/deep/file.bin")).is_ok());
        let t = Instant::now();
        bed.stop_filler();
        assert!(t.elapsed() < Duration::from_secs(3), "run {i}: stop took {:?}", t.elapsed());
        bed.teardown().unwrap_or_else(|e| panic!("run {i} (read-ahead fetch {delay:?} longer): {e}"));
    }
}

#[test]
fn an_open_that_joined_a_failed_read_ahead_gets_a_fetch_of_its_own() {
    if !root_or_skip("an_open_that_joined_a_failed_read_ahead_gets_a_fetch_of_its_own") {
        return;
    }
    // The read-ahead claims f08 while the open of f07 fetches; f08's open comes while that
    // read-ahead fetch (500 ms) runs, so it waits on it; the fetch fails. The open must not
    // be denied for a fetch it did not ask for (seen with a restart: the claim's path was
    // gone with the old tree): it gets one of its own.
    let (bed, src) = Bed::full(
        make_project,
        |p| CopySource { batch_delay: Duration::from_millis(500), ..CopySource::new(p, Behaviour::FailBatches) },
        |c| c,
    );
    assert_eq!(cat(&bed.merged.join("many/f07")).unwrap(), b"sibling 7\n");
    let t = Instant::now();
    while src.calls() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "no read-ahead fetch started");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        cat(&bed.merged.join("many/f08")),
        Ok(b"sibling 8\n".to_vec()),
        "f08's open after the failed read-ahead"
    );
    assert!(t.elapsed() >= Duration::from_millis(400), "f08 did not wait for the read-ahead: {:?}", t.elapsed());
    assert_eq!(calls_for(&src, "many/f08"), 2, "asked: {:?}", src.asked.lock().unwrap());
    assert_eq!(bed.settled().denied, 0);
}

#[test]
fn the_image_unmounts_right_after_stop_with_a_read_ahead_fetch_still_running() {
    if !root_or_skip("the_image_unmounts_right_after_stop_with_a_read_ahead_fetch_still_running") {
        return;
    }
    // The opened file comes at once; its siblings' fetch takes 500 ms more, so it is
    // still running when the service stops. What it holds (the group, the image's
    // descriptor, a staging directory on the image) must be let go by `stop`, or the
    // unmount that follows it finds the image busy.
    let (mut bed, src) = Bed::full(
        make_project,
        |p| {
            let mut s = copy(p);
            s.batch_delay = Duration::from_millis(500);
            s
        },
        |c| c,
    );
    assert_eq!(cat(&bed.merged.join("many/f07")).unwrap(), b"sibling 7\n");
    // The siblings' fetch starts on a thread of its own: running within moments.
    let t = Instant::now();
    while src.calls() < 2 {
        assert!(t.elapsed() < Duration::from_secs(5), "no read-ahead fetch started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mnt = bed.mnt.clone();
    let t = Instant::now();
    bed.teardown().expect("the image unmounts right after stop");
    eprintln!("stop, overlay and image unmounted in {:?}", t.elapsed());
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "{} still mounted", mnt.display());
}

#[test]
fn a_source_that_never_answers_gives_eio_after_the_timeout() {
    if !root_or_skip("a_source_that_never_answers_gives_eio_after_the_timeout") {
        return;
    }
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let r = release.clone();
    let (bed, src) = Bed::full(
        make_project,
        move |p| CopySource::new(p, Behaviour::Hang(r)),
        |mut c| {
            c.fetch_timeout = Duration::from_secs(1);
            c
        },
    );
    let t = Instant::now();
    let e = cat(&bed.merged.join("a.txt")).unwrap_err();
    let took = t.elapsed();
    assert!(e.contains("Input/output error"), "{e}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(10), "{took:?}");
    assert_eq!(calls_for(&src, "a.txt"), 1);
    let s = bed.stats();
    assert!(s.denied >= 1 && s.last_error.as_deref().unwrap_or("").contains("a.txt"), "{s:?}");
    eprintln!("denied after {took:?}; last error: {:?}", s.last_error);
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
}

#[test]
fn a_source_error_or_a_path_p_lost_gives_eio_and_a_later_open_tries_again() {
    if !root_or_skip("a_source_error_or_a_path_p_lost_gives_eio_and_a_later_open_tries_again") {
        return;
    }
    let (bed, src) = Bed::full(make_project, |p| CopySource::new(p, Behaviour::Fail), |c| c);
    let e = cat(&bed.merged.join("a.txt")).unwrap_err();
    assert!(e.contains("Input/output error"), "{e}");
    let e = cat(&bed.merged.join("a.txt")).unwrap_err();
    assert!(e.contains("Input/output error"), "{e}");
    assert_eq!(calls_for(&src, "a.txt"), 2, "a failed fill leaves the placeholder to fill again");
    drop(bed);

    // P no longer has the file: EIO too (the kernel takes no ENOENT here).
    let (bed, _src) = Bed::full(make_project, copy, |c| c);
    fs::remove_file(bed.project.join("ro.txt")).unwrap();
    let e = cat(&bed.merged.join("ro.txt")).unwrap_err();
    assert!(e.contains("Input/output error"), "{e}");
}

#[test]
fn a_file_p_changed_since_the_snapshot_gets_ps_bytes_size_and_mtime() {
    if !root_or_skip("a_file_p_changed_since_the_snapshot_gets_ps_bytes_size_and_mtime") {
        return;
    }
    // Read-ahead off: a.txt's would fetch sub/deep/file.bin before P changes it below.
    let (bed, _src) = Bed::full(make_project, copy, no_read_ahead);
    put(&bed.project, "a.txt", b"P's newer, longer version of a.txt\n", 0o644);
    assert_eq!(cat(&bed.merged.join("a.txt")).unwrap(), b"P's newer, longer version of a.txt\n");
    put(&bed.project, "sub/deep/file.bin", b"short", 0o644);
    assert_eq!(cat(&bed.merged.join("sub/deep/file.bin")).unwrap(), b"short");
    let (got, want) = (
        fs::metadata(bed.tree_dir().join("sub/deep/file.bin")).unwrap(),
        fs::metadata(bed.project.join("sub/deep/file.bin")).unwrap(),
    );
    assert_eq!((got.len(), got.mtime(), got.mtime_nsec()), (want.len(), want.mtime(), want.mtime_nsec()));
}

#[test]
fn a_filled_file_loses_want_and_keeps_its_content_across_a_remount() {
    if !root_or_skip("a_filled_file_loses_want_and_keeps_its_content_across_a_remount") {
        return;
    }
    // Read-ahead off: a.txt must stay unfilled.
    let (mut bed, _src) = Bed::full(make_project, copy, no_read_ahead);
    let placeholder = bed.tree_dir().join("sub/deep/file.bin");
    assert!(rustix::fs::lgetxattr(&placeholder, "user.cs.want", &mut [0u8; 8192][..]).is_ok());
    assert_eq!(fs::metadata(&placeholder).unwrap().blocks(), 0, "a placeholder holds no block");
    let want = fs::read(bed.project.join("sub/deep/file.bin")).unwrap();
    assert!(cat(&bed.merged.join("sub/deep/file.bin")).unwrap() == want);
    bed.settled();
    assert_eq!(
        rustix::fs::lgetxattr(&placeholder, "user.cs.want", &mut [0u8; 8192][..]),
        Err(rustix::io::Errno::NODATA),
        "user.cs.want must be gone once filled"
    );
    // No group, no overlay, the image unmounted and mounted again: the bytes are on it.
    bed.stop_filler();
    drop(bed.overlay.take());
    bed.fs.take().unwrap().unmount().unwrap();
    bed.fs = Some(ReplicaFs::ensure(&bed.dir.join("replica.img"), 256 << 20, 8192, &bed.mnt).unwrap());
    assert!(fs::read(&placeholder).unwrap() == want, "the filled content did not survive a remount");
    let unfilled = bed.tree_dir().join("a.txt");
    assert!(
        rustix::fs::lgetxattr(&unfilled, "user.cs.want", &mut [0u8; 8192][..]).is_ok(),
        "an unfilled one keeps want"
    );
}

#[test]
fn a_filesystem_mark_is_refused_where_it_would_gate_the_machine() {
    // A directory on the root filesystem: every open on the machine would wait for us.
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let cfg = cs_replica::FillConfig::new(tmp.path(), tmp.path().join("staging"));
    let err = cs_replica::Filler::start(cfg, Arc::new(copy(tmp.path()))).err().expect("refused");
    assert!(err.to_string().contains("not a filesystem of its own"), "{err}");
    assert!(!tmp.path().join("staging").exists(), "nothing done before the refusal");
}

#[test]
fn stop_answers_a_reader_waiting_on_a_fetch_with_eio() {
    if !root_or_skip("stop_answers_a_reader_waiting_on_a_fetch_with_eio") {
        return;
    }
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let r = release.clone();
    let (mut bed, _src) = Bed::full(make_project, move |p| CopySource::new(p, Behaviour::Hang(r)), |c| c);
    let kid = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(bed.merged.join("a.txt"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while bed.stats().waiting == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the reader never waited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    bed.stop_filler();
    let o = kid.wait_with_output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Input/output error"), "{o:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "stop waited for the fetch timeout: {:?}", t.elapsed());
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
}

fn no_read_ahead(mut c: cs_replica::FillConfig) -> cs_replica::FillConfig {
    c.read_ahead.max_files = 0;
    c
}

/// Fetches that asked for `path` (its siblings' read-ahead fetches are others).
fn calls_for(src: &CopySource, path: &str) -> usize {
    let p = cs_protocol::RelPath::new(path).unwrap();
    src.asked.lock().unwrap().iter().filter(|a| a.contains(&p)).count()
}

/// The fill service's process has other threads (the compute service's sync engine reads
/// and copies up project files through the merged view): their opens wait for the fill
/// like anyone's. Let through at once as "our own", they read a placeholder's zeros, and
/// a copy-up of a directory the user renamed sent those zeros to the project (seen with
/// `CS_E2E_LOWER=replica`).
#[test]
fn a_read_by_another_thread_of_the_fill_services_process_gets_the_projects_bytes() {
    if !root_or_skip("a_read_by_another_thread_of_the_fill_services_process_gets_the_projects_bytes") {
        return;
    }
    // Read-ahead off: the other thread's file must still be a placeholder when it opens it.
    let (bed, src) = Bed::full(make_project, copy, no_read_ahead);
    // This test's own thread: the same process as the fill service.
    let same = |got: Vec<u8>, rel: &str| {
        let want = fs::read(bed.project.join(rel)).unwrap();
        let zeros = got.iter().all(|b| *b == 0);
        assert!(got == want, "{rel}: {} bytes read, all zeros: {zeros}; the project's: {}", got.len(), want.len());
    };
    same(fs::read(bed.merged.join("sub/deep/file.bin")).unwrap(), "sub/deep/file.bin");
    let other = std::thread::spawn({
        let m = bed.merged.clone();
        move || fs::read(m.join("hot/hot.txt")).unwrap()
    });
    same(other.join().unwrap(), "hot/hot.txt");
    assert_eq!(calls_for(&src, "sub/deep/file.bin") + calls_for(&src, "hot/hot.txt"), 2, "each was fetched");
}
