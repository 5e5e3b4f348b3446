//! Command-line flags that can also come from a TOML file (`--config`):
//! every flag has a field of the same name (dashes as underscores) in the
//! file; a flag given on the command line wins over the file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use serde::Deserialize;

/// Fills every `None` field of `self` from `file`.
pub trait Merge {
    fn merge(self, file: Self) -> Self;
}

macro_rules! mergeable {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $field:ident : Option<$ty:ty>,)* }) => {
        $(#[$m])*
        #[derive(Args, Deserialize, Debug, Clone, Default)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $field: Option<$ty>,)*
        }
        impl Merge for $name {
            fn merge(self, file: Self) -> Self {
                $name { $($field: self.$field.or(file.$field),)* }
            }
        }
    };
}

mergeable! {
    /// `cs-actor compute`: the compute-server service.
    pub struct ComputeArgs {
        /// Broker URL, ws:// (loopback, tests) or wss://.
        #[arg(long)]
        pub server: Option<String>,
        /// This compute server's id at the broker.
        #[arg(long)]
        pub id: Option<String>,
        /// File holding this compute server's bearer token (mode 0600).
        #[arg(long)]
        pub token_file: Option<PathBuf>,
        /// The user's home: where the union is mounted.
        #[arg(long)]
        pub merged: Option<PathBuf>,
        /// The compute user, by name: owner of the merged view's root, the
        /// upper layer and the local-only directories, and of everything a
        /// round writes there (default: the service's own user).
        #[arg(long)]
        pub user: Option<String>,
        /// The union's upper layer: local, fast disk.
        #[arg(long)]
        pub upper: Option<PathBuf>,
        /// Local state: the manifest and the logs of a round in flight.
        #[arg(long)]
        pub state: Option<PathBuf>,
        /// Adopt an already-mounted lower layer (the project's home).
        #[arg(long, conflicts_with = "lower_mount_cmd")]
        pub lower: Option<PathBuf>,
        /// Shell command that mounts the lower layer at --lower-mountpoint
        /// (e.g. an sshfs command line; see docs/operations.md).
        #[arg(long)]
        pub lower_mount_cmd: Option<String>,
        /// Where --lower-mount-cmd mounts the lower layer.
        #[arg(long)]
        pub lower_mountpoint: Option<PathBuf>,
        /// Control socket for `cs-actor status` and `cs-actor sync`
        /// (default $CS_ACTOR_RUNTIME_DIR/compute.sock, /run/cs-actor/compute.sock without it).
        #[arg(long)]
        pub control_socket: Option<PathBuf>,
        /// Seconds between timer rounds (default 10).
        #[arg(long)]
        pub interval: Option<f64>,
        /// Ask the broker to say when the project changes between rounds, and start a
        /// round at once when it does, so P's changes show in seconds rather than at the
        /// next timer round (default true; an older broker ignores the ask).
        #[arg(long, value_name = "true|false")]
        pub follow_project: Option<bool>,
        /// Local-only paths, gitignore-style (default /scratch/ /.local/ /.cache/).
        #[arg(long, num_args = 1..)]
        pub local_only: Option<Vec<String>>,
        /// Extra CA certificate (PEM) to trust for a wss:// broker.
        #[arg(long)]
        pub ca: Option<PathBuf>,
        /// zstd level of the tar streams (default 3).
        #[arg(long)]
        pub zstd_level: Option<i32>,
        /// Seconds a deletion's whiteout stays after the project confirmed
        /// it, hiding what the lower mount's caches still show of the file
        /// (default 25; at least the lower's cache staleness; 0 for a lower
        /// without caches).
        #[arg(long)]
        pub whiteout_grace_secs: Option<f64>,
        /// A file that keeps changing is deferred; after this many rounds
        /// in a row a snapshot of it is sent instead (default 3).
        #[arg(long)]
        pub snapshot_after: Option<u32>,
        /// Largest busy file copied into a snapshot where the filesystem
        /// cannot reflink, in MiB (default 1024); a larger one waits until
        /// it stops changing.
        #[arg(long)]
        pub snapshot_max_mib: Option<u64>,
        /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
        /// 127.0.0.1:9781 (default: off).
        #[arg(long, value_name = "ADDR")]
        pub metrics_listen: Option<String>,
        /// Which of the project's changes each round writes into the upper
        /// layer: `changed` (default: every change since the last round,
        /// visible when the round commits) or `held` (only the files this
        /// server holds; the rest shows through the lower, as fresh as its
        /// caches). See docs/operations.md, "Pull policy".
        #[arg(long, value_parser = ["held", "changed"])]
        pub pull: Option<String>,
        /// With `--pull changed`: larger files are left to the lower layer
        /// (bytes, default 67108864 = 64 MiB; 0: no file is pulled, only
        /// directories, symlinks and deletions).
        #[arg(long)]
        pub pull_max_file_size: Option<u64>,
        /// The union over the lower layer: `overlay` (kernel overlayfs, near
        /// local-disk speed; needs root, an upper filesystem with trusted
        /// xattrs, and `--pull changed`) or `unionfs-fuse`. Default: overlay,
        /// except for a home unionfs-fuse wrote or ran, with `--pull held`,
        /// or on a kernel without overlayfs (then unionfs-fuse; the log and
        /// `status` say why). See docs/operations.md, "Choosing the union
        /// backend".
        #[arg(long, value_parser = ["unionfs-fuse", "overlay"])]
        pub union: Option<String>,
        /// Serve the project's files from a local replica kept in DIR
        /// (issue 12) instead of a lower mount: a filesystem image of its
        /// own there holds P's snapshot as placeholders, each filled over
        /// the broker connection on its first open. The default lower when
        /// neither --lower nor --lower-mount-cmd is given, in STATE/replica;
        /// needs the overlay union. See docs/replica.md.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["lower", "lower_mount_cmd"])]
        pub replica_dir: Option<PathBuf>,
        /// The replica image's size in GiB (sparse: it takes only what
        /// it holds; default 32).
        #[arg(long)]
        pub replica_size_gib: Option<u64>,
        /// Inodes of the replica image: at least the project's paths
        /// plus room for new trees (default 2000000).
        #[arg(long)]
        pub replica_inodes: Option<u64>,
        /// With --replica-dir: how long the first open of a file not yet
        /// here waits for its content before failing with EIO (seconds,
        /// default 30).
        #[arg(long)]
        pub fetch_timeout_secs: Option<f64>,
        /// With --replica-dir: a bound on the project content kept here
        /// (bytes, or with a binary unit: 500M, 20G). Over it, the files
        /// opened least recently are dropped, and fetched again at their
        /// next open; a file someone has open is never dropped. Default:
        /// no bound (the image's size).
        #[arg(long, value_name = "SIZE")]
        pub cache_max: Option<String>,
        /// With --replica-dir: fetch the whole project in the background
        /// while no open waits, smallest files first (then the most
        /// recently changed), for a user who will read everything; stops
        /// at 90 % of --cache-max if one is set.
        #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
        pub hydrate: Option<bool>,
        /// With --replica-dir: fetch in the background the files these
        /// patterns match (gitignore syntax, relative to the home: `*.py`,
        /// `data/`, `/models/**/*.bin`), as --hydrate does for everything.
        #[arg(long, value_name = "PATTERN", num_args = 1..)]
        pub prefetch: Option<Vec<String>>,
        /// With --replica-dir: take a new snapshot of the project at this
        /// start. Without it, a restart resumes the previous tree when the
        /// project's journal continues it (the rounds bring what changed
        /// meanwhile), and takes a snapshot only when it does not.
        #[arg(long, value_name = "true|false", num_args = 0..=1, default_missing_value = "true")]
        pub fresh_snapshot: Option<bool>,
        /// With `--union overlay`: overlayfs's work directory, on the upper
        /// layer's filesystem and outside it (default: UPPER.overlay-work,
        /// beside the upper layer).
        #[arg(long)]
        pub overlay_work: Option<PathBuf>,
    }
}

