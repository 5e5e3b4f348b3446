//! docs/replica.md risk 1, really: the fanotify group held by a holder, a fill service that
//! dies (SIGKILL of a child process running it) while a reader waits on a placeholder, and
//! a new service on the same group that answers what its predecessor left, from the
//! journal. The dead service must never let a reader see a placeholder's zeros.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use cs_protocol::RelPath;
use cs_replica::{holder, FillConfig, Filler, FillerHandle, Source, SourceReport};

const CHILD_ENV: &str = "CS_REPLICA_TEST_FILL_CHILD";

/// A Source that never answers (the fetch of a service about to die).
struct NeverSource;

impl Source for NeverSource {
    fn fetch(&self, _: &[RelPath], _: &Path) -> Result<SourceReport, String> {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Not a test: the body of the child process the real test starts and kills (the test
/// binary run again with `CHILD_ENV` = "socket mountpoint staging journal ready-file").
#[test]
fn child_fill_service() {
    let Ok(args) = std::env::var(CHILD_ENV) else { return };
    let a: Vec<PathBuf> = args.split('\n').map(PathBuf::from).collect();
    // The lease lives as long as this process: its death is what the holder sees.
    let (group, _lease) = holder::group(&a[0]).expect("the group from the holder");
    let mut cfg = FillConfig::new(&a[1], &a[2]);
    cfg.journal = Some(a[3].clone());
    let f = Filler::start_with_group(cfg, group, Arc::new(NeverSource)).expect("start the fill service");
    fs::write(&a[4], b"ready").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let _ = f.stats();
    }
}

/// `cat` of `p` as nobody, in the background; its output goes to a file (a pipe would fill).
fn spawn_reader(p: &Path) -> (Child, PathBuf) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let out = std::env::temp_dir().join(format!(
        "cs-replica-reader-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let c = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(p)
        .stdout(fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (c, out)
}

fn finish_reader((mut c, out): (Child, PathBuf), within: Duration) -> Result<Vec<u8>, String> {
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > within {
            let _ = c.kill();
            let _ = c.wait();
            return Err(format!("still blocked after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = c.wait().unwrap();
    let bytes = fs::read(&out).unwrap();
    let _ = fs::remove_file(&out);
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    if st.success() {
        Ok(bytes)
    } else {
        Err(err)
    }
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so that a failed test leaves
/// no fill service behind.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fill service in a child process (this test binary again, `child_fill_service`) on the
/// holder's group, holding its lease; its fetches never come. Returned once it is ready.
fn start_child_service(bed: &Bed, socket: &Path, journal: &Path) -> Killed {
    let ready = bed.dir.join("child-ready");
    let _ = fs::remove_file(&ready);
    let args = [socket, &bed.mnt, &bed.mnt.join("staging"), journal, &ready]
        .map(|x| x.to_string_lossy().into_owned())
        .join("\n");
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_fill_service", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let child = Killed(child);
    wait_for("the child's fill service", Duration::from_secs(20), || ready.exists());
    child
}

/// The holder of these tests, serving a bed's group on a thread (see [`holder_bed`]).
struct Holder {
    socket: PathBuf,
    journal: PathBuf,
    thread: Option<std::thread::JoinHandle<cs_replica::error::Result<()>>>,
}

/// The project's tree under an overlay, and a holder (with `stand_in`, made from a
/// service's fill settings) serving its group.
fn holder_bed(stand_in: impl FnOnce(FillConfig) -> Option<holder::StandIn>) -> (Bed, Holder) {
    let mut bed = Bed::new(make_project);
    bed.mount_overlay();
    let socket = bed.dir.join("holder.sock");
    let mut h = Holder { journal: bed.dir.join("fill.journal"), socket: socket.clone(), thread: None };
    let stand_in = stand_in(h.fill_config(&bed));
    let mnt = bed.mnt.clone();
    h.thread = Some(std::thread::spawn(move || holder::serve(&socket, &mnt, stand_in)));
    wait_for("the holder answers", Duration::from_secs(10), || holder::group(&h.socket).is_ok());
    (bed, h)
}

impl Holder {
    /// A service's fill settings: the bed's, with the journal.
    fn fill_config(&self, bed: &Bed) -> FillConfig {
        let mut cfg = bed.config();
        cfg.journal = Some(self.journal.clone());
        cfg
    }

    /// A service in this process on the holder's group, copying from the project.
    fn service(&self, bed: &Bed, cfg: FillConfig) -> (FillerHandle, holder::Lease) {
        let (group, lease) = holder::group(&self.socket).unwrap();
        let src = Arc::new(CopySource::new(&bed.project, Behaviour::Copy));
        (Filler::start_with_group(cfg, group, src).unwrap(), lease)
    }

    /// Told to exit: the holder must answer, end, and remove its socket.
    fn stop(&mut self) {
        assert!(holder::tell_exit(&self.socket, Duration::from_secs(5)).unwrap(), "the holder answered");
        self.thread.take().unwrap().join().unwrap().unwrap();
        assert!(!self.socket.exists(), "the holder removes its socket");
    }
}

#[test]
fn a_reader_waiting_when_the_fill_service_is_killed_gets_the_right_bytes_from_the_next_one() {
    if !root_or_skip("a_reader_waiting_when_the_fill_service_is_killed_gets_the_right_bytes_from_the_next_one") {
        return;
    }
    let (mut bed, mut holder) = holder_bed(|_| None);
    let (m, p) = (bed.merged.clone(), bed.project.clone());
    let (socket, journal) = (holder.socket.clone(), holder.journal.clone());

    // The first service, in a child process; its fetches never come.
    let mut child = start_child_service(&bed, &socket, &journal);

    let t0 = Instant::now();
    let mut reader = spawn_reader(&m.join("sub/deep/file.bin"));
    wait_for("the child journals the reader's event", Duration::from_secs(10), || {
        fs::read_to_string(&journal).is_ok_and(|j| j.lines().any(|l| l.starts_with('+')))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(reader.0.try_wait().unwrap().is_none(), "the reader did not wait for the fill");
    let taken = fs::read_to_string(&journal).unwrap();

    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();
    let killed = t0.elapsed();
    // Dead service, living group: the reader stays blocked (no zeros), and so does a new
    // reader of another unfilled file (its event waits in the queue).
    let later = spawn_reader(&m.join("a.txt"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(reader.0.try_wait().unwrap().is_none(), "the reader was let go when the service died (zeros)");
    let mut later = later;
    assert!(later.0.try_wait().unwrap().is_none(), "an open with no service was let go (zeros)");

    // The next service: same group, the journal.
    let (filler, _lease) = holder.service(&bed, holder.fill_config(&bed));
    bed.filler = Some(filler);
    let restarted = t0.elapsed();
    let got = finish_reader(reader, Duration::from_secs(20));
    if got.is_err() {
        eprintln!("journal at the kill: {taken:?}; now {:?}; stats {:?}", fs::read_to_string(&journal), bed.stats());
    }
    let waited = t0.elapsed();
    assert!(
        got.as_ref().ok() == Some(&fs::read(p.join("sub/deep/file.bin")).unwrap()),
        "the waiting reader: {:?}",
        got.map(|b| b.len())
    );
    assert_eq!(finish_reader(later, Duration::from_secs(20)).unwrap(), fs::read(p.join("a.txt")).unwrap());
    eprintln!(
        "journal at the kill: {taken:?}; killed at {killed:?}, next service at {restarted:?}, the reader had its bytes at {waited:?}"
    );
    // Later opens, of files filled and not.
    for name in ["sub/deep/file.bin", "a.txt", "hot/hot.txt", "many/f07"] {
        assert_eq!(cat(&m.join(name)).unwrap(), fs::read(p.join(name)).unwrap(), "{name}");
    }
    let s = bed.stats();
    assert_eq!(s.denied, 0, "{s:?}");
    bed.stop_filler();
    assert_eq!(fs::read_to_string(&journal).unwrap(), "", "the journal once everything is answered");
    holder.stop();
}

#[test]
fn with_no_service_back_the_holder_stands_in_readers_get_eio_and_the_next_service_takes_over() {
    if !root_or_skip("with_no_service_back_the_holder_stands_in_readers_get_eio_and_the_next_service_takes_over") {
        return;
    }
    const AFTER: Duration = Duration::from_millis(1500);
    let (mut bed, mut holder) = holder_bed(|fill| Some(holder::StandIn { after: AFTER, fill }));
    let (m, p) = (bed.merged.clone(), bed.project.clone());
    let (socket, journal) = (holder.socket.clone(), holder.journal.clone());
    // A service that fills one file (and only that one: no read-ahead) and stops: that file
    // has its content from then on.
    {
        let mut cfg = holder.fill_config(&bed);
        cfg.read_ahead.max_files = 0;
        let (f, _lease) = holder.service(&bed, cfg);
        assert_eq!(cat(&m.join("hot/hot.txt")).unwrap(), fs::read(p.join("hot/hot.txt")).unwrap());
        f.stop();
    }

    let mut child = start_child_service(&bed, &socket, &journal);
    let reader = spawn_reader(&m.join("sub/deep/file.bin"));
    let t = Instant::now();
    while !fs::read_to_string(&journal).is_ok_and(|j| j.lines().any(|l| l.starts_with('+'))) {
        assert!(t.elapsed() < Duration::from_secs(10), "no event journaled: {:?}", fs::read_to_string(&journal));
        std::thread::sleep(Duration::from_millis(20));
    }
    // A service holding its lease is never stood in for, however long its fetch takes.
    let mut reader = reader;
    std::thread::sleep(AFTER * 2);
    assert!(reader.0.try_wait().unwrap().is_none(), "the holder stood in while a service held the group");

    child.0.kill().unwrap(); // SIGKILL: the lease ends with the process
    child.0.wait().unwrap();
    let killed = Instant::now();
    // Before the bound: still waiting for a service to come back (no zeros, no EIO yet).
    std::thread::sleep(AFTER / 3);
    assert!(reader.0.try_wait().unwrap().is_none(), "the reader was let go before the bound");
    // After it: the reader the dead service took is answered, with EIO.
    let got = finish_reader(reader, Duration::from_secs(15));
    let answered = killed.elapsed();
    assert!(
        got.as_ref().is_err_and(|e| e.contains("Input/output error")),
        "the waiting reader once no service came back: {:?}",
        got.map(|b| b.len())
    );
    assert!(answered >= AFTER, "answered {answered:?} after the kill, before the bound {AFTER:?}");
    // While standing in: a file not fetched fails at once, a file fetched before opens.
    let t = Instant::now();
    let other = finish_reader(spawn_reader(&m.join("a.txt")), Duration::from_secs(10));
    assert!(other.as_ref().is_err_and(|e| e.contains("Input/output error")), "{other:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "EIO took {:?}", t.elapsed());
    assert_eq!(
        finish_reader(spawn_reader(&m.join("hot/hot.txt")), Duration::from_secs(10)).unwrap(),
        fs::read(p.join("hot/hot.txt")).unwrap()
    );

    // The next service takes over: the files read as the project has them.
    let (filler, _lease) = holder.service(&bed, holder.fill_config(&bed));
    bed.filler = Some(filler);
    for name in ["sub/deep/file.bin", "a.txt", "many/f07"] {
        assert_eq!(cat(&m.join(name)).unwrap(), fs::read(p.join(name)).unwrap(), "{name}");
    }
    eprintln!("the reader had EIO {answered:?} after the kill (bound {AFTER:?})");
    bed.stop_filler();
    holder.stop();
}
