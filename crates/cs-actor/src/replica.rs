//! `cs-actor compute --replica-dir DIR`: the project's files from a local
//! replica instead of a lower mount (issue 12, docs/replica.md). In order:
//! the replica's own filesystem (a loop-mounted image in DIR), P's snapshot
//! written as a placeholder tree on it, the fill service watching it, then
//! the tree bind-mounted where the union expects its lower layer. The
//! service's connection feeds the fills once it is up.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use cs_compute::connection::ConnectionConfig;
use cs_compute::replica::{LinkSource, StartTree};
use cs_mount::LowerSpec;
use cs_replica::fill::{CacheBound, Hydrate};
use cs_replica::{FillConfig, Filler, FillerHandle, Kept, ReplicaFs, Tree};
use serde_json::json;

/// Default of `--replica-size-gib`.
pub const DEFAULT_SIZE_GIB: u64 = 32;
/// Default of `--replica-inodes`.
pub const DEFAULT_INODES: u64 = 2_000_000;
/// Default of `--fetch-timeout-secs`.
pub const DEFAULT_FETCH_TIMEOUT_SECS: f64 = 30.0;

/// Longest wait between two snapshot attempts while there is no tree to start from.
const SNAPSHOT_RETRY_MAX: Duration = Duration::from_secs(30);

/// The replica's settings, from the flags.
#[derive(Debug, Clone)]
pub struct ReplicaArgs {
    pub dir: PathBuf,
    pub size_bytes: u64,
    pub inodes: u64,
    pub fetch_timeout: Duration,
    /// `--cache-max`: a bound on fetched content (`None`: none).
    pub cache_max: Option<u64>,
    /// `--hydrate` (`Some(None)`: everything) or `--prefetch` (`Some(Some(patterns))`).
    pub background: Option<Option<Vec<String>>>,
    /// `--fresh-snapshot`: a new snapshot at this start even where the previous tree
    /// could be resumed.
    pub fresh_snapshot: bool,
}

impl ReplicaArgs {
    fn image(&self) -> PathBuf {
        self.dir.join("replica.img")
    }
    /// Where the image is mounted: the trees and the fill's staging live there.
    fn fs_mountpoint(&self) -> PathBuf {
        self.dir.join("fs")
    }
    /// The holder process's socket (docs/replica.md risk 1).
    fn holder_socket(&self) -> PathBuf {
        self.dir.join("holder.sock")
    }
    /// The fill service's event journal (off the replica's filesystem).
    fn journal(&self) -> PathBuf {
        self.dir.join("fill.journal")
    }
    /// Where the current tree is bind-mounted: the union's lower layer.
    pub fn lower(&self) -> PathBuf {
        self.dir.join("lower")
    }
}

/// Where the current tree came from, for the status.
#[derive(Debug, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Origin {
    /// P's snapshot taken at this start.
    Snapshot,
    /// The tree of an earlier start, resumed: P's journal continues it, so the rounds
    /// bring every change since (no snapshot needed).
    Resumed,
    /// The tree of an earlier start: P could not be reached.
    Previous,
}

/// The running replica: its filesystem, tree and fill service.
pub struct Replica {
    args: ReplicaArgs,
    fs: ReplicaFs,
    tree: Tree,
    origin: Origin,
    /// What the tree kept of the previous tree's fetched content (not fetched again).
    kept: Kept,
    /// Taken out at [`Replica::stop`]; shared with the status.
    filler: Arc<Mutex<Option<FillerHandle>>>,
    source: Arc<LinkSource>,
    /// The removal of the older trees, started after the snapshot (see `start`).
    cleanup: Option<std::thread::JoinHandle<()>>,
    /// Held while this service answers the group: the holder stands in once it is gone.
    _holder_lease: cs_replica::holder::Lease,
}

