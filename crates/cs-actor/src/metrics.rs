//! `--metrics-listen`: each service's status, read at every scrape, as the
//! metrics of `cs-metrics` (which owns their names), served at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use actix::Addr;
use anyhow::{Context, Result};
use cs_compute::service::ComputeService;
use cs_metrics::{BrokerSnapshot, ComputeSnapshot, Endpoint, MountSnapshot, SessionSnapshot};
use cs_mount::{LowerStatus, MountState, MountSupervisor, UnionStatus};
use cs_supervision::ObserveExt;

/// `--metrics-listen`: an IP:PORT, or nothing (no endpoint).
pub fn listen_addr(flag: Option<&str>) -> Result<Option<SocketAddr>> {
    flag.map(|a| a.parse().with_context(|| format!("--metrics-listen must be IP:PORT, not {a:?}"))).transpose()
}

/// Serves the compute service's metrics on `addr`.
pub fn serve_compute(addr: SocketAddr, svc: &ComputeService, mount: Addr<MountSupervisor>) -> Result<Endpoint> {
    let svc = svc.clone();
    let render: cs_metrics::Render = Arc::new(move || {
        let (svc, mount) = (svc.clone(), mount.clone());
        Box::pin(async move {
            let snapshot = compute_snapshot(&svc, &mount).await;
            svc.metrics.render(snapshot)
        })
    });
    Ok(cs_metrics::serve(addr, render)?)
}

/// What the compute service's actors say now; an actor that does not answer
/// (stopping) leaves its part at zero.
async fn compute_snapshot(svc: &ComputeService, mount: &Addr<MountSupervisor>) -> ComputeSnapshot {
    let mut s = ComputeSnapshot::default();
    if let Ok(round) = svc.coordinator.observe().await {
        s.phase = round.phase.to_owned();
        s.retries = round.retries;
        s.operator_paused_since_unix_ms = round.operator_pause.map(|p| p.since_unix_ms);
    }
    if let Ok(packer) = svc.packer.observe().await {
        s.deferred_files = packer.deferred.count;
    }
    if let Ok(conn) = svc.connection.observe().await {
        s.connected = conn.state == "connected";
        s.reconnects = conn.reconnects;
        s.rtt_seconds = conn.rtt_ms.map(|ms| ms / 1000.0);
        s.bytes_sent = conn.bytes_sent;
        s.bytes_received = conn.bytes_received;
    }
    if let Ok(watcher) = svc.watcher.observe().await {
        s.watcher_events = watcher.events_total;
        s.watcher_triggers = watcher.triggers_sent;
    }
    s.mounts = mount.observe().await.ok().map(|m| mount_snapshot(&m));
    s
}

fn mount_snapshot(m: &MountState) -> MountSnapshot {
    MountSnapshot {
        lower_up: matches!(m.lower.state, LowerStatus::Mounted | LowerStatus::Adopted),
        union_up: m.union.state == UnionStatus::Mounted,
        lower_remounts: m.lower.remounts,
        union_remounts: m.union.remounts,
        rail_up: m.rail.is_some(),
        rails_raised: m.rails_raised,
    }
}

/// Serves the broker's metrics on `addr`.
pub fn serve_project(addr: SocketAddr, broker: cs_broker::BrokerHandle) -> Result<Endpoint> {
    let metrics = Arc::new(cs_metrics::BrokerMetrics::new());
    let render: cs_metrics::Render = Arc::new(move || {
        let (broker, metrics) = (broker.clone(), metrics.clone());
        Box::pin(async move {
            let snapshot = broker.observe().await.map(|st| broker_snapshot(&st)).unwrap_or_default();
            metrics.render(snapshot)
        })
    });
    Ok(cs_metrics::serve(addr, render)?)
}

fn broker_snapshot(st: &cs_broker::BrokerState) -> BrokerSnapshot {
    BrokerSnapshot {
        accepted: st.accepted,
        refused: st.refused.iter().map(|(r, n)| (r.clone(), *n)).collect(),
        tar_in_use: st.tar_in_use as u64,
        tar_slots: st.max_concurrent_tar as u64,
        sessions: st
            .sessions
            .iter()
            .map(|s| SessionSnapshot {
                client: s.client.clone(),
                rounds_committed: s.rounds_committed,
                rounds_failed: s.rounds_failed,
                entries_in: s.entries_in,
                entries_out: s.entries_out,
                bytes_in: s.bytes_in,
                bytes_out: s.bytes_out,
                conflicts: s.conflicts_total,
                deferred_files: s.deferred.count,
            })
            .collect(),
    }
}
