//! The sshfs command line for the lower layer, with cs-actor's default caching options.
//!
//! Why these defaults (measurements in `docs/mount.md`): unionfs-fuse looks every path up in
//! the lower layer too (to decide copy-up, to check whiteouts, on every create in a directory
//! the lower does not have). Over sshfs each such lookup is a network round trip unless the
//! kernel caches it, so an uncached union over sshfs is *slower* than sshfs alone. Kernel
//! caching of names, attributes and (above all) of *absent* names turns those lookups local.
//! The price is staleness: a change made on the project side becomes visible on the compute
//! server within the timeouts (see [`SshfsOptions`]).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How sshfs treats file *data* in the kernel page cache across opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataCache {
    /// FUSE's default: the cached data of a file is dropped at every open, so every open
    /// re-reads the file over the network.
    None,
    /// `auto_cache`: cached data is kept across opens while the file's mtime and size (as
    /// cached for `attr_timeout`) are unchanged; a change on the project side invalidates it
    /// once the attributes are refreshed. Bounded staleness.
    Auto,
    /// `kernel_cache`: cached data is never invalidated by the file system: a file changed on
    /// the project side may be read stale until memory pressure evicts it. Unbounded
    /// staleness: not recommended.
    Kernel,
}

/// sshfs and FUSE options for the lower mount. `None` leaves sshfs's own default.
///
/// [`SshfsOptions::default`] is cs-actor's choice, [`SshfsOptions::with_staleness`] of 10 s:
/// absent names cached by the kernel for 10 s (`negative_timeout`: what makes the union fast),
/// names and attributes for 1 s by the kernel (`entry_timeout`, `attr_timeout`) on top of 9 s
/// in sshfs's own directory cache (`dcache_timeout`), `auto_cache` for file data, `reconnect`,
/// and ssh keepalives (15 s × 3). A change on the project side is visible on the compute
/// server within about 10 s, the default round interval. [`SshfsOptions::sshfs_defaults`]
/// passes nothing (sshfs's own behaviour: names/attributes 1 s, absent names not cached,
/// directory cache 20 s, data dropped at every open).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshfsOptions {
    /// Kernel cache of names (`entry_timeout`; FUSE default 1 s).
    pub entry_timeout: Option<Duration>,
    /// Kernel cache of attributes (`attr_timeout`; FUSE default 1 s).
    pub attr_timeout: Option<Duration>,
    /// Kernel cache of *absent* names (`negative_timeout`; FUSE default 0 = not cached). The
    /// one that matters most for a union: every path created on the compute server is first
    /// looked up, and found absent, in the lower layer.
    pub negative_timeout: Option<Duration>,
    /// sshfs's own cache of directory listings and attributes (`dir_cache`; default yes).
    pub dir_cache: Option<bool>,
    /// Its timeout (`dcache_timeout`, whole seconds, rounded down; sshfs default 20 s).
    pub dcache_timeout: Option<Duration>,
    /// File data across opens.
    pub data_cache: DataCache,
    /// Reconnect to the server when the connection drops (`reconnect`).
    pub reconnect: bool,
    /// ssh `ServerAliveInterval` (seconds): detect a dead connection.
    pub server_alive_interval: Option<u32>,
    /// ssh `ServerAliveCountMax`.
    pub server_alive_count_max: Option<u32>,
    /// Anything else, one `-o` each (e.g. `"idmap=user"`, `"max_conns=4"`).
    pub extra: Vec<String>,
}

/// cs-actor's staleness bound: how long a change on the project side may stay invisible.
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(10);

impl Default for SshfsOptions {
    fn default() -> Self {
        SshfsOptions {
            entry_timeout: None,
            attr_timeout: None,
            negative_timeout: None,
            dir_cache: Some(true),
            dcache_timeout: None,
            data_cache: DataCache::Auto,
            reconnect: true,
            server_alive_interval: Some(15),
            server_alive_count_max: Some(3),
            extra: Vec::new(),
        }
        .with_staleness(DEFAULT_STALENESS)
    }
}

impl SshfsOptions {
    /// No options at all: what sshfs does unasked (for comparison).
    pub fn sshfs_defaults() -> Self {
        SshfsOptions {
            entry_timeout: None,
            attr_timeout: None,
            negative_timeout: None,
            dir_cache: None,
            dcache_timeout: None,
            data_cache: DataCache::None,
            reconnect: false,
            server_alive_interval: None,
            server_alive_count_max: None,
            extra: Vec::new(),
        }
    }

    /// Cache timeouts such that a change on the project side shows within about `bound`:
    /// absent names are cached by the kernel only (sshfs keeps no negative entries), so
    /// `negative_timeout = bound`; names, attributes and listings are cached twice (sshfs's
    /// directory cache, then the kernel on top of what sshfs answered), so the kernel keeps them
    /// briefly (`entry_timeout = attr_timeout = min(1 s, bound / 2)`) and sshfs for the rest
    /// (`dcache_timeout = bound − that`, rounded down to whole seconds as sshfs takes integers,
    /// but at least 1 s).
    pub fn with_staleness(mut self, bound: Duration) -> Self {
        let kernel = Duration::from_secs(1).min(bound / 2);
        self.entry_timeout = Some(kernel);
        self.attr_timeout = Some(kernel);
        self.negative_timeout = Some(bound);
        self.dcache_timeout = Some(bound.saturating_sub(kernel).max(Duration::from_secs(1)));
        self
    }

