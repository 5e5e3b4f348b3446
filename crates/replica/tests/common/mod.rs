//! The bed of the replica's real tests: a loop image, a tree built from a project
//! directory's snapshot, kernel overlayfs over it, the fill service with a Source that
//! copies from the project. Everything is undone by `Drop`, in order, even on failure.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use cs_protocol::{EntryKind, RelPath, SnapshotEntry, SnapshotReport, Timestamp};
use cs_replica::{FillConfig, Filler, FillerHandle, ReplicaFs, SnapshotWriter, Source, SourceReport, Tree};
use cs_union::overlay::{Overlay, OverlayGuard};

/// Root is needed for the loop device, overlayfs and fanotify: without it the test says
/// why and passes without running.
pub fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (loop image, overlayfs, fanotify permission events)");
    false
}

pub fn rel(s: impl Into<Vec<u8>>) -> RelPath {
    RelPath::new(s).unwrap()
}

/// The snapshot P would send of `dir`: pre-order, names sorted.
pub fn snapshot(dir: &Path) -> Vec<SnapshotEntry> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<SnapshotEntry>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_symlink() {
                EntryKind::Symlink
            } else {
                EntryKind::File
            };
            out.push(SnapshotEntry {
                path: RelPath::from_path(p.strip_prefix(root).unwrap()).unwrap(),
                kind,
                mode: md.mode() & 0o7777,
                size: if ft.is_dir() { 0 } else { md.len() },
                mtime: Timestamp::new(md.mtime(), md.mtime_nsec() as u32),
                target: ft.is_symlink().then(|| fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()),
            });
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

pub fn put(root: &Path, rel: impl AsRef<OsStr>, content: &[u8], mode: u32) {
    let p = root.join(rel.as_ref());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Deterministic bytes that are not zeros (a placeholder reads zeros).
pub fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1).collect()
}

/// The project of the tests.
pub fn make_project(p: &Path) {
    put(p, "a.txt", b"hello from the project\n", 0o644);
    put(p, "empty", b"", 0o644);
    put(p, "ro.txt", b"read only\n", 0o444);
    put(p, "run.sh", b"#!/bin/sh\necho script-ran\n", 0o755);
    put(p, "sub/deep/file.bin", &bytes(200 * 1024, 7), 0o644);
    put(p, OsStr::from_bytes(b"caf\xe9"), b"latin-1 name\n", 0o644);
    put(p, "big/big.bin", &bytes(3 << 20, 3), 0o644);
    put(p, "big/big2.bin", &bytes(2 << 20, 5), 0o644);
    put(p, "hot/hot.txt", &bytes(64 * 1024, 9), 0o644);
    for i in 0..20 {
        put(p, format!("many/f{i:02}"), format!("sibling {i}\n").as_bytes(), 0o644);
    }
    std::os::unix::fs::symlink("../a.txt", p.join("sub/link")).unwrap();
}

pub enum Behaviour {
    Copy,
    Fail,
    /// Never answers until released (or 30 s).
    Hang(Arc<(Mutex<bool>, Condvar)>),
    /// A call of more than one path (a read-ahead batch) fails; one path is copied.
    FailBatches,
}

/// A Source that copies from the project directory, counting its calls.
pub struct CopySource {
    pub project: PathBuf,
    pub delay: Duration,
    /// Added to `delay` for a call of more than one path (a read-ahead batch).
    pub batch_delay: Duration,
    pub behaviour: Behaviour,
    pub calls: AtomicUsize,
    pub asked: Mutex<Vec<Vec<RelPath>>>,
}

