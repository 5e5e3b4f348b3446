//! Files that keep changing (issue 8, defect 2): a busy file never fails a
//! round. It is deferred when it changed since the round saw it, withdrawn
//! from the stream when it changes while being read (the receiver never
//! applies it), and after `snapshot_after` deferrals in a row a consistent
//! snapshot of it is sent. Both directions: C's step 3 and P's step 4.
//!
//! The steps are called one by one, as `cs_engine::driver::run_round` does,
//! with the writer's action inserted at the racy point.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use cs_engine::{ApplyReport, ComputeConfig, ComputeSide, ProjectConfig, ProjectSide, WriteReport};
use cs_protocol::ClientId;

struct Setup {
    _dir: tempfile::TempDir,
    home: PathBuf,
    upper: PathBuf,
    c: ComputeSide,
    p: ProjectSide,
}

fn setup(snapshot_after: u32, snapshot_max_bytes: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let upper = dir.path().join("upper");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&upper).unwrap();
    let mut cc = ComputeConfig::new(ClientId::new("c0").unwrap(), upper.clone(), dir.path().join("cstate"));
    cc.busy.snapshot_after = snapshot_after;
    cc.busy.snapshot_max_bytes = snapshot_max_bytes;
    let mut pc = ProjectConfig::new(home.clone(), dir.path().join("pstate"));
    pc.busy.snapshot_after = snapshot_after;
    pc.busy.snapshot_max_bytes = snapshot_max_bytes;
    let c = ComputeSide::open(cc).unwrap();
    let p = ProjectSide::open(pc).unwrap();
    Setup { _dir: dir, home, upper, c, p }
}

/// Incompressible bytes, so that the compressed stream reaches its sink
/// while a file's data is still being read.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

fn append(path: &Path, bytes: &[u8]) {
    fs::OpenOptions::new().append(true).open(path).unwrap().write_all(bytes).unwrap();
}

/// A tar sink that appends to `file` when the first compressed bytes reach
/// it: a write landing while that file's data is being read.
struct AppendOnFirstWrite {
    out: Vec<u8>,
    file: Option<PathBuf>,
}