impl Replica {
    /// Everything up to the lower layer: must run inside the service's runtime, before the
    /// union is mounted (no open of a placeholder may come before the fill service). `None`:
    /// SIGTERM or Ctrl-C came while waiting for the first snapshot (the filesystem is
    /// unmounted again).
    pub async fn start(
        args: ReplicaArgs,
        conn: ConnectionConfig,
        owner: Option<(u32, u32)>,
        state_dir: &Path,
    ) -> Result<Option<Replica>> {
        std::fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
        let fs = ReplicaFs::ensure(&args.image(), args.size_bytes, args.inodes, &args.fs_mountpoint())
            .with_context(|| format!("the replica's filesystem {}", args.image().display()))?;
        let root = fs.mountpoint().to_path_buf();
        // The fill service first, on the holder's group: a predecessor killed while readers
        // waited left their events pending there, and they are answered now (from the
        // journal) rather than after the snapshot. The snapshot's own opens are ours: let
        // through at once.
        let source = LinkSource::new(args.fetch_timeout);
        let mut cfg = FillConfig::new(root.clone(), root.join("staging"));
        cfg.fetch_timeout = args.fetch_timeout;
        cfg.journal = Some(args.journal());
        cfg.cache = args.cache_max.map(|max_bytes| CacheBound { max_bytes, trees_root: root.clone() });
        let started = holder_group(&args, &cfg).and_then(|(g, lease)| {
            let f = Filler::start_with_group(cfg, g, source.clone()).context("starting the replica's fill service")?;
            Ok((f, lease))
        });
        let (filler, holder_lease) = match started {
            Ok(x) => x,
            Err(e) => {
                stop_holder(&args);
                let _ = fs.unmount();
                return Err(e);
            }
        };
        let undo = |filler: FillerHandle, fs: ReplicaFs| {
            stop_holder(&args);
            filler.stop();
            if let Err(e) = fs.unmount() {
                tracing::warn!(error = %cs_supervision::error_chain(&e), "unmounting the replica's filesystem");
            }
        };
        let first = tokio::select! {
            t = first_tree(&conn, &root, owner, state_dir, args.fresh_snapshot) => Some(t),
            _ = crate::services::stop_signal() => None,
        };
        let Some(first) = first else {
            tracing::info!("stopped while waiting for the project's snapshot");
            undo(filler, fs);
            return Ok(None);
        };
        let (tree, origin, kept) = match first {
            Ok(t) => t,
            Err(e) => {
                undo(filler, fs);
                return Err(e);
            }
        };
        if cs_engine::adopt_snapshot_cursor(state_dir, tree.cursor).context("starting from the snapshot's cursor")? {
            tracing::info!(cursor = ?tree.cursor, "no cursor yet: the first round starts from the snapshot's");
        }
        let mut filler = filler;
        if let Some(only) = args.background.clone() {
            let what = if only.is_some() { "--prefetch" } else { "--hydrate" };
            if let Err(e) = filler.hydrate(Hydrate { tree: tree.dir.clone(), only }) {
                undo(filler, fs);
                return Err(e).context(what);
            }
        }
        // The older trees go on a thread of their own: the union need not wait for the
        // removal (0.6 s for 100,000 files); `stop` waits for it before unmounting.
        let cleanup = {
            let (root, tree) = (root.clone(), tree.clone());
            std::thread::Builder::new()
                .name("replica-cleanup".into())
                .spawn(move || match Tree::remove_others(&root, &[&tree]) {
                    Ok(gone) if !gone.is_empty() => {
                        tracing::info!(trees = gone.len(), "the replica's older trees removed")
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %cs_supervision::error_chain(&e), "removing the replica's older trees")
                    }
                })
                .context("starting the removal of the replica's older trees")?
        };
        let filler = Arc::new(Mutex::new(Some(filler)));
        std::fs::create_dir_all(args.lower()).with_context(|| format!("creating {}", args.lower().display()))?;
        Ok(Some(Replica {
            args,
            fs,
            tree,
            origin,
            kept,
            filler,
            source,
            cleanup: Some(cleanup),
            _holder_lease: holder_lease,
        }))
    }

    /// The union's lower layer: the current tree, bind-mounted (the mount supervisor mounts
    /// it again if it goes, and unmounts it at shutdown).
    pub fn lower_spec(&self) -> LowerSpec {
        let cmd = format!(
            "mount --bind {} {}",
            cs_mount::shell_quote(&self.tree.dir().to_string_lossy()),
            cs_mount::shell_quote(&self.args.lower().to_string_lossy())
        );
        LowerSpec::Command { cmd, mountpoint: self.args.lower() }
    }

    /// The service's connection is up: fills go over it.
    pub fn connect(&self, link: Arc<cs_compute::connection::LinkHandle>) {
        self.source.connect(link);
    }

    /// The journal epoch of P's that the tree is a snapshot of.
    pub fn tree_epoch(&self) -> u64 {
        self.tree.cursor.epoch
    }

    /// The status's `replica` section.
    pub fn status_fn(&self) -> cs_compute::service::StatusFn {
        let filler = self.filler.clone();
        let fixed = json!({
            "dir": self.args.dir,
            "tree": self.tree.dir(),
            "origin": self.origin,
            "kept": {"files": self.kept.files, "bytes": self.kept.bytes},
            "as_of": self.tree.cursor,
            "entries": self.tree.entries,
            "fetch_timeout_s": self.args.fetch_timeout.as_secs_f64(),
            "cache_max_bytes": self.args.cache_max,
        });
        Arc::new(move || {
            let mut v = fixed.clone();
            let stats = filler.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|f| f.stats());
            v["fill"] = serde_json::to_value(stats).unwrap_or_default();
            Box::pin(async move { v })
        })
    }

    /// After the union is unmounted: the holder (the service's own descriptor keeps the
    /// group until it has answered everything), the fill service, then the filesystem.
    pub fn stop(mut self) {
        // The removal holds descriptors on the image: over before it is unmounted.
        if let Some(c) = self.cleanup.take() {
            let _ = c.join();
        }
        stop_holder(&self.args);
        if let Some(f) = self.filler.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f.stop();
        }
        if let Err(e) = self.fs.unmount() {
            tracing::warn!(error = %cs_supervision::error_chain(&e), "unmounting the replica's filesystem");
        }
    }
}

