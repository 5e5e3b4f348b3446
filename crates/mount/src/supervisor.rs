//! The mount supervisor actor.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_supervision::{ExitStatus, Heartbeat, Observable};
use cs_union::{Layout, UnionfsFuse};
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::bare::{Guard, Prepared, Recovery};
use crate::lower::LowerKind;
use crate::plant::{LowerHealth, LowerReport, Plant, Settings, UnionReport};
use cs_supervision::Backoff;

use crate::backend::check_upper_is_for;
use crate::util::{now_ms, resolve_dir};
use crate::{LowerSpec, MountError, UnionBackend, DEFAULT_LOCAL_ONLY, DEFAULT_OVERLAY_OPTIONS};

/// What the supervisor mounts and how it watches it.
#[derive(Debug, Clone)]
pub struct MountConfig {
    pub lower: LowerSpec,
    /// The union's writable layer (local disk).
    pub upper: PathBuf,
    /// Where the union is mounted (the user's home).
    pub merged: PathBuf,
    /// More `-o` options for unionfs-fuse (after `cow`), e.g. `hide_meta_files`.
    pub union_extra_opts: Vec<String>,
    /// Paths made opaque upper directories before the union is mounted
    /// (default [`DEFAULT_LOCAL_ONLY`]).
    pub local_only: Vec<String>,
    /// The compute user (uid, gid): owner of the local-only directories. `None`: the
    /// process's own ids.
    pub local_only_owner: Option<(u32, u32)>,
    /// The union's whiteout layout; `None`: probed once with a throwaway mount.
    pub layout: Option<Layout>,
    /// The union binary; `None`: [`UnionfsFuse::find`].
    pub union_binary: Option<UnionfsFuse>,
    /// Time between health checks (default 2 s).
    pub health_interval: Duration,
    /// A `stat` taking longer counts as a failure (default 5 s).
    pub health_timeout: Duration,
    /// First remount delay after a failure is seen; doubles per failed attempt (default 500 ms).
    pub backoff_min: Duration,
    /// Cap of the remount delay (default 30 s).
    pub backoff_max: Duration,
    /// How long a lower `Command` gets to show up in `/proc/self/mountinfo` (default 30 s).
    pub lower_mount_timeout: Duration,
    /// The union. The service decides it (`backend::default_backend` when not given); the
    /// struct's own default, unionfs-fuse, is for harnesses that do not say.
    pub backend: UnionBackend,
    /// overlayfs's work directory: on the upper's filesystem, outside the upper layer
    /// (default: the sibling `<upper>.overlay-work`).
    pub overlay_work: Option<PathBuf>,
    /// overlayfs's options after the directories (default [`DEFAULT_OVERLAY_OPTIONS`]).
    pub overlay_options: Vec<String>,
}

