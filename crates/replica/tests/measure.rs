//! Measurements, not assertions (ignored: run with `--ignored --nocapture`, as root):
//! the tree's build rate at 100 k and 1 M entries on a loop image, and the fill's
//! first-open latency per file and per read-ahead batch with a local Source.

mod common;

use std::ffi::OsString;
use std::time::Instant;

use common::*;
use cs_protocol::{Cursor, EntryKind, SnapshotEntry, SnapshotReport, Timestamp};
use cs_replica::{ReplicaFs, SnapshotWriter};

struct Image(Option<ReplicaFs>);
impl Drop for Image {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.unmount().unwrap();
        }
    }
}

/// An 8 GiB image with room for 1.2 M inodes in `tmp`, mounted (until the `Image` drops),
/// and its mount point.
fn scale_image(tmp: &std::path::Path) -> (Image, std::path::PathBuf) {
    let fs = ReplicaFs::ensure(&tmp.join("scale.img"), 8 << 30, 1_200_000, &tmp.join("mnt")).unwrap();
    let mnt = fs.mountpoint().to_path_buf();
    (Image(Some(fs)), mnt)
}

#[test]
#[ignore = "a measurement: minutes, needs root"]
fn tree_build_rate() {
    if !root_or_skip("tree_build_rate") {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (_img, mnt) = scale_image(tmp.path());
    for (n, name) in [(100_000usize, "r100k"), (1_000_000, "r1m")] {
        build_tree(&mnt.join(name), n, "bare image");
    }
}

/// The same 100 k tree, once with no fill service and once with one watching the image, as
/// the compute service writes it. When placeholders were made with `open(O_CREAT)`, each
/// was a permission event the service answered: this showed what that cost (1.6 s → 3.2 s).
#[test]
#[ignore = "a measurement: seconds, needs root"]
fn tree_build_rate_under_the_fill_service() {
    if !root_or_skip("tree_build_rate_under_the_fill_service") {
        return;
    }
    let tmp = tempfile::tempdir_in("/var/tmp").unwrap();
    let (_img, mnt) = scale_image(tmp.path());
    build_tree(&mnt.join("plain"), 100_000, "no fill service");
    let project = tmp.path().join("project");
    std::fs::create_dir_all(&project).unwrap();
    let cfg = cs_replica::FillConfig::new(&mnt, mnt.join("staging"));
    let filler = cs_replica::Filler::start(cfg, std::sync::Arc::new(CopySource::new(&project, Behaviour::Copy)))
        .expect("the fill service");
    build_tree(&mnt.join("watched"), 100_000, "the fill service watching");
    filler.stop();
}

/// Writes a tree of `n` files (directories of 100, as docs/replica.md's scale run) at `at`
/// and prints the time it took.
fn build_tree(at: &std::path::Path, n: usize, what: &str) {
    // Directories of 100 files, as docs/replica.md's scale run.
    let t = Instant::now();
    let mut w = SnapshotWriter::begin(at, Some((1000, 1000))).unwrap();
    let mtime = Timestamp::new(1_700_000_000, 5);
    let mut count = 0u64;
    for d in 0..n / 100 {
        let dir = rel(format!("d{:03}/e{d:05}", d / 1000));
        if d % 1000 == 0 {
            let top = SnapshotEntry {
                path: rel(format!("d{:03}", d / 1000)),
                kind: EntryKind::Dir,
                mode: 0o755,
                size: 0,
                mtime,
                target: None,
            };
            w.add(&top).unwrap();
            count += 1;
        }
        w.add(&SnapshotEntry { path: dir.clone(), kind: EntryKind::Dir, mode: 0o755, size: 0, mtime, target: None })
            .unwrap();
        count += 1;
        for f in 0..100 {
            let path = dir.join(format!("file-{f:03}.txt")).unwrap();
            w.add(&SnapshotEntry { path, kind: EntryKind::File, mode: 0o644, size: 4096 + f, mtime, target: None })
                .unwrap();
            count += 1;
        }
    }
    let added = t.elapsed();
    w.finish(&SnapshotReport { entries: count, cursor: Cursor::default(), ..Default::default() }).unwrap();
    let all = t.elapsed();
    eprintln!(
            "tree build ({what}), {count} entries: add {:.2} s, finish (dir modes, syncfs, switch) {:.2} s, total {:.2} s = {:.0} entries/s",
            added.as_secs_f64(),
            (all - added).as_secs_f64(),
            all.as_secs_f64(),
            count as f64 / all.as_secs_f64()
        );
}

const PY: &str = "import sys,time\nfor p in sys.argv[1:]:\n    t=time.perf_counter()\n    with open(p,'rb') as f: f.read()\n    print(int((time.perf_counter()-t)*1e6))";

fn open_times(paths: &[std::path::PathBuf]) -> Vec<u64> {
    let mut args: Vec<OsString> = vec!["/usr/bin/python3".into(), "-c".into(), PY.into()];
    args.extend(paths.iter().map(|p| p.clone().into_os_string()));
    let o = as_nobody(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect()
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn project(p: &std::path::Path) {
    for d in 0..10 {
        for f in 0..20 {
            put(p, format!("d{d}/f{f:02}"), &bytes(4096 + f * 100, d as u8), 0o644);
        }
    }
}

#[test]
#[ignore = "a measurement, needs root"]
fn fill_latency() {
    if !root_or_skip("fill_latency") {
        return;
    }
    let paths = |bed: &Bed| -> Vec<std::path::PathBuf> {
        (0..10)
            .flat_map(|d| (0..20).map(move |f| (d, f)))
            .map(|(d, f)| bed.merged.join(format!("d{d}/f{f:02}")))
            .collect()
    };
    // One file per fetch: read-ahead off.
    let (bed, src) = Bed::full(
        project,
        |p| CopySource::new(p, Behaviour::Copy),
        |mut c| {
            c.read_ahead.max_files = 0;
            c
        },
    );
    let cold = open_times(&paths(&bed));
    let warm = open_times(&paths(&bed));
    eprintln!(
        "no read-ahead: 200 files, {} source calls; first open median {} µs (max {}), second open median {} µs",
        src.calls(),
        median(cold.clone()),
        cold.iter().max().unwrap(),
        median(warm)
    );
    drop(bed);
    // Read-ahead: the first open of each directory fetches its 20 files.
    let (bed, src) = Bed::full(project, |p| CopySource::new(p, Behaviour::Copy), |c| c);
    let cold = open_times(&paths(&bed));
    let firsts: Vec<u64> = cold.iter().step_by(20).copied().collect();
    let rest: Vec<u64> = cold.iter().enumerate().filter(|(i, _)| i % 20 != 0).map(|(_, t)| *t).collect();
    eprintln!(
        "read-ahead: 200 files, {} source calls; first open of a directory (a batch of 20) median {} µs, the 19 others median {} µs; {:?}",
        src.calls(),
        median(firsts),
        median(rest),
        bed.stats()
    );
}

/// The background fetch's rate and an eviction pass's cost, with a local Source (no link:
/// what the service itself costs). 5,000 files of 4 KiB in 50 directories.
#[test]
#[ignore = "a measurement, needs root"]
fn hydrate_and_eviction_cost() {
    if !root_or_skip("hydrate_and_eviction_cost") {
        return;
    }
    let files = |p: &std::path::Path| {
        for i in 0..5_000 {
            put(p, format!("d{:02}/f{i:04}", i % 50), &bytes(4096, i as u8), 0o644);
        }
    };
    let (mut bed, src) = Bed::full(files, |p| CopySource::new(p, Behaviour::Copy), |c| c);
    let tree = bed.tree_dir();
    let t = Instant::now();
    bed.filler.as_mut().unwrap().hydrate(cs_replica::fill::Hydrate { tree: tree.clone(), only: None }).unwrap();
    while bed.stats().hydrate != Some("done") {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let took = t.elapsed();
    let s = bed.stats();
    eprintln!(
        "hydrate: {} files in {:.2} s ({:.0} files/s) in {} fetches",
        s.hydrated,
        took.as_secs_f64(),
        s.hydrated as f64 / took.as_secs_f64(),
        src.calls()
    );
    // The same tree under a bound of half its content: the keeper's first pass evicts.
    bed.stop_filler();
    let mut cfg = bed.config();
    cfg.cache = Some(cs_replica::fill::CacheBound { max_bytes: 10 << 20, trees_root: bed.mnt.join("replica") });
    let t = Instant::now();
    bed.start(cfg, CopySource::new(&bed.project, Behaviour::Copy));
    // The pass sets the measured figure at its end (0 until then).
    while bed.stats().cache_bytes == 0 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let s = bed.stats();
    eprintln!(
        "eviction pass over {} filled files: {} evicted ({} MiB), {} MiB left, in {:.2} s",
        5_000,
        s.evicted,
        s.evicted_bytes >> 20,
        s.cache_bytes >> 20,
        t.elapsed().as_secs_f64()
    );
}
