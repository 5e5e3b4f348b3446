//! The replica of the project (issue 12), the compute service's part: the
//! lower layer is a placeholder tree of P's snapshot (`cs-replica`), and a
//! placeholder's content comes over the service's own connection on its
//! first open. This module connects the two: it takes the snapshot at start
//! ([`take_snapshot`]), and it is the fill service's [`Source`] ([`LinkSource`]),
//! turning each fill into a fetch (docs/protocol.md, *Fetch*).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cs_protocol::{RelPath, SnapshotReport};
use cs_replica::{Kept, SnapshotWriter, Source, SourceReport, Tree};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::connection::{Connection, ConnectionConfig, Disconnect, LinkHandle};

/// Fetches in flight at once: the broker serves at most this many per connection
/// ([`cs_wire::MAX_FETCHES_IN_FLIGHT`]); more would be refused as busy.
const FETCHES_AT_ONCE: usize = cs_wire::MAX_FETCHES_IN_FLIGHT;

/// How long a snapshot waits for its connection to come up.
const CONNECT_WAIT: Duration = Duration::from_secs(20);

/// Between two attempts of a fetch the link could not carry (down, busy).
const FETCH_RETRY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("the project's snapshot")]
    Snapshot(#[source] crate::snapshot::SnapshotError),
    #[error("writing the replica's tree")]
    Tree(#[source] cs_replica::ReplicaError),
    #[error("the snapshot stream ended without its report")]
    NoReport,
    #[error("no connection to the project: {0}")]
    NotConnected(String),
    /// The broker refused this client for a reason retrying cannot fix (its token, say).
    #[error("the broker refused this compute server: {0}")]
    Refused(String),
}

impl ReplicaError {
    /// Trying again cannot help: the broker refused this client, or serves no snapshots
    /// (an older broker: run the compute server with a lower mount instead).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ReplicaError::Refused(_) | ReplicaError::Snapshot(crate::snapshot::SnapshotError::NotSupported(_))
        )
    }
}

/// Takes P's snapshot over a connection of its own (the service's starts
/// later, with the union) and writes it as the replica's new current tree; also what
/// it kept of the previous tree's fetched content.
pub async fn take_snapshot(
    conn: ConnectionConfig,
    replica_root: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(Tree, SnapshotReport, Kept), ReplicaError> {
    let actor = Connection::new(conn);
    let link = actor.link();
    let addr = cs_supervision::spawn(actor);
    if let Err(e) = connected(&addr).await {
        let _ = addr.send(Disconnect).await;
        return Err(e);
    }
    let writer = SnapshotWriter::begin(replica_root, owner).map_err(ReplicaError::Tree)?;
    let writer = Arc::new(Mutex::new(Some(writer)));
    let w = writer.clone();
    let answer = link
        .snapshot(move |e| {
            let mut g = w.lock().unwrap_or_else(|p| p.into_inner());
            let Some(writer) = g.as_mut() else { return Err("the tree writer is gone".into()) };
            writer.add(&e).map_err(|e| cs_supervision::error_chain(&e))
        })
        .await;
    let _ = addr.send(Disconnect).await;
    let report = answer.map_err(ReplicaError::Snapshot)?;
    let writer = writer.lock().unwrap_or_else(|p| p.into_inner()).take().ok_or(ReplicaError::NoReport)?;
    let kept = writer.kept();
    let tree = writer.finish(&report).map_err(ReplicaError::Tree)?;
    Ok((tree, report, kept))
}

/// Waits until the connection is up: it connects on its own once started, and a request
/// made before that fails at once.
async fn connected(addr: &actix::Addr<Connection>) -> Result<(), ReplicaError> {
    use cs_supervision::ObserveExt;
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        let st =
            addr.observe().await.map_err(|e| ReplicaError::NotConnected(format!("the connection is gone: {e}")))?;
        match st.state {
            "connected" => return Ok(()),
            "stopped" => return Err(ReplicaError::Refused(st.last_error.unwrap_or_else(|| "refused".into()))),
            _ if Instant::now() > deadline => {
                let why = st.last_error.unwrap_or_else(|| format!("still {}", st.state));
                return Err(ReplicaError::NotConnected(format!("not within {CONNECT_WAIT:?}: {why}")));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One fill's fetch, handed from a fill thread to the service's runtime.
struct FetchJob {
    paths: Vec<RelPath>,
    staging: PathBuf,
    deadline: Instant,
    reply: std::sync::mpsc::SyncSender<Result<SourceReport, String>>,
}

/// The fill service's source: fetches over the service's connection, once
/// it is there ([`LinkSource::connect`]). A fetch the link cannot carry now
/// (down, busy) is tried again until its deadline: the reader waits up to
/// `--fetch-timeout`, then gets EIO (the fill service's rule).
pub struct LinkSource {
    jobs: mpsc::Sender<FetchJob>,
    link: watch::Sender<Option<Arc<LinkHandle>>>,
    timeout: Duration,
}

impl LinkSource {
    /// Must run inside the service's runtime (it spawns the task that carries the fetches).
    pub fn new(timeout: Duration) -> Arc<LinkSource> {
        let (jobs, mut rx) = mpsc::channel::<FetchJob>(64);
        let (link, link_rx) = watch::channel(None::<Arc<LinkHandle>>);
        let slots = Arc::new(Semaphore::new(FETCHES_AT_ONCE));
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else { return };
                let link_rx = link_rx.clone();
                tokio::spawn(async move {
                    let out = carry(job.paths, &job.staging, job.deadline, link_rx).await;
                    let _ = job.reply.send(out);
                    drop(permit);
                });
            }
        });
        Arc::new(LinkSource { jobs, link, timeout })
    }

    /// The service's connection is up: fetches go over it from now on.
    pub fn connect(&self, link: Arc<LinkHandle>) {
        self.link.send_replace(Some(link));
    }
}

/// One fetch, tried until it gets an answer or its deadline passes.
async fn carry(
    paths: Vec<RelPath>,
    staging: &Path,
    deadline: Instant,
    mut link: watch::Receiver<Option<Arc<LinkHandle>>>,
) -> Result<SourceReport, String> {
    let mut last = String::from("the service's connection is not up yet");
    loop {
        let current = link.borrow_and_update().clone();
        if let Some(l) = current {
            match l.fetch(paths.clone(), staging).await {
                Ok(r) => {
                    return Ok(SourceReport {
                        written: r.written,
                        missing: r.missing,
                        refused: r.refused,
                        withdrawn: r.withdrawn,
                    })
                }
                // Not worth waiting for: a broker that cannot fetch, or a request it refuses for good.
                Err(e @ crate::fetch::FetchError::NotSupported(_)) => return Err(cs_supervision::error_chain(&e)),
                Err(e) => last = cs_supervision::error_chain(&e),
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!("no answer from the project in time: {last}"));
        }
        let wait = FETCH_RETRY.min(deadline - now);
        let _ = tokio::time::timeout(wait, link.changed()).await;
    }
}

impl Source for LinkSource {
    fn fetch(&self, paths: &[RelPath], staging: &Path) -> Result<SourceReport, String> {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let job = FetchJob {
            paths: paths.to_vec(),
            staging: staging.to_owned(),
            deadline: Instant::now() + self.timeout,
            reply,
        };
        self.jobs.blocking_send(job).map_err(|_| "the compute service is stopping".to_string())?;
        answer.recv().map_err(|_| "the compute service is stopping".to_string())?
    }
}