impl MountConfig {
    /// The defaults around the three paths.
    pub fn new(lower: LowerSpec, upper: impl Into<PathBuf>, merged: impl Into<PathBuf>) -> Self {
        MountConfig {
            lower,
            upper: upper.into(),
            merged: merged.into(),
            union_extra_opts: Vec::new(),
            local_only: DEFAULT_LOCAL_ONLY.iter().map(|s| s.to_string()).collect(),
            local_only_owner: None,
            layout: None,
            union_binary: None,
            health_interval: Duration::from_secs(2),
            health_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            lower_mount_timeout: Duration::from_secs(30),
            backend: UnionBackend::UnionfsFuse,
            overlay_work: None,
            overlay_options: DEFAULT_OVERLAY_OPTIONS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Observable state: what `cs-actor status` prints. Times are milliseconds since the Unix
/// epoch; latencies are of the last health check's `stat`.
#[derive(Debug, Clone, Serialize)]
pub struct MountState {
    pub lower: LowerState,
    pub union: UnionState,
    /// The union's mount point while the union is down: its guard, what was recovered from it.
    pub mount_point: MountPointState,
    /// Why rounds may not run now (the safety rail), or `None`.
    pub rail: Option<String>,
    pub rail_since_ms: Option<u64>,
    /// How many times the rail went up.
    pub rails_raised: u64,
    /// Health checks done.
    pub checks: u64,
    pub last_check_ms: Option<u64>,
    /// Set once the supervisor stopped.
    pub exit: Option<ExitStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LowerState {
    pub kind: LowerKind,
    pub mountpoint: PathBuf,
    pub state: LowerStatus,
    /// The mount command's process, while it runs in the foreground.
    pub pid: Option<u32>,
    pub latency_ms: Option<f64>,
    /// Whether the root listed at least one entry at the last check.
    pub has_entries: Option<bool>,
    /// Successful remounts after the first mount.
    pub remounts: u64,
    /// Mount attempts that failed since the last success (the backoff doubles with each).
    pub failed_attempts: u32,
    pub last_error: Option<String>,
    /// When `state` last changed.
    pub since_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LowerStatus {
    /// Not checked yet.
    Starting,
    /// Mounted by our command, answering.
    Mounted,
    /// Someone else's mount, answering.
    Adopted,
    /// Not a mount point.
    Missing,
    /// Mounted but failing (dead process, ENOTCONN, I/O error, no answer in time).
    Error,
    /// Unmounted at shutdown.
    Unmounted,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnionState {
    /// Which union: `unionfs-fuse` or `overlay`.
    pub backend: UnionBackend,
    pub merged: PathBuf,
    pub upper: PathBuf,
    /// overlayfs's work directory (`None` for unionfs-fuse).
    pub work_dir: Option<PathBuf>,
    /// overlayfs: the options in force as the kernel lists them (without the directories),
    /// once mounted; `None` for unionfs-fuse.
    pub options: Option<String>,
    /// overlayfs: why the options in force differ from the configured ones (`index=on`
    /// refused, and the fallback to `index=off`), if they do.
    pub options_note: Option<String>,
    pub state: UnionStatus,
    /// The union's process (unionfs-fuse; `None` for overlay, which has none).
    pub pid: Option<u32>,
    pub latency_ms: Option<f64>,
    /// Successful remounts after the first mount.
    pub remounts: u64,
    /// Mount attempts that failed since the last success (the backoff doubles with each).
    pub failed_attempts: u32,
    pub last_error: Option<String>,
    pub since_ms: u64,
    /// unionfs-fuse's whiteout meta directory (`.unionfs-fuse` or `.unionfs`),
    /// once mounted: where the sync engine writes whiteouts. `None` for overlay.
    pub whiteout_dir: Option<&'static str>,
}

/// The bare mount point (see the `bare` module): how it refuses writes while the union is down,
/// and what was found in it and moved into the upper layer before a mount.
#[derive(Debug, Clone, Serialize)]
pub struct MountPointState {
    pub guard: Guard,
    /// Why the immutable attribute is not in place (the fallback guard is then in `guard`).
    pub guard_error: Option<String>,
    /// Recoveries since the service started (mounts that found entries there).
    pub recoveries: u64,
    /// Entries moved out of the bare mount point since the service started.
    pub recovered_entries: u64,
    pub last_recovery: Option<Recovery>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnionStatus {
    /// Not mounted yet (it waits for the lower's first mount).
    Starting,
    Mounted,
    /// Its process exited, the mount point answers ENOTCONN, or it hangs: being remounted.
    Dead,
    /// Unmounted at shutdown.
    Unmounted,
}

/// May a sync round run now? `false` while the safety rail is up.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct SyncAllowed;

/// Run a health check now (after any operation in progress) and answer with the state after it.
#[derive(Message)]
#[rtype(result = "Result<MountState, MountError>")]
pub struct CheckNow;

/// The project's home really is empty now: accept an empty lower without raising the rail
/// (until it has had entries again).
#[derive(Message)]
#[rtype(result = "()")]
pub struct AcceptEmptyLower;

/// Unmount the union, then the lower if we mounted it (each lazily if busy); answers with
/// the final state once done, then the supervisor stops.
#[derive(Message)]
#[rtype(result = "Result<MountState, MountError>")]
pub struct Shutdown;

enum Op {
    MountLower,
    MountUnion,
    Check,
    Shutdown,
}

enum Outcome {
    Lower(LowerReport),
    Union(UnionReport),
    Check(LowerReport, UnionReport),
    Shutdown(Result<(), String>),
}

/// See the crate docs. Create with [`MountSupervisor::new`], start with `cs_supervision::spawn`.
pub struct MountSupervisor {
    s: Arc<Settings>,
    health_interval: Duration,
    backoff: Backoff,
    /// `None` while an operation runs on a worker thread.
    plant: Option<Plant>,
    state: MountState,
    lower_ever_up: bool,
    union_ever_up: bool,
    /// The lower listed entries at a healthy check (and emptiness was not accepted since).
    had_entries: bool,
    lower_need: bool,
    lower_failures: u32,
    lower_next: Instant,
    union_need: bool,
    union_failures: u32,
    union_next: Instant,
    check_due: bool,
    check_waiters: Vec<oneshot::Sender<MountState>>,
    shutdown_waiters: Vec<oneshot::Sender<Result<MountState, MountError>>>,
    shutdown_requested: bool,
    shut: bool,
    heartbeat: Heartbeat,
    /// Publishes `state.rail` on every change (see [`MountSupervisor::rail`]).
    rail: watch::Sender<Option<String>>,
}

impl MountSupervisor {
    /// Validates `cfg` and resolves its paths (creating the upper, merged and lower mount
    /// point directories if missing). Nothing is mounted until the actor starts.
    pub fn new(cfg: MountConfig) -> Result<Self, MountError> {
        if cfg.backoff_min.is_zero() || cfg.backoff_min > cfg.backoff_max {
            return Err(MountError::Config(format!(
                "backoff must satisfy 0 < min ({:?}) <= max ({:?})",
                cfg.backoff_min, cfg.backoff_max
            )));
        }
        if cfg.health_interval.is_zero() || cfg.health_timeout.is_zero() {
            return Err(MountError::Config("health interval and timeout must be positive".into()));
        }
        for p in &cfg.local_only {
            cs_protocol::RelPath::new(p.trim_end_matches('/'))
                .map_err(|e| MountError::Config(format!("local-only path {p:?}: {e}")))?;
        }
        let upper = resolve_dir(&cfg.upper, "resolve the upper layer")?;
        let merged = resolve_dir(&cfg.merged, "resolve the union mount point")?;
        let lower_mountpoint = resolve_dir(cfg.lower.mountpoint(), "resolve the lower mount point")?;
        for (what, p) in [("upper", &upper), ("lower", &lower_mountpoint)] {
            // overlayfs's options are escaped; unionfs-fuse's branch syntax cannot be.
            if cfg.backend == UnionBackend::UnionfsFuse && p.to_string_lossy().contains([':', '=']) {
                return Err(MountError::Config(format!(
                    "{what} {} contains `:` or `=`, which unionfs-fuse cannot take in a branch",
                    p.display()
                )));
            }
        }
        if merged == upper || merged == lower_mountpoint || upper == lower_mountpoint {
            return Err(MountError::Config("upper, lower and merged must be three different directories".into()));
        }
        check_upper_is_for(&upper, cfg.backend)?;
        let overlay_work = match cfg.backend {
            UnionBackend::Overlay => Some(overlay_work_dir(&cfg, &upper, &merged, &lower_mountpoint)?),
            UnionBackend::UnionfsFuse => None,
        };
        let now = now_ms();
        let state = MountState {
            lower: LowerState {
                kind: cfg.lower.kind(),
                mountpoint: lower_mountpoint.clone(),
                state: LowerStatus::Starting,
                pid: None,
                latency_ms: None,
                has_entries: None,
                remounts: 0,
                failed_attempts: 0,
                last_error: None,
                since_ms: now,
            },
            union: UnionState {
                backend: cfg.backend,
                merged: merged.clone(),
                upper: upper.clone(),
                work_dir: overlay_work.clone(),
                options: None,
                options_note: None,
                state: UnionStatus::Starting,
                pid: None,
                latency_ms: None,
                remounts: 0,
                failed_attempts: 0,
                last_error: None,
                since_ms: now,
                whiteout_dir: None,
            },
            mount_point: MountPointState {
                guard: Guard::Pending,
                guard_error: None,
                recoveries: 0,
                recovered_entries: 0,
                last_recovery: None,
            },
            rail: Some("lower not checked yet".into()),
            rail_since_ms: Some(now),
            rails_raised: 0,
            checks: 0,
            last_check_ms: None,
            exit: None,
        };
        let lower_need = matches!(cfg.lower, LowerSpec::Command { .. });
        Ok(MountSupervisor {
            s: Arc::new(Settings {
                lower: cfg.lower,
                lower_mountpoint,
                upper,
                merged,
                union_extra_opts: cfg.union_extra_opts,
                local_only: cfg.local_only,
                local_only_owner: cfg.local_only_owner,
                layout: cfg.layout,
                union_binary: cfg.union_binary,
                health_timeout: cfg.health_timeout,
                lower_mount_timeout: cfg.lower_mount_timeout,
                backend: cfg.backend,
                overlay_work: overlay_work.unwrap_or_default(),
                overlay_options: cfg.overlay_options,
            }),
            health_interval: cfg.health_interval,
            backoff: Backoff::new(cfg.backoff_min, cfg.backoff_max),
            plant: Some(Plant::default()),
            state,
            lower_ever_up: false,
            union_ever_up: false,
            had_entries: false,
            lower_need,
            lower_failures: 0,
            lower_next: Instant::now(),
            union_need: true,
            union_failures: 0,
            union_next: Instant::now(),
            check_due: !lower_need,
            check_waiters: Vec::new(),
            shutdown_waiters: Vec::new(),
            shutdown_requested: false,
            shut: false,
            heartbeat: Heartbeat::new(),
            rail: watch::Sender::new(Some("lower not checked yet".into())),
        })
    }

    /// Busy while an operation (mount, check, shutdown) runs on its worker
    /// thread; beats when one starts and ends.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// The safety rail, pushed on every change: `Some(reason)` while sync
    /// rounds may not run. The coordinator follows it (no polling).
    pub fn rail(&self) -> watch::Receiver<Option<String>> {
        self.rail.subscribe()
    }

    /// Starts the next operation if none is running: shutdown, a due lower mount, a due
    /// union mount, or a due health check, in that order.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.plant.is_none() || self.shut {
            return;
        }
        if self.shutdown_requested {
            return self.run(Op::Shutdown, ctx);
        }
        let now = Instant::now();
        if self.lower_need && now >= self.lower_next {
            self.run(Op::MountLower, ctx);
        } else if self.lower_ever_up && self.union_need && now >= self.union_next {
            self.run(Op::MountUnion, ctx);
        } else if self.check_due || !self.check_waiters.is_empty() {
            self.check_due = false;
            self.run(Op::Check, ctx);
        }
    }

    fn run(&mut self, op: Op, ctx: &mut Context<Self>) {
        let Some(mut plant) = self.plant.take() else { return };
        let s = Arc::clone(&self.s);
        let (tx, rx) = oneshot::channel();
        let spawned = std::thread::Builder::new().name("cs-mount-op".into()).spawn(move || {
            let out = match op {
                Op::MountLower => Outcome::Lower(plant.mount_lower(&s)),
                Op::MountUnion => Outcome::Union(plant.mount_union(&s)),
                Op::Check => {
                    let (l, u) = plant.check(&s);
                    Outcome::Check(l, u)
                }
                Op::Shutdown => Outcome::Shutdown(plant.shutdown()),
            };
            let _ = tx.send((plant, out));
        });
        if let Err(e) = spawned {
            // The plant went down with the closure (its Drop unmounted everything).
            self.lost_plant(format!("cannot start a worker thread: {e}"));
            if self.shut {
                ctx.stop();
            } else {
                ctx.run_later(self.backoff.min, |act, ctx| act.poll(ctx));
            }
            return;
        }
        let busy = self.heartbeat.busy();
        ctx.spawn(rx.into_actor(self).map(|res, act, ctx| {
            drop(busy);
            match res {
                Ok((plant, out)) => {
                    act.plant = Some(plant);
                    act.apply(out, ctx);
                }
                Err(_) => {
                    act.lost_plant("the worker thread panicked".into());
                    if act.shut {
                        ctx.stop();
                    } else {
                        ctx.run_later(act.backoff.min, |act, ctx| act.poll(ctx));
                    }
                }
            }
            act.poll(ctx);
        }));
    }

    /// A worker died with the mounts (they were unmounted by their guards' Drop): start over.
    fn lost_plant(&mut self, why: String) {
        tracing::error!(%why, "mount supervisor lost its mounts");
        self.plant = Some(Plant::default());
        self.state.union.last_error = Some(why.clone());
        self.set_union_status(UnionStatus::Dead);
        self.union_need = true;
        if matches!(self.s.lower, LowerSpec::Command { .. }) {
            self.state.lower.last_error = Some(why);
            self.set_lower_status(LowerStatus::Missing);
            self.lower_need = true;
        }
        self.update_rail();
        if self.shutdown_requested {
            self.finish_shutdown(Ok(()));
        }
    }

    fn apply(&mut self, out: Outcome, ctx: &mut Context<Self>) {
        match out {
            Outcome::Lower(r) => {
                let ok = r.health == LowerHealth::Ok;
                self.apply_lower(&r, ctx);
                if ok {
                    if self.lower_ever_up {
                        self.state.lower.remounts += 1;
                        tracing::info!(remounts = self.state.lower.remounts, "lower remounted");
                        // An overlay pins the old lower: mount it again over the new one now,
                        // before the next check would find it stale.
                        if self.s.backend == UnionBackend::Overlay && self.union_ever_up && !self.union_need {
                            self.union_need = true;
                            self.union_next = Instant::now();
                        }
                    }
                    self.lower_ever_up = true;
                    self.lower_need = false;
                    self.lower_failures = 0;
                    self.state.lower.failed_attempts = 0;
                } else {
                    self.lower_failures += 1;
                    self.schedule_lower(ctx);
                }
            }
            Outcome::Union(r) => {
                if let Some(p) = &r.mount_point {
                    self.apply_mount_point(p);
                }
                if r.dead.is_none() {
                    if self.union_ever_up {
                        self.state.union.remounts += 1;
                        tracing::info!(remounts = self.state.union.remounts, "union remounted");
                    }
                    self.union_ever_up = true;
                    self.union_need = false;
                    self.union_failures = 0;
                    self.state.union.failed_attempts = 0;
                    self.apply_union(&r, ctx);
                } else {
                    self.apply_union(&r, ctx);
                    self.union_failures += 1;
                    self.schedule_union(ctx);
                }
            }
            Outcome::Check(l, u) => {
                self.state.checks += 1;
                self.state.last_check_ms = Some(now_ms());
                self.apply_lower(&l, ctx);
                if l.health == LowerHealth::Ok {
                    // Recovered by itself (sshfs `reconnect`): no remount needed.
                    self.lower_ever_up = true;
                    self.lower_need = false;
                    self.lower_failures = 0;
                    self.state.lower.failed_attempts = 0;
                }
                if self.union_ever_up {
                    self.apply_union(&u, ctx);
                }
                self.update_rail();
                let snapshot = self.state.clone();
                for w in self.check_waiters.drain(..) {
                    let _ = w.send(snapshot.clone());
                }
            }
            Outcome::Shutdown(r) => self.finish_shutdown(r),
        }
        self.update_rail();
        if self.shut {
            ctx.stop();
        }
    }

    fn apply_lower(&mut self, r: &LowerReport, ctx: &mut Context<Self>) {
        self.state.lower.pid = r.pid;
        self.state.lower.latency_ms = r.latency.map(ms);
        let status = match &r.health {
            LowerHealth::Ok => {
                self.state.lower.has_entries = r.has_entries;
                if r.has_entries == Some(true) {
                    self.had_entries = true;
                }
                match self.s.lower {
                    LowerSpec::Adopt(_) => LowerStatus::Adopted,
                    LowerSpec::Command { .. } => LowerStatus::Mounted,
                }
            }
            LowerHealth::Missing(e) => {
                self.state.lower.last_error = Some(e.clone());
                self.state.lower.has_entries = None;
                LowerStatus::Missing
            }
            LowerHealth::Error(e) => {
                self.state.lower.last_error = Some(e.clone());
                self.state.lower.has_entries = None;
                LowerStatus::Error
            }
        };
        if status != self.state.lower.state {
            match &r.health {
                LowerHealth::Ok => tracing::info!(?status, "lower healthy"),
                LowerHealth::Missing(e) | LowerHealth::Error(e) => {
                    tracing::warn!(?status, error = %e, "lower unhealthy")
                }
            }
        }
        self.set_lower_status(status);
        if r.health != LowerHealth::Ok && matches!(self.s.lower, LowerSpec::Command { .. }) && !self.lower_need {
            self.lower_need = true;
            self.schedule_lower(ctx);
        }
    }

    fn apply_union(&mut self, r: &UnionReport, ctx: &mut Context<Self>) {
        self.state.union.pid = r.pid;
        self.state.union.latency_ms = r.latency.map(ms);
        if let Some(l) = r.layout {
            self.state.union.whiteout_dir = Some(l.meta_dir());
        }
        match &r.dead {
            None => {
                if r.options.is_some() {
                    self.state.union.options.clone_from(&r.options);
                    self.state.union.options_note.clone_from(&r.options_note);
                }
                self.set_union_status(UnionStatus::Mounted)
            }
            Some(e) => {
                if self.state.union.state != UnionStatus::Dead {
                    tracing::warn!(error = %e, "union dead");
                }
                self.state.union.last_error = Some(e.clone());
                self.state.union.pid = None;
                if self.union_ever_up {
                    self.set_union_status(UnionStatus::Dead);
                }
                if !self.union_need {
                    self.union_need = true;
                    self.schedule_union(ctx);
                }
            }
        }
    }

    fn apply_mount_point(&mut self, p: &Prepared) {
        let m = &mut self.state.mount_point;
        m.guard = p.guard;
        m.guard_error = p.guard_error.clone();
        if let Some(r) = &p.recovery {
            m.recoveries += 1;
            m.recovered_entries += r.moved_into_upper + r.moved_into_recovery_dir;
            m.last_recovery = Some(r.clone());
        }
    }

    fn schedule_lower(&mut self, ctx: &mut Context<Self>) {
        self.state.lower.failed_attempts = self.lower_failures;
        // The first retry after a loss waits `min`: retry number = failures so far + 1.
        let d = self.backoff.jittered(self.lower_failures + 1);
        self.lower_next = Instant::now() + d;
        ctx.run_later(d, |act, ctx| act.poll(ctx));
    }

    fn schedule_union(&mut self, ctx: &mut Context<Self>) {
        self.state.union.failed_attempts = self.union_failures;
        // The first retry after a loss waits `min`: retry number = failures so far + 1.
        let d = self.backoff.jittered(self.union_failures + 1);
        self.union_next = Instant::now() + d;
        ctx.run_later(d, |act, ctx| act.poll(ctx));
    }

    fn set_lower_status(&mut self, st: LowerStatus) {
        if self.state.lower.state != st {
            self.state.lower.state = st;
            self.state.lower.since_ms = now_ms();
        }
    }

    fn set_union_status(&mut self, st: UnionStatus) {
        if self.state.union.state != st {
            self.state.union.state = st;
            self.state.union.since_ms = now_ms();
        }
    }

    fn rail_reason(&self) -> Option<String> {
        if self.shut || self.shutdown_requested {
            return Some("mounts shut down".into());
        }
        let l = &self.state.lower;
        let mp = l.mountpoint.display();
        let err = l.last_error.as_deref().unwrap_or("unknown error");
        match l.state {
            LowerStatus::Starting => Some(format!("lower {mp} not mounted yet")),
            LowerStatus::Missing => Some(format!("lower missing: {err}")),
            LowerStatus::Error => Some(format!("lower erroring: {err}")),
            LowerStatus::Unmounted => Some(format!("lower {mp} unmounted")),
            LowerStatus::Mounted | LowerStatus::Adopted => (self.had_entries && l.has_entries == Some(false)).then(|| {
                format!("lower empty: {mp} lists no entries but had some at an earlier check (if the project really is empty, run `cs-actor accept-empty-lower` on this compute server)")
            }),
        }
    }

    fn update_rail(&mut self) {
        let reason = self.rail_reason();
        match (&self.state.rail, &reason) {
            (None, Some(r)) => {
                tracing::warn!(reason = %r, "safety rail up: sync rounds paused");
                self.state.rails_raised += 1;
                self.state.rail_since_ms = Some(now_ms());
            }
            (Some(_), None) => {
                tracing::info!("safety rail down: sync rounds may run");
                self.state.rail_since_ms = None;
            }
            _ => {}
        }
        self.rail.send_if_modified(|published| {
            let changed = *published != reason;
            published.clone_from(&reason);
            changed
        });
        self.state.rail = reason;
    }

    fn finish_shutdown(&mut self, r: Result<(), String>) {
        self.shut = true;
        self.set_union_status(UnionStatus::Unmounted);
        self.state.union.pid = None;
        if matches!(self.s.lower, LowerSpec::Command { .. }) {
            self.set_lower_status(LowerStatus::Unmounted);
            self.state.lower.pid = None;
        }
        self.state.exit = Some(match &r {
            Ok(()) => ExitStatus::Quit,
            Err(e) => ExitStatus::Failure(e.clone()),
        });
        self.update_rail();
        let snapshot = self.state.clone();
        for w in self.shutdown_waiters.drain(..) {
            let _ = w.send(r.clone().map(|_| snapshot.clone()).map_err(MountError::Shutdown));
        }
        for w in self.check_waiters.drain(..) {
            let _ = w.send(snapshot.clone());
        }
    }
}

/// overlayfs's work directory: the configured one or `<upper>.overlay-work`, created, and
/// checked to be on the upper's filesystem and outside the three other directories (the
/// kernel refuses the mount otherwise, with a less clear message).
fn overlay_work_dir(
    cfg: &MountConfig,
    upper: &std::path::Path,
    merged: &std::path::Path,
    lower: &std::path::Path,
) -> Result<PathBuf, MountError> {
    use std::os::unix::fs::MetadataExt;
    let wanted = match &cfg.overlay_work {
        Some(w) => w.clone(),
        None => {
            let mut name = upper.file_name().unwrap_or_default().to_os_string();
            name.push(".overlay-work");
            upper.with_file_name(name)
        }
    };
    let work = resolve_dir(&wanted, "resolve the overlay work directory")?;
    for (what, p) in [("upper layer", upper), ("union mount point", merged), ("lower mount point", lower)] {
        if work.starts_with(p) || p.starts_with(&work) {
            return Err(MountError::Config(format!(
                "the overlay work directory {} must be outside the {what} {} (and not contain it)",
                work.display(),
                p.display()
            )));
        }
    }
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev()).map_err(|e| MountError::io("stat", p, e));
    if dev(&work)? != dev(upper)? {
        return Err(MountError::Config(format!(
            "the overlay work directory {} is not on the filesystem of the upper layer {}: overlayfs needs both on one",
            work.display(),
            upper.display()
        )));
    }
    Ok(work)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Actor for MountSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.health_interval, |act, ctx| {
            act.check_due = true;
            act.poll(ctx);
        });
        self.poll(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        // Stopped without Shutdown (e.g. the system is going down): unmount now. An operation
        // still running on a worker thread drops its plant (unmounting) when it ends.
        if let Some(mut plant) = self.plant.take() {
            if !self.shut {
                if let Err(e) = plant.shutdown() {
                    tracing::warn!(error = %e, "unmounting as the supervisor stops");
                }
            }
        }
    }
}

impl Observable for MountSupervisor {
    type State = MountState;
    fn observe(&self) -> MountState {
        let mut s = self.state.clone();
        if let Some(pid) = self.plant.as_ref().and_then(|p| p.union_pid()) {
            s.union.pid = Some(pid);
        }
        s
    }
}
cs_supervision::observable!(MountSupervisor);

impl Handler<SyncAllowed> for MountSupervisor {
    type Result = bool;
    fn handle(&mut self, _: SyncAllowed, _: &mut Self::Context) -> bool {
        self.state.rail.is_none()
    }
}

impl Handler<CheckNow> for MountSupervisor {
    type Result = ResponseFuture<Result<MountState, MountError>>;
    fn handle(&mut self, _: CheckNow, ctx: &mut Self::Context) -> Self::Result {
        if self.shut {
            let s = self.state.clone();
            return Box::pin(async move { Ok(s) });
        }
        let (tx, rx) = oneshot::channel();
        self.check_waiters.push(tx);
        self.poll(ctx);
        Box::pin(async move { rx.await.map_err(|_| MountError::Unavailable("stopped before checking".into())) })
    }
}

impl Handler<AcceptEmptyLower> for MountSupervisor {
    type Result = ();
    fn handle(&mut self, _: AcceptEmptyLower, _: &mut Self::Context) {
        tracing::info!("empty lower accepted");
        self.had_entries = false;
        self.update_rail();
    }
}

impl Handler<Shutdown> for MountSupervisor {
    type Result = ResponseFuture<Result<MountState, MountError>>;
    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        if self.shut {
            let s = self.state.clone();
            return Box::pin(async move { Ok(s) });
        }
        let (tx, rx) = oneshot::channel();
        self.shutdown_waiters.push(tx);
        self.shutdown_requested = true;
        self.update_rail();
        self.poll(ctx);
        Box::pin(
            async move { rx.await.unwrap_or_else(|_| Err(MountError::Unavailable("stopped during shutdown".into()))) },
        )
    }
}
