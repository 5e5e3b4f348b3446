//! Unprivileged accounts for tests that act as a user of the machine.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Result, TestbedError};

/// An account of this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// The system account `name`, created if missing (`useradd --system --user-group`, no home,
/// no login shell). Fixed names are shared by concurrent test binaries and kept afterwards, so
/// none deletes an account another still uses; `useradd` is retried while another one holds
/// the passwd lock.
pub fn system_account(name: &str) -> Result<Account> {
    for attempt in 0..50u64 {
        if let Some(a) = lookup(name)? {
            return Ok(a);
        }
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| TestbedError::process("run useradd", e.to_string()))?;
        // 9: created meanwhile by another test binary; 1 and 10: the passwd or group file is
        // locked (another useradd is at it): again, a little later.
        match out.status.code() {
            Some(0) | Some(9) => continue,
            Some(1) | Some(10) => std::thread::sleep(Duration::from_millis(100 + 50 * attempt)),
            _ => {
                let detail = format!("{name}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
                return Err(TestbedError::process("useradd", detail));
            }
        }
    }
    Err(TestbedError::process("useradd", format!("could not create account {name}")))
}

/// The account `name`, or `None` if the machine has none of that name.
pub fn lookup(name: &str) -> Result<Option<Account>> {
    let id = |flag: &str| -> Result<Option<u32>> {
        let out = Command::new("id")
            .args([flag, name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(|e| TestbedError::process("run id", e.to_string()))?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().parse().ok()).flatten())
    };
    let (Some(uid), Some(gid)) = (id("-u")?, id("-g")?) else {
        return Ok(None);
    };
    Ok(Some(Account { name: name.to_string(), uid, gid }))
}