    /// The `-o` values, in a fixed order.
    pub fn to_opts(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.reconnect {
            v.push("reconnect".to_string());
        }
        if let Some(n) = self.server_alive_interval {
            v.push(format!("ServerAliveInterval={n}"));
        }
        if let Some(n) = self.server_alive_count_max {
            v.push(format!("ServerAliveCountMax={n}"));
        }
        if let Some(b) = self.dir_cache {
            v.push(format!("dir_cache={}", if b { "yes" } else { "no" }));
        }
        if let Some(t) = self.dcache_timeout {
            v.push(format!("dcache_timeout={}", t.as_secs()));
        }
        for (name, t) in [
            ("entry_timeout", self.entry_timeout),
            ("attr_timeout", self.attr_timeout),
            ("negative_timeout", self.negative_timeout),
        ] {
            if let Some(t) = t {
                v.push(format!("{name}={}", secs(t)));
            }
        }
        match self.data_cache {
            DataCache::None => {}
            DataCache::Auto => v.push("auto_cache".into()),
            DataCache::Kernel => v.push("kernel_cache".into()),
        }
        v.extend(self.extra.iter().cloned());
        v
    }
}

/// Seconds as FUSE parses them (a double): "10", "0.5".
fn secs(t: Duration) -> String {
    if t.subsec_nanos() == 0 {
        t.as_secs().to_string()
    } else {
        let s = format!("{:.3}", t.as_secs_f64());
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Where the project's home is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshfsTarget {
    /// Login name (`None`: ssh's default).
    pub user: Option<String>,
    pub host: String,
    /// ssh port (`None`: ssh's default).
    pub port: Option<u16>,
    /// Directory on the host (absolute, or relative to the login's home).
    pub remote_dir: String,
    /// More ssh options, `K=V` each (e.g. `IdentityFile=/etc/cs-actor/id_ed25519`).
    pub ssh_options: Vec<String>,
}

/// The shell command that mounts `target` at `mountpoint` in the foreground (`-f`, so the
/// supervisor knows the process and sees it die), with `opts`:
///
/// `sshfs -f USER@HOST:DIR MOUNTPOINT [-p PORT] -o SSHOPT… -o OPT…`
///
/// Every word is shell-quoted. Use it as `LowerSpec::Command { cmd, mountpoint }`.
pub fn sshfs_command(target: &SshfsTarget, mountpoint: &Path, opts: &SshfsOptions) -> String {
    let mut words = vec!["sshfs".to_string(), "-f".to_string()];
    let host = match &target.user {
        Some(u) => format!("{u}@{}", target.host),
        None => target.host.clone(),
    };
    words.push(format!("{host}:{}", target.remote_dir));
    words.push(mountpoint.display().to_string());
    if let Some(p) = target.port {
        words.push("-p".into());
        words.push(p.to_string());
    }
    for o in target.ssh_options.iter().chain(opts.to_opts().iter()) {
        words.push("-o".into());
        words.push(o.clone());
    }
    words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
}

/// `s` as one word for `sh`: unchanged if it is made of safe characters, else single-quoted.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options() {
        assert_eq!(
            SshfsOptions::default().to_opts(),
            [
                "reconnect",
                "ServerAliveInterval=15",
                "ServerAliveCountMax=3",
                "dir_cache=yes",
                "dcache_timeout=9",
                "entry_timeout=1",
                "attr_timeout=1",
                "negative_timeout=10",
                "auto_cache"
            ]
        );
        assert!(SshfsOptions::sshfs_defaults().to_opts().is_empty());
        let v = SshfsOptions::default().with_staleness(Duration::from_millis(2500)).to_opts();
        assert!(v.contains(&"dcache_timeout=1".to_string()), "{v:?}");
        assert!(v.contains(&"entry_timeout=1".to_string()), "{v:?}");
        assert!(v.contains(&"negative_timeout=2.5".to_string()), "{v:?}");
        let v = SshfsOptions::default().with_staleness(Duration::from_millis(500)).to_opts();
        assert!(v.contains(&"dcache_timeout=1".to_string()), "{v:?}");
        assert!(v.contains(&"attr_timeout=0.25".to_string()), "{v:?}");
    }

    #[test]
    fn command_line_is_quoted() {
        let t = SshfsTarget {
            user: Some("alice".into()),
            host: "project.example".into(),
            port: Some(2222),
            remote_dir: "/home/alice".into(),
            ssh_options: vec!["IdentityFile=/etc/cs actor/key".into()],
        };
        let mut o = SshfsOptions::sshfs_defaults();
        o.reconnect = true;
        o.data_cache = DataCache::Kernel;
        assert_eq!(
            sshfs_command(&t, Path::new("/mnt/lower"), &o),
            "sshfs -f alice@project.example:/home/alice /mnt/lower -p 2222 -o 'IdentityFile=/etc/cs actor/key' -o reconnect -o kernel_cache"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
