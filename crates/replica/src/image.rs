//! The replica's filesystem: an ext4 image of its own, loop-mounted. Of its own because
//! the fill's FILESYSTEM mark makes every open on that filesystem wait for the service
//! (docs/replica.md, risk 3): on a shared filesystem it would gate the whole machine.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{ReplicaError, Result};

/// A mounted replica image.
#[derive(Debug)]
pub struct ReplicaFs {
    image: PathBuf,
    mountpoint: PathBuf,
}

impl ReplicaFs {
    /// Creates the sparse image and its ext4 filesystem if `image` does not exist (with
    /// room for `inodes` inodes: ext4's default ratio gives a 3 GiB image only ~196 k),
    /// then mounts it on `mountpoint` with a loop device unless it is mounted there
    /// already. Needs root.
    pub fn ensure(image: &Path, size_bytes: u64, inodes: u64, mountpoint: &Path) -> Result<ReplicaFs> {
        if !image.exists() {
            // Formatted under another name and renamed: a crash never leaves an image
            // that exists but holds no filesystem.
            let tmp = image.with_extension("img-new");
            let f = fs::File::create(&tmp).map_err(|e| ReplicaError::io("create image", &tmp, e))?;
            f.set_len(size_bytes).map_err(|e| ReplicaError::io("size image", &tmp, e))?;
            drop(f);
            run(Command::new("mkfs.ext4").args(["-q", "-F", "-N", &inodes.to_string()]).arg(&tmp))?;
            fs::rename(&tmp, image).map_err(|e| ReplicaError::io("rename image into place", image, e))?;
        }
        fs::create_dir_all(mountpoint).map_err(|e| ReplicaError::io("create mount point", mountpoint, e))?;
        let mountpoint =
            fs::canonicalize(mountpoint).map_err(|e| ReplicaError::io("resolve mount point", mountpoint, e))?;
        if !is_mount_point(&mountpoint)? {
            run(Command::new("mount").args(["-t", "ext4", "-o", "loop"]).arg(image).arg(&mountpoint))?;
        }
        Ok(ReplicaFs { image: image.to_path_buf(), mountpoint })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Unmounts and detaches the loop device (`umount -d`). Fails while anything on it
    /// is in use (an overlay over a tree, the fill service's descriptors).
    pub fn unmount(self) -> Result<()> {
        if is_mount_point(&self.mountpoint)? {
            run(Command::new("umount").arg("-d").arg(&self.mountpoint))?;
        }
        Ok(())
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ReplicaError::Command { command: shown.clone(), detail: e.to_string() })?;
    if !out.status.success() {
        return Err(ReplicaError::Command {
            command: shown,
            detail: format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(())
}

/// True if `/proc/self/mountinfo` lists a mount whose mount point is `p` (canonical).
pub fn is_mount_point(p: &Path) -> Result<bool> {
    let info = "/proc/self/mountinfo";
    let text = fs::read(info).map_err(|e| ReplicaError::io("read", info, e))?;
    let want = p.as_os_str().as_encoded_bytes();
    Ok(text.split(|&b| b == b'\n').any(|line| line.split(|&b| b == b' ').nth(4).is_some_and(|mp| unescape(mp) == want)))
}

/// Mount points in mountinfo escape space, tab, newline and `\` as `\ooo`.
pub(crate) fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(s[i + 1] - b'0') * 64 + u32::from(s[i + 2] - b'0') * 8 + u32::from(s[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(br"/a\040b\134c"), b"/a b\\c");
        assert_eq!(super::unescape(br"/a\04"), br"/a\04");
    }
}
