//! Observable states: what `cs-actor status` prints on the project side and
//! what tests assert on.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cs_supervision::{ExitStatus, WatchdogReport};
use cs_wire::Step;
use serde::Serialize;

/// How many ended sessions [`BrokerState::ended`] keeps.
pub const ENDED_KEPT: usize = 16;

/// Where a session's current round is: idle, or a step of the round's one
/// definition ([`cs_wire::Step`]). A step is entered when its request arrives and
/// stays the current one until the next request (or until the round ends:
/// committed → `idle`, failed → `idle` with `last_error`). Shown by `status` as
/// its label: idle, hello, 1 … 5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundStep(Option<Step>);

// The session's names for the points of a round (its code and its tests read
// them like the variants of an enum); the order itself is `Step`'s.
#[allow(non_upper_case_globals)]
impl RoundStep {
    /// No round open.
    pub const Idle: RoundStep = RoundStep(None);
    /// Hello answered (and the held list, if asked for).
    pub const Hello: RoundStep = RoundStep(Some(Step::Hello));
    /// Step 1: deletes C → P.
    pub const Deletes: RoundStep = RoundStep(Some(Step::DeletesToProject));
    /// Step 2: deletes P → C.
    pub const DeletesForClient: RoundStep = RoundStep(Some(Step::DeletesToCompute));
    /// Step 3: writes C → P.
    pub const WritesIn: RoundStep = RoundStep(Some(Step::WritesToProject));
    /// Step 4: writes P → C.
    pub const WritesOut: RoundStep = RoundStep(Some(Step::WritesToCompute));
    /// Step 5: commit.
    pub const Commit: RoundStep = RoundStep(Some(Step::Commit));
}

impl RoundStep {
    /// The step, `None` when idle.
    pub fn step(self) -> Option<Step> {
        self.0
    }

    /// The label printed by `status`: idle, hello, 1 … 5.
    pub fn label(self) -> &'static str {
        self.0.map_or("idle", Step::label)
    }
}

impl Serialize for RoundStep {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

/// One client's session, as observed.
#[derive(Debug, Clone, Serialize)]
pub struct SessionState {
    pub client: String,
    pub peer: SocketAddr,
    /// Unix time in milliseconds (P's clock).
    pub connected_since_unix_ms: u64,
    pub step: RoundStep,
    /// An engine call of this session is running right now.
    pub busy: bool,
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    /// When the last committed round ended (unix ms, P's clock).
    pub last_round_unix_ms: Option<u64>,
    /// How long the last committed round took, hello to commit.
    pub last_round_duration_ms: Option<u64>,
    /// Tar entries received (step 3) and sent (step 4), all rounds.
    pub entries_in: u64,
    pub entries_out: u64,
    /// Compressed tar bytes received and sent, all rounds.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub conflicts_total: u64,
    pub last_error: Option<String>,
    /// Progress beats (one per tar chunk and per engine step).
    pub heartbeat_beats: u64,
    /// Milliseconds since the last beat.
    pub heartbeat_silent_ms: u64,
    /// The project's files that keep changing, as of this client's last
    /// committed round (step 4 deferred them or sent snapshots).
    pub deferred: DeferredFiles,
    /// Snapshots of busy files sent to this client by this session.
    pub snapshots_sent: u64,
    /// The fetches of this session (`ClientMsg::Fetch`).
    pub fetch: FetchCounters,
    /// The metadata snapshots of this session (`ClientMsg::Snapshot`; not
    /// the busy files' snapshots counted by `snapshots_sent`).
    pub snapshot: SnapshotCounters,
    /// `ProjectChanged` pushes to this client (docs/protocol.md, *Follow*).
    pub follow: FollowCounters,
}

/// What a session's follow did, since it connected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FollowCounters {
    /// The client's last hello asked `follow`.
    pub asked: bool,
    /// `ProjectChanged` messages sent.
    pub pushes: u64,
    /// When the last one was sent (unix ms, P's clock).
    pub last_push_unix_ms: Option<u64>,
}

/// What a session's metadata snapshots did, all counted since it connected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SnapshotCounters {
    /// Answered with `SnapshotFollows` (their streams complete).
    pub served: u64,
    /// Refused as a whole (one already in flight, a bad stream id), with an error answer.
    pub refused: u64,
    /// Failed while walking or streaming (the stream aborted, the home unreadable).
    pub failed: u64,
    /// Running now.
    pub in_flight: u64,
    /// Entries sent, and their compressed stream bytes.
    pub entries_sent: u64,
    pub bytes_sent: u64,
    /// Paths left out (unreadable, changed kind while read).
    pub paths_refused: u64,
}

/// What a session's fetches did, all counted since it connected.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchCounters {
    /// Answered with `FetchFollows` (their streams complete).
    pub served: u64,
    /// Refused as a whole (over a bound, a bad stream id), with an error answer.
    pub refused: u64,
    /// Failed while packing (the stream aborted, an I/O error).
    pub failed: u64,
    /// Running now.
    pub in_flight: u64,
    /// Paths named by the fetches accepted.
    pub paths_asked: u64,
    /// Entries sent (files and directories), and their compressed stream bytes.
    pub entries_sent: u64,
    pub bytes_sent: u64,
    /// Paths P does not have, and paths it refused to serve (symlinks,
    /// outside what syncs, changing while read...).
    pub paths_missing: u64,
    pub paths_refused: u64,
}

/// Busy files of step 4, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeferredFiles {
    pub count: u64,
    /// The first few (sorted by path).
    pub files: Vec<cs_engine::BusyFile>,
}

/// A session that ended, and why.
#[derive(Debug, Clone, Serialize)]
pub struct EndedSession {
    pub client: String,
    pub peer: SocketAddr,
    pub ended_unix_ms: u64,
    pub exit: ExitStatus,
}

/// The broker, as observed.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerState {
    pub listen: SocketAddr,
    pub tls: bool,
    pub max_connections: usize,
    pub max_concurrent_tar: usize,
    /// Tar slots in use right now.
    pub tar_in_use: usize,
    /// Connections accepted and authenticated, all time.
    pub accepted: u64,
    /// Refused connections by reason (`unauthorized`, `busy`, `handshake`,
    /// `tls`, `timeout`, …), all time.
    pub refused: BTreeMap<String, u64>,
    /// One per connected client, by client id.
    pub sessions: Vec<SessionState>,
    /// The last sessions that ended (at most [`ENDED_KEPT`]), latest last.
    pub ended: Vec<EndedSession>,
    /// The home's `.csignore`: patterns in force, and why the file is not
    /// in force if it is not (file and line).
    pub ignore: cs_engine::project::IgnoreStatus,
    /// The sessions' health (`BrokerHandle::observe` fills it in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<WatchdogReport>,
}
