//! The compute server's mount supervisor.
//!
//! A compute server's home is a copy-on-write union ([`UnionBackend`]: unionfs-fuse, or kernel
//! overlayfs): upper = local disk, lower = the project's home over sshfs. [`MountSupervisor`] (an actix actor following the
//! `cs-supervision` conventions) mounts the lower ([`LowerSpec`]: adopt an existing mount, or run a
//! command such as the one [`sshfs_command`] builds), makes the local-only directories opaque
//! ([`prepare_local_only`]), guards the union's bare mount point and recovers what was written
//! into it while the union was down ([`Guard`], [`Recovery`]; module `bare`), mounts the union,
//! checks both on a timer, remounts what died (with
//! exponential backoff and jitter) and raises the **safety rail** when the lower is missing,
//! erroring, or suddenly empty: while it is up, [`SyncAllowed`] answers `false`, so no round
//! mistakes a broken mount for a mass deletion.
//!
//! The sshfs options, their measured effect and the staleness they cost are in
//! `docs/mount.md`.

mod backend;
mod bare;
mod error;
mod local_only;
mod lower;
mod overlay;
mod plant;
mod probe;
mod sshfs;
mod supervisor;
mod util;

pub use backend::{
    default_backend, record_backend, recorded_backend, upper_written_by, DefaultChoice, DefaultInputs, UnionBackend,
    BACKEND_RECORD, DEFAULT_OVERLAY_OPTIONS,
};
pub use bare::{unguard_mount_point, Guard, Recovery, RECOVERY_PREFIX};
pub use error::MountError;
pub use local_only::{prepare_local_only, prepare_local_only_opaque, prepare_local_only_owned, DEFAULT_LOCAL_ONLY};
pub use lower::{LowerKind, LowerSpec};
pub use sshfs::{shell_quote, sshfs_command, DataCache, SshfsOptions, SshfsTarget, DEFAULT_STALENESS};
pub use supervisor::{
    AcceptEmptyLower, CheckNow, LowerState, LowerStatus, MountConfig, MountPointState, MountState, MountSupervisor,
    Shutdown, SyncAllowed, UnionState, UnionStatus,
};
