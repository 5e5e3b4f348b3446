//! The project broker's metrics: its status, read at each scrape.

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use crate::catalog as c;
use crate::encode::{self, Labels, Value};

/// What the broker's status says, as the metrics read it at a scrape.
#[derive(Debug, Clone, Default)]
pub struct BrokerSnapshot {
    pub accepted: u64,
    /// Refused connections by reason, all time.
    pub refused: Vec<(String, u64)>,
    pub tar_in_use: u64,
    pub tar_slots: u64,
    /// One per open session.
    pub sessions: Vec<SessionSnapshot>,
}

/// One client's open session.
#[derive(Debug, Clone, Default)]
pub struct SessionSnapshot {
    pub client: String,
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    pub entries_in: u64,
    pub entries_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub conflicts: u64,
    pub deferred_files: u64,
}

/// The broker's registry.
#[derive(Debug)]
pub struct BrokerMetrics {
    registry: Registry,
    status: Arc<Mutex<Option<BrokerSnapshot>>>,
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let status = Arc::new(Mutex::new(None));
        registry.register_collector(Box::new(BrokerStatus(status.clone())));
        registry.register_collector(Box::new(crate::process::Process));
        BrokerMetrics { registry, status }
    }

    /// The exposition, with `status` as the state read now.
    pub fn render(&self, status: BrokerSnapshot) -> String {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
        crate::render(&self.registry)
    }
}

#[derive(Debug)]
struct BrokerStatus(Arc<Mutex<Option<BrokerSnapshot>>>);

impl Collector for BrokerStatus {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = guard.as_ref() else { return Ok(()) };
        encode::gauge(&mut enc, &c::SESSIONS, s.sessions.len() as f64)?;
        encode::counter(&mut enc, &c::SESSIONS_ACCEPTED, s.accepted)?;
        let refused: Vec<(Labels, Value)> =
            s.refused.iter().map(|(r, n)| (vec![("reason", r.clone())], Value::Count(*n))).collect();
        encode::samples(&mut enc, &c::CONNECTIONS_REFUSED, &refused)?;
        encode::gauge(&mut enc, &c::TAR_SLOTS_IN_USE, s.tar_in_use as f64)?;
        encode::gauge(&mut enc, &c::TAR_SLOTS, s.tar_slots as f64)?;
        let per_client = |f: fn(&SessionSnapshot) -> Value| -> Vec<(Labels, Value)> {
            s.sessions.iter().map(|x| (vec![("client", x.client.clone())], f(x))).collect()
        };
        let per_direction = |f: fn(&SessionSnapshot) -> (u64, u64)| -> Vec<(Labels, Value)> {
            s.sessions
                .iter()
                .flat_map(|x| {
                    let (inbound, outbound) = f(x);
                    [("in", inbound), ("out", outbound)].map(|(d, n)| {
                        (vec![("client", x.client.clone()), ("direction", d.to_owned())], Value::Count(n))
                    })
                })
                .collect()
        };
        encode::samples(&mut enc, &c::CLIENT_ROUNDS_COMMITTED, &per_client(|x| Value::Count(x.rounds_committed)))?;
        encode::samples(&mut enc, &c::CLIENT_ROUNDS_FAILED, &per_client(|x| Value::Count(x.rounds_failed)))?;
        encode::samples(&mut enc, &c::CLIENT_ENTRIES, &per_direction(|x| (x.entries_in, x.entries_out)))?;
        encode::samples(&mut enc, &c::CLIENT_BYTES, &per_direction(|x| (x.bytes_in, x.bytes_out)))?;
        encode::samples(&mut enc, &c::CLIENT_CONFLICTS, &per_client(|x| Value::Count(x.conflicts)))?;
        encode::samples(&mut enc, &c::CLIENT_DEFERRED_FILES, &per_client(|x| Value::Level(x.deferred_files as f64)))
    }
}
