//! Wiring of the compute-server service: which actors exist, in which
//! order they start, and the status object `cs-actor status` prints.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use cs_control::{Request, Response};
use cs_engine::{ComputeConfig, ComputeSide, PathFilter};
use cs_protocol::ClientId;
use cs_supervision::{Heartbeat, ObserveExt, Watchdog};
use cs_wire::WireLimits;
use serde_json::json;
use tokio::sync::watch;

use crate::connection::{Connection, ConnectionConfig};
use crate::coordinator::{Coordinator, PauseSyncing, ResumeSyncing, SyncNow};
use crate::machine::Backoff;
use crate::packer::Packer;
use crate::watcher::{ChangeCount, OwnDirs, OwnRemovals, UpperWatcher};

/// How often the watchdog looks for stuck actors (to log them; status reads
/// it on demand).
const WATCHDOG_EVERY: Duration = Duration::from_secs(5);

/// Everything the compute service needs to run.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub client: ClientId,
    /// ws:// or wss:// URL of the broker.
    pub server_url: String,
    pub token: String,
    pub extra_ca: Option<PathBuf>,
    /// The union's upper layer.
    pub upper: PathBuf,
    /// The manifest and other local state.
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    pub interval: Duration,
    pub debounce: Duration,
    pub filter: PathFilter,
    pub zstd_level: i32,
    /// See `cs_engine::ComputeConfig::whiteout_grace`.
    pub whiteout_grace: Duration,
    /// See `cs_engine::ComputeConfig::owner`: the compute user.
    pub owner: Option<cs_engine::Owner>,
    /// Files that keep changing: see `cs_engine::BusyPolicy`.
    pub busy: cs_engine::BusyPolicy,
    /// See `cs_engine::ComputeConfig::pull`.
    pub pull: cs_engine::PullPolicy,
    /// See `cs_engine::ComputeConfig::union`: the mounted union's kind.
    pub union: cs_engine::UnionKind,
    /// Ask the broker to push project changes between rounds, and start a round at each
    /// push (`--follow-project`; docs/protocol.md, *Follow*).
    pub follow_project: bool,
    pub backoff: Backoff,
    pub limits: WireLimits,
    /// How the service was set up (paths, URL), shown as it is in the status's `setup`
    /// section: what `cs-actor doctor` checks when it finds the service running.
    pub setup: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("opening the sync state: {0}")]
    Engine(#[from] cs_engine::EngineError),
    #[error(transparent)]
    Control(#[from] cs_control::ControlError),
    #[error("{0}; refusing to start")]
    Failpoints(#[from] cs_failpoint::SpecError),
    #[error(transparent)]
    Pause(#[from] crate::pause::PauseFileError),
}

/// The running service's actors.
#[derive(Clone)]
pub struct ComputeService {
    pub client: ClientId,
    pub coordinator: Addr<Coordinator>,
    pub packer: Addr<Packer>,
    pub connection: Addr<Connection>,
    pub watcher: Addr<UpperWatcher>,
    /// The mount supervisor's status and controls, when it runs.
    pub mounts: Option<MountHooks>,
    /// Reads the actors' heartbeats: `watchdog` in the status.
    pub watchdog: Watchdog,
    /// Round outcomes recorded by the coordinator, for `/metrics`.
    pub metrics: Arc<cs_metrics::ComputeMetrics>,
    /// The status's `setup` section (see [`ServiceConfig::setup`]).
    pub setup: serde_json::Value,
    /// The connection, for fetches (`cs-actor fetch`).
    pub link: Arc<crate::connection::LinkHandle>,
}

/// Produces one section of the status object.
pub type StatusFn = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// What the service can ask of the mount supervisor, which it does not own.
#[derive(Clone)]
pub struct MountHooks {
    /// The `mounts` section of the status.
    pub status: StatusFn,
    /// Lift the "lower empty" safety rail (`cs-actor accept-empty-lower`).
    pub accept_empty_lower: Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>,
    /// The safety rail as the mount supervisor publishes it: `Some(reason)`
    /// while rounds may not run. The coordinator follows every change.
    pub rail: watch::Receiver<Option<String>>,
    /// The mount supervisor's heartbeat, for the watchdog.
    pub heartbeat: Heartbeat,
    /// The `replica` section of the status, when the lower is the project's
    /// replica (issue 12) rather than a mount.
    pub replica: Option<StatusFn>,
    /// The journal epoch of the replica's tree (its snapshot's cursor).
    pub replica_epoch: Option<u64>,
}

/// What the merged view shows of P: as of the last committed round, and whether P's journal
/// still continues the replica's tree (false once P lost its journal while the service ran:
/// files no round brought stay as the tree's snapshot had them until a restart).
fn replica_as_of(
    tree_epoch: Option<u64>,
    last: Option<&crate::round::RoundSummary>,
) -> serde_json::Map<String, serde_json::Value> {
    let continues = tree_epoch.zip(last).and_then(|(tree, s)| s.in_epoch(tree));
    let mut m = serde_json::Map::new();
    m.insert("as_of_round".into(), json!(last.map(|s| s.round)));
    m.insert("as_of_round_unix_ms".into(), json!(last.map(|s| s.started_unix_ms + s.duration_ms)));
    m.insert("journal_continues".into(), json!(continues));
    m
}

impl ComputeService {
    /// Starts every actor and the control socket. Must run inside an actix
    /// system. The mounts must already be up: the upper layer is opened now.
    pub fn start(
        cfg: ServiceConfig,
        mounts: Option<MountHooks>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ServiceError> {
        // Fault tests only: a bad CS_FAILPOINTS stops the start-up, loudly.
        let armed = cs_failpoint::check()?;
        if !armed.is_empty() {
            tracing::warn!(failpoints = ?armed, "failpoints armed ({}): for fault tests only", cs_failpoint::ENV);
        }
        let mut engine_cfg = ComputeConfig::new(cfg.client.clone(), cfg.upper.clone(), cfg.state_dir.clone());
        engine_cfg.filter = cfg.filter.clone();
        engine_cfg.zstd_level = cfg.zstd_level;
        engine_cfg.whiteout_grace = cfg.whiteout_grace;
        engine_cfg.owner = cfg.owner;
        engine_cfg.busy = cfg.busy.clone();
        engine_cfg.pull = cfg.pull;
        engine_cfg.union = cfg.union.clone();
        engine_cfg.follow = cfg.follow_project;
        // Step 4's directories, told by the engine to the upper-layer watcher.
        let own_dirs = OwnDirs::default();
        let side = ComputeSide::open(engine_cfg)?.with_own_dirs(own_dirs.hook());
        // `cs-actor pause` before a restart still holds.
        let pause_file = crate::pause::path_in(&cfg.state_dir);
        let paused = crate::pause::load(&pause_file)?;
        let watchdog = Watchdog::from_env();
        let round_heartbeat = Heartbeat::new();
        let packer = Packer::new(side).with_round_heartbeat(round_heartbeat.clone());
        watchdog.watch("packer", packer.heartbeat());
        let packer = cs_supervision::spawn(packer);
        let mut conn_cfg = ConnectionConfig::new(cfg.server_url.clone(), cfg.token.clone());
        conn_cfg.extra_ca = cfg.extra_ca.clone();
        conn_cfg.limits = cfg.limits;
        let connection_actor = Connection::new(conn_cfg);
        let link = Arc::new(connection_actor.link());
        let pushes = cfg.follow_project.then(|| link.project_changes());
        let link_ups = link.link_ups();
        let fetch_link = link.clone();
        let connection = cs_supervision::spawn(connection_actor);
        let changes = ChangeCount::default();
        let removals = OwnRemovals::default();
        let metrics = Arc::new(cs_metrics::ComputeMetrics::new());
        let mut coordinator = Coordinator::new(packer.clone(), link, cfg.interval, cfg.backoff, round_heartbeat)
            .with_operator_pause(pause_file, paused)
            .with_change_count(changes.clone())
            .with_own_removals(removals.clone())
            .with_metrics(metrics.clone())
            .with_link_ups(link_ups);
        if let Some(pushes) = pushes {
            coordinator = coordinator.with_project_changes(pushes);
        }
        watchdog.watch("round", coordinator.heartbeat());
        if let Some(m) = &mounts {
            coordinator = coordinator.with_rail(m.rail.clone());
            if let Some(epoch) = m.replica_epoch {
                coordinator = coordinator.with_lower_epoch(epoch);
            }
            watchdog.watch("mounts", m.heartbeat.clone());
        }
        let coordinator = cs_supervision::spawn(coordinator);
        let watcher = UpperWatcher::new(cfg.upper.clone(), cfg.debounce, coordinator.clone(), changes, removals)
            .with_own_dirs(own_dirs);
        let watcher = cs_supervision::spawn(watcher);
        watchdog.spawn_monitor(WATCHDOG_EVERY);
        let service = ComputeService {
            client: cfg.client.clone(),
            coordinator,
            packer,
            connection,
            watcher,
            mounts,
            watchdog,
            metrics,
            setup: cfg.setup.clone(),
            link: fetch_link,
        };
        let control = service.serve_control(&cfg.control_socket)?;
        Ok((service, control))
    }

    fn serve_control(&self, path: &std::path::Path) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
        let me = self.clone();
        let handler: cs_control::Handler = Arc::new(move |req| {
            let me = me.clone();
            Box::pin(async move {
                match req {
                    Request::Status => Response::status(me.status().await),
                    Request::Sync { wait } => match me.coordinator.send(SyncNow { wait }).await {
                        Ok(Ok(round)) => Response::round(round),
                        Ok(Err(e)) if e.is_permanent() => Response::permanent_error(e.to_string()),
                        Ok(Err(e)) => Response::error(e.to_string()),
                        Err(e) => Response::error(format!("the coordinator is gone: {e}")),
                    },
                    Request::Pause { reason } => match me.coordinator.send(PauseSyncing { reason }).await {
                        Ok(Ok(p)) => Response::done_with(format!(
                            "syncing paused{}: no round starts until `cs-actor resume` (a round in flight finishes)",
                            p.reason.map(|r| format!(" ({r})")).unwrap_or_default()
                        )),
                        Ok(Err(e)) => Response::error(format!("not paused: {e}")),
                        Err(e) => Response::error(format!("the coordinator is gone: {e}")),
                    },
                    Request::Resume => match me.coordinator.send(ResumeSyncing).await {
                        Ok(Ok(true)) => Response::done_with("syncing resumed: a round starts now"),
                        Ok(Ok(false)) => Response::done_with("syncing was not paused by `cs-actor pause`"),
                        Ok(Err(e)) => Response::error(format!("still paused: {e}")),
                        Err(e) => Response::error(format!("the coordinator is gone: {e}")),
                    },
                    Request::Fetch { paths, to } => me.fetch(paths, to).await,
                    Request::AcceptEmptyLower => match &me.mounts {
                        Some(m) => match (m.accept_empty_lower)().await {
                            Ok(()) => Response::done(),
                            Err(e) => Response::error(e),
                        },
                        None => Response::error("this service does not supervise its mounts"),
                    },
                }
            })
        });
        Ok(cs_control::serve(path, handler)?)
    }

    /// `cs-actor fetch`: P's content of `paths` into the directory `to`.
    async fn fetch(&self, paths: Vec<String>, to: std::path::PathBuf) -> Response {
        let mut rel = Vec::with_capacity(paths.len());
        for p in &paths {
            match cs_protocol::RelPath::new(p.trim_start_matches("./").as_bytes()) {
                Ok(r) => rel.push(r),
                Err(e) => return Response::error(format!("{p:?}: not a project path (relative to the home): {e}")),
            }
        }
        match self.link.fetch(rel, &to).await {
            Ok(r) => Response::fetched(serde_json::to_value(&r).unwrap_or_default()),
            Err(e) => Response::error(format!("fetch: {}", cs_supervision::error_chain(&e))),
        }
    }

    /// The observable state of every actor: what `cs-actor status` prints.
    pub async fn status(&self) -> serde_json::Value {
        let round = self.coordinator.observe().await.ok();
        let packer = self.packer.observe().await.ok();
        let connection = self.connection.observe().await.ok();
        let watcher = self.watcher.observe().await.ok();
        let mounts = match &self.mounts {
            Some(m) => (m.status)().await,
            None => serde_json::Value::Null,
        };
        let mut replica = match self.mounts.as_ref().and_then(|m| m.replica.as_ref()) {
            Some(f) => f().await,
            None => serde_json::Value::Null,
        };
        if let Some(section) = replica.as_object_mut() {
            let epoch = self.mounts.as_ref().and_then(|m| m.replica_epoch);
            let last = round.as_ref().and_then(|r| r.last_committed.as_ref());
            section.extend(replica_as_of(epoch, last));
        }
        json!({
            "service": "compute",
            "client": self.client.as_str(),
            "mounts": mounts,
            "replica": replica,
            "connection": connection,
            "round": round,
            "packer": packer,
            "watcher": watcher,
            "watchdog": self.watchdog.report(),
            "setup": self.setup,
        })
    }

    /// A last round (bounded by `grace`), then stop the connection.
    pub async fn shutdown(&self, grace: Duration) {
        match tokio::time::timeout(grace, self.coordinator.send(SyncNow { wait: true })).await {
            Ok(Ok(Ok(round))) => tracing::info!(round, "last round committed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "last round failed; the next start catches up"),
            _ => tracing::warn!("no last round within {grace:?}; the next start catches up"),
        }
        let _ = self.connection.send(crate::connection::Disconnect).await;
    }
}

#[cfg(test)]
mod tests {
    use cs_protocol::Cursor;

    use super::*;
    use crate::round::RoundSummary;

    #[test]
    fn the_replica_is_as_of_the_last_round_and_stale_once_the_journal_started_over() {
        let before = replica_as_of(Some(7), None);
        assert_eq!(
            serde_json::Value::Object(before),
            json!({"as_of_round": null, "as_of_round_unix_ms": null, "journal_continues": null})
        );
        let mut round = RoundSummary {
            round: 4,
            started_unix_ms: 1000,
            duration_ms: 250,
            cursor: Some(Cursor { epoch: 7, seq: 90 }),
            ..Default::default()
        };
        let same = replica_as_of(Some(7), Some(&round));
        assert_eq!(
            serde_json::Value::Object(same),
            json!({"as_of_round": 4, "as_of_round_unix_ms": 1250, "journal_continues": true})
        );
        round.cursor = Some(Cursor { epoch: 8, seq: 2 });
        assert_eq!(replica_as_of(Some(7), Some(&round))["journal_continues"], json!(false));
        // A lower that is not a replica has no tree epoch: nothing is said.
        assert_eq!(replica_as_of(None, Some(&round))["journal_continues"], json!(null));
    }
}
