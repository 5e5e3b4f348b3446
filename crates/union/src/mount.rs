//! The real union: finding the binary, mounting it in the foreground, probing its layout.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cs_proc::{stop_child, unmount_or_detach, wait_timeout, OutputTail};
use cs_protocol::RelPath;

use crate::{list_whiteouts, Layout, UnionError};

/// How long [`MountGuard::mount`] waits for the mount point to go live.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the process gets to exit after the unmount before it is signalled.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How much of the process's stderr is kept for error messages.
const STDERR_TAIL: usize = 16 * 1024;

/// The unionfs-fuse program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnionfsFuse {
    pub binary: PathBuf,
}

impl UnionfsFuse {
    /// The first `unionfs-fuse`, else the first `unionfs`, found on `PATH`.
    pub fn find() -> Result<Self, UnionError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for name in ["unionfs-fuse", "unionfs"] {
            for dir in std::env::split_paths(&path) {
                let cand = dir.join(name);
                if is_executable(&cand) {
                    return Ok(UnionfsFuse { binary: cand });
                }
            }
        }
        Err(UnionError::BinaryNotFound { path: path.to_string_lossy().into_owned() })
    }

    /// The version the binary reports (`1.0` for Debian's), from `--version`.
    pub fn version(&self) -> Result<String, UnionError> {
        let op = "query version of";
        let out = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| UnionError::Command { op, binary: self.binary.clone(), detail: e.to_string() })?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        text.lines().find_map(parse_version_line).ok_or_else(|| UnionError::Command {
            op,
            binary: self.binary.clone(),
            detail: format!("no `unionfs-fuse version` line in output ({}): {text:?}", out.status),
        })
    }

    /// `BINARY -f -o cow,ACCESS[,EXTRA] UPPER=RW:LOWER=RO MERGED`: copy-on-write, upper
    /// writable over lower read-only, in the foreground (the process is the mount's lifetime;
    /// its exit is the mount's death), ACCESS being [`access_options`]. Paths are passed as given; they must not contain `:` or `=`
    /// (unionfs-fuse's branch syntax has no escaping; [`MountGuard::mount`] checks this).
    pub fn mount_command(&self, upper: &Path, lower: &Path, merged: &Path, extra_opts: &[String]) -> Command {
        let mut opts = String::from("cow");
        for o in access_options().iter().chain(extra_opts) {
            opts.push(',');
            opts.push_str(o);
        }
        let mut branches = OsString::from(upper.as_os_str());
        branches.push("=RW:");
        branches.push(lower.as_os_str());
        branches.push("=RO");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-f").arg("-o").arg(opts).arg(branches).arg(merged);
        cmd
    }

    /// Mounts a throwaway union in a fresh directory below `scratch`, deletes a lower file
    /// through it, unmounts, and reports which layout the marker appeared in. The fresh
    /// directory is removed afterwards (only once unmounted).
    pub fn probe_layout(&self, scratch: &Path) -> Result<Layout, UnionError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = scratch.join(format!("unionfs-probe-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let (upper, lower, merged) = (dir.join("upper"), dir.join("lower"), dir.join("merged"));
        for d in [&upper, &lower, &merged] {
            std::fs::create_dir_all(d).map_err(|e| UnionError::io("probe layout: create dir", d, e))?;
        }
        let probe = "probe-file";
        let lower_file = lower.join(probe);
        std::fs::write(&lower_file, b"probe\n")
            .map_err(|e| UnionError::io("probe layout: write lower file", &lower_file, e))?;

        let result = (|| {
            let guard = MountGuard::mount(self, &upper, &lower, &merged, &[])?;
            let merged_file = merged.join(probe);
            let removed = std::fs::remove_file(&merged_file);
            guard.unmount()?;
            removed.map_err(|e| UnionError::io("probe layout: delete through the union", &merged_file, e))?;

            let scan = list_whiteouts(&upper)?;
            let want = RelPath::new(probe).expect("a valid path");
            let found: Vec<Layout> = scan.whiteouts.iter().filter(|w| w.path == want).map(|w| w.layout).collect();
            match found.as_slice() {
                [layout] => Ok(*layout),
                _ => Err(UnionError::Probe {
                    scratch: scratch.to_path_buf(),
                    detail: format!(
                        "deleting a lower file left {} matching marker(s); upper holds: {:?} (problems: {:?})",
                        found.len(),
                        list_tree(&upper),
                        scan.problems
                    ),
                }),
            }
        })();
        // Never delete recursively through a live mount.
        let still_mounted =
            std::fs::canonicalize(&dir).map(|d| is_mounted(&d.join("merged")).unwrap_or(true)).unwrap_or(true);
        if still_mounted {
            tracing::warn!(dir = %dir.display(), "probe union still mounted; leaving its directory");
            return result;
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the probe directory");
        }
        result
    }
}

