//! A whole installation in tempdirs: P's home and state, and one or more
//! compute servers (emulated union + state), with both engine sides open.
//!
//! Layout of a world (state dirs outside the upper layers and the home):
//! `ROOT/home`, `ROOT/p_state`, `ROOT/<client>/upper`, `ROOT/<client>/state`
//! (and, with a real union, `ROOT/c1/merged`; for overlayfs `ROOT/c1/work`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use cs_compute::local::{Cut, RoundReport};
use cs_engine::{ComputeConfig, ComputeSide, PathFilter, ProjectConfig, ProjectSide, PullPolicy, UnionKind};
use cs_protocol::ClientId;
use cs_union::overlay::{Overlay, OverlayGuard};
use cs_union::{MountGuard, UnionError, UnionfsFuse};
use tempfile::TempDir;

use crate::tree::Tree;
use crate::union_emu::{EmuUnion, Layout};
use crate::view::{PlainDir, View};

/// Why a round did not commit.
#[derive(Debug)]
pub enum RoundFailed {
    /// Cut on purpose, there.
    Cut(Cut),
    Error(String),
}

impl std::fmt::Display for RoundFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoundFailed::Cut(at) => write!(f, "round cut on purpose at {at:?}"),
            RoundFailed::Error(e) => f.write_str(e),
        }
    }
}

/// One compute server.
pub struct Client {
    pub id: ClientId,
    /// The emulated union over the client's upper layer and P's home.
    pub union: EmuUnion,
    /// A real union over the same layers, when mounted ([`World::with_real_union`],
    /// [`World::with_real_overlay`]): then the merged view users act on.
    real: Option<RealUnion>,
    pub state: PathBuf,
    whiteout_grace: Duration,
    pull: PullPolicy,
    side: Option<ComputeSide>,
}

/// A real union mount of a client's upper layer over P's home.
struct RealUnion {
    merged: PlainDir,
    /// The lower is sshfs: it shows file mtimes in whole seconds, and it
    /// revalidates the names an overlay above it caches.
    whole_second_lower: bool,
    mount: RealMount,
}

/// The mount, held until the world goes (unmounted on drop).
enum RealMount {
    UnionfsFuse {
        _guard: MountGuard,
    },
    /// Kernel overlayfs: the engine changes the home through `merged` only.
    Overlay {
        _guard: OverlayGuard,
    },
}

/// P and its compute servers. Client 0 ("c1") always exists.
pub struct World {
    pub root: PathBuf,
    pub home: PathBuf,
    pub p_state: PathBuf,
    pub filter: PathFilter,
    project: Option<Arc<ProjectSide>>,
    clients: Vec<Client>,
    _tmp: TempDir,
}

/// Where worlds are made: `$CS_TESTS_TMPDIR`, else `/dev/shm` (fsync is free
/// there, which matters for the property test), else the system temp dir.
pub fn scratch_base() -> PathBuf {
    if let Some(d) = std::env::var_os("CS_TESTS_TMPDIR") {
        return d.into();
    }
    let shm = Path::new("/dev/shm");
    let writable = tempfile::Builder::new().prefix("cs-probe-").tempfile_in(shm).is_ok();
    if writable {
        shm.into()
    } else {
        std::env::temp_dir()
    }
}

/// Where worlds with a real overlayfs are made: [`scratch_base`] if its
/// filesystem takes `trusted.*` xattrs (the upper layer needs them: tmpfs has
/// them since Linux 6.6), else `/var/tmp`.
pub fn overlay_scratch_base() -> PathBuf {
    let base = scratch_base();
    let probe = tempfile::Builder::new().prefix("cs-xattr-probe-").tempdir_in(&base);
    let takes_trusted = probe.is_ok_and(|d| {
        let path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(d.path().as_os_str()))
            .expect("no NUL in a temp path");
        let (name, value) = (c"trusted.cs-probe", b"y");
        // SAFETY: both strings are NUL-terminated and live across the call;
        // `value` is a valid buffer of the length given.
        let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        rc == 0
    });
    if takes_trusted {
        base
    } else {
        PathBuf::from("/var/tmp")
    }
}

