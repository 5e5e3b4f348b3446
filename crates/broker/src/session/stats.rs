//! What a session counts, and the observable state built from it (what
//! `cs-actor status` prints for each client).

use std::time::Instant;

use cs_engine::{BusyFile, WriteReport};

use super::{unix_ms, Session};
use crate::state::{DeferredFiles, FetchCounters, SessionState, SnapshotCounters};

/// The counters of one session, all rounds.
#[derive(Default)]
pub(super) struct Stats {
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    pub last_round_unix_ms: Option<u64>,
    pub last_round_duration_ms: Option<u64>,
    pub entries_in: u64,
    pub entries_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub conflicts_total: u64,
    pub last_error: Option<String>,
    pub deferred: DeferredFiles,
    pub snapshots_sent: u64,
    pub fetch: FetchCounters,
    pub snapshot: SnapshotCounters,
}

impl Stats {
    /// Step 3 applied the client's stream.
    pub fn writes_in(&mut self, report: &WriteReport) {
        let entries = report.applied + report.unchanged + report.conflicts.len() + report.refused.len();
        self.entries_in += entries as u64;
        self.conflicts_total += report.conflicts.len() as u64;
    }

    /// Step 4 sent P's stream: `entries`, in `bytes` compressed.
    pub fn writes_out(&mut self, entries: u64, bytes: u64) {
        self.entries_out += entries;
        self.bytes_out += bytes;
    }

    /// A round committed; `busy` are the files step 4 deferred or sent
    /// snapshots of.
    pub fn committed(&mut self, started: Instant, busy: Vec<BusyFile>) {
        self.snapshots_sent += busy.iter().filter(|b| b.snapshot_sent).count() as u64;
        self.deferred = DeferredFiles { count: busy.len() as u64, files: busy.into_iter().take(10).collect() };
        self.rounds_committed += 1;
        self.last_round_unix_ms = Some(unix_ms());
        self.last_round_duration_ms = Some(started.elapsed().as_millis() as u64);
    }
}

impl FetchCounters {
    /// A fetch was answered: its report, and its stream's compressed bytes.
    pub fn served(&mut self, report: &cs_protocol::FetchReport, bytes: u64) {
        self.served += 1;
        self.entries_sent += report.sent.len() as u64;
        self.bytes_sent += bytes;
        self.paths_missing += report.missing.len() as u64;
        self.paths_refused += report.refused.len() as u64;
    }
}

impl Session {
    /// The session as observed.
    pub(super) fn snapshot(&self) -> SessionState {
        let s = &self.stats;
        SessionState {
            client: self.client.to_string(),
            peer: self.peer,
            connected_since_unix_ms: self.connected_since,
            step: self.phase.step(),
            busy: self.busy,
            rounds_committed: s.rounds_committed,
            rounds_failed: s.rounds_failed,
            last_round_unix_ms: s.last_round_unix_ms,
            last_round_duration_ms: s.last_round_duration_ms,
            entries_in: s.entries_in,
            entries_out: s.entries_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            conflicts_total: s.conflicts_total,
            last_error: s.last_error.clone(),
            heartbeat_beats: self.heartbeat.beats(),
            heartbeat_silent_ms: self.heartbeat.since_last().as_millis() as u64,
            deferred: s.deferred.clone(),
            snapshots_sent: s.snapshots_sent,
            fetch: FetchCounters { in_flight: self.fetches.len() as u64, ..s.fetch.clone() },
            snapshot: SnapshotCounters { in_flight: self.snapshots.len() as u64, ..s.snapshot.clone() },
            follow: self.follow.counters.clone(),
        }
    }
}
