//! The compute service's metrics: round outcomes recorded as they happen
//! (by the round coordinator, where it counts them for `status`), and the
//! actors' status read at each scrape ([`ComputeStatus`]).

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::catalog::{self as c, MetricDoc};
use crate::encode::{self, flag, Labels, Value};

/// Labels whose values are the program's own names.
type StaticLabels = Vec<(&'static str, &'static str)>;
type HistogramFamily = Family<StaticLabels, Histogram, fn() -> Histogram>;

/// Round and step durations: 10 ms to about 3 hours, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

/// One step of a committed round.
#[derive(Debug, Clone, Copy)]
pub struct StepRecord {
    /// The step's status name (`hello`, `writes_to_project`, …).
    pub step: &'static str,
    /// `to_project` or `to_compute` for the steps that carry entries.
    pub direction: Option<&'static str>,
    pub seconds: f64,
    pub entries: u64,
    pub bytes: u64,
}

/// What the compute service's status says, as the metrics read it at a scrape.
#[derive(Debug, Clone, Default)]
pub struct ComputeSnapshot {
    /// The coordinator's phase (idle, running, backoff, paused, stopped).
    pub phase: String,
    /// Unix ms at which `cs-actor pause` began, while it holds.
    pub operator_paused_since_unix_ms: Option<u64>,
    pub retries: u32,
    pub deferred_files: u64,
    pub connected: bool,
    pub reconnects: u64,
    pub rtt_seconds: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// None when the service does not supervise its mounts.
    pub mounts: Option<MountSnapshot>,
    pub watcher_events: u64,
    pub watcher_triggers: u64,
}

/// The mount supervisor's part of [`ComputeSnapshot`].
#[derive(Debug, Clone, Default)]
pub struct MountSnapshot {
    pub lower_up: bool,
    pub union_up: bool,
    pub lower_remounts: u64,
    pub union_remounts: u64,
    pub rail_up: bool,
    pub rails_raised: u64,
}

/// The phases `cs_compute_round_phase` always shows (0 or 1 each).
const PHASES: &[&str] = &["idle", "running", "backoff", "paused", "stopped"];

/// The compute service's registry and the handles its coordinator records with.
#[derive(Debug)]
pub struct ComputeMetrics {
    registry: Registry,
    rounds_committed: Counter,
    rounds_failed: Family<StaticLabels, Counter>,
    round_duration: Histogram,
    step_duration: HistogramFamily,
    step_entries: Family<StaticLabels, Counter>,
    step_bytes: Family<StaticLabels, Counter>,
    conflicts: Counter,
    status: Arc<Mutex<Option<ComputeSnapshot>>>,
}

impl Default for ComputeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ComputeMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let rounds_committed = Counter::default();
        let rounds_failed = Family::default();
        let round_duration = duration_histogram();
        let step_duration = HistogramFamily::new_with_constructor(duration_histogram);
        let step_entries = Family::default();
        let step_bytes = Family::default();
        let conflicts = Counter::default();
        register(&mut registry, &c::ROUNDS_COMMITTED, rounds_committed.clone());
        register(&mut registry, &c::ROUNDS_FAILED, rounds_failed.clone());
        register(&mut registry, &c::ROUND_DURATION, round_duration.clone());
        register(&mut registry, &c::STEP_DURATION, step_duration.clone());
        register(&mut registry, &c::STEP_ENTRIES, step_entries.clone());
        register(&mut registry, &c::STEP_BYTES, step_bytes.clone());
        register(&mut registry, &c::CONFLICTS, conflicts.clone());
        let status = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(ComputeStatus(status.clone())));
        registry.register_collector(Box::new(crate::process::Process));
        ComputeMetrics {
            registry,
            rounds_committed,
            rounds_failed,
            round_duration,
            step_duration,
            step_entries,
            step_bytes,
            conflicts,
            status,
        }
    }

    /// A round committed after `seconds`, with its steps and conflicts.
    pub fn round_committed(&self, seconds: f64, steps: impl IntoIterator<Item = StepRecord>, conflicts: u64) {
        self.rounds_committed.inc();
        self.round_duration.observe(seconds);
        for s in steps {
            self.step_duration.get_or_create(&vec![("step", s.step)]).observe(s.seconds);
            if let Some(direction) = s.direction {
                let labels = vec![("step", s.step), ("direction", direction)];
                self.step_entries.get_or_create(&labels).inc_by(s.entries);
                self.step_bytes.get_or_create(&labels).inc_by(s.bytes);
            }
        }
        self.conflicts.inc_by(conflicts);
    }

    /// A round failed: `class` transient or permanent, `kind` the error's.
    pub fn round_failed(&self, class: &'static str, kind: &'static str) {
        self.rounds_failed.get_or_create(&vec![("class", class), ("kind", kind)]).inc();
    }

    /// The exposition, with `status` as the state read now.
    pub fn render(&self, status: ComputeSnapshot) -> String {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        crate::render(&self.registry)
    }
}