/// The FUSE options that make the merged view a home like a local disk for every user of the
/// machine: the kernel checks each access against the modes and owners the union shows
/// (`default_permissions`), and, when the union is mounted by root (the service), lets other
/// users in at all (`allow_other`: without it the kernel refuses everyone but the mounter,
/// whatever the modes say). A non-root mounter would need `user_allow_other` in
/// `/etc/fuse.conf` for `allow_other`, and is then the home's only user anyway: it is not asked.
///
/// unionfs-fuse 1.0 run as root with `allow_other` creates each entry as the calling user
/// (it `chown`s what it creates to the caller) and keeps the lower entry's owner on copy-up
/// (observed; `docs/unionfs-notes.md`).
pub fn access_options() -> Vec<String> {
    let mut o = vec!["default_permissions".to_string()];
    if rustix::process::geteuid().is_root() {
        o.insert(0, "allow_other".to_string());
    }
    o
}

fn parse_version_line(line: &str) -> Option<String> {
    let rest = line.trim().strip_prefix("unionfs-fuse version")?;
    let v = rest.trim_start_matches([':', ' ', '\t']).trim();
    (!v.is_empty()).then(|| v.to_string())
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Relative paths of everything below `root`, for error messages.
fn list_tree(root: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap_or(&p).display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                go(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out.sort();
    out
}

/// A running union (foreground `unionfs-fuse -f`, our child). [`MountGuard::mount`] returns
/// once the mount point is listed in `/proc/self/mountinfo`; dropping the guard unmounts and
/// makes sure the process is gone (signalled by pid if it does not exit by itself).
pub struct MountGuard {
    merged: PathBuf,
    child: Option<Child>,
    stderr: OutputTail,
    exited: Option<ExitStatus>,
    done: bool,
}

impl std::fmt::Debug for MountGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountGuard").field("merged", &self.merged).field("pid", &self.pid()).finish()
    }
}