impl ComputeArgs {
    /// Where the project's replica is when the lower is the replica: `--replica-dir`, or
    /// with no lower mount given (`--lower`, `--lower-mount-cmd`) `STATE/replica`.
    pub fn replica_dir_or_default(&self) -> Option<PathBuf> {
        let no_lower = self.lower.is_none() && self.lower_mount_cmd.is_none();
        self.replica_dir.clone().or_else(|| self.state.as_ref().filter(|_| no_lower).map(|s| s.join("replica")))
    }
}

mergeable! {
    /// `cs-actor project`: the project-side broker.
    pub struct ProjectArgs {
        /// The project's home directory.
        #[arg(long)]
        pub home: Option<PathBuf>,
        /// The home's user, by name: owner of everything the broker writes
        /// in the home (default: the owner of --home).
        #[arg(long)]
        pub user: Option<String>,
        /// Address to listen on, e.g. 127.0.0.1:7780 or 0.0.0.0:7780 (with TLS).
        #[arg(long)]
        pub listen: Option<String>,
        /// File mapping compute-server ids to bearer tokens, one `id token` per line (mode 0600).
        #[arg(long)]
        pub tokens: Option<PathBuf>,
        /// Journal and per-client state (default HOME/.cs-actor/broker).
        #[arg(long)]
        pub state: Option<PathBuf>,
        /// TLS certificate chain (PEM) for wss://.
        #[arg(long, requires = "tls_key")]
        pub tls_cert: Option<PathBuf>,
        /// TLS private key (PEM).
        #[arg(long, requires = "tls_cert")]
        pub tls_key: Option<PathBuf>,
        /// Control socket for `cs-actor status` (default $CS_ACTOR_RUNTIME_DIR/project.sock,
        /// /run/cs-actor/project.sock without it).
        #[arg(long)]
        pub control_socket: Option<PathBuf>,
        /// Paths never synced, beyond the defaults.
        #[arg(long, num_args = 1..)]
        pub local_only: Option<Vec<String>>,
        /// Seconds between full rescans of the home (default 300); between
        /// them a round looks only where inotify saw changes.
        #[arg(long)]
        pub full_rescan_secs: Option<f64>,
        /// As for `cs-actor compute`, for files that keep changing on the
        /// project (step 4; default 3).
        #[arg(long)]
        pub snapshot_after: Option<u32>,
        /// As for `cs-actor compute` (default 1024).
        #[arg(long)]
        pub snapshot_max_mib: Option<u64>,
        /// Serve Prometheus metrics at http://ADDR/metrics, e.g.
        /// 127.0.0.1:9780 (default: off).
        #[arg(long, value_name = "ADDR")]
        pub metrics_listen: Option<String>,
    }
}

/// Reads `--config FILE` into the flags' struct.
pub fn load<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_unknown_keys_are_named() {
        let file: ComputeArgs = toml::from_str("server = \"ws://a\"\nid = \"f\"\ninterval = 5.0\n").unwrap();
        let flags = ComputeArgs { id: Some("flag".into()), ..Default::default() };
        let m = flags.merge(file);
        assert_eq!(m.server.as_deref(), Some("ws://a"));
        assert_eq!(m.id.as_deref(), Some("flag"));
        assert_eq!(m.interval, Some(5.0));
        let err = toml::from_str::<ComputeArgs>("sever = \"x\"").unwrap_err().to_string();
        assert!(err.contains("sever"), "{err}");
    }

    #[test]
    fn the_union_backend_comes_from_the_file_too() {
        let file: ComputeArgs = toml::from_str("union = \"overlay\"\noverlay_work = \"/var/w\"\n").unwrap();
        let m = ComputeArgs::default().merge(file);
        assert_eq!(m.union.as_deref(), Some("overlay"));
        assert_eq!(m.overlay_work.as_deref(), Some(Path::new("/var/w")));
    }
}
