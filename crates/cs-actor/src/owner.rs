//! `--user NAME`: whose files the service writes. Names are resolved here,
//! once, at start-up; the engine and the wire only ever see numeric ids of
//! this machine (no id crosses the wire).

use std::ffi::{CStr, CString};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cs_engine::Owner;

/// The uid and primary gid of user `name` (`getpwnam_r`: the passwd
/// database, NSS included). An unknown name is an error naming it.
pub fn lookup(name: &str) -> Result<Owner> {
    let c_name = CString::new(name).with_context(|| format!("user name {name:?} contains a NUL byte"))?;
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids); it is only read
        // after getpwnam_r filled it.
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c_name` is NUL-terminated, `pw` and
        // `found` are live locals, `buf` is writable for `buf.len()` bytes; the strings
        // getpwnam_r stores in `pw` point into `buf`, which outlives their use below.
        let rc = unsafe { libc::getpwnam_r(c_name.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc)).with_context(|| format!("looking up user {name:?}"));
        }
        if found.is_null() {
            bail!("no user named {name:?} on this machine (--user / `user` in the config file)");
        }
        // SAFETY: getpwnam_r succeeded and set `found` to `&pw`, whose `pw_name` is a
        // NUL-terminated string in `buf`.
        let got = unsafe { CStr::from_ptr(pw.pw_name) };
        tracing::debug!(user = ?got, uid = pw.pw_uid, gid = pw.pw_gid, "resolved --user");
        return Ok(Owner { uid: pw.pw_uid, gid: pw.pw_gid });
    }
}

/// The owner of `path` (the project's home when no `--user` is given).
pub fn of_path(path: &Path) -> Result<Owner> {
    let md = std::fs::metadata(path).with_context(|| format!("reading the owner of {}", path.display()))?;
    Ok(Owner { uid: md.uid(), gid: md.gid() })
}

/// The effective uid and gid of this process.
pub fn process_ids() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}

/// What the engine is given: `None` when `owner` is the process itself (the
/// kernel does it already), and an error when the process could not give
/// files to `owner` (only root may give files away).
pub fn effective(owner: Owner, what: &str) -> Result<Option<Owner>> {
    let (euid, egid) = process_ids();
    if (owner.uid, owner.gid) == (euid, egid) {
        return Ok(None);
    }
    if euid != 0 {
        bail!(
            "{what} is uid {} gid {}, but this service runs as uid {euid} gid {egid}: only root can write \
             another user's files; run the service as root, or as that user",
            owner.uid,
            owner.gid
        );
    }
    Ok(Some(owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_and_an_unknown_user_is_named() {
        let root = lookup("root").unwrap();
        assert_eq!((root.uid, root.gid), (0, 0));
        let err = format!("{:#}", lookup("no-such-user-cs-actor").unwrap_err());
        assert!(err.contains("no user named \"no-such-user-cs-actor\""), "{err}");
        assert!(lookup("a\0b").is_err());
    }

    #[test]
    fn the_process_itself_needs_no_chown() {
        let (uid, gid) = process_ids();
        let me = Owner { uid, gid };
        assert_eq!(effective(me, "the home").unwrap(), None);
    }
}