impl MountGuard {
    /// Mounts `upper` (RW) over `lower` (RO) at `merged` (all must exist) and waits until the
    /// mount is live. The process's stdout is discarded (1.0 prints debug lines there with
    /// `hide_meta_files`); its stderr is kept (tail) for error messages.
    pub fn mount(
        u: &UnionfsFuse,
        upper: &Path,
        lower: &Path,
        merged: &Path,
        extra_opts: &[String],
    ) -> Result<Self, UnionError> {
        let op = "mount union at";
        let canon = |p: &Path| std::fs::canonicalize(p).map_err(|e| UnionError::io("mount union: resolve", p, e));
        let (upper, lower, merged) = (canon(upper)?, canon(lower)?, canon(merged)?);
        for b in [&upper, &lower] {
            if b.as_os_str().as_bytes().iter().any(|c| matches!(c, b':' | b'=')) {
                return Err(UnionError::Mount {
                    op,
                    merged,
                    detail: format!("branch {} contains `:` or `=`, which unionfs-fuse cannot parse", b.display()),
                });
            }
        }
        if is_mounted(&merged)? {
            return Err(UnionError::Mount { op, merged, detail: "something is already mounted there".into() });
        }
        let mut cmd = u.mount_command(&upper, &lower, &merged, extra_opts);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| UnionError::Mount {
            op,
            merged: merged.clone(),
            detail: format!("cannot run {}: {e}", u.binary.display()),
        })?;
        let stderr = OutputTail::collect(child.stderr.take(), STDERR_TAIL);
        let mut guard = MountGuard { merged, child: Some(child), stderr, exited: None, done: false };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            match is_mounted(&guard.merged) {
                Ok(true) => {
                    tracing::debug!(merged = %guard.merged.display(), pid = ?guard.pid(), "union mounted");
                    return Ok(guard);
                }
                Ok(false) => {}
                Err(e) => return Err(e), // guard's Drop cleans up
            }
            if let Some(status) = guard.try_wait()? {
                guard.stderr.finish(); // the pipe is closed: collect all of stderr
                let detail =
                    format!("{} exited with {status} before mounting: {}", u.binary.display(), guard.stderr_tail());
                return Err(UnionError::Mount { op, merged: guard.merged.clone(), detail });
            }
            if Instant::now() > deadline {
                let detail = format!("not mounted after {MOUNT_TIMEOUT:?}: {}", guard.stderr_tail());
                return Err(UnionError::Mount { op, merged: guard.merged.clone(), detail });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The union process's pid, while it runs (`None` once [`MountGuard::try_wait`] saw it exit).
    pub fn pid(&self) -> Option<u32> {
        match self.exited {
            Some(_) => None,
            None => self.child.as_ref().map(|c| c.id()),
        }
    }

    /// The mount point (canonical).
    pub fn merged(&self) -> &Path {
        &self.merged
    }

    /// `Some(status)` once the union process has exited (the mount is then dead: accesses
    /// fail with "Transport endpoint is not connected" until it is unmounted).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, UnionError> {
        if self.exited.is_some() {
            return Ok(self.exited);
        }
        let Some(c) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = c.try_wait().map_err(|e| UnionError::Mount {
            op: "check union process of",
            merged: self.merged.clone(),
            detail: e.to_string(),
        })?;
        self.exited = status;
        Ok(status)
    }

    /// The last bytes the process wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        self.stderr.text()
    }

    /// Unmounts, waits for the process to exit (signalling it if needed) and reports any
    /// failure. Dropping the guard does the same but can only log failures.
    pub fn unmount(mut self) -> Result<(), UnionError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), UnionError> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut errors = Vec::new();
        match is_mounted(&self.merged) {
            Ok(true) => {
                if let Err(e) = unmount_or_detach(&self.merged) {
                    errors.push(e.to_string());
                }
            }
            Ok(false) => {}
            Err(e) => errors.push(e.to_string()),
        }
        if let Some(mut child) = self.child.take() {
            let pid = child.id();
            if wait_timeout(&mut child, EXIT_GRACE).is_none() {
                errors.push(format!("process {pid} did not exit after unmount; sent SIGTERM"));
                stop_child(&mut child, Duration::from_secs(2));
            }
        }
        self.stderr.finish();
        // A process that died before unmounting leaves a dead mount: try once more.
        if is_mounted(&self.merged).unwrap_or(false) {
            if let Err(e) = unmount_or_detach(&self.merged) {
                errors.push(e.to_string());
            }
            if is_mounted(&self.merged).unwrap_or(true) {
                errors.push("still mounted".into());
            }
        }
        if errors.is_empty() {
            tracing::debug!(merged = %self.merged.display(), "union unmounted");
            Ok(())
        } else {
            let tail = self.stderr_tail();
            if !tail.is_empty() {
                errors.push(format!("union stderr: {tail}"));
            }
            Err(UnionError::Mount { op: "unmount union at", merged: self.merged.clone(), detail: errors.join("; ") })
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "cleaning up union mount");
            eprintln!("cs-union: {e}");
        }
    }
}