impl Write for AppendOnFirstWrite {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = self.file.take() {
            append(&f, &noise(99, 100_000));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Where a writer acts during a round.
#[derive(Default)]
struct Hooks {
    /// Appended to (1 KiB) after the scan, before step 3 packs.
    before_c_pack: Option<PathBuf>,
    /// Appended to while step 3's stream is being written.
    during_c_pack: Option<PathBuf>,
    /// Appended to after P's hello, before step 4 packs.
    before_p_pack: Option<PathBuf>,
    /// Appended to while step 4's stream is being written.
    during_p_pack: Option<PathBuf>,
}

/// One whole round, committed; the writer acts where `hooks` say.
fn round(s: &mut Setup, hooks: Hooks) -> (WriteReport, ApplyReport) {
    let (c, p) = (&mut s.c, &s.p);
    let (mut cr, hello) = c.begin_round().unwrap();
    let (mut pr, reply) = p.begin_round(&hello).unwrap();
    if reply.need_held_list {
        p.set_held_list(&mut pr, c.held_list());
    }
    let deletes = c.deletes_to_send(&cr);
    let r1 = p.apply_deletes(&mut pr, &deletes).unwrap();
    c.finish_deletes_reported(&mut cr, &deletes, &r1).unwrap();
    let gone = p.deletes_for_client(&mut pr);
    c.apply_deletes(&mut cr, &gone).unwrap();

    let paths = c.changes_to_send(&cr);
    if let Some(f) = &hooks.before_c_pack {
        append(f, &noise(7, 1024));
    }
    let sink = AppendOnFirstWrite { out: Vec::new(), file: hooks.during_c_pack.clone() };
    let (sink, _) = c.pack_changes(&mut cr, &paths, sink).unwrap();
    let r3 = p.apply_writes(&mut pr, &sink.out[..], None).unwrap();

    if let Some(f) = &hooks.before_p_pack {
        append(f, &noise(8, 1024));
    }
    let sink = AppendOnFirstWrite { out: Vec::new(), file: hooks.during_p_pack.clone() };
    let (sink, _, cursor) = p.pack_changes(&mut pr, sink).unwrap();
    let r4 = c.apply_writes(&mut cr, &sink.out[..], None).unwrap();

    let req = c.prepare_commit(&cr, cursor).unwrap();
    p.commit(pr, &req).unwrap();
    c.commit(cr).unwrap();
    (r3, r4)
}

/// Names of temporary files left anywhere under `root`.
fn temporaries(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".csa-tmp-") {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

fn busy(s: &Setup) -> Vec<(String, String, u32, u32)> {
    s.c.busy_files().into_iter().map(|b| (b.path, b.reason, b.deferrals, b.snapshots)).collect()
}

fn p_busy(s: &Setup) -> Vec<(String, String, u32, u32)> {
    s.p.busy_files(&ClientId::new("c0").unwrap())
        .into_iter()
        .map(|b| (b.path, b.reason, b.deferrals, b.snapshots))
        .collect()
}

#[test]
fn a_file_changed_between_scan_and_pack_is_deferred_and_the_round_commits() {
    let mut s = setup(3, 1 << 30);
    fs::write(s.upper.join("log"), b"first line\n").unwrap();
    fs::write(s.upper.join("other"), b"other\n").unwrap();
    fs::write(s.home.join("fromp"), b"fromp\n").unwrap();
    let log = s.upper.join("log");
    round(&mut s, Hooks { before_c_pack: Some(log.clone()), ..Default::default() });
    assert_eq!(fs::read(s.home.join("other")).unwrap(), b"other\n");
    assert!(!s.home.join("log").exists(), "a file changed since the scan was sent");
    assert_eq!(busy(&s), [("log".to_string(), "still changing".to_string(), 1, 0)]);
    assert!(s.c.manifest().cursor.is_some(), "the round did not commit");

    // It settles: the next round sends it whole and it is busy no more.
    round(&mut s, Hooks::default());
    assert_eq!(fs::read(s.home.join("log")).unwrap(), fs::read(&log).unwrap());
    assert!(busy(&s).is_empty(), "{:?}", busy(&s));
    assert!(temporaries(&s.home).is_empty() && temporaries(&s.upper).is_empty());
}

#[test]
fn a_file_torn_while_read_is_withdrawn_never_applied_and_the_rest_applies() {
    let mut s = setup(3, 1 << 30);
    // Sorted first, so that the rest of the stream follows its withdrawal.
    fs::write(s.upper.join("a.log"), noise(1, 4 << 20)).unwrap();
    fs::write(s.upper.join("b.txt"), b"b\n").unwrap();
    let log = s.upper.join("a.log");
    let (r3, _) = round(&mut s, Hooks { during_c_pack: Some(log.clone()), ..Default::default() });
    assert_eq!(r3.withdrawn, [cs_protocol::RelPath::new("a.log").unwrap()], "{r3:?}");
    assert!(!s.home.join("a.log").exists(), "a torn entry was applied on P");
    assert!(temporaries(&s.home).is_empty(), "{:?}", temporaries(&s.home));
    assert_eq!(fs::read(s.home.join("b.txt")).unwrap(), b"b\n");
    assert_eq!(busy(&s), [("a.log".to_string(), "still changing".to_string(), 1, 0)]);

    round(&mut s, Hooks::default());
    assert_eq!(fs::read(s.home.join("a.log")).unwrap(), fs::read(&log).unwrap());
    assert!(busy(&s).is_empty());
}

#[test]
fn after_k_deferrals_a_consistent_snapshot_is_sent_and_the_count_starts_again() {
    let mut s = setup(2, 1 << 30);
    fs::write(s.upper.join("train.log"), noise(2, 300_000)).unwrap();
    let log = s.upper.join("train.log");
    // Written to before the round and again between its scan and step 3.
    let busy_round = |s: &mut Setup| {
        append(&log, b"more\n");
        round(s, Hooks { before_c_pack: Some(log.clone()), ..Default::default() })
    };
    busy_round(&mut s);
    busy_round(&mut s);
    assert!(!s.home.join("train.log").exists());
    assert_eq!(busy(&s), [("train.log".to_string(), "still changing".to_string(), 2, 0)]);
    // The third busy round sends a snapshot: the file as it was when taken
    // (nothing writes during this pack, so all of it).
    busy_round(&mut s);
    assert_eq!(fs::read(s.home.join("train.log")).unwrap(), fs::read(&log).unwrap());
    let b = &s.c.busy_files()[0];
    assert_eq!((b.deferrals, b.snapshots, b.snapshot_sent), (0, 1, true), "{b:?}");
    assert!(temporaries(&s.upper).is_empty() && temporaries(&s.home).is_empty());
    // Still written to: deferred again, K rounds until the next snapshot.
    busy_round(&mut s);
    assert_eq!(busy(&s), [("train.log".to_string(), "still changing".to_string(), 1, 1)]);
    assert_ne!(fs::read(s.home.join("train.log")).unwrap(), fs::read(&log).unwrap());
    // It settles: sent whole.
    round(&mut s, Hooks::default());
    assert_eq!(fs::read(s.home.join("train.log")).unwrap(), fs::read(&log).unwrap());
    assert!(busy(&s).is_empty());
}

/// Whether this filesystem can reflink (then no size bound applies).
fn can_reflink(dir: &Path) -> bool {
    let a = fs::File::create(dir.join("reflink-a")).unwrap();
    let b = fs::File::create(dir.join("reflink-b")).unwrap();
    let ok = rustix::fs::ioctl_ficlone(&b, &a).is_ok();
    let _ = fs::remove_file(dir.join("reflink-a"));
    let _ = fs::remove_file(dir.join("reflink-b"));
    ok
}

#[test]
fn a_busy_file_above_the_snapshot_bound_stays_deferred_with_the_reason() {
    let mut s = setup(1, 1000);
    if can_reflink(&s.upper) {
        eprintln!("the filesystem reflinks: the copy bound does not apply here");
        return;
    }
    fs::write(s.upper.join("big.log"), noise(3, 5000)).unwrap();
    let log = s.upper.join("big.log");
    round(&mut s, Hooks { before_c_pack: Some(log.clone()), ..Default::default() });
    round(&mut s, Hooks { before_c_pack: Some(log.clone()), ..Default::default() });
    assert!(!s.home.join("big.log").exists());
    let b = &s.c.busy_files()[0];
    assert!(b.reason.contains("snapshot limit of 1000 bytes"), "{b:?}");
    assert_eq!(b.snapshots, 0);
    // A round where it happens to be whole sends it anyway.
    round(&mut s, Hooks::default());
    assert_eq!(fs::read(s.home.join("big.log")).unwrap(), fs::read(&log).unwrap());
}

/// P's step 4: the same rules for a file that keeps changing on P.
#[test]
fn step_4_defers_withdraws_and_snapshots_a_busy_project_file() {
    let mut s = setup(2, 1 << 30);
    // C holds both files (it wrote them), so P's changes go to C in step 4.
    fs::write(s.upper.join("p.log"), b"v1\n").unwrap();
    fs::write(s.upper.join("z.txt"), b"z1\n").unwrap();
    round(&mut s, Hooks::default());
    let plog = s.home.join("p.log");
    assert_eq!(fs::read(&plog).unwrap(), b"v1\n");

    // Changed on P after the hello: deferred; the other change goes through.
    fs::write(&plog, noise(4, 2 << 20)).unwrap();
    fs::write(s.home.join("z.txt"), b"z2\n").unwrap();
    round(&mut s, Hooks { before_p_pack: Some(plog.clone()), ..Default::default() });
    assert_eq!(fs::read(s.upper.join("p.log")).unwrap(), b"v1\n");
    assert_eq!(fs::read(s.upper.join("z.txt")).unwrap(), b"z2\n");
    assert_eq!(p_busy(&s), [("p.log".to_string(), "still changing".to_string(), 1, 0)]);

    // Torn while P reads it: withdrawn, C keeps its version, no temporary.
    let (_, r4) = round(&mut s, Hooks { during_p_pack: Some(plog.clone()), ..Default::default() });
    assert_eq!(r4.withdrawn, [cs_protocol::RelPath::new("p.log").unwrap()], "{r4:?}");
    assert_eq!(fs::read(s.upper.join("p.log")).unwrap(), b"v1\n");
    assert!(temporaries(&s.upper).is_empty(), "{:?}", temporaries(&s.upper));
    assert_eq!(p_busy(&s), [("p.log".to_string(), "still changing".to_string(), 2, 0)]);

    // Two deferrals: the next round sends a snapshot although it changed.
    round(&mut s, Hooks { before_p_pack: Some(plog.clone()), ..Default::default() });
    assert_eq!(fs::read(s.upper.join("p.log")).unwrap(), fs::read(&plog).unwrap());
    assert_eq!(p_busy(&s), [("p.log".to_string(), "still changing".to_string(), 0, 1)]);

    // It settles: nothing more to send, it is busy no more, both agree.
    round(&mut s, Hooks::default());
    round(&mut s, Hooks::default());
    assert_eq!(fs::read(s.upper.join("p.log")).unwrap(), fs::read(&plog).unwrap());
    assert!(p_busy(&s).is_empty(), "{:?}", p_busy(&s));
}