/// The fill group from the holder process: the running one (a predecessor's, with its
/// pending events), else a new one, started in a session of its own (a signal to the
/// service's process group does not reach it) and never tied to the service's life. A
/// holder started here answers in the service's place (EIO for what is not fetched) once
/// no service has held the group for the fetch timeout: a reader waits no longer for a
/// service that died than for a link that is down. `fill`: the service's fill settings,
/// whose paths the stand-in shares.
fn holder_group(args: &ReplicaArgs, fill: &FillConfig) -> Result<(std::os::fd::OwnedFd, cs_replica::holder::Lease)> {
    let socket = args.holder_socket();
    if let Ok(g) = cs_replica::holder::group(&socket) {
        tracing::info!(socket = %socket.display(), "the replica's fill holder is running: its group (and what is pending on it) is ours");
        return Ok(g);
    }
    let exe = std::env::current_exe().context("the path of cs-actor, to start the fill holder")?;
    let log_path = args.dir.join("holder.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("fill-holder")
        .arg("--socket")
        .arg(&socket)
        .arg("--mountpoint")
        .arg(&fill.mountpoint)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().context("the holder's log")?)
        .stderr(log);
    // The stand-in needs the journal to answer what a killed service took.
    if let Some(journal) = &fill.journal {
        cmd.arg("--stand-in-after-secs")
            .arg(fill.fetch_timeout.as_secs_f64().to_string())
            .arg("--staging")
            .arg(&fill.staging)
            .arg("--journal")
            .arg(journal);
    }
    // SAFETY: setsid(2) is async-signal-safe, and the only call between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the replica's fill holder")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let group = loop {
        match cs_replica::holder::group(&socket) {
            Ok(g) => break g,
            Err(e) => {
                if let Ok(Some(st)) = child.try_wait() {
                    anyhow::bail!("the replica's fill holder exited ({st}): see {}", log_path.display());
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("the replica's fill holder does not answer on {}: {e}", socket.display());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    tracing::info!(pid = child.id(), socket = %socket.display(), "the replica's fill holder started");
    // Reaped when it exits (it outlives us if we die first).
    std::thread::spawn(move || child.wait());
    Ok(group)
}

/// Tells the holder to exit (its pending events go with the service's own descriptor).
fn stop_holder(args: &ReplicaArgs) {
    match cs_replica::holder::tell_exit(&args.holder_socket(), Duration::from_secs(5)) {
        Ok(true) => tracing::info!("the replica's fill holder exited"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "telling the replica's fill holder to exit"),
    }
}

/// The previous tree resumed (P's journal continues it), else P's snapshot, or (P out of
/// reach) the tree of an earlier start; with none of them, tries again until P answers.
async fn first_tree(
    conn: &ConnectionConfig,
    root: &Path,
    owner: Option<(u32, u32)>,
    state_dir: &Path,
    fresh: bool,
) -> Result<(Tree, Origin, Kept)> {
    let committed = cs_engine::committed_cursor(state_dir).context("the client's committed cursor")?;
    let mut wait = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        match cs_compute::replica::start_tree(conn.clone(), root, owner, committed, fresh).await {
            Ok(StartTree::Resumed(tree)) => {
                tracing::info!(
                    tree = %tree.dir().display(),
                    cursor = ?tree.cursor,
                    secs = started.elapsed().as_secs_f64(),
                    "the previous tree resumed: the project's journal continues it, the rounds bring what changed"
                );
                return Ok((tree, Origin::Resumed, Kept::default()));
            }
            Ok(StartTree::Snapshot { tree, report, kept, why }) => {
                tracing::info!(
                    entries = report.entries,
                    refused = report.refused_count,
                    kept_files = kept.files,
                    kept_bytes = kept.bytes,
                    secs = started.elapsed().as_secs_f64(),
                    why,
                    "the project's snapshot is the replica's tree"
                );
                return Ok((tree, Origin::Snapshot, kept));
            }
            Err(e) => {
                let why = cs_supervision::error_chain(&e);
                let permanent = e.is_permanent();
                if let Some(tree) = Tree::current(root).context("the replica's current tree")? {
                    tracing::warn!(error = %why, tree = %tree.dir().display(), "no snapshot from the project: starting from the previous one (the rounds bring what changed)");
                    return Ok((tree, Origin::Previous, Kept::default()));
                }
                if permanent {
                    // No tree to start from, and asking again cannot help: say so and stop.
                    return Err(e).context("no snapshot of the project and no earlier tree to start from");
                }
                tracing::warn!(error = %why, retry_in_s = wait.as_secs(), "no snapshot from the project and none kept: the home waits for one");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(SNAPSHOT_RETRY_MAX);
            }
        }
    }
}