/// True if `/proc/self/mountinfo` lists `merged` (already canonical) as a mount point.
pub fn is_mounted(merged: &Path) -> Result<bool, UnionError> {
    let info = std::fs::read("/proc/self/mountinfo").map_err(|e| UnionError::io("read mount table for", merged, e))?;
    let want = merged.as_os_str().as_bytes();
    Ok(info
        .split(|&b| b == b'\n')
        .any(|line| line.split(|&b| b == b' ').nth(4).is_some_and(|mp| unescape_mountinfo(mp) == want)))
}

/// One line of `/proc/self/mountinfo`: the mount's id, its filesystem type and its
/// superblock options (for overlayfs, the options in force: `lowerdir=…,redirect_dir=on,…`;
/// as the kernel escapes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    pub fs_type: String,
    pub super_options: String,
}

/// The topmost mount at `path` (already canonical), if any. A new mount at the same place
/// (a lower remounted) gets a new id, which is how a stale overlay is told apart.
pub fn mount_entry(path: &Path) -> Result<Option<MountEntry>, UnionError> {
    let info = std::fs::read("/proc/self/mountinfo").map_err(|e| UnionError::io("read mount table for", path, e))?;
    Ok(parse_mount_entry(&info, path.as_os_str().as_bytes()))
}

fn parse_mount_entry(info: &[u8], want: &[u8]) -> Option<MountEntry> {
    // The last line naming `want` is the topmost mount there.
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if fields.get(4).map(|mp| unescape_mountinfo(mp)).as_deref() != Some(want) {
            return None;
        }
        // After the optional fields comes `-`, then the type, the source and the options.
        let dash = fields.iter().position(|f| *f == b"-")?;
        let text = |i: usize| fields.get(i).map(|f| String::from_utf8_lossy(&unescape_mountinfo(f)).into_owned());
        Some(MountEntry {
            mount_id: std::str::from_utf8(fields[0]).ok()?.parse().ok()?,
            fs_type: text(dash + 1)?,
            // Kept escaped: a `,` inside a value is `\054` there, so splitting on `,` is safe.
            super_options: fields.get(dash + 3).map(|f| String::from_utf8_lossy(f).into_owned()).unwrap_or_default(),
        })
    })
}

/// Undoes the kernel's octal escaping (`\040` for space etc.) of a mountinfo field.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (field[i + 1] - b'0') as u32 * 64 + (field[i + 2] - b'0') as u32 * 8 + (field[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(br"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(br"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04");
    }

    #[test]
    fn mountinfo_entry_is_the_topmost_mount() {
        let info = b"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
            47 22 0:40 / /h\\040x rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,index=on\n\
            49 47 0:41 / /h\\040x rw shared:5 - overlay overlay rw,lowerdir=/l2,index=off\n";
        let e = parse_mount_entry(info, b"/h x").unwrap();
        assert_eq!(e.mount_id, 49);
        assert_eq!(e.fs_type, "overlay");
        assert_eq!(e.super_options, "rw,lowerdir=/l2,index=off");
        assert_eq!(parse_mount_entry(info, b"/").unwrap().fs_type, "ext4");
        assert_eq!(parse_mount_entry(info, b"/nope"), None);
    }

    #[test]
    fn version_line() {
        assert_eq!(parse_version_line("unionfs-fuse version: 1.0").as_deref(), Some("1.0"));
        assert_eq!(parse_version_line("unionfs-fuse version 3.3").as_deref(), Some("3.3"));
        assert_eq!(parse_version_line("FUSE library version: 2.9.9"), None);
    }

    #[test]
    fn command_line() {
        let u = UnionfsFuse { binary: "/usr/bin/unionfs-fuse".into() };
        let cmd = u.mount_command(Path::new("/u"), Path::new("/l"), Path::new("/m"), &["hide_meta_files".into()]);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let opts = format!("cow,{},hide_meta_files", access_options().join(","));
        assert_eq!(args, ["-f", "-o", opts.as_str(), "/u=RW:/l=RO", "/m"]);
        assert!(opts.contains("default_permissions"));
        assert_eq!(opts.contains("allow_other"), rustix::process::geteuid().is_root());
    }
}
