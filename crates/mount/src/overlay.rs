//! Kernel overlayfs as the union: mounting it (with the fallback when `index=on` is refused)
//! and telling whether the mounted one is still ours and still over the current lower.
//!
//! There is no daemon: the overlay is alive while `/proc/self/mountinfo` lists it at the
//! merged path (as the mount we made) and its root answers `stat`. It pins the lower's
//! superblock, so when the lower is mounted again (sshfs died and came back) the overlay
//! still shows the old, dead one: it is remounted too.

use std::path::Path;

use cs_union::overlay::{Overlay, OverlayGuard};
use cs_union::UnionError;
use rustix::io::Errno;

use crate::plant::Settings;
use crate::prepare_local_only_opaque;
use crate::probe::MountIdentity;

/// A mounted overlay and what it was mounted over.
pub(crate) struct OverlayMount {
    guard: OverlayGuard,
    /// Our mount's id in mountinfo: a different mount on top means ours is gone.
    mount_id: Option<u64>,
    /// Which mount the lower was when the overlay was mounted over it.
    lower: Option<MountIdentity>,
    /// The options in force, as the kernel reports them (without the three directories).
    pub options: String,
    /// Why they differ from the configured ones, if they do.
    pub note: Option<String>,
}

/// Makes the local-only directories opaque, then mounts overlayfs at `merged` with the
/// configured options, over the lower mount `lower` (as just probed). `index=on` is refused
/// when the upper layer is still in use by an overlay that was detached but is busy (EBUSY: a
/// process keeps a file or its working directory in the old home), or when the upper or work
/// directory was used over another lower (ESTALE): then it is mounted with `index=off`, and
/// the note says so. A read-only mount (a stale scratch directory) is cleaned and retried.
pub(crate) fn mount(s: &Settings, lower: Option<MountIdentity>) -> Result<OverlayMount, String> {
    prepare_local_only_opaque(&s.upper, &s.local_only, s.local_only_owner).map_err(|e| e.to_string())?;
    let mut ov = Overlay {
        upper: s.upper.clone(),
        lower: s.lower_mountpoint.clone(),
        work: s.overlay_work.clone(),
        merged: s.merged.clone(),
        extra: s.overlay_options.clone(),
    };
    let (mut guard, mut note) = mount_with_fallback(&mut ov)?;
    let mut entry = listed(&s.merged)?;
    if entry.super_options.split(',').any(|o| o == "ro") {
        // The kernel could not clean its scratch directory `WORK/work` (left by an earlier
        // mount, e.g. a copy-up cut short) and mounted read-only: it is only scratch, so it
        // is removed and the mount tried once more.
        let scratch = s.overlay_work.join("work");
        tracing::warn!(work = %scratch.display(), "overlayfs came up read-only: removing its stale work directory");
        guard.unmount().map_err(|e| e.to_string())?;
        remove_scratch(&scratch)?;
        (guard, note) = mount_with_fallback(&mut ov)?;
        entry = listed(&s.merged)?;
        if entry.super_options.split(',').any(|o| o == "ro") {
            let _ = guard.unmount();
            return Err(format!(
                "overlayfs at {} came up read-only even with a clean work directory {} (the kernel log says why)",
                s.merged.display(),
                s.overlay_work.display()
            ));
        }
    }
    let options = options_in_force(&entry.super_options);
    if note.is_none() && has_index_on(&ov.extra) && !options.split(',').any(|o| o == "index=on") {
        note = Some(
            "the kernel turned index off by itself (the kernel log says why: a lower without file handles?)".into(),
        );
    }
    tracing::info!(merged = %s.merged.display(), %options, "overlayfs mounted");
    Ok(OverlayMount { guard, mount_id: Some(entry.mount_id), lower, options, note })
}