impl CopySource {
    pub fn new(project: &Path, behaviour: Behaviour) -> CopySource {
        CopySource {
            project: project.to_path_buf(),
            delay: Duration::ZERO,
            batch_delay: Duration::ZERO,
            behaviour,
            calls: AtomicUsize::new(0),
            asked: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Source for CopySource {
    fn fetch(&self, paths: &[RelPath], staging: &Path) -> Result<SourceReport, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().push(paths.to_vec());
        std::thread::sleep(self.delay);
        if paths.len() > 1 {
            std::thread::sleep(self.batch_delay);
        }
        match &self.behaviour {
            Behaviour::Fail => return Err("the test source fails".into()),
            Behaviour::Hang(release) => {
                let (m, cv) = &**release;
                let g = m.lock().unwrap();
                let _g = cv.wait_timeout_while(g, Duration::from_secs(30), |r| !*r).unwrap();
                return Err("released".into());
            }
            Behaviour::FailBatches if paths.len() > 1 => return Err("the test source fails batches".into()),
            Behaviour::Copy | Behaviour::FailBatches => {}
        }
        let mut report = SourceReport::default();
        for p in paths {
            let src = self.project.join(p.as_path());
            let Ok(md) = fs::symlink_metadata(&src) else {
                report.missing.push(p.clone());
                continue;
            };
            let dst = staging.join(p.as_path());
            fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
            fs::copy(&src, &dst).map_err(|e| e.to_string())?;
            let f = fs::File::options().write(true).open(&dst).map_err(|e| e.to_string())?;
            f.set_modified(md.modified().unwrap()).map_err(|e| e.to_string())?;
            report.written.push(p.clone());
        }
        Ok(report)
    }
}

pub struct Bed {
    pub filler: Option<FillerHandle>,
    pub overlay: Option<OverlayGuard>,
    pub fs: Option<ReplicaFs>,
    pub source: Option<Arc<CopySource>>,
    pub tree: Option<Tree>,
    pub project: PathBuf,
    pub merged: PathBuf,
    pub mnt: PathBuf,
    pub dir: PathBuf,
    pub cfg: Option<FillConfig>,
    _tmp: tempfile::TempDir,
}

impl Bed {
    /// Project made, image mounted, tree built (no overlay, no filler yet).
    pub fn new(project: impl FnOnce(&Path)) -> Bed {
        let tmp = tempfile::Builder::new().prefix("cs-replica-").tempdir_in("/var/tmp").unwrap();
        let dir = tmp.path().to_path_buf();
        // The unprivileged reader goes through here to the merged view and its cp target.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let mut bed = Bed {
            filler: None,
            overlay: None,
            fs: None,
            source: None,
            tree: None,
            project: dir.join("project"),
            merged: dir.join("merged"),
            mnt: dir.join("mnt"),
            dir,
            cfg: None,
            _tmp: tmp,
        };
        fs::create_dir(&bed.project).unwrap();
        project(&bed.project);
        bed.fs = Some(ReplicaFs::ensure(&bed.dir.join("replica.img"), 256 << 20, 8192, &bed.mnt).unwrap());
        let entries = snapshot(&bed.project);
        let mut w = SnapshotWriter::begin(&bed.mnt.join("replica"), None).unwrap();
        for e in &entries {
            w.add(e).unwrap();
        }
        bed.tree = Some(w.finish(&SnapshotReport { entries: entries.len() as u64, ..Default::default() }).unwrap());
        bed
    }

    pub fn tree_dir(&self) -> PathBuf {
        self.tree.as_ref().unwrap().dir.clone()
    }

    pub fn mount_overlay(&mut self) {
        for d in ["upper", "merged"] {
            fs::create_dir_all(self.dir.join(d)).unwrap();
            fs::set_permissions(self.dir.join(d), fs::Permissions::from_mode(0o755)).unwrap();
        }
        let ov = Overlay {
            upper: self.dir.join("upper"),
            lower: self.tree_dir(),
            work: self.dir.join("work"),
            merged: self.merged.clone(),
            extra: vec![],
        };
        self.overlay = Some(ov.mount().unwrap());
    }

    pub fn config(&self) -> FillConfig {
        FillConfig::new(&self.mnt, self.mnt.join("staging"))
    }

    pub fn start(&mut self, cfg: FillConfig, source: CopySource) -> Arc<CopySource> {
        let s = Arc::new(source);
        self.filler = Some(Filler::start(cfg.clone(), s.clone()).unwrap());
        self.cfg = Some(cfg);
        self.source = Some(s.clone());
        s
    }

    /// Overlay mounted and the filler started with `source` (copying by default).
    pub fn full(
        project: impl FnOnce(&Path),
        source: impl FnOnce(&Path) -> CopySource,
        cfg: impl FnOnce(FillConfig) -> FillConfig,
    ) -> (Bed, Arc<CopySource>) {
        let mut bed = Bed::new(project);
        bed.mount_overlay();
        let src = source(&bed.project);
        let cfg = cfg(bed.config());
        let s = bed.start(cfg, src);
        (bed, s)
    }

    pub fn stats(&self) -> cs_replica::FillStats {
        self.filler.as_ref().unwrap().stats()
    }

    /// The stats once no fill is in flight (within 10 s): a reader is let through as soon
    /// as the content is written, and the fill ends (durable, `want` gone, counted) just after.
    pub fn settled(&self) -> cs_replica::FillStats {
        let t = std::time::Instant::now();
        loop {
            let s = self.stats();
            if s.in_flight == 0 || t.elapsed() > std::time::Duration::from_secs(10) {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn stop_filler(&mut self) {
        if let Some(f) = self.filler.take() {
            f.stop();
        }
    }

    /// Undoes everything in order: the service (its descriptors on the image), the
    /// overlay (its lower is on the image), then the image and its loop device.
    pub fn teardown(&mut self) -> Result<(), String> {
        self.stop_filler();
        drop(self.overlay.take());
        match self.fs.take() {
            Some(f) => f.unmount().map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs `args` as nobody (uid and gid 65534, no groups).
pub fn as_nobody<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new("setpriv").args(["--reuid=65534", "--regid=65534", "--clear-groups"]).args(args).output().unwrap()
}

/// `cat` as nobody: the bytes, or the failure's stderr.
pub fn cat(p: &Path) -> Result<Vec<u8>, String> {
    let o = as_nobody(&[OsStr::new("cat"), p.as_os_str()]);
    if o.status.success() {
        Ok(o.stdout)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}
