//! The replica of the project (issue 12), the compute service's part: the
//! lower layer is a placeholder tree of P's snapshot (`cs-replica`), and a
//! placeholder's content comes over the service's own connection on its
//! first open. This module connects the two: it has the tree at start
//! ([`start_tree`]: the previous one resumed, or a snapshot), and it is the fill
//! service's [`Source`] ([`LinkSource`]),
//! turning each fill into a fetch (docs/protocol.md, *Fetch*).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cs_protocol::{Cursor, RelPath, SnapshotReport};
use cs_replica::{Kept, SnapshotWriter, Source, SourceReport, Tree};
use cs_wire::{ClientMsg, ErrorCode, ServerMsg};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::connection::{Connection, ConnectionConfig, Disconnect, LinkHandle};
use crate::round::Link;

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
    #[error("asking where the project's journal is: {0}")]
    JournalAt(String),
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

/// The tree a start goes on with.
#[derive(Debug)]
pub enum StartTree {
    /// P's snapshot, taken now: the new current tree, and what it kept of the previous
    /// tree's fetched content.
    Snapshot { tree: Tree, report: SnapshotReport, kept: Kept, why: &'static str },
    /// The previous tree, as it is: P's journal continues its cursor, so the rounds bring
    /// every change since (the upper layer holds what they brought before).
    Resumed(Tree),
}

/// Over a connection of its own (the service's starts later, with the union): resumes
/// the replica's previous tree when P's journal continues it, else takes P's snapshot
/// and writes it as the new current tree. `committed`: the client's committed cursor
/// ([`cs_engine::committed_cursor`]); `fresh`: a snapshot whatever the previous tree.
///
/// The previous tree is resumed only if the client has committed a round and P's
/// journal epoch is the one of both that cursor and the tree's: then every change P made
/// since the tree's snapshot either came through a round (it is in the upper layer) or
/// is after the client's cursor (the next round brings it, deletions included: P keeps
/// the tombstones after a client's cursor). A new epoch (P lost its journal) leaves the
/// client's cursor unknown, and a round would then bring nothing: only a snapshot shows
/// P's current state.
pub async fn start_tree(
    conn: ConnectionConfig,
    replica_root: &Path,
    owner: Option<(u32, u32)>,
    committed: Option<Cursor>,
    fresh: bool,
) -> Result<StartTree, ReplicaError> {
    let actor = Connection::new(conn);
    let link = actor.link();
    let addr = cs_supervision::spawn(actor);
    let out = match connected(&addr).await {
        Ok(()) => resume_or_snapshot(&link, replica_root, owner, committed, fresh).await,
        Err(e) => Err(e),
    };
    let _ = addr.send(Disconnect).await;
    out
}

async fn resume_or_snapshot(
    link: &LinkHandle,
    replica_root: &Path,
    owner: Option<(u32, u32)>,
    committed: Option<Cursor>,
    fresh: bool,
) -> Result<StartTree, ReplicaError> {
    let previous = Tree::current(replica_root).map_err(ReplicaError::Tree)?;
    let why = match (previous, committed) {
        _ if fresh => "a new snapshot was asked for",
        (None, _) => "no previous tree",
        (Some(_), None) => "no round committed yet",
        (Some(tree), Some(committed)) => match journal_at(link).await? {
            Some(at) if at.epoch == tree.cursor.epoch && at.epoch == committed.epoch => {
                return Ok(StartTree::Resumed(tree))
            }
            Some(_) => "the project's journal is not the one the previous tree was taken from",
            None => "the broker cannot say where its journal is (an older broker)",
        },
    };
    let (tree, report, kept) = snapshot_into(link, replica_root, owner).await?;
    Ok(StartTree::Snapshot { tree, report, kept, why })
}

/// P's journal position (`ClientMsg::JournalAt`); `None`: the broker does not know the
/// request (an older broker).
async fn journal_at(link: &LinkHandle) -> Result<Option<Cursor>, ReplicaError> {
    match link.request(ClientMsg::JournalAt).await {
        Ok(ServerMsg::JournalAt { cursor }) => Ok(Some(cursor)),
        Ok(ServerMsg::Error { code: ErrorCode::BadRequest, .. }) => Ok(None),
        Ok(ServerMsg::Error { code, message }) => Err(ReplicaError::JournalAt(format!("{code}: {message}"))),
        Ok(other) => Err(ReplicaError::JournalAt(format!("unexpected answer {other:?}"))),
        Err(e) => Err(ReplicaError::NotConnected(cs_supervision::error_chain(&e))),
    }
}

/// Takes P's snapshot over `link` and writes it as the replica's new current tree; also
/// what it kept of the previous tree's fetched content.
async fn snapshot_into(
    link: &LinkHandle,
    replica_root: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(Tree, SnapshotReport, Kept), ReplicaError> {
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
