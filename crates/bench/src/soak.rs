//! `cs-bench soak`: N compute services and one broker for M minutes, with writer threads doing
//! random operations on every side (each compute server's merged view and the project home),
//! rounds on the services' own timers and events and sometimes on demand; then convergence
//! and an exact lost-write check.
//!
//! `cargo run --release -p cs-bench -- soak --minutes 3 --clients 3 [--rtt 10] [--seed 7]`
//!
//! Accounting. Each writer owns `soak/<side>/` (side `project`, `c0`, `c1`, …): it is the only
//! one that writes there, so its model (path → length and FNV-1a hash of the content, or a
//! directory) is exactly the state every side must end with. After convergence every view (the
//! project home and each merged view) is walked and compared with every model: a file missing
//! or with other content, a directory missing, a path present that the model does not have (a
//! resurrected delete, a stray conflict copy) is each one violation, per view. In the small
//! shared area `soak/shared/` every side overwrites the same few files (serialized by a lock,
//! so there is a total order): the globally last write of each file must survive on the project
//! as the file or as one of its conflict copies (`NAME.conflict-…`). `lost writes` is the sum.
//! A conflict copy in a writer's own namespace holding one of its own earlier versions loses
//! nothing (it is reported, not counted). Finally the whole synced tree must be identical in
//! every view. While writing, each writer also audits its own view against its model now and
//! then (names, kinds, sizes): differences there are transient anomalies, reported only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use cs_shaper::{LinkConfig, Shaper};
use cs_testbed::Sshd;
use rustix::io::Errno;
use serde_json::Value;

use crate::gen::Rng;
use crate::services::{ask, Broker, Compute, ComputeLower, ComputeSpec};
use crate::util::{self, remove_tree, rss_kib, stopped};

/// The soak: random operations on every side for a while, then convergence and the
/// lost-write check.
#[derive(Parser, Debug)]
#[command(name = "cs-bench soak")]
pub struct SoakCli {
    /// How long the writers run (minutes, fractions allowed).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Compute services against the one broker.
    #[arg(long, default_value_t = 3)]
    clients: usize,
    /// Round-trip time added by the shaper on the ssh and broker links (ms).
    #[arg(long, default_value_t = 0)]
    rtt: u64,
    /// Seed of every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// The compute services' round interval (seconds).
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// The compute services' union backend (`cs-actor compute --union`: `unionfs-fuse` or
    /// `overlay`; default: the service's).
    #[arg(long)]
    union: Option<String>,
    /// Operations per second per writer (one writer per side).
    #[arg(long, default_value_t = 15.0)]
    ops: f64,
    /// Seconds between progress tables.
    #[arg(long, default_value_t = 60.0)]
    report_every: f64,
    /// Give up converging after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    converge_timeout: f64,
    /// No shared area (only per-side namespaces).
    #[arg(long)]
    no_shared: bool,
    /// The cs-actor binary (default: next to this one).
    #[arg(long)]
    cs_actor: Option<PathBuf>,
    /// Work directory (default: a new one under /tmp, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the work directory.
    #[arg(long)]
    keep: bool,
    /// Also write the final report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Checker self-test: the check expects a wrong hash for one of the project writer's files,
    /// so it must report one lost write per view (and the soak fail).
    #[arg(long, hide = true)]
    sabotage: bool,
}

/// Entry point of `cs-bench soak …` (`args` without the program name and `soak`).
pub fn main(args: Vec<String>) -> i32 {
    let cli = SoakCli::parse_from(std::iter::once("cs-bench soak".to_string()).chain(args));
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{} cs-bench soak: error: {e:#}", util::clock());
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Content and models

/// FNV-1a 64, streaming (append continues from the stored hash).
fn fnv(mut h: u64, data: &[u8]) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}
const FNV0: u64 = 0xcbf2_9ce4_8422_2325;

fn show_ent(e: Option<&Ent>) -> String {
    match e {
        None => "absent".to_string(),
        Some(Ent::Dir) => "dir".to_string(),
        Some(Ent::Other) => "other".to_string(),
        Some(Ent::File { len, .. }) => format!("file {len} B"),
    }
}

/// `path: A-name X, B-name Y` for every path where `a` and `b` differ.
fn show_diff(a: &BTreeMap<String, Ent>, b: &BTreeMap<String, Ent>, an: &str, bn: &str) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut v = Vec::new();
    for k in keys {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            let same_size =
                matches!((x, y), (Some(Ent::File { len: l1, .. }), Some(Ent::File { len: l2, .. })) if l1 == l2);
            let detail = if same_size { " (same size, other content)" } else { "" };
            v.push(format!("{k}: {an} {}, {bn} {}{detail}", show_ent(x), show_ent(y)));
        }
    }
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ent {
    File { len: u64, hash: u64 },
    Dir,
    Other,
}

/// Walks `root/rel` (relative paths below `root`, `/`-separated), skipping `skip(rel)`.
fn walk(root: &Path, rel: &str, skip: &dyn Fn(&str) -> bool, out: &mut BTreeMap<String, Ent>) -> std::io::Result<()> {
    walk_how(root, rel, skip, true, out)
}

