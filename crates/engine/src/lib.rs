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
