//! Every metric the two services export: name, type, labels and meaning, in
//! this one table. The registries (`compute`, `broker`, `process`) take
//! their names and help texts from here; docs/operations.md ("Metrics") and
//! the Grafana dashboard (deploy/grafana/cs-actor.json) are checked against
//! it by this crate's tests.

/// The Prometheus type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric, as documented.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    /// The name as registered; a counter is exposed with `_total` appended,
    /// a histogram as `_bucket`, `_sum` and `_count`.
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

impl MetricDoc {
    /// The name of the samples in the exposition (a histogram's family name).
    pub fn exposed(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge | Kind::Histogram => self.name.to_owned(),
        }
    }

    /// Whether `sample` (a sample name of the exposition) belongs to this metric.
    pub fn owns_sample(&self, sample: &str) -> bool {
        match self.kind {
            Kind::Counter => sample == self.exposed(),
            Kind::Gauge => sample == self.name,
            Kind::Histogram => ["_bucket", "_sum", "_count"].iter().any(|s| sample.strip_suffix(s) == Some(self.name)),
        }
    }
}

macro_rules! metric {
    ($id:ident, $name:literal, $kind:ident, [$($label:literal),*], $help:literal) => {
        pub const $id: MetricDoc =
            MetricDoc { name: $name, kind: Kind::$kind, labels: &[$($label),*], help: $help };
    };
}

// The compute service: counted where the round coordinator counts for `status`.
metric!(ROUNDS_COMMITTED, "cs_compute_rounds_committed", Counter, [], "Rounds committed.");
metric!(
    ROUNDS_FAILED,
    "cs_compute_rounds_failed",
    Counter,
    ["class", "kind"],
    "Rounds failed, by class (transient: retried; permanent: stopped until a person acts) and kind of error."
);
metric!(ROUND_DURATION, "cs_compute_round_duration_seconds", Histogram, [], "Duration of committed rounds.");
metric!(
    STEP_DURATION,
    "cs_compute_step_duration_seconds",
    Histogram,
    ["step"],
    "Duration of each step of committed rounds."
);
metric!(
    STEP_ENTRIES,
    "cs_compute_step_entries",
    Counter,
    ["step", "direction"],
    "Entries (deletes or tar entries) carried by the steps of committed rounds; direction to_project or to_compute."
);
metric!(
    STEP_BYTES,
    "cs_compute_step_bytes",
    Counter,
    ["step", "direction"],
    "Payload bytes carried by the write steps of committed rounds."
);
metric!(
    CONFLICTS,
    "cs_compute_conflicts",
    Counter,
    [],
    "Conflicts resolved by committed rounds (the project's copy kept, the compute side's set aside)."
);
// The compute service: read from the actors' status at each scrape.
metric!(
    PAUSED_BY_OPERATOR,
    "cs_compute_paused_by_operator",
    Gauge,
    [],
    "1 while `cs-actor pause` holds rounds (the reason is in `cs-actor status`)."
);
metric!(
    PAUSED_SINCE,
    "cs_compute_paused_since_seconds",
    Gauge,
    [],
    "Unix time at which the operator's pause began (present only while paused)."
);
metric!(
    ROUND_PHASE,
    "cs_compute_round_phase",
    Gauge,
    ["phase"],
    "1 for the coordinator's phase now (idle, running, backoff, paused, stopped), 0 for the others."
);
metric!(
    ROUND_RETRIES,
    "cs_compute_round_retries",
    Gauge,
    [],
    "Failed attempts of the round being retried now (0 when none)."
);
metric!(
    DEFERRED_FILES,
    "cs_compute_deferred_files",
    Gauge,
    [],
    "Files that keep changing, deferred or sent as snapshots by the last committed round."
);
metric!(CONNECTED, "cs_compute_connected", Gauge, [], "1 while the websocket to the broker is connected.");
metric!(RECONNECTS, "cs_compute_reconnects", Counter, [], "Connections to the broker made again after the first.");
metric!(
    RTT,
    "cs_compute_websocket_rtt_seconds",
    Gauge,
    [],
    "Round-trip time of the last websocket ping (absent before the first pong)."
);
metric!(
    CONNECTION_BYTES,
    "cs_compute_connection_bytes",
    Counter,
    ["direction"],
    "Bytes sent and received on the websocket (direction sent or received)."
);
metric!(
    MOUNT_UP,
    "cs_compute_mount_up",
    Gauge,
    ["layer"],
    "1 while the layer (lower: the project's mount; union: the merged view) is mounted and healthy."
);
metric!(
    MOUNT_REMOUNTS,
    "cs_compute_mount_remounts",
    Counter,
    ["layer"],
    "Remounts of the layer by the mount supervisor."
);
metric!(
    SAFETY_RAIL_UP,
    "cs_compute_safety_rail_up",
    Gauge,
    [],
    "1 while the safety rail is up (rounds may not run: the mounts are unsafe)."
);
metric!(SAFETY_RAILS_RAISED, "cs_compute_safety_rails_raised", Counter, [], "Times the safety rail went up.");
metric!(WATCHER_EVENTS, "cs_compute_watcher_events", Counter, [], "Change events seen in the upper layer.");
metric!(
    WATCHER_TRIGGERS,
    "cs_compute_watcher_triggers",
    Counter,
    [],
    "Rounds triggered by the upper layer's change events."
);
// The project broker: read from its status at each scrape.
metric!(SESSIONS, "cs_broker_sessions", Gauge, [], "Client sessions open now.");
metric!(SESSIONS_ACCEPTED, "cs_broker_sessions_accepted", Counter, [], "Connections accepted and authenticated.");
metric!(CONNECTIONS_REFUSED, "cs_broker_connections_refused", Counter, ["reason"], "Connections refused, by reason (missing_token, unknown_token, busy, handshake, tls, timeout, ...: as `broker.refused` in the status).");
metric!(TAR_SLOTS_IN_USE, "cs_broker_tar_slots_in_use", Gauge, [], "Tar slots in use now (packing or unpacking).");
metric!(
    TAR_SLOTS,
    "cs_broker_tar_slots",
    Gauge,
    [],
    "Tar slots in all (the bound on tar streams packed or unpacked at once)."
);
metric!(
    CLIENT_ROUNDS_COMMITTED,
    "cs_broker_client_rounds_committed",
    Counter,
    ["client"],
    "Rounds committed by the client's open session."
);
metric!(
    CLIENT_ROUNDS_FAILED,
    "cs_broker_client_rounds_failed",
    Counter,
    ["client"],
    "Rounds failed in the client's open session."
);
metric!(
    CLIENT_ENTRIES,
    "cs_broker_client_entries",
    Counter,
    ["client", "direction"],
    "Tar entries received from (in) and sent to (out) the client in its open session."
);
metric!(
    CLIENT_BYTES,
    "cs_broker_client_bytes",
    Counter,
    ["client", "direction"],
    "Compressed tar bytes received from (in) and sent to (out) the client in its open session."
);
metric!(
    CLIENT_CONFLICTS,
    "cs_broker_client_conflicts",
    Counter,
    ["client"],
    "Conflicts of the client's rounds in its open session."
);
metric!(
    CLIENT_DEFERRED_FILES,
    "cs_broker_client_deferred_files",
    Gauge,
    ["client"],
    "The project's files that keep changing, as of the client's last committed round."
);
// Both services.
metric!(
    RESIDENT_MEMORY,
    "process_resident_memory_bytes",
    Gauge,
    [],
    "Resident set size of the service process (VmRSS)."
);
metric!(OPEN_FDS, "process_open_fds", Gauge, [], "File descriptors open in the service process.");

