//! The mounts themselves and the blocking operations on them. The supervisor owns one
//! `Plant` and hands it to a worker thread for each operation (mount, check, shutdown), so
//! the actor never blocks and operations never overlap.

use std::path::PathBuf;
use std::time::Duration;

use cs_union::{Layout, MountGuard, UnionfsFuse};

use crate::bare::{self, Prepared};
use crate::lower::LowerProc;
use crate::overlay::{self, OverlayMount};
use crate::probe::{MountIdentity, PathHealth, Prober};
use crate::util::{mounted, unmount_if_mounted};
use crate::{prepare_local_only_owned, LowerSpec, UnionBackend};

/// What the operations need from the configuration (paths already resolved).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub lower: LowerSpec,
    pub lower_mountpoint: PathBuf,
    pub upper: PathBuf,
    pub merged: PathBuf,
    pub union_extra_opts: Vec<String>,
    pub local_only: Vec<String>,
    pub local_only_owner: Option<(u32, u32)>,
    pub layout: Option<Layout>,
    pub union_binary: Option<UnionfsFuse>,
    pub health_timeout: Duration,
    pub lower_mount_timeout: Duration,
    pub backend: UnionBackend,
    /// overlayfs's work directory (on the upper's filesystem, outside it).
    pub overlay_work: PathBuf,
    /// overlayfs's options after the three directories.
    pub overlay_options: Vec<String>,
}

/// The union as mounted: unionfs-fuse's process, or a kernel overlay.
enum UnionMount {
    Fuse(MountGuard),
    Overlay(OverlayMount),
}

impl UnionMount {
    fn unmount(self) -> Result<(), cs_union::UnionError> {
        match self {
            UnionMount::Fuse(g) => g.unmount(),
            UnionMount::Overlay(o) => o.unmount(),
        }
    }
}

#[derive(Default)]
pub(crate) struct Plant {
    lower: Option<LowerProc>,
    union: Option<UnionMount>,
    layout: Option<Layout>,
    /// Why the last attempt to run the lower's command failed.
    lower_failure: Option<String>,
    lower_probe: Prober,
    union_probe: Prober,
}

/// The lower layer as one check saw it.
#[derive(Debug, Clone)]
pub(crate) struct LowerReport {
    /// `Ok` = mounted and answering; else why not.
    pub health: LowerHealth,
    pub pid: Option<u32>,
    pub latency: Option<Duration>,
    /// Whether its root lists at least one entry (only when healthy).
    pub has_entries: Option<bool>,
    /// Which mount answered (only when healthy): an overlay over an older one is stale.
    pub mount: Option<MountIdentity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LowerHealth {
    Ok,
    /// Not a mount point (never mounted, or unmounted).
    Missing(String),
    /// Mounted but failing: dead process, ENOTCONN, I/O error, no answer.
    Error(String),
}

/// The union as one check saw it.
#[derive(Debug, Clone, Default)]
pub(crate) struct UnionReport {
    /// `None` = alive and answering; else why it is dead.
    pub dead: Option<String>,
    pub pid: Option<u32>,
    pub latency: Option<Duration>,
    /// The whiteout layout the union was mounted with (probed or configured; unionfs-fuse only).
    pub layout: Option<Layout>,
    /// overlayfs: the options in force, and why they differ from the configured ones.
    pub options: Option<String>,
    pub options_note: Option<String>,
    /// A mount attempt's guard and recovery of the bare mount point (if it got that far).
    pub mount_point: Option<Prepared>,
}

impl Plant {
    /// (Re)mounts the lower for a `Command` spec (stopping the previous process and
    /// detaching its mount first), then checks it. For `Adopt`, only checks.
    pub(crate) fn mount_lower(&mut self, s: &Settings) -> LowerReport {
        if let LowerSpec::Command { cmd, .. } = &s.lower {
            if let Some(mut old) = self.lower.take() {
                if let Err(e) = old.stop() {
                    tracing::warn!(error = %e, "stopping the previous lower mount");
                }
            }
            match LowerProc::start(cmd, &s.lower_mountpoint, s.lower_mount_timeout) {
                Ok(p) => {
                    self.lower = Some(p);
                    self.lower_failure = None;
                }
                Err(e) => {
                    self.lower_failure = Some(e.clone());
                    let health =
                        if mounted(&s.lower_mountpoint) { LowerHealth::Error(e) } else { LowerHealth::Missing(e) };
                    return LowerReport { health, pid: None, latency: None, has_entries: None, mount: None };
                }
            }
        }
        self.check_lower(s)
    }

    /// (Re)mounts the union: the previous one is unmounted (lazily if busy) and its process
    /// stopped, the bare mount point guarded and emptied (see `bare`), the local-only
    /// directories made opaque, then `unionfs-fuse -f` runs.
    pub(crate) fn mount_union(&mut self, s: &Settings) -> UnionReport {
        let mut mount_point = None;
        let mut r = match self.try_mount_union(s, &mut mount_point) {
            Ok(()) => self.check_union(s, None),
            Err(e) => UnionReport { dead: Some(e), ..Default::default() },
        };
        r.mount_point = mount_point;
        r
    }