/// [`walk`]; without `read`, files are `File { len, hash: 0 }` (names and sizes only).
fn walk_how(
    root: &Path,
    rel: &str,
    skip: &dyn Fn(&str) -> bool,
    read: bool,
    out: &mut BTreeMap<String, Ent>,
) -> std::io::Result<()> {
    let dir = if rel.is_empty() { root.to_path_buf() } else { root.join(rel) };
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        if skip(&r) {
            continue;
        }
        let ft = match e.file_type() {
            Ok(t) => t,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if ft.is_dir() {
            out.insert(r.clone(), Ent::Dir);
            walk_how(root, &r, skip, read, out)?;
        } else if ft.is_file() && !read {
            match std::fs::symlink_metadata(root.join(&r)) {
                Ok(m) => {
                    out.insert(r, Ent::File { len: m.len(), hash: 0 });
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        } else if ft.is_file() {
            match std::fs::read(root.join(&r)) {
                Ok(b) => {
                    out.insert(r, Ent::File { len: b.len() as u64, hash: fnv(FNV0, &b) });
                }
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        } else {
            out.insert(r, Ent::Other);
        }
    }
    Ok(())
}

/// Paths never synced (local-only, the union's and cs-actor's own).
fn not_synced(rel: &str) -> bool {
    let first = rel.split('/').next().unwrap_or("");
    matches!(first, "scratch" | ".local" | ".cache" | ".cs-actor")
        || first.starts_with(".unionfs")
        || rel.rsplit('/').next().map(|n| n.starts_with(".csa-tmp-") || n.starts_with(".fuse_hidden")).unwrap_or(false)
}

/// One write to a shared file.
#[derive(Debug, Clone)]
struct SharedWrite {
    side: String,
    hash: u64,
}

#[derive(Default)]
struct Shared {
    /// path → every write to it, in order.
    writes: BTreeMap<String, Vec<SharedWrite>>,
}

#[derive(Default, Clone)]
struct Counts {
    ops: u64,
    errors: u64,
    bytes: u64,
    by_kind: BTreeMap<&'static str, u64>,
    refused_dir_renames: u64,
    /// `rm -r` that failed with ENOTEMPTY at first and was retried.
    rmdir_retried: u64,
    /// Audits of the writer's own view that found it differing from the writer's model.
    audits: u64,
    audit_anomalies: u64,
}

struct Writer {
    side: String,
    root: PathBuf,
    ns: String,
    model: BTreeMap<String, Ent>,
    rng: Rng,
    serial: u64,
    counts: Arc<Mutex<Counts>>,
    shared: Option<Arc<Mutex<Shared>>>,
    errors: Arc<Mutex<Vec<String>>>,
    anomalies: Arc<Mutex<Vec<String>>>,
    /// The paths the operation in flight changes (re-read after a failure).
    touched: Vec<String>,
    /// The hash of every content this writer ever left in a file (to tell a conflict copy of
    /// its own earlier version from a stray file).
    hashes: BTreeSet<u64>,
    /// Every operation, timed (ms since the soak started): `logs/ops-<side>.log`.
    oplog: std::io::BufWriter<std::fs::File>,
    t0: Instant,
}

const SHARED_FILES: usize = 4;
const MAX_FILES: usize = 250;

impl Writer {
    fn files(&self) -> Vec<String> {
        self.model.iter().filter(|(_, e)| matches!(e, Ent::File { .. })).map(|(p, _)| p.clone()).collect()
    }

    fn dirs(&self) -> Vec<String> {
        let mut v = vec![self.ns.clone()];
        v.extend(self.model.iter().filter(|(_, e)| **e == Ent::Dir).map(|(p, _)| p.clone()));
        v
    }

    fn pick<'a>(&mut self, v: &'a [String]) -> &'a String {
        &v[self.rng.below(v.len() as u64) as usize]
    }

    fn size(&mut self) -> usize {
        match self.rng.below(100) {
            0..=69 => self.rng.below(4096) as usize,
            70..=97 => 4096 + self.rng.below(60 * 1024) as usize,
            _ => (128 << 10) + self.rng.below(896 << 10) as usize,
        }
    }

    /// Unique content: a header naming the write, then incompressible bytes.
    fn content(&mut self, rel: &str, len: usize) -> Vec<u8> {
        self.serial += 1;
        let mut b = format!("soak {} {rel} #{}\n", self.side, self.serial).into_bytes();
        let mut body = vec![0u8; len];
        Rng::new(self.rng.next()).fill(&mut body);
        b.extend_from_slice(&body);
        b
    }

    fn parent_dirs_depth(p: &str) -> usize {
        p.matches('/').count()
    }

    fn new_name(&mut self, prefix: &str) -> String {
        self.serial += 1;
        format!("{prefix}{}", self.serial)
    }

    /// One random operation. Errors are counted, and the model re-read from the writer's own
    /// view (so the check stays exact about propagation).
    fn step(&mut self) {
        let files = self.files();
        let dirs = self.dirs();
        let full = files.len() >= MAX_FILES;
        let r = self.rng.below(100);
        let kind: &'static str = match r {
            _ if files.is_empty() => "create",
            0..=24 if !full => "create",
            0..=24 => "delete",
            25..=44 => "overwrite",
            45..=59 => "append",
            60..=71 => "delete",
            72..=79 => "rename",
            80..=85 if dirs.len() < 30 => "mkdir",
            80..=85 => "rmdir -r",
            86..=88 if dirs.len() > 1 => "rmdir -r",
            89..=90 if dirs.len() > 1 => "rename dir",
            91..=97 if self.shared.is_some() => "shared",
            _ => "overwrite",
        };
        self.touched.clear();
        let t = self.t0.elapsed().as_millis();
        let res = self.apply(kind, &files, &dirs);
        let _ = writeln!(
            self.oplog,
            "{t} {} {kind} {} -> {}",
            self.t0.elapsed().as_millis(),
            self.touched.join(" "),
            match &res {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("ERROR {e:#}"),
            }
        );
        let mut c = self.counts.lock().unwrap();
        c.ops += 1;
        *c.by_kind.entry(kind).or_default() += 1;
        let audit = c.ops.is_multiple_of(50);
        match res {
            Ok(bytes) => {
                c.bytes += bytes;
                drop(c);
                if audit {
                    self.audit();
                }
            }
            Err(e) => {
                c.errors += 1;
                drop(c);
                let elsewhere = self.view_diff(&self.touched.clone());
                let diff = self.resync();
                let msg = format!(
                    "{} {} {kind}: {e:#} (re-read {:?}: {diff}){}",
                    util::clock(),
                    self.side,
                    self.touched,
                    if elsewhere.is_empty() {
                        String::new()
                    } else {
                        format!("; elsewhere the view differs from the writer's model: {elsewhere}")
                    }
                );
                eprintln!("  soak | {msg}");
                let mut errs = self.errors.lock().unwrap();
                if errs.len() < 50 {
                    errs.push(msg);
                }
                drop(errs);
            }
        }
    }

    /// Re-reads the paths the failed operation touched (with their subtrees) from the writer's
    /// own view into the model, and says how they differ from what the model had. Nothing else
    /// is adopted: an entry that shows up elsewhere is not the writer's doing.
    fn resync(&mut self) -> String {
        let mut diff = Vec::new();
        for t in self.touched.clone() {
            let mut m = BTreeMap::new();
            let full = self.root.join(&t);
            match std::fs::symlink_metadata(&full) {
                Ok(md) if md.is_dir() => {
                    m.insert(t.clone(), Ent::Dir);
                    if let Err(e) = walk(&self.root, &t, &|_| false, &mut m) {
                        diff.push(format!("cannot re-read {t}: {e}"));
                    }
                }
                Ok(md) if md.is_file() => match std::fs::read(&full) {
                    Ok(b) => {
                        m.insert(t.clone(), Ent::File { len: b.len() as u64, hash: fnv(FNV0, &b) });
                    }
                    Err(e) => diff.push(format!("cannot read {t}: {e}")),
                },
                Ok(_) => {
                    m.insert(t.clone(), Ent::Other);
                }
                Err(_) => {}
            }
            let pre = format!("{t}/");
            let old: BTreeMap<String, Ent> = self
                .model
                .iter()
                .filter(|(p, _)| **p == t || p.starts_with(&pre))
                .map(|(p, e)| (p.clone(), *e))
                .collect();
            diff.extend(show_diff(&old, &m, "model", "view"));
            self.model.retain(|p, _| *p != t && !p.starts_with(&pre));
            self.model.extend(m);
        }
        if diff.is_empty() {
            "as the model".into()
        } else {
            diff.join("; ")
        }
    }

    /// How the writer's own view of its namespace differs from its model (names, kinds and
    /// sizes), outside `except` (paths and their subtrees).
    fn view_diff(&self, except: &[String]) -> String {
        let mut m = BTreeMap::new();
        if let Err(e) = walk_how(&self.root, &self.ns, &|_| false, false, &mut m) {
            return format!("cannot list the namespace: {e}");
        }
        let out_of = |p: &String| !except.iter().any(|t| p == t || p.starts_with(&format!("{t}/")));
        let model: BTreeMap<String, Ent> = self
            .model
            .iter()
            .filter(|(p, _)| out_of(p))
            .map(|(p, e)| {
                (p.clone(), if let Ent::File { len, .. } = e { Ent::File { len: *len, hash: 0 } } else { *e })
            })
            .collect();
        let m: BTreeMap<String, Ent> = m.into_iter().filter(|(p, _)| out_of(p)).collect();
        show_diff(&model, &m, "model", "view").join("; ")
    }

    /// Now and then: the writer's own view must be exactly its model (nobody else writes in
    /// its namespace). A difference is a transient anomaly of the view (reported; the final
    /// check decides about lost writes).
    fn audit(&mut self) {
        let d = self.view_diff(&[]);
        let mut c = self.counts.lock().unwrap();
        c.audits += 1;
        if !d.is_empty() {
            c.audit_anomalies += 1;
            drop(c);
            let msg = format!("{} {}: its own view differs from its model: {d}", util::clock(), self.side);
            eprintln!("  soak | {msg}");
            let mut a = self.anomalies.lock().unwrap();
            if a.len() < 50 {
                a.push(msg);
            }
        }
    }

    fn apply(&mut self, kind: &str, files: &[String], dirs: &[String]) -> Result<u64> {
        let root = self.root.clone();
        match kind {
            "create" => {
                let d = self.pick(dirs).clone();
                let rel = format!("{d}/{}", self.new_name("f"));
                self.touched = vec![rel.clone()];
                let len = self.size();
                let b = self.content(&rel, len);
                std::fs::write(root.join(&rel), &b).with_context(|| format!("write {rel}"))?;
                self.record(&rel, &b);
                Ok(b.len() as u64)
            }
            "overwrite" => {
                let rel = self.pick(files).clone();
                self.touched = vec![rel.clone()];
                let len = self.size();
                let b = self.content(&rel, len);
                std::fs::write(root.join(&rel), &b).with_context(|| format!("overwrite {rel}"))?;
                self.record(&rel, &b);
                Ok(b.len() as u64)
            }
            "append" => {
                let rel = self.pick(files).clone();
                self.touched = vec![rel.clone()];
                let len = self.rng.below(2048) as usize;
                let b = self.content(&rel, len);
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(root.join(&rel))
                    .with_context(|| format!("open {rel} to append"))?;
                f.write_all(&b).with_context(|| format!("append to {rel}"))?;
                drop(f);
                match self.model.get(&rel) {
                    Some(Ent::File { len, hash }) => {
                        let e = Ent::File { len: len + b.len() as u64, hash: fnv(*hash, &b) };
                        if let Ent::File { hash, .. } = e {
                            self.hashes.insert(hash);
                        }
                        self.model.insert(rel, e);
                    }
                    _ => bail!("{rel} not a file in the model"),
                }
                Ok(b.len() as u64)
            }
            "delete" => {
                let rel = self.pick(files).clone();
                self.touched = vec![rel.clone()];
                std::fs::remove_file(root.join(&rel)).with_context(|| format!("delete {rel}"))?;
                self.model.remove(&rel);
                Ok(0)
            }
            "rename" => {
                let from = self.pick(files).clone();
                // Half the time over an existing file, else to a new name in some directory.
                let to = if self.rng.below(2) == 0 && files.len() > 1 {
                    self.pick(files).clone()
                } else {
                    let d = self.pick(dirs).clone();
                    format!("{d}/{}", self.new_name("r"))
                };
                if to == from {
                    return Ok(0);
                }
                self.touched = vec![from.clone(), to.clone()];
                std::fs::rename(root.join(&from), root.join(&to)).with_context(|| format!("rename {from} → {to}"))?;
                let e = self.model.remove(&from).expect("picked from the model");
                self.model.insert(to, e);
                Ok(0)
            }
            "mkdir" => {
                let candidates: Vec<String> = dirs.iter().filter(|d| Self::parent_dirs_depth(d) < 4).cloned().collect();
                let d = self.pick(&candidates).clone();
                let rel = format!("{d}/{}", self.new_name("d"));
                self.touched = vec![rel.clone()];
                std::fs::create_dir(root.join(&rel)).with_context(|| format!("mkdir {rel}"))?;
                self.model.insert(rel, Ent::Dir);
                Ok(0)
            }
            "rmdir -r" => {
                let rel = self.pick(&dirs[1..]).clone();
                self.touched = vec![rel.clone()];
                // The union may answer ENOTEMPTY for a while (see the report): like a user, try
                // again for up to 30 s.
                let mut tries = 0;
                loop {
                    match std::fs::remove_dir_all(root.join(&rel)) {
                        Ok(()) => break,
                        Err(e) if Errno::from_io_error(&e) == Some(Errno::NOTEMPTY) && tries < 30 && !stopped() => {
                            tries += 1;
                            std::thread::sleep(Duration::from_secs(1));
                        }
                        Err(e) => return Err(e).with_context(|| format!("rm -r {rel} (tried {} times)", tries + 1)),
                    }
                }
                if tries > 0 {
                    self.counts.lock().unwrap().rmdir_retried += 1;
                    let msg = format!(
                        "{} {}: rm -r {rel} failed with ENOTEMPTY {tries} time(s), then succeeded",
                        util::clock(),
                        self.side
                    );
                    eprintln!("  soak | {msg}");
                    let mut a = self.anomalies.lock().unwrap();
                    if a.len() < 50 {
                        a.push(msg);
                    }
                }
                let pre = format!("{rel}/");
                self.model.retain(|p, _| p != &rel && !p.starts_with(&pre));
                Ok(0)
            }
            "rename dir" => {
                let from = self.pick(&dirs[1..]).clone();
                let pre = format!("{from}/");
                let targets: Vec<String> = dirs
                    .iter()
                    .filter(|d| **d != from && !d.starts_with(&pre) && Self::parent_dirs_depth(d) < 4)
                    .cloned()
                    .collect();
                let d = self.pick(&targets).clone();
                let to = format!("{d}/{}", self.new_name("m"));
                self.touched = vec![from.clone(), to.clone()];
                match std::fs::rename(root.join(&from), root.join(&to)) {
                    Ok(()) => {
                        let moved: Vec<(String, Ent)> = self
                            .model
                            .iter()
                            .filter(|(p, _)| **p == from || p.starts_with(&pre))
                            .map(|(p, e)| (p.clone(), *e))
                            .collect();
                        for (p, e) in moved {
                            self.model.remove(&p);
                            self.model.insert(format!("{to}{}", &p[from.len()..]), e);
                        }
                        Ok(0)
                    }
                    // unionfs-fuse refuses to rename a directory that exists in the lower layer
                    // (EXDEV: `mv` would copy); what a user's `mv` does then is not ours to test.
                    Err(e) if matches!(Errno::from_io_error(&e), Some(Errno::XDEV | Errno::NOSYS)) => {
                        self.counts.lock().unwrap().refused_dir_renames += 1;
                        if !root.join(&from).is_dir() || root.join(&to).exists() {
                            bail!("rename {from} → {to} refused ({e}) but changed something");
                        }
                        Ok(0)
                    }
                    Err(e) => Err(e).with_context(|| format!("rename dir {from} → {to}")),
                }
            }
            "shared" => {
                let shared = self.shared.clone().expect("shared area on");
                let k = self.rng.below(SHARED_FILES as u64);
                let rel = format!("soak/shared/s{k}");
                let len = self.rng.below(4096) as usize;
                let b = self.content(&rel, len);
                // The lock gives the writes to one shared file a total order.
                let mut sh = shared.lock().unwrap();
                std::fs::write(root.join(&rel), &b).with_context(|| format!("write shared {rel}"))?;
                sh.writes.entry(rel).or_default().push(SharedWrite { side: self.side.clone(), hash: fnv(FNV0, &b) });
                Ok(b.len() as u64)
            }
            other => bail!("unknown op {other}"),
        }
    }

    fn record(&mut self, rel: &str, b: &[u8]) {
        let hash = fnv(FNV0, b);
        self.hashes.insert(hash);
        self.model.insert(rel.to_string(), Ent::File { len: b.len() as u64, hash });
    }
}