/// Mounts `ov`; when the kernel refuses `index=on` (see [`mount`]) mounts with `index=off`
/// (changing `ov`), and says why in the note.
fn mount_with_fallback(ov: &mut Overlay) -> Result<(OverlayGuard, Option<String>), String> {
    match ov.mount() {
        Ok(g) => Ok((g, None)),
        Err(UnionError::OverlayMount { source, .. })
            if has_index_on(&ov.extra) && matches!(Errno::from_io_error(&source), Some(Errno::BUSY | Errno::STALE)) =>
        {
            let why = match Errno::from_io_error(&source) {
                Some(Errno::BUSY) => "the upper layer is still in use by an earlier overlay that was detached while busy (a process keeps a file or its working directory open in the old home)",
                _ => "the upper layer or the work directory was used over another lower layer (its recorded origin does not match)",
            };
            tracing::warn!(error = %source, why, "overlayfs refused index=on: mounting with index=off");
            ov.extra = ov.extra.iter().map(|o| if o == "index=on" { "index=off".into() } else { o.clone() }).collect();
            let g = ov.mount().map_err(|e| e.to_string())?;
            Ok((g, Some(format!(
                "index=on refused ({source}): {why}; mounted with index=off, so a copy-up breaks lower hard links until a remount with index=on succeeds"
            ))))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The mountinfo line of the overlay just mounted at `merged`.
fn listed(merged: &Path) -> Result<cs_union::MountEntry, String> {
    cs_union::mount_entry(merged)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is not listed in mountinfo right after mounting overlayfs", merged.display()))
}

/// Removes overlayfs's scratch directory `WORK/work` (whatever it holds), never `WORK/index`.
fn remove_scratch(scratch: &Path) -> Result<(), String> {
    let r = match std::fs::symlink_metadata(scratch) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(scratch),
        _ => std::fs::remove_file(scratch),
    };
    r.map_err(|e| format!("remove the stale overlay work directory {}: {e}", scratch.display()))
}

fn has_index_on(opts: &[String]) -> bool {
    opts.iter().any(|o| o == "index=on")
}

/// The superblock options without `rw` and the three directories (long, and in the status
/// already).
fn options_in_force(super_options: &str) -> String {
    super_options
        .split(',')
        .filter(|o| *o != "rw" && !["lowerdir=", "upperdir=", "workdir="].iter().any(|p| o.starts_with(p)))
        .collect::<Vec<_>>()
        .join(",")
}

impl OverlayMount {
    /// `Some(why)` if the overlay at `merged` is no longer the one we mounted over the current
    /// lower: unmounted (someone ran umount), covered by another mount, or the lower (now the
    /// mount `lower_now`, as the lower's health check saw it) was mounted again since: the
    /// overlay still shows the old one. A lower that does not answer right now does not count:
    /// the rail is up, and the overlay is remounted once it is back.
    pub(crate) fn stale(&self, merged: &Path, lower: &Path, lower_now: Option<MountIdentity>) -> Option<String> {
        match cs_union::mount_entry(merged) {
            Ok(None) => return Some(format!("{} is no longer mounted", merged.display())),
            Ok(Some(e)) if e.fs_type != "overlay" => {
                return Some(format!("{} is now a {} mount, not the overlay", merged.display(), e.fs_type))
            }
            Ok(Some(e)) if Some(e.mount_id) != self.mount_id => {
                return Some(format!("another overlay was mounted over {}", merged.display()))
            }
            Ok(Some(_)) => {}
            Err(e) => return Some(e.to_string()),
        }
        if lower_now.is_some() && lower_now != self.lower {
            return Some(format!(
                "the lower {} was mounted again since the overlay was: the overlay still shows the old one",
                lower.display()
            ));
        }
        None
    }

    pub(crate) fn unmount(self) -> Result<(), UnionError> {
        self.guard.unmount()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_in_force_leave_out_the_directories() {
        assert_eq!(
            options_in_force("rw,lowerdir=/l\\054x,upperdir=/u,workdir=/w,redirect_dir=on,index=on,uuid=on"),
            "redirect_dir=on,index=on,uuid=on"
        );
        assert_eq!(options_in_force("ro,lowerdir=/l"), "ro");
    }
}