fn register(registry: &mut Registry, doc: &MetricDoc, metric: impl prometheus_client::registry::Metric) {
    registry.register(doc.name, doc.help, metric);
}

/// The compute service's status as metrics, at each scrape.
#[derive(Debug)]
struct ComputeStatus(Arc<Mutex<Option<ComputeSnapshot>>>);

impl Collector for ComputeStatus {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = guard.as_ref() else { return Ok(()) };
        let mut phases: Vec<&str> = PHASES.to_vec();
        if !phases.contains(&s.phase.as_str()) {
            phases.push(&s.phase);
        }
        let phase_values: Vec<(Labels, Value)> =
            phases.iter().map(|p| (vec![("phase", p.to_string())], Value::Level(flag(*p == s.phase)))).collect();
        encode::samples(&mut enc, &c::ROUND_PHASE, &phase_values)?;
        let paused_since = s.operator_paused_since_unix_ms;
        encode::gauge(&mut enc, &c::PAUSED_BY_OPERATOR, flag(paused_since.is_some()))?;
        if let Some(ms) = paused_since {
            encode::gauge(&mut enc, &c::PAUSED_SINCE, ms as f64 / 1000.0)?;
        }
        encode::gauge(&mut enc, &c::ROUND_RETRIES, f64::from(s.retries))?;
        encode::gauge(&mut enc, &c::DEFERRED_FILES, s.deferred_files as f64)?;
        encode::gauge(&mut enc, &c::CONNECTED, flag(s.connected))?;
        encode::counter(&mut enc, &c::RECONNECTS, s.reconnects)?;
        if let Some(rtt) = s.rtt_seconds {
            encode::gauge(&mut enc, &c::RTT, rtt)?;
        }
        let bytes = [("sent", s.bytes_sent), ("received", s.bytes_received)];
        encode::samples(&mut enc, &c::CONNECTION_BYTES, &by_label("direction", &bytes))?;
        if let Some(m) = &s.mounts {
            let up = [("lower", flag(m.lower_up)), ("union", flag(m.union_up))];
            let up: Vec<(Labels, Value)> =
                up.iter().map(|(l, v)| (vec![("layer", l.to_string())], Value::Level(*v))).collect();
            encode::samples(&mut enc, &c::MOUNT_UP, &up)?;
            let remounts = [("lower", m.lower_remounts), ("union", m.union_remounts)];
            encode::samples(&mut enc, &c::MOUNT_REMOUNTS, &by_label("layer", &remounts))?;
            encode::gauge(&mut enc, &c::SAFETY_RAIL_UP, flag(m.rail_up))?;
            encode::counter(&mut enc, &c::SAFETY_RAILS_RAISED, m.rails_raised)?;
        }
        encode::counter(&mut enc, &c::WATCHER_EVENTS, s.watcher_events)?;
        encode::counter(&mut enc, &c::WATCHER_TRIGGERS, s.watcher_triggers)
    }
}

/// Counts by one label's values.
pub(crate) fn by_label(label: &'static str, counts: &[(&str, u64)]) -> Vec<(Labels, Value)> {
    counts.iter().map(|(v, n)| (vec![(label, v.to_string())], Value::Count(*n))).collect()
}
