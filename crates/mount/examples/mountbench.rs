//! Measures what the union and the sshfs caching options cost, for `docs/mount.md`.
//!
//! `cargo run --release -p cs-mount --example mountbench -- [--rtt-ms 10] [--ops 1000]
//!  [--files 2000] [--runs 3] [--only a,b,c,d]`
//!
//! Everything runs on 127.0.0.1: a throwaway sshd serves a temporary "project home"; with
//! `--rtt-ms`, sshfs connects through a `DelayProxy` adding half of it each way. Configurations:
//!
//! - a: sshfs, default options;
//! - b: unionfs-fuse over sshfs with default options;
//! - c: unionfs-fuse over sshfs with cs-actor's options (`SshfsOptions::default()`);
//! - d: sshfs alone with cs-actor's options (for reference);
//! - x / y: the union over sshfs / sshfs alone with the options given by `--opts a,b,c`
//!   (for comparing options one by one).
//!
//! Workloads, each on a fresh mount (cold kernel caches) per run:
//! - ops: `--ops` × (create, write 100 bytes, close, stat, unlink) in a new directory;
//! - ops in a project dir: the same in a directory the project already has (new names);
//! - read: read `--files` small project files (200 bytes, 20 directories), twice.
//!
//! Prints the median of `--runs` runs per cell, as a Markdown table.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cs_mount::SshfsOptions;
use cs_testbed::{sshfs_mount, DelayProxy, Sshd};
use cs_union::{MountGuard, UnionfsFuse};

struct Args {
    rtt_ms: u64,
    ops: usize,
    files: usize,
    runs: usize,
    only: String,
    opts: String,
}

fn args() -> Args {
    let mut a = Args { rtt_ms: 0, ops: 1000, files: 2000, runs: 3, only: "a,b,c,d".into(), opts: String::new() };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--rtt-ms" => a.rtt_ms = v.parse().unwrap(),
            "--ops" => a.ops = v.parse().unwrap(),
            "--files" => a.files = v.parse().unwrap(),
            "--runs" => a.runs = v.parse().unwrap(),
            "--only" => a.only = v,
            "--opts" => a.opts = v,
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

#[derive(Clone, Copy)]
enum Setup<'a> {
    RawDefault,
    UnionDefault,
    UnionCached,
    RawCached,
    UnionCustom(&'a str),
    RawCustom(&'a str),
}

impl Setup<'_> {
    fn label(self) -> String {
        match self {
            Setup::RawDefault => "(a) sshfs, default options".into(),
            Setup::UnionDefault => "(b) union over sshfs, default options".into(),
            Setup::UnionCached => "(c) union over sshfs, cs-actor options".into(),
            Setup::RawCached => "(d) sshfs, cs-actor options".into(),
            Setup::UnionCustom(o) => format!("union over sshfs -o {o}"),
            Setup::RawCustom(o) => format!("sshfs -o {o}"),
        }
    }
    fn union(self) -> bool {
        matches!(self, Setup::UnionDefault | Setup::UnionCached | Setup::UnionCustom(_))
    }
    fn opts(self) -> Vec<String> {
        match self {
            Setup::RawDefault | Setup::UnionDefault => Vec::new(),
            Setup::UnionCached | Setup::RawCached => SshfsOptions::default().to_opts(),
            Setup::UnionCustom(o) | Setup::RawCustom(o) => o.split(',').map(String::from).collect(),
        }
    }
}

struct Sample {
    ops: Duration,
    ops_existing: Duration,
    read1: Duration,
    read2: Duration,
}

fn ops_workload(dir: &Path, n: usize, new_dir: bool) -> Duration {
    let payload = [b'x'; 100];
    let t = Instant::now();
    if new_dir {
        std::fs::create_dir(dir).unwrap();
    }
    for i in 0..n {
        let p = dir.join(format!("new-f{i}"));
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&payload).unwrap();
        drop(f);
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 100);
        std::fs::remove_file(&p).unwrap();
    }
    if new_dir {
        std::fs::remove_dir(dir).unwrap();
    }
    t.elapsed()
}

