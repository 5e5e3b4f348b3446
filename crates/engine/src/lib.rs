//! The sync round of cs-actor as plain library code: no actors, no sockets.
//!
//! [`ComputeSide`] owns the compute server's upper layer and manifest;
//! [`ProjectSide`] owns the project's home, its change journal and one index
//! per client. Each step of a round is a method on the side that performs it;
//! [`driver::run_round`] chains them in one process (tests, demo), and the
//! services chain the same methods over a websocket. See docs/protocol.md for
//! the contract and docs/architecture.md for the map.

pub mod compute;
pub mod driver;
mod error;
mod filter;
pub mod project;
pub mod sig;
mod state;

pub use compute::{ApplyReport, ComputeConfig, ComputeRound, ComputeSide};
pub use error::EngineError;
pub use filter::{PathFilter, DEFAULT_EXCLUDED, DEFAULT_LOCAL_ONLY};
pub use project::{ProjectConfig, ProjectRound, ProjectSide, WriteReport};

use cs_protocol::ClientId;

/// zstd level of the tar streams unless configured: fast, and still a good
/// ratio on source trees.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Name of the temporary file an atomic apply writes beside its target. It
/// matches the excluded pattern `.csa-tmp-*`, so no scan or round ever
/// picks one up.
pub(crate) fn temp_name(client: &ClientId, seq: u64) -> String {
    format!(".csa-tmp-{client}-{}-{seq}", std::process::id())
}

/// `NAME.conflict-<client>-`: a conflict copy's name is this plus a UTC time.
pub fn conflict_prefix(name: &str, client: &ClientId) -> String {
    format!("{name}.conflict-{client}-")
}

/// A random-enough 64-bit id (round ids, journal epochs): unique, not secret.
pub(crate) fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&t.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}