// ---------------------------------------------------------------------------------------------
// Samples and the table

#[derive(Debug, Clone, Default)]
struct SideSample {
    side: String,
    ops: u64,
    op_errors: u64,
    rounds_ok: Option<u64>,
    rounds_failed: Option<u64>,
    entries: Option<u64>,
    bytes: Option<u64>,
    conflicts: Option<u64>,
    rss_kib: Option<u64>,
    note: String,
}

#[derive(Debug, Clone)]
struct Sample {
    elapsed: Duration,
    sides: Vec<SideSample>,
}

fn num(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "–".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|v| format!("{:.1}", v as f64 / 1048576.0)).unwrap_or_else(|| "–".into())
}

fn table(samples: &[Sample]) -> String {
    let mut s = String::from(
        "| elapsed | side | writer ops | op errors | rounds committed | rounds failed | entries synced | MiB synced | conflicts | RSS MiB | note |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for smp in samples {
        let t = smp.elapsed.as_secs();
        for x in &smp.sides {
            s.push_str(&format!(
                "| {:02}:{:02} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                t / 60,
                t % 60,
                x.side,
                x.ops,
                x.op_errors,
                fmt_opt(x.rounds_ok),
                fmt_opt(x.rounds_failed),
                fmt_opt(x.entries),
                mib(x.bytes),
                fmt_opt(x.conflicts),
                x.rss_kib.map(|k| format!("{:.1}", k as f64 / 1024.0)).unwrap_or_else(|| "–".into()),
                x.note.replace('|', "/"),
            ));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The run

struct World {
    computes: Vec<Compute>,
    ids: Vec<String>,
    broker: Broker,
    home: PathBuf,
}

fn sample(
    w: &World,
    start: Instant,
    counts: &[Arc<Mutex<Counts>>],
    last_errors: &mut BTreeMap<String, BTreeSet<String>>,
) -> Sample {
    let mut sides = Vec::new();
    // Writer 0 is the project's.
    let pc = counts[0].lock().unwrap().clone();
    let mut ps = SideSample {
        side: "project (broker)".into(),
        ops: pc.ops,
        op_errors: pc.errors,
        rss_kib: rss_kib(w.broker.pid()),
        ..Default::default()
    };
    match ask(&w.broker.sock, r#"{"cmd":"status"}"#, Duration::from_secs(10)) {
        Ok(v) => {
            let sess = v["status"]["broker"]["sessions"].as_array().cloned().unwrap_or_default();
            let sum = |f: &dyn Fn(&Value) -> u64| -> u64 { sess.iter().map(f).sum() };
            ps.rounds_ok = Some(sum(&|s| num(&s["rounds_committed"]).unwrap_or(0)));
            ps.rounds_failed = Some(sum(&|s| num(&s["rounds_failed"]).unwrap_or(0)));
            ps.entries = Some(sum(&|s| num(&s["entries_in"]).unwrap_or(0) + num(&s["entries_out"]).unwrap_or(0)));
            ps.bytes = Some(sum(&|s| num(&s["bytes_in"]).unwrap_or(0) + num(&s["bytes_out"]).unwrap_or(0)));
            ps.conflicts = Some(sum(&|s| num(&s["conflicts_total"]).unwrap_or(0)));
            ps.note = format!("{} sessions", sess.len());
            for s in &sess {
                if let Some(e) = s["last_error"].as_str() {
                    last_errors.entry("broker".into()).or_default().insert(format!("{}: {e}", s["client"]));
                }
            }
        }
        Err(e) => ps.note = format!("status: {e:#}"),
    }
    sides.push(ps);
    for (i, c) in w.computes.iter().enumerate() {
        let cc = counts[i + 1].lock().unwrap().clone();
        let mut x = SideSample {
            side: w.ids[i].clone(),
            ops: cc.ops,
            op_errors: cc.errors,
            rss_kib: rss_kib(c.pid()),
            ..Default::default()
        };
        match c.status() {
            Ok(st) => {
                let r = &st["round"];
                let p = &st["packer"];
                x.rounds_ok = num(&r["rounds_committed"]);
                x.rounds_failed = num(&r["rounds_failed"]);
                x.entries = Some(num(&p["entries_packed"]).unwrap_or(0) + num(&p["entries_applied"]).unwrap_or(0));
                x.bytes = Some(num(&p["bytes_packed"]).unwrap_or(0) + num(&p["bytes_applied"]).unwrap_or(0));
                x.conflicts = num(&r["conflicts_total"]);
                let mut note = vec![r["phase"].as_str().unwrap_or("?").to_string()];
                if let Some(rail) = st["mounts"]["rail"].as_str() {
                    note.push(format!("rail: {rail}"));
                }
                if let Some(e) = r["last_error"].as_str() {
                    last_errors.entry(w.ids[i].clone()).or_default().insert(e.to_string());
                }
                if let Some(e) = p["last_error"].as_str() {
                    last_errors.entry(w.ids[i].clone()).or_default().insert(format!("packer: {e}"));
                }
                x.note = note.join(", ");
            }
            Err(e) => x.note = format!("status: {e:#}"),
        }
        sides.push(x);
    }
    Sample { elapsed: start.elapsed(), sides }
}

/// What a converged system no longer changes: the services' counters and every tree.
fn fingerprint(w: &World) -> Vec<u64> {
    let mut v = Vec::new();
    for c in &w.computes {
        if let Ok(st) = c.status() {
            let p = &st["packer"];
            for f in ["entries_packed", "entries_applied", "bytes_packed", "bytes_applied"] {
                v.push(num(&p[f]).unwrap_or(0));
            }
            v.push(num(&st["round"]["conflicts_total"]).unwrap_or(0));
        }
        v.push(tree_digest(&c.upper, &|_| false));
    }
    v.push(tree_digest(&w.home, &not_synced));
    v
}

fn tree_digest(root: &Path, skip: &dyn Fn(&str) -> bool) -> u64 {
    let mut m = BTreeMap::new();
    let _ = walk(root, "", skip, &mut m);
    let mut h = FNV0;
    for (p, e) in &m {
        h = fnv(h, p.as_bytes());
        h = fnv(h, format!("{e:?}").as_bytes());
    }
    h
}

/// Every committed round seen in the status (polled every 200 ms: a round may be missed when
/// several commit in between), with what it did not do: `logs/rounds-<id>.log`.
struct RoundLog {
    files: Vec<std::io::BufWriter<std::fs::File>>,
    last: Vec<u64>,
    seen: u64,
    missed: u64,
    totals: BTreeMap<&'static str, u64>,
}

const ROUND_LISTS: [&str; 5] = ["conflicts", "kept_on_project", "kept_on_compute", "not_applied", "refused"];

impl RoundLog {
    fn new(logs: &Path, ids: &[String]) -> Result<RoundLog> {
        let mut files = Vec::new();
        for id in ids {
            files.push(std::io::BufWriter::new(std::fs::File::create(logs.join(format!("rounds-{id}.log")))?));
        }
        Ok(RoundLog { files, last: vec![0; ids.len()], seen: 0, missed: 0, totals: BTreeMap::new() })
    }

    fn poll(&mut self, w: &World, start: Instant) {
        for (i, c) in w.computes.iter().enumerate() {
            let Ok(st) = c.status() else { continue };
            let lc = &st["round"]["last_committed"];
            let Some(n) = lc["round"].as_u64() else { continue };
            if n == self.last[i] {
                continue;
            }
            if self.last[i] != 0 && n > self.last[i] + 1 {
                self.missed += n - self.last[i] - 1;
            }
            self.last[i] = n;
            self.seen += 1;
            let mut line = format!("{} round {n} {}ms", start.elapsed().as_millis(), lc["duration_ms"]);
            if let Some(steps) = lc["steps"].as_array() {
                for st in steps {
                    line.push_str(&format!(
                        " {}:{}/{}B",
                        st["step"].as_str().unwrap_or("?"),
                        st["entries"],
                        st["bytes"]
                    ));
                }
            }
            for k in ROUND_LISTS {
                if let Some(a) = lc[k].as_array() {
                    if !a.is_empty() {
                        *self.totals.entry(k).or_default() += a.len() as u64;
                        let items: Vec<String> = a
                            .iter()
                            .map(|v| v.as_str().map(|s| s.to_string()).unwrap_or_else(|| v.to_string()))
                            .collect();
                        line.push_str(&format!(" {k}=[{}]", items.join(", ")));
                    }
                }
            }
            let _ = writeln!(self.files[i], "{line}");
        }
    }

    fn summary(&self) -> String {
        format!(
            "- Committed rounds read from the status: {} ({} missed between two polls); in them: {}\n",
            self.seen,
            self.missed,
            if self.totals.is_empty() {
                "nothing conflicted, kept, not applied or refused".to_string()
            } else {
                self.totals.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", ")
            }
        )
    }
}

#[derive(Default)]
struct Verdict {
    missing: u64,
    wrong: u64,
    resurrected: u64,
    unexpected: u64,
    shared_lost: u64,
    torn: u64,
    spurious: u64,
    disagreements: u64,
    checked_files: u64,
    checked_dirs: u64,
    details: Vec<String>,
}

impl Verdict {
    fn lost(&self) -> u64 {
        self.missing + self.wrong + self.resurrected + self.unexpected + self.shared_lost
    }
    fn note(&mut self, s: String) {
        if self.details.len() < 40 {
            self.details.push(s);
        }
    }
}

struct Final {
    side: String,
    ns: String,
    model: BTreeMap<String, Ent>,
    /// Every path the writer ever had (to tell a resurrected delete from a stray path).
    ever: BTreeSet<String>,
    hashes: BTreeSet<u64>,
}

fn check(w: &World, finals: &[Final], shared: Option<&Shared>) -> Verdict {
    let mut v = Verdict::default();
    let mut views: Vec<(String, PathBuf)> = vec![("project".into(), w.home.clone())];
    for (i, c) in w.computes.iter().enumerate() {
        views.push((format!("{} merged", w.ids[i]), c.merged.clone()));
    }
    let mut trees = Vec::new();
    for (name, root) in &views {
        let mut m = BTreeMap::new();
        if let Err(e) = walk(root, "", &not_synced, &mut m) {
            v.note(format!("{name}: cannot walk: {e}"));
            v.disagreements += 1;
        }
        for f in finals {
            for (p, want) in &f.model {
                match (want, m.get(p)) {
                    (Ent::File { .. }, None) | (Ent::Dir, None) => {
                        v.missing += 1;
                        v.note(format!("{name}: {p} missing (written by {})", f.side));
                    }
                    (a, Some(b)) if a != b => {
                        v.wrong += 1;
                        v.note(format!("{name}: {p} is {b:?}, {} wrote {a:?}", f.side));
                    }
                    _ => {}
                }
                match want {
                    Ent::Dir => v.checked_dirs += 1,
                    _ => v.checked_files += 1,
                }
            }
            let pre = format!("{}/", f.ns);
            for (p, e) in m.range(pre.clone()..) {
                if !p.starts_with(&pre) {
                    break;
                }
                if !f.model.contains_key(p) {
                    let own_copy = p.rsplit('/').next().is_some_and(|n| n.contains(".conflict-"))
                        && matches!(e, Ent::File { hash, .. } if f.hashes.contains(hash));
                    if own_copy {
                        // Nothing lost: an earlier version of the writer's own, made a conflict
                        // copy though nobody else writes there (reported, not counted).
                        v.spurious += 1;
                        v.note(format!(
                            "{name}: {p} is a conflict copy of an earlier version by {}, the only writer there",
                            f.side
                        ));
                    } else if f.ever.contains(p) {
                        v.resurrected += 1;
                        v.note(format!("{name}: {p} ({e:?}) was deleted by {} but is there", f.side));
                    } else {
                        v.unexpected += 1;
                        v.note(format!("{name}: {p} ({e:?}) is there, {} never wrote it", f.side));
                    }
                }
            }
        }
        trees.push((name.clone(), m));
    }
    if let Some(sh) = shared {
        let p = &trees[0].1;
        for (path, writes) in &sh.writes {
            let (dir, base) = path.rsplit_once('/').expect("soak/shared/…");
            let copies: Vec<(&String, &Ent)> = p
                .range(format!("{dir}/")..)
                .take_while(|(k, _)| k.starts_with(&format!("{dir}/")))
                .filter(|(k, _)| {
                    let n = &k[dir.len() + 1..];
                    n == base || n.starts_with(&format!("{base}.conflict-"))
                })
                .collect();
            let hashes: BTreeSet<u64> = copies
                .iter()
                .filter_map(|(_, e)| if let Ent::File { hash, .. } = e { Some(*hash) } else { None })
                .collect();
            let last = writes.last().expect("at least one write");
            if !hashes.contains(&last.hash) {
                v.shared_lost += 1;
                v.note(format!(
                    "project: the last write to {path} (by {}) is neither the file nor a conflict copy ({} candidates)",
                    last.side,
                    copies.len()
                ));
            }
            let written: BTreeSet<u64> = writes.iter().map(|w| w.hash).collect();
            for (k, e) in &copies {
                if let Ent::File { hash, .. } = e {
                    if !written.contains(hash) {
                        v.torn += 1;
                        v.note(format!("project: {k} holds content no side wrote completely (a partial write?)"));
                    }
                }
            }
        }
    }
    // The whole synced tree, identical everywhere.
    let (pname, p) = &trees[0];
    for (name, m) in &trees[1..] {
        let keys: BTreeSet<&String> = p.keys().chain(m.keys()).collect();
        for k in keys {
            let (a, b) = (p.get(k), m.get(k));
            if a != b {
                v.disagreements += 1;
                v.note(format!("{pname} has {k} as {a:?}, {name} as {b:?}"));
            }
        }
    }
    v
}

fn run(cli: SoakCli) -> Result<i32> {
    let t_start = Instant::now();
    util::clock();
    if cli.clients == 0 {
        bail!("--clients must be at least 1");
    }
    if !cs_testbed::real_tools_available() {
        bail!("the soak needs /dev/fuse, sshd, ssh-keygen, sshfs and unionfs-fuse (deploy/install-deps.sh)");
    }
    let bin = crate::find_cs_actor(cli.cs_actor.clone())?;
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
            % 1_000_000
    });
    let command = std::iter::once("cs-bench".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let (root, _tmp) = util::work_dir(cli.dir.as_deref(), "cs-soak.")?;
    eprintln!(
        "{} cs-bench soak: {} client(s), {} min, RTT {} ms, seed {seed}, round interval {} s, {} ops/s per writer; working in {}",
        util::clock(),
        cli.clients,
        cli.minutes,
        cli.rtt,
        cli.interval,
        cli.ops,
        root.display()
    );
    let r = soak(&cli, &bin, &root, seed, &command);
    let left = crate::mounts_below(&root);
    if !left.is_empty() {
        eprintln!("{} cs-bench soak: still mounted, detaching: {left:?}", util::clock());
        for m in &left {
            let _ = cs_testbed::lazy_unmount(m);
        }
    }
    if cli.keep || cli.dir.is_some() {
        eprintln!("{} cs-bench soak: work directory kept: {}", util::clock(), root.display());
    } else if left.is_empty() {
        let _ = remove_tree(&root);
    }
    eprintln!("{} cs-bench soak: done in {:.0} s", util::clock(), t_start.elapsed().as_secs_f64());
    r
}

fn soak(cli: &SoakCli, bin: &Path, root: &Path, seed: u64, command: &str) -> Result<i32> {
    let home = root.join("project").join("home");
    std::fs::create_dir_all(home.join("soak").join("shared"))?;
    std::fs::create_dir_all(home.join("soak").join("project"))?;
    std::fs::write(home.join("README"), "the soak's project home\n")?;
    let sshd_dir = root.join("sshd");
    std::fs::create_dir_all(&sshd_dir)?;
    let sshd = Sshd::start(&sshd_dir)?;
    let shaper = Shaper::start(LinkConfig::rtt(Duration::from_millis(cli.rtt)))?;
    let ssh_route = shaper.route(sshd.addr())?;
    let ids: Vec<String> = (0..cli.clients).map(|i| format!("c{i}")).collect();
    let bdir = root.join("broker");
    let broker = Broker::start_many(bin, &home, &bdir, &ids)?;
    let broker_route: SocketAddr = shaper.route(broker.listen)?;
    let mut computes = Vec::new();
    for id in &ids {
        if stopped() {
            bail!("interrupted");
        }
        let cdir = root.join(id);
        let target = cs_mount::SshfsTarget {
            user: Some(cs_testbed::current_user()),
            host: "127.0.0.1".into(),
            port: Some(ssh_route.port()),
            remote_dir: home.display().to_string(),
            ssh_options: sshd.ssh_options(),
        };
        let lower_cmd = cs_mount::sshfs_command(&target, &cdir.join("lower"), &cs_mount::SshfsOptions::default());
        let c = Compute::start(ComputeSpec {
            bin,
            dir: &cdir,
            server: format!("ws://{broker_route}"),
            id,
            token_file: &bdir.join(format!("token-{id}")),
            lower: ComputeLower::Cmd(lower_cmd),
            interval: cli.interval,
            union: cli.union.as_deref(),
            extra: &[],
        })?;
        eprintln!("{} cs-bench soak: {id} up (pid {})", util::clock(), c.pid());
        computes.push(c);
    }
    let w = World { computes, ids: ids.clone(), broker, home: home.clone() };
    let out = drive(cli, &w, seed, command);
    eprintln!("{} cs-bench soak: stopping the services", util::clock());
    let World { computes, broker, .. } = w;
    for mut c in computes {
        c.shutdown();
    }
    broker.stop();
    drop(shaper);
    drop(sshd);
    out
}

fn drive(cli: &SoakCli, w: &World, seed: u64, command: &str) -> Result<i32> {
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let shared = (!cli.no_shared).then(|| Arc::new(Mutex::new(Shared::default())));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let anomalies = Arc::new(Mutex::new(Vec::<String>::new()));
    let logs = w.home.parent().and_then(|p| p.parent()).expect("ROOT/project/home").join("logs");
    std::fs::create_dir_all(&logs)?;
    let mut sides: Vec<(String, PathBuf)> = vec![("project".into(), w.home.clone())];
    for (i, c) in w.computes.iter().enumerate() {
        sides.push((w.ids[i].clone(), c.merged.clone()));
    }
    let counts: Vec<Arc<Mutex<Counts>>> = sides.iter().map(|_| Arc::new(Mutex::new(Counts::default()))).collect();
    let run_for = Duration::from_secs_f64(cli.minutes * 60.0);
    let period = Duration::from_secs_f64(1.0 / cli.ops.max(0.01));

    // The writers.
    let mut handles = Vec::new();
    for (k, (side, view)) in sides.iter().enumerate() {
        let ns = format!("soak/{side}");
        std::fs::create_dir_all(view.join(&ns)).with_context(|| format!("mkdir {ns} in {}", view.display()))?;
        let mut wr = Writer {
            side: side.clone(),
            root: view.clone(),
            ns,
            model: BTreeMap::new(),
            rng: Rng::new(seed.wrapping_mul(1000).wrapping_add(k as u64 + 1)),
            serial: 0,
            counts: counts[k].clone(),
            shared: shared.clone(),
            errors: errors.clone(),
            anomalies: anomalies.clone(),
            touched: Vec::new(),
            hashes: BTreeSet::new(),
            oplog: std::io::BufWriter::new(std::fs::File::create(logs.join(format!("ops-{side}.log")))?),
            t0: start,
        };
        let stop = stop.clone();
        handles.push(std::thread::Builder::new().name(format!("writer-{side}")).spawn(move || {
            let mut ever = BTreeSet::new();
            let mut rng = Rng::new(seed ^ 0xabcdef ^ k as u64);
            while !stop.load(Ordering::Relaxed) && !stopped() {
                wr.step();
                ever.extend(wr.model.keys().cloned());
                let jitter = 0.5 + rng.below(1000) as f64 / 1000.0;
                std::thread::sleep(period.mul_f64(jitter));
            }
            Final { side: wr.side.clone(), ns: wr.ns.clone(), model: wr.model.clone(), ever, hashes: wr.hashes.clone() }
        })?);
    }
    // Rounds on demand, now and then, on a random compute server (not waiting).
    let demanded = Arc::new(AtomicU64::new(0));
    let socks: Vec<PathBuf> = w.computes.iter().map(|c| c.sock.clone()).collect();
    let demand = {
        let stop = stop.clone();
        let demanded = demanded.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5eed);
            while !stop.load(Ordering::Relaxed) && !stopped() {
                let wait = Duration::from_millis(2000 + rng.below(8000));
                let end = Instant::now() + wait;
                while Instant::now() < end && !stop.load(Ordering::Relaxed) && !stopped() {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if stop.load(Ordering::Relaxed) || stopped() {
                    break;
                }
                let s = &socks[rng.below(socks.len() as u64) as usize];
                if ask(s, r#"{"cmd":"sync","wait":false}"#, Duration::from_secs(10)).is_ok() {
                    demanded.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    // Progress.
    let mut samples = Vec::new();
    let mut last_errors: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let every = Duration::from_secs_f64(cli.report_every.max(1.0));
    let mut next_report = start + every;
    let mut died = Vec::new();
    let mut rounds = RoundLog::new(&logs, &w.ids)?;
    while start.elapsed() < run_for && !stopped() {
        std::thread::sleep(Duration::from_millis(200));
        rounds.poll(w, start);
        for (i, c) in w.computes.iter().enumerate() {
            if c.pid() != 0 && !Path::new(&format!("/proc/{}", c.pid())).exists() && !died.contains(&w.ids[i]) {
                died.push(w.ids[i].clone());
            }
        }
        if Instant::now() >= next_report {
            next_report += every;
            let s = sample(w, start, &counts, &mut last_errors);
            println!("{}", table(std::slice::from_ref(&s)));
            let _ = std::io::stdout().flush();
            samples.push(s);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut finals = Vec::new();
    for h in handles {
        finals.push(h.join().map_err(|_| anyhow::anyhow!("a writer panicked"))?);
    }
    let _ = demand.join();
    if cli.sabotage {
        // The checker's self-test: one write is recorded wrongly, as if it had been lost; every
        // view must then count it.
        let f = &mut finals[0];
        if let Some((p, e)) = f.model.iter_mut().find(|(_, e)| matches!(e, Ent::File { .. })) {
            if let Ent::File { hash, .. } = e {
                *hash ^= 1;
            }
            eprintln!("{} cs-bench soak: SABOTAGE: the checker expects a wrong hash for {p}", util::clock());
        }
    }
    if stopped() {
        eprintln!("{} cs-bench soak: interrupted; cleaning up", util::clock());
        return Ok(130);
    }
    let writing = start.elapsed();
    eprintln!("{} cs-bench soak: writers stopped after {:.0} s; converging", util::clock(), writing.as_secs_f64());

    // Convergence: rounds on every compute server until a full pass changes nothing.
    let t_conv = Instant::now();
    let bound = Duration::from_secs_f64(cli.converge_timeout);
    let mut passes = 0;
    let mut converged = false;
    let mut conv_errors = Vec::new();
    while t_conv.elapsed() < bound && !stopped() {
        let before = fingerprint(w);
        for (i, c) in w.computes.iter().enumerate() {
            let left = bound.saturating_sub(t_conv.elapsed()).max(Duration::from_secs(1));
            if let Err(e) = c.sync(left) {
                conv_errors.push(format!("{}: {e:#}", w.ids[i]));
            }
        }
        passes += 1;
        let after = fingerprint(w);
        if before == after {
            converged = true;
            break;
        }
    }
    let conv_time = t_conv.elapsed();
    rounds.poll(w, start);
    eprintln!(
        "{} cs-bench soak: {} after {passes} pass(es), {:.1} s",
        util::clock(),
        if converged { "converged" } else { "NOT converged" },
        conv_time.as_secs_f64()
    );

    // The check. The merged views see the project's own files through sshfs, whose caches may
    // hold an old answer for cs-actor's staleness bound: a difference is re-checked for 45 s.
    let sh_guard = shared.as_ref().map(|s| s.lock().unwrap());
    let t_check = Instant::now();
    let mut verdict;
    loop {
        verdict = check(w, &finals, sh_guard.as_deref());
        if (verdict.lost() == 0 && verdict.disagreements == 0)
            || t_check.elapsed() > Duration::from_secs(45)
            || stopped()
        {
            break;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let final_sample = sample(w, start, &counts, &mut last_errors);
    samples.push(final_sample);

    // The report.
    let mut md = String::new();
    md.push_str("## cs-bench soak\n\n");
    md.push_str(&format!("- Command: `{command}`\n"));
    md.push_str(&format!("- Machine: {} (load average {})\n", util::machine(), util::loadavg()));
    md.push_str(&format!(
        "- {} compute service(s) ({} union) and one broker, RTT {} ms, round interval {} s, seed {seed}; writers ran {:.0} s at ~{} ops/s each; {} rounds asked on demand\n",
        w.computes.len(),
        cli.union.as_deref().unwrap_or("default"),
        cli.rtt,
        cli.interval,
        writing.as_secs_f64(),
        cli.ops,
        demanded.load(Ordering::Relaxed)
    ));
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut refused, mut retried, mut audits, mut odd) = (0, 0, 0, 0);
    for c in &counts {
        let c = c.lock().unwrap();
        for (k, n) in &c.by_kind {
            *kinds.entry(k).or_default() += n;
        }
        refused += c.refused_dir_renames;
        retried += c.rmdir_retried;
        audits += c.audits;
        odd += c.audit_anomalies;
    }
    md.push_str(&format!(
        "- Operations: {}{}\n\n",
        kinds.iter().map(|(k, n)| format!("{k} {n}")).collect::<Vec<_>>().join(", "),
        if refused > 0 {
            format!(" ({refused} directory renames refused by the union with EXDEV)")
        } else {
            String::new()
        }
    ));
    md.push_str(&table(&samples));
    md.push_str(&format!(
        "\n- Convergence: {} after {passes} pass(es) of rounds on every compute server, {:.1} s (bound {:.0} s){}\n",
        if converged { "reached" } else { "NOT reached" },
        conv_time.as_secs_f64(),
        bound.as_secs_f64(),
        if conv_errors.is_empty() {
            String::new()
        } else {
            format!("; failed rounds meanwhile: {}", conv_errors.join("; "))
        }
    ));
    md.push_str(&format!(
        "- Checked in {} views (project + every merged view): {} file and {} directory expectations (expected paths × views); shared files: {}\n",
        1 + w.computes.len(),
        verdict.checked_files,
        verdict.checked_dirs,
        sh_guard.as_ref().map(|s| format!("{} written {} times", s.writes.len(), s.writes.values().map(|v| v.len()).sum::<usize>())).unwrap_or_else(|| "off".into())
    ));
    md.push_str(&format!(
        "- Violations: missing {}, wrong content {}, resurrected deletes {}, unexpected paths {}, shared last writes lost {}; not counted: torn conflict copies {}, conflict copies of a writer's own earlier version in its own namespace {}; views disagreeing on the synced tree: {}\n",
        verdict.missing, verdict.wrong, verdict.resurrected, verdict.unexpected, verdict.shared_lost, verdict.torn, verdict.spurious, verdict.disagreements
    ));
    md.push_str(&format!(
        "- Anomalies while writing (not counted as lost writes; the final check decides): `rm -r` retried after ENOTEMPTY {retried} time(s); audits of a writer's own view finding it unlike the writer's model: {odd} of {audits}\n"
    ));
    let anom = anomalies.lock().unwrap();
    if !anom.is_empty() {
        md.push_str(&format!("- Anomalies (first {}):\n", anom.len()));
        for a in anom.iter() {
            md.push_str(&format!("  - {a}\n"));
        }
    }
    let errs = errors.lock().unwrap();
    if !errs.is_empty() {
        md.push_str(&format!("- Writer errors (first {}):\n", errs.len()));
        for e in errs.iter() {
            md.push_str(&format!("  - {e}\n"));
        }
    }
    if !last_errors.is_empty() {
        md.push_str("- Round errors seen in the status:\n");
        for (who, es) in &last_errors {
            for e in es.iter().take(10) {
                md.push_str(&format!("  - {who}: {e}\n"));
            }
        }
    }
    md.push_str(&rounds.summary());
    if !died.is_empty() {
        md.push_str(&format!("- Compute services that died: {}\n", died.join(", ")));
    }
    if !verdict.details.is_empty() {
        md.push_str("- Details:\n");
        for d in &verdict.details {
            md.push_str(&format!("  - {d}\n"));
        }
    }
    md.push_str(&format!("\nlost writes: {}\n", verdict.lost()));
    println!("{md}");
    if let Some(p) = &cli.markdown {
        std::fs::write(p, &md).with_context(|| format!("write {}", p.display()))?;
    }
    let ok = verdict.lost() == 0 && verdict.disagreements == 0 && converged && died.is_empty();
    Ok(if ok { 0 } else { 3 })
}