fn read_workload(root: &Path, files: &[PathBuf]) -> Duration {
    let t = Instant::now();
    for f in files {
        let b = std::fs::read(root.join(f)).unwrap();
        assert_eq!(b.len(), 200);
    }
    t.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let a = args();
    let t = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(t.path()).unwrap();
    let (home, keys) = (root.join("home"), root.join("keys"));
    std::fs::create_dir_all(&keys).unwrap();
    let mut files = Vec::new();
    for i in 0..a.files {
        let rel = PathBuf::from(format!("bench-read/d{:02}/file{i:05}.txt", i % 20));
        let p = home.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, [b'p'; 200]).unwrap();
        files.push(rel);
    }
    let sshd = Sshd::start(&keys).unwrap();
    let proxy = (a.rtt_ms > 0).then(|| {
        DelayProxy::start("127.0.0.1:0".parse().unwrap(), sshd.addr(), Duration::from_micros(a.rtt_ms * 500)).unwrap()
    });
    let port = proxy.as_ref().map(|p| p.port()).unwrap_or(sshd.port());
    let union = UnionfsFuse::find().unwrap();

    let setups: Vec<Setup> = a
        .only
        .split(',')
        .map(|s| match s.trim() {
            "a" => Setup::RawDefault,
            "b" => Setup::UnionDefault,
            "c" => Setup::UnionCached,
            "d" => Setup::RawCached,
            "x" => Setup::UnionCustom(&a.opts),
            "y" => Setup::RawCustom(&a.opts),
            x => panic!("unknown setup {x}"),
        })
        .collect();

    eprintln!(
        "RTT {} ms, {} ops, {} files, {} run(s); cs-actor options: {}",
        a.rtt_ms,
        a.ops,
        a.files,
        a.runs,
        SshfsOptions::default().to_opts().join(",")
    );
    println!(
        "| RTT | setup | {} × create+write+stat+unlink, new dir | same, in a project dir | read {} files, 1st pass | 2nd pass |",
        a.ops, a.files
    );
    println!("|---|---|---|---|---|---|");
    let mut n = 0;
    for setup in setups {
        let mut samples = Vec::new();
        for run in 0..a.runs {
            n += 1;
            let (lower, upper, merged) =
                (root.join(format!("lower{n}")), root.join(format!("upper{n}")), root.join(format!("merged{n}")));
            for d in [&lower, &upper, &merged] {
                std::fs::create_dir_all(d).unwrap();
            }
            let m = sshfs_mount(&home, port, sshd.identity(), &lower, &setup.opts()).unwrap();
            let guard = setup.union().then(|| MountGuard::mount(&union, &upper, &lower, &merged, &[]).unwrap());
            let target = if setup.union() { merged.clone() } else { lower.clone() };
            let ops = ops_workload(&target.join(format!("ops-{run}")), a.ops, true);
            let ops_existing = ops_workload(&target.join("bench-read/d19"), a.ops, false);
            let read1 = read_workload(&target, &files);
            let read2 = read_workload(&target, &files);
            eprintln!(
                "{} run {run}: ops {:.2} s, in a project dir {:.2} s, read {:.2} s / {:.2} s",
                setup.label(),
                ops.as_secs_f64(),
                ops_existing.as_secs_f64(),
                read1.as_secs_f64(),
                read2.as_secs_f64()
            );
            if let Some(g) = guard {
                g.unmount().unwrap();
            }
            m.unmount().unwrap();
            samples.push(Sample { ops, ops_existing, read1, read2 });
        }
        let ops = median(samples.iter().map(|s| s.ops).collect());
        let ox = median(samples.iter().map(|s| s.ops_existing).collect());
        let r1 = median(samples.iter().map(|s| s.read1).collect());
        let r2 = median(samples.iter().map(|s| s.read2).collect());
        let per_op = |d: Duration| d.as_secs_f64() * 1e3 / a.ops as f64;
        println!(
            "| {} ms | {} | {:.2} s ({:.2} ms/op) | {:.2} s ({:.2} ms/op) | {:.2} s | {:.2} s |",
            a.rtt_ms,
            setup.label(),
            ops.as_secs_f64(),
            per_op(ops),
            ox.as_secs_f64(),
            per_op(ox),
            r1.as_secs_f64(),
            r2.as_secs_f64()
        );
    }
    drop(proxy);
    drop(sshd);
}