    fn try_mount_union(&mut self, s: &Settings, mount_point: &mut Option<Prepared>) -> Result<(), String> {
        if let Some(old) = self.union.take() {
            if let Err(e) = old.unmount() {
                tracing::warn!(error = %e, "unmounting the previous union");
            }
        }
        // A union left by a killed predecessor (its daemon outlives it), or one we could not
        // unmount, is detached; a few times, in case mounts are stacked there.
        for _ in 0..4 {
            if !mounted(&s.merged) {
                break;
            }
            unmount_if_mounted(&s.merged)
                .map_err(|e| format!("detach the stale union at {}: {e}", s.merged.display()))?;
        }
        // Programs writing to the home now write into the bare directory (a writer still busy
        // after a kill -9 did, and unionfs-fuse then refused the non-empty mount point for
        // good): guard it, and move what is there into the upper layer.
        let prepared = bare::prepare(&s.merged, &s.upper, &s.lower_mountpoint)?;
        let left = prepared.left.clone();
        *mount_point = Some(prepared);
        if let Some(e) = left {
            return Err(e);
        }
        if s.backend == UnionBackend::Overlay {
            // Which lower the overlay pins (asked with the timeout: a hung lower fails here).
            let lower = match self.lower_probe.check_dir(&s.lower_mountpoint, false, s.health_timeout) {
                PathHealth::Ok { mount, .. } => mount,
                h => return Err(format!("the lower: {}", h.describe().unwrap_or_default())),
            };
            self.union = Some(UnionMount::Overlay(overlay::mount(s, lower)?));
            return Ok(());
        }
        let bin = match &s.union_binary {
            Some(b) => b.clone(),
            None => UnionfsFuse::find().map_err(|e| e.to_string())?,
        };
        let layout = match s.layout.or(self.layout) {
            Some(l) => l,
            None => {
                let l = bin.probe_layout(&std::env::temp_dir()).map_err(|e| e.to_string())?;
                tracing::info!(?l, "probed the union's whiteout layout");
                l
            }
        };
        self.layout = Some(layout);
        prepare_local_only_owned(&s.upper, layout, &s.local_only, s.local_only_owner).map_err(|e| e.to_string())?;
        let guard = MountGuard::mount(&bin, &s.upper, &s.lower_mountpoint, &s.merged, &s.union_extra_opts)
            .map_err(|e| e.to_string())?;
        self.union = Some(UnionMount::Fuse(guard));
        Ok(())
    }

    pub(crate) fn check(&mut self, s: &Settings) -> (LowerReport, UnionReport) {
        let lower = self.check_lower(s);
        let union = self.check_union(s, lower.mount);
        (lower, union)
    }

    fn check_lower(&mut self, s: &Settings) -> LowerReport {
        let mp = &s.lower_mountpoint;
        let mut r = LowerReport { health: LowerHealth::Ok, pid: None, latency: None, has_entries: None, mount: None };
        if let Some(p) = self.lower.as_mut() {
            let exited = p.exited();
            r.pid = p.pid();
            if let Some(why) = exited {
                r.health = if mounted(mp) {
                    LowerHealth::Error(format!("{why}; its mount at {} is dead", mp.display()))
                } else {
                    LowerHealth::Missing(why)
                };
                return r;
            }
        } else if matches!(s.lower, LowerSpec::Command { .. }) {
            r.health = LowerHealth::Missing(match &self.lower_failure {
                Some(e) => format!("{} is not mounted: {e}", mp.display()),
                None => format!("{} is not mounted (command not run yet)", mp.display()),
            });
            return r;
        }
        if !mounted(mp) {
            r.health = LowerHealth::Missing(format!("{} is not mounted", mp.display()));
            return r;
        }
        match self.lower_probe.check_dir(mp, true, s.health_timeout) {
            PathHealth::Ok { latency, has_entries, mount } => {
                r.latency = Some(latency);
                r.has_entries = has_entries;
                r.mount = mount;
            }
            h => r.health = LowerHealth::Error(h.describe().unwrap_or_default()),
        }
        r
    }

    /// `lower`: which mount the lower is now, when known (an overlay over another is stale).
    fn check_union(&mut self, s: &Settings, lower: Option<MountIdentity>) -> UnionReport {
        let mut r = UnionReport { layout: self.layout, ..Default::default() };
        let g = match self.union.as_mut() {
            None => {
                r.dead = Some("not mounted".into());
                return r;
            }
            Some(UnionMount::Overlay(o)) => {
                r.layout = None;
                r.options = Some(o.options.clone());
                r.options_note = o.note.clone();
                r.dead = o.stale(&s.merged, &s.lower_mountpoint, lower);
                if r.dead.is_none() {
                    self.probe_union(s, &mut r);
                }
                return r;
            }
            Some(UnionMount::Fuse(g)) => g,
        };
        match g.try_wait() {
            Ok(Some(status)) => {
                let tail = g.stderr_tail();
                r.dead = Some(if tail.is_empty() {
                    format!("union process exited with {status}")
                } else {
                    format!("union process exited with {status}: {tail}")
                });
                return r;
            }
            Ok(None) => r.pid = g.pid(),
            Err(e) => {
                r.dead = Some(e.to_string());
                return r;
            }
        }
        if !mounted(&s.merged) {
            r.dead = Some(format!("{} is no longer mounted", s.merged.display()));
            return r;
        }
        self.probe_union(s, &mut r);
        r
    }

    /// The merged view's root answers `stat` within the timeout.
    fn probe_union(&self, s: &Settings, r: &mut UnionReport) {
        match self.union_probe.check_dir(&s.merged, false, s.health_timeout) {
            PathHealth::Ok { latency, .. } => r.latency = Some(latency),
            h => r.dead = h.describe(),
        }
    }

    /// Unmounts the union, then the lower if we mounted it (each lazily if busy).
    pub(crate) fn shutdown(&mut self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Some(g) = self.union.take() {
            if let Err(e) = g.unmount() {
                errs.push(e.to_string());
            }
        }
        if let Some(mut l) = self.lower.take() {
            if let Err(e) = l.stop() {
                errs.push(format!("lower: {e}"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }

    pub(crate) fn union_pid(&self) -> Option<u32> {
        match &self.union {
            Some(UnionMount::Fuse(g)) => g.pid(),
            _ => None,
        }
    }
}