/// Whether kernel overlayfs can be mounted here (root, and the kernel has it).
/// `false` (the caller skips) otherwise, with a note on stderr; panics when
/// `CI` is set.
pub fn real_overlay_available() -> bool {
    let is_root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines().any(|l| l.strip_prefix("Uid:").is_some_and(|ids| ids.split_whitespace().nth(1) == Some("0")))
    });
    let why = if !cs_union::overlay::kernel_has_overlay() {
        "the kernel does not list overlay in /proc/filesystems"
    } else if !is_root {
        "mounting overlayfs needs root"
    } else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("the real overlayfs is needed: {why} (CI is set)");
    }
    eprintln!("SKIPPED (real overlayfs unavailable: {why}; set CI=1 to make this fail)");
    false
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// Default filter, Debian's unionfs-fuse 1.0 layout, one client "c1".
    pub fn new() -> World {
        World::build(Layout::UnionfsFuse1, PathFilter::default())
    }

    pub fn with_layout(layout: Layout) -> World {
        World::build(layout, PathFilter::default())
    }

    /// The same filter is configured on both sides.
    pub fn with_filter(filter: PathFilter) -> World {
        World::build(Layout::UnionfsFuse1, filter)
    }

    fn build(layout: Layout, filter: PathFilter) -> World {
        World::build_in(&scratch_base(), layout, filter)
    }

    fn build_in(base: &Path, layout: Layout, filter: PathFilter) -> World {
        let tmp = tempfile::Builder::new().prefix("cs-world-").tempdir_in(base).expect("tempdir");
        let root = tmp.path().to_path_buf();
        let (home, p_state) = (root.join("home"), root.join("p_state"));
        for d in [&home, &p_state] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let mut w = World { root, home, p_state, filter, project: None, clients: Vec::new(), _tmp: tmp };
        w.project = Some(Arc::new(w.open_project()));
        w.add_client("c1", layout);
        w
    }

    fn open_project(&self) -> ProjectSide {
        let mut cfg = ProjectConfig::new(self.home.clone(), self.p_state.clone());
        cfg.filter = self.filter.clone();
        ProjectSide::open(cfg).unwrap_or_else(|e| panic!("open ProjectSide: {e}"))
    }

    /// Client 0's merged view is the real unionfs-fuse `u`, mounted (in
    /// the layout it writes) over the client's upper layer and P's home
    /// directly (a plain lower: no network filesystem). Kernel caches of
    /// names and attributes are off (`*_timeout=0`): the harness acts and
    /// checks right after each round, faster than any cache expires.
    pub fn with_real_union(u: &UnionfsFuse) -> Result<World, UnionError> {
        World::with_real_union_over(u, &scratch_base(), None)
    }

    /// [`World::with_real_union`], the world made below `base`. With
    /// `mirror`, the union's lower is P's home as seen below `mirror`, a
    /// network mount of `base` (sshfs: file mtimes there are whole seconds,
    /// so convergence compares the seconds of files the lower shows).
    pub fn with_real_union_over(u: &UnionfsFuse, base: &Path, mirror: Option<&Path>) -> Result<World, UnionError> {
        let layout = u.probe_layout(base)?;
        let mut w = World::build_in(base, layout, PathFilter::default());
        let merged = w.root.join("c1").join("merged");
        std::fs::create_dir(&merged).expect("mkdir");
        let lower = match mirror {
            Some(m) => m.join(w.home.strip_prefix(base).expect("the world is below base")),
            None => w.home.clone(),
        };
        // `CS_REAL_UNION_CACHES=1`: the kernel's default caches, as the
        // product mounts it (then a check right after a round may see them).
        let opts: Vec<String> = match std::env::var_os("CS_REAL_UNION_CACHES") {
            Some(_) => Vec::new(),
            None => ["entry_timeout=0", "attr_timeout=0", "negative_timeout=0"].map(String::from).to_vec(),
        };
        let guard = MountGuard::mount(u, &w.clients[0].union.upper, &lower, &merged, &opts)?;
        let merged = PlainDir::new(merged, "c1's real merged view");
        let mount = RealMount::UnionfsFuse { _guard: guard };
        w.clients[0].real = Some(RealUnion { merged, whole_second_lower: mirror.is_some(), mount });
        Ok(w)
    }

    /// Client 0's merged view is kernel overlayfs (`redirect_dir=on,index=on`, as
    /// docs/union.md chose), mounted over its upper layer and P's home directly (a
    /// plain lower, no network filesystem), and its engine runs with
    /// `UnionKind::Overlay`: every change a round makes goes through that merged view.
    /// Its pull policy is `Changed` without a cap: P's changes reach the merged view
    /// through the round, not through the lower (docs/union.md, point 2). Needs root.
    ///
    /// A plain directory as the lower never tells the overlay that P removed or
    /// replaced a name it has cached; sshfs does (FUSE revalidates its dentries,
    /// and the overlay asks it). Call [`World::revalidate_lower`] where that
    /// revalidation would have happened.
    ///
    /// Client 0's first round runs at once (an idle one: it gives C its cursor),
    /// as crates/engine/tests/overlay.rs does: a new client's first round has no
    /// cursor and carries none of P's changes, so a name C looked up before it and
    /// P made meanwhile would stay ENOENT after it (tests/counterexamples.md #10,
    /// [`World::with_real_overlay_before_first_round`]).
    pub fn with_real_overlay() -> Result<World, UnionError> {
        let mut w = World::with_real_overlay_before_first_round()?;
        w.round();
        Ok(w)
    }

    /// [`World::with_real_overlay`] without the first round: the user may act
    /// before client 0 has a cursor.
    pub fn with_real_overlay_before_first_round() -> Result<World, UnionError> {
        let w = World::build_in(&overlay_scratch_base(), Layout::UnionfsFuse1, PathFilter::default());
        w.mount_overlay(None)
    }

    /// [`World::with_real_overlay`], the world made below `base`, whose
    /// filesystem must take `trusted.*` xattrs, and the overlay's lower P's home
    /// as seen below `mirror`, an sshfs mount of `base` (as in production: the
    /// overlay asks sshfs to revalidate what it caches, so
    /// [`World::revalidate_lower`] does nothing).
    pub fn with_real_overlay_over(base: &Path, mirror: &Path) -> Result<World, UnionError> {
        let w = World::build_in(base, Layout::UnionfsFuse1, PathFilter::default());
        let lower = mirror.join(w.home.strip_prefix(base).expect("the world is below base"));
        let mut w = w.mount_overlay(Some(lower))?;
        w.round();
        Ok(w)
    }

    /// `sshfs_lower`: P's home through sshfs; else the home itself.
    fn mount_overlay(mut self, sshfs_lower: Option<PathBuf>) -> Result<World, UnionError> {
        let dir = self.root.join("c1");
        let merged = dir.join("merged");
        std::fs::create_dir(&merged).expect("mkdir");
        let over_sshfs = sshfs_lower.is_some();
        let ov = Overlay {
            upper: self.clients[0].union.upper.clone(),
            lower: sshfs_lower.unwrap_or_else(|| self.home.clone()),
            // Beside the upper layer, on its filesystem, outside it (overlayfs's rule).
            work: dir.join("work"),
            merged: merged.clone(),
            extra: vec!["redirect_dir=on".into(), "index=on".into()],
        };
        let guard = ov.mount()?;
        let merged = PlainDir::new(merged, "c1's real overlay merged view");
        let mount = RealMount::Overlay { _guard: guard };
        self.clients[0].real = Some(RealUnion { merged, whole_second_lower: over_sshfs, mount });
        self.clients[0].pull = PullPolicy::Changed { max_file_size: None };
        self.crash_and_reopen_client(0);
        Ok(self)
    }

    /// Whether client `i`'s merged view is a real kernel overlayfs.
    pub fn is_overlay(&self, i: usize) -> bool {
        self.clients[i].real.as_ref().is_some_and(|r| matches!(r.mount, RealMount::Overlay { .. }))
    }

    /// Whether client `i`'s retired whiteouts may hide what P made since at their paths
    /// (unionfs-fuse, during a whiteout grace). overlayfs's markers never do: what P
    /// makes again there comes through step 4, written over the marker.
    pub fn retired_markers_hide(&self, i: usize) -> bool {
        !self.is_overlay(i) && self.retired_whiteouts_of(i) > 0
    }

    /// What sshfs's revalidation of cached names does for an overlay above it, for
    /// the plain-directory lower of [`World::with_real_overlay`]: the kernel's
    /// dentry cache is dropped (`echo 2 > /proc/sys/vm/drop_caches`, as
    /// crates/engine/tests/overlay.rs does). Call it right after P removes or
    /// replaces a name (rm, rm -r, mv, tar x), before C acts or a round runs; never
    /// after P only creates or changes files: a name C looked up before P made it
    /// stays negative in the overlay over sshfs too, and the round must cure that.
    /// (Dropping the cache also forgets such negative entries made earlier: where
    /// that matters, the check is weaker than production, not stronger.)
    /// No-op without a real overlay over a plain lower (sshfs revalidates by
    /// itself), or with `CS_OVERLAY_NO_REVALIDATE` set (to see
    /// what fails without it). Returns whether it dropped.
    pub fn revalidate_lower(&self) -> bool {
        let over_plain_lower =
            |i: usize| self.is_overlay(i) && self.clients[i].real.as_ref().is_some_and(|r| !r.whole_second_lower);
        let any = (0..self.clients.len()).any(over_plain_lower);
        if !any || std::env::var_os("CS_OVERLAY_NO_REVALIDATE").is_some() {
            return false;
        }
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("write /proc/sys/vm/drop_caches (needs root)");
        true
    }

    /// Client `i` keeps whiteouts of deletions P confirmed for `grace`
    /// (as in production; zero by default). Reopens its compute side.
    pub fn set_whiteout_grace(&mut self, i: usize, grace: Duration) {
        self.clients[i].whiteout_grace = grace;
        self.crash_and_reopen_client(i);
    }

    /// Client `i`'s pull policy (the product's default unless set).
    /// Reopens its compute side.
    pub fn set_pull(&mut self, i: usize, pull: PullPolicy) {
        self.clients[i].pull = pull;
        self.crash_and_reopen_client(i);
    }

    /// Whiteouts client `i` keeps for their grace period.
    pub fn retired_whiteouts_of(&self, i: usize) -> usize {
        self.clients[i].side.as_ref().map_or(0, |s| s.retired_whiteouts())
    }

    fn open_compute(&self, i: usize) -> ComputeSide {
        let c = &self.clients[i];
        let mut cfg = ComputeConfig::new(c.id.clone(), c.union.upper.clone(), c.state.clone());
        cfg.filter = self.filter.clone();
        cfg.whiteout_grace = c.whiteout_grace;
        cfg.pull = c.pull;
        cfg.union = match &c.real {
            Some(RealUnion { merged, mount: RealMount::Overlay { .. }, .. }) => {
                UnionKind::Overlay { merged: merged.root.clone() }
            }
            _ => UnionKind::UnionfsFuse(c.union.layout),
        };
        ComputeSide::open(cfg).unwrap_or_else(|e| panic!("open ComputeSide {}: {e}", c.id))
    }

    /// Adds a compute server served by the same ProjectSide; returns its index.
    pub fn add_client(&mut self, name: &str, layout: Layout) -> usize {
        let dir = self.root.join(name);
        let (upper, state) = (dir.join("upper"), dir.join("state"));
        for d in [&dir, &upper, &state] {
            std::fs::create_dir(d).expect("mkdir");
        }
        let union = EmuUnion::new(upper, self.home.clone(), layout, Box::new(self.filter.clone()))
            .with_name(format!("{name}'s merged view"));
        let id = ClientId::new(name).expect("client id");
        self.clients.push(Client {
            id,
            union,
            real: None,
            state,
            whiteout_grace: Duration::ZERO,
            pull: cs_engine::DEFAULT_PULL,
            side: None,
        });
        let i = self.clients.len() - 1;
        self.clients[i].side = Some(self.open_compute(i));
        i
    }

    /// P's engine side (status, as the broker reads it).
    pub fn project(&self) -> &ProjectSide {
        self.project.as_deref().expect("project side open")
    }

    /// Client `i`'s engine side, between rounds.
    pub fn compute(&self, i: usize) -> &ComputeSide {
        self.clients[i].side.as_ref().expect("compute side open")
    }

    /// Client 0's merged view, emulated. With a real union mounted, users act
    /// on [`World::c_view`] instead (this one then only reads the upper layer
    /// right: it knows unionfs-fuse's markers, not overlayfs's).
    pub fn c(&self) -> &EmuUnion {
        &self.clients[0].union
    }

    /// Client `i`'s merged view.
    pub fn c_of(&self, i: usize) -> &EmuUnion {
        &self.clients[i].union
    }

    /// Client `i`'s merged view as users see it: the real union's if
    /// mounted, else the emulated one.
    pub fn c_view(&self, i: usize) -> &dyn View {
        match &self.clients[i].real {
            Some(r) => &r.merged,
            None => &self.clients[i].union,
        }
    }

    pub fn client_id(&self, i: usize) -> &ClientId {
        &self.clients[i].id
    }

    pub fn clients(&self) -> usize {
        self.clients.len()
    }

    /// P's home as P's users see it.
    pub fn p(&self) -> PlainDir {
        PlainDir::new(&self.home, "P home")
    }

    /// One round of client `i`, cut at `cut` if given: the round the compute service
    /// ships (`cs_compute::round` on its packer actor) over the in-memory link to P.
    pub fn try_round_of(&mut self, i: usize, cut: Option<Cut>) -> Result<RoundReport, RoundFailed> {
        let c = self.clients[i].side.take().expect("compute side open");
        let p = self.project.clone().expect("project side open");
        let (c, project, result) = cs_compute::local::run_round(c, p, cut);
        self.clients[i].side = Some(c);
        match (result, project.cut) {
            (Err(_), Some(at)) => Err(RoundFailed::Cut(at)),
            (Err(e), None) => Err(RoundFailed::Error(cs_supervision::error_chain(&e))),
            (Ok(_), Some(at)) => Err(RoundFailed::Error(format!("the round went on after the cut {at:?}"))),
            (Ok(report), None) => Ok(report),
        }
    }

    /// A full round of client 0; panics if it fails.
    pub fn round(&mut self) -> RoundReport {
        self.round_of(0)
    }

    /// A full round of client `i`; panics if it fails.
    pub fn round_of(&mut self, i: usize) -> RoundReport {
        self.try_round_of(i, None).unwrap_or_else(|e| panic!("round of {} failed: {e}", self.clients[i].id))
    }

    /// A round of client 0 cut at `cut`; panics unless it stopped there.
    pub fn round_cut(&mut self, cut: Cut) {
        self.round_cut_of(0, cut)
    }

    pub fn round_cut_of(&mut self, i: usize, cut: Cut) {
        match self.try_round_of(i, Some(cut)) {
            Err(RoundFailed::Cut(at)) if at == cut => {}
            Err(e) => panic!("round cut at {cut:?} failed otherwise: {e}"),
            Ok(r) => panic!("round meant to be cut at {cut:?} completed: {r:?}"),
        }
    }

    /// Drops both sides of every client (as a killed process would) and opens them again.
    pub fn crash_and_reopen(&mut self) {
        self.project = None;
        for c in &mut self.clients {
            c.side = None;
        }
        self.project = Some(Arc::new(self.open_project()));
        for i in 0..self.clients.len() {
            self.clients[i].side = Some(self.open_compute(i));
        }
    }

    /// Drops and reopens client `i`'s side only.
    pub fn crash_and_reopen_client(&mut self, i: usize) {
        self.clients[i].side = None;
        self.clients[i].side = Some(self.open_compute(i));
    }

    /// Snapshot of P's home (synced paths).
    pub fn p_tree(&self) -> Tree {
        Tree::scan(&self.home, &self.filter).expect("snapshot of P's home")
    }

    /// Snapshot of client `i`'s merged view (synced paths).
    pub fn c_tree_of(&self, i: usize) -> Tree {
        self.c_view(i).snapshot(&self.filter).expect("snapshot of the merged view")
    }

    pub fn c_tree(&self) -> Tree {
        self.c_tree_of(0)
    }

    /// Every client's merged view equals P's home on every synced path.
    pub fn converged(&self) -> Result<(), String> {
        let p = self.p_tree();
        for i in 0..self.clients.len() {
            let mut c = self.c_tree_of(i);
            if self.clients[i].real.as_ref().is_some_and(|r| r.whole_second_lower) {
                // A file the lower shows has P's mtime to the second only.
                for (path, n) in c.nodes.iter_mut() {
                    let theirs = p.nodes.get(path).and_then(|q| q.mtime);
                    let shown_from_lower = !self.clients[i].union.upper_has(path);
                    if let (true, Some(mine), Some(theirs)) = (shown_from_lower, n.mtime, theirs) {
                        if mine.sec == theirs.sec {
                            n.mtime = Some(theirs);
                        }
                    }
                }
            }
            if let Some(d) = c.diff(&p, self.c_view(i).name(), "P home") {
                return Err(d);
            }
        }
        Ok(())
    }

    pub fn assert_converged(&self) {
        if let Err(d) = self.converged() {
            panic!("not converged: {d}");
        }
    }

    /// Files named `.csa-tmp-*` anywhere in P's home or an upper layer.
    pub fn leftover_temp_files(&self) -> Vec<PathBuf> {
        fn rec(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(rd) = std::fs::read_dir(dir) else { return };
            for e in rd.flatten() {
                let p = e.path();
                if e.file_name().to_string_lossy().starts_with(".csa-tmp-") {
                    out.push(p.clone());
                }
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    rec(&p, out);
                }
            }
        }
        let mut out = Vec::new();
        rec(&self.home, &mut out);
        for c in &self.clients {
            rec(&c.union.upper, &mut out);
        }
        out
    }
}