/// The compute service's metrics (with [`PROCESS`]).
pub const COMPUTE: &[MetricDoc] = &[
    ROUNDS_COMMITTED,
    ROUNDS_FAILED,
    ROUND_DURATION,
    STEP_DURATION,
    STEP_ENTRIES,
    STEP_BYTES,
    CONFLICTS,
    ROUND_PHASE,
    PAUSED_BY_OPERATOR,
    PAUSED_SINCE,
    ROUND_RETRIES,
    DEFERRED_FILES,
    CONNECTED,
    RECONNECTS,
    RTT,
    CONNECTION_BYTES,
    MOUNT_UP,
    MOUNT_REMOUNTS,
    SAFETY_RAIL_UP,
    SAFETY_RAILS_RAISED,
    WATCHER_EVENTS,
    WATCHER_TRIGGERS,
];

/// The project broker's metrics (with [`PROCESS`]).
pub const BROKER: &[MetricDoc] = &[
    SESSIONS,
    SESSIONS_ACCEPTED,
    CONNECTIONS_REFUSED,
    TAR_SLOTS_IN_USE,
    TAR_SLOTS,
    CLIENT_ROUNDS_COMMITTED,
    CLIENT_ROUNDS_FAILED,
    CLIENT_ENTRIES,
    CLIENT_BYTES,
    CLIENT_CONFLICTS,
    CLIENT_DEFERRED_FILES,
];

/// Both services' process metrics.
pub const PROCESS: &[MetricDoc] = &[RESIDENT_MEMORY, OPEN_FDS];

/// Every metric of either service.
pub fn all() -> impl Iterator<Item = &'static MetricDoc> {
    COMPUTE.iter().chain(BROKER).chain(PROCESS)
}

/// The metric a sample name of the exposition belongs to.
pub fn owner_of(sample: &str) -> Option<&'static MetricDoc> {
    all().find(|m| m.owns_sample(sample))
}
