//! The round coordinator: owns the state machine (see `machine`), turns its
//! actions into work (start a round, arm a retry timer, answer waiters), and
//! keeps the round statistics `cs-actor status` shows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use cs_supervision::heartbeat::BusyGuard;
use cs_supervision::{Heartbeat, Observable};
use futures_util::StreamExt as _;
use serde::Serialize;
use tokio::sync::{oneshot, watch};

use crate::failure::Failure;
use crate::machine::{transition, Action, Backoff, Event, PauseBy, Phase, Step, Trigger};
use crate::packer::Packer;
use crate::pause::{self, OperatorPause, PauseFileError};
use crate::round::{self, Link, RoundSummary};
use crate::watcher::{ChangeCount, OwnRemovals};

#[derive(Debug, Clone, Serialize)]
pub struct CoordinatorState {
    /// idle, running, backoff, paused or stopped (a permanent failure: see `stopped`).
    pub phase: &'static str,
    /// The step of the round in flight.
    pub step: Option<Step>,
    pub step_number: Option<u8>,
    /// The round in flight, or the last one started.
    pub round: u64,
    pub running_for_ms: Option<u64>,
    pub rounds_committed: u64,
    pub rounds_failed: u64,
    /// Failed attempts of the current round so far.
    pub retries: u32,
    pub next_retry_in_ms: Option<u64>,
    /// Phase `paused`: every reason holding (the operator's, the safety rail's).
    pub paused_reason: Option<String>,
    /// `cs-actor pause`, until `cs-actor resume` (it survives restarts): the reason and
    /// since when. Set as soon as asked, while a round in flight finishes.
    pub operator_pause: Option<OperatorPause>,
    /// Why rounds stopped being retried, and what to do (phase `stopped`).
    pub stopped: Option<StoppedView>,
    pub last_error: Option<String>,
    pub last_committed: Option<RoundSummary>,
    pub conflicts_total: u64,
    pub interval_ms: u64,
    pub heartbeat_beats: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StoppedView {
    pub reason: String,
    pub what_to_do: Option<String>,
    pub since_unix_ms: u64,
}

/// The answer to a `sync --wait` caller: the round that committed, or why not.
pub type WaitResult = Result<u64, Failure>;

pub struct Coordinator {
    phase: Phase,
    last_round: u64,
    backoff: Backoff,
    interval: Duration,
    packer: Addr<Packer>,
    link: Arc<dyn Link>,
    waiters: Vec<(u64, oneshot::Sender<WaitResult>)>,
    round_started: Option<Instant>,
    /// When the phase became `Stopped` (unix ms).
    stopped_since: Option<u64>,
    retry_at: Option<Instant>,
    stats: Stats,
    heartbeat: Heartbeat,
    /// Held while a round runs: the watchdog's "busy".
    busy: Option<BusyGuard>,
    /// The safety rail, pushed by the mount supervisor (see `with_rail`).
    rail: Option<watch::Receiver<Option<String>>>,
    /// The operator's pause and the file that keeps it (see `with_operator_pause`).
    operator_pause: Option<OperatorPause>,
    pause_file: Option<std::path::PathBuf>,
    /// Upper-layer change events: a round starting takes those seen so far.
    changes: Option<ChangeCount>,
    /// What a round is about to remove from the upper layer, for the watcher.
    removals: Option<OwnRemovals>,
    /// Round outcomes for `/metrics`, recorded where `stats` counts them.
    metrics: Option<Arc<cs_metrics::ComputeMetrics>>,
    /// The broker's pushes of project changes (following), taken at start.
    project_changes: Option<futures_util::stream::BoxStream<'static, ()>>,
    link_ups: Option<futures_util::stream::BoxStream<'static, ()>>,
    /// The journal epoch of the replica's tree, when the lower is the project's replica
    /// (see `with_lower_epoch`), and whether a round has warned that P's is another.
    lower_epoch: Option<u64>,
    warned_epoch: bool,
}

#[derive(Default)]
struct Stats {
    committed: u64,
    failed: u64,
    conflicts: u64,
    last_error: Option<String>,
    last_committed: Option<RoundSummary>,
}

impl Coordinator {
    /// `heartbeat` is the round's: busy while a round runs, beaten at each
    /// step (and by the packer as it streams).
    pub fn new(
        packer: Addr<Packer>,
        link: Arc<dyn Link>,
        interval: Duration,
        backoff: Backoff,
        heartbeat: Heartbeat,
    ) -> Self {
        Coordinator {
            phase: Phase::Idle,
            last_round: 0,
            backoff,
            interval,
            packer,
            link,
            waiters: Vec::new(),
            round_started: None,
            stopped_since: None,
            retry_at: None,
            stats: Stats::default(),
            heartbeat,
            busy: None,
            rail: None,
            operator_pause: None,
            pause_file: None,
            changes: None,
            removals: None,
            metrics: None,
            project_changes: None,
            link_ups: None,
            lower_epoch: None,
            warned_epoch: false,
        }
    }

    /// The lower is the project's replica, a snapshot of P's journal epoch `epoch`. A round
    /// that commits in another epoch (P lost its journal while this service ran) cannot
    /// bring P's changes to files no round brought: logged once, with the remedy.
    pub fn with_lower_epoch(mut self, epoch: u64) -> Self {
        self.lower_epoch = Some(epoch);
        self
    }

    /// Keeps the operator's pause in `file` (`pause::load` read it at start-up: `current`).
    pub fn with_operator_pause(mut self, file: std::path::PathBuf, current: Option<OperatorPause>) -> Self {
        self.pause_file = Some(file);
        self.operator_pause = current;
        self
    }

    /// Marks the watcher's events as taken each time a round starts (its scan sees them).
    pub fn with_change_count(mut self, changes: ChangeCount) -> Self {
        self.changes = Some(changes);
        self
    }

    /// Tells the watcher what each round is about to remove from the upper layer (its events
    /// are the round's, not a user's change).
    pub fn with_own_removals(mut self, removals: OwnRemovals) -> Self {
        self.removals = Some(removals);
        self
    }

    /// Ends a backoff at each connection made (`LinkHandle::link_ups`): the round that
    /// failed while the link was down is tried as soon as it is up.
    pub fn with_link_ups(mut self, ups: impl Stream<Item = ()> + Send + 'static) -> Self {
        self.link_ups = Some(Box::pin(ups));
        self
    }

    /// Starts a round at each push of the broker's (`LinkHandle::project_changes`): the
    /// project changed between rounds.
    pub fn with_project_changes(mut self, pushes: impl Stream<Item = ()> + Send + 'static) -> Self {
        self.project_changes = Some(Box::pin(pushes));
        self
    }

    /// Records each round's outcome on `metrics` too.
    pub fn with_metrics(mut self, metrics: Arc<cs_metrics::ComputeMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Follows the mount supervisor's safety rail: every change is applied
    /// as it is published (`SetRail`), none is polled for.
    pub fn with_rail(mut self, rail: watch::Receiver<Option<String>>) -> Self {
        self.rail = Some(rail);
        self
    }

    /// The heartbeat the watchdog reads: busy while a round runs, a beat
    /// per step.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    fn apply(&mut self, event: Event, ctx: &mut Context<Self>) {
        let (phase, actions) = transition(&self.phase, event, self.last_round, &self.backoff);
        match (&self.phase, &phase) {
            (Phase::Stopped { .. }, Phase::Stopped { .. }) => {}
            (_, Phase::Stopped { failure }) => {
                self.stopped_since = Some(unix_ms());
                tracing::error!(
                    error = %failure.message,
                    what_to_do = failure.what_to_do.as_deref().unwrap_or(""),
                    "round failed for a reason retrying cannot fix: rounds stop until `cs-actor sync` or a restart"
                );
            }
            _ => {}
        }
        if !matches!(phase, Phase::Stopped { .. }) {
            self.stopped_since = None;
        }
        self.phase = phase;
        for action in actions {
            match action {
                Action::StartRound { round } => self.start_round(round, ctx),
                Action::ScheduleRetry(delay) => {
                    // Jitter, so that clients cut off together do not come back together.
                    let delay = cs_supervision::backoff::spread(delay);
                    self.retry_at = Some(Instant::now() + delay);
                    ctx.run_later(delay, |act, ctx| act.apply(Event::BackoffElapsed, ctx));
                }
                Action::Finished { round, result } => {
                    let waiters = std::mem::take(&mut self.waiters);
                    for (min_round, tx) in waiters {
                        if min_round <= round {
                            let _ = tx.send(result.clone().map(|()| round));
                        } else {
                            self.waiters.push((min_round, tx));
                        }
                    }
                }
                Action::RefuseWaiters(reason) => {
                    for (_, tx) in self.waiters.drain(..) {
                        let _ = tx.send(Err(reason.clone()));
                    }
                }
                // The round's code walks `Step::ALL`: this is a bug, not a condition to handle.
                Action::StepRefused(e) => tracing::error!("round step refused: {e}"),
            }
        }
    }

    /// The round committed in another journal epoch than the replica's tree: said once.
    fn warn_if_lower_left_behind(&mut self, summary: &RoundSummary) {
        let Some(tree) = self.lower_epoch else {
            return;
        };
        if summary.in_epoch(tree) == Some(false) && !self.warned_epoch {
            self.warned_epoch = true;
            tracing::warn!(
                tree_epoch = tree,
                project_epoch = summary.cursor.map(|c| c.epoch),
                "the project's journal started over since the replica's snapshot (the broker lost its state): \
                 the view misses the project's changes to files no round brought; restart the compute service \
                 to take a new snapshot (`replica.journal_continues` is false in status until then)"
            );
        }
    }

    fn start_round(&mut self, round: u64, ctx: &mut Context<Self>) {
        self.last_round = round;
        self.round_started = Some(Instant::now());
        self.retry_at = None;
        self.busy = Some(self.heartbeat.busy());
        if let Some(c) = &self.changes {
            c.take();
        }
        let packer = self.packer.clone();
        let link = self.link.clone();
        let me = ctx.address();
        let hb = self.heartbeat.clone();
        let removals = self.removals.clone();
        let fut = async move {
            let progress = move |s: Step| {
                hb.beat();
                // `do_send` on purpose: at most one message per step (a
                // handful per round) to the coordinator itself, so the
                // bound holds by construction, and the machine must see
                // every step (`try_send` could drop one).
                me.do_send(StepStarted(s));
            };
            round::run(round, &packer, link.as_ref(), &progress, removals.as_ref()).await
        };
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.round_started = None;
            act.busy = None;
            match result {
                Ok(summary) => {
                    act.stats.committed += 1;
                    act.stats.conflicts += summary.conflicts.len() as u64;
                    if let Some(m) = &act.metrics {
                        record_committed(m, &summary);
                    }
                    tracing::info!(
                        round = summary.round,
                        ms = summary.duration_ms,
                        conflicts = summary.conflicts.len(),
                        "round committed"
                    );
                    act.warn_if_lower_left_behind(&summary);
                    act.stats.last_committed = Some(summary);
                    act.apply(Event::Committed, ctx);
                }
                Err(e) => {
                    act.stats.failed += 1;
                    let failure = Failure::of(&e);
                    if let Some(m) = &act.metrics {
                        m.round_failed(failure.class.name(), crate::failure::kind(&e));
                    }
                    if !failure.is_permanent() {
                        tracing::warn!(error = %failure.message, "round failed; it will be retried");
                    }
                    act.stats.last_error = Some(failure.message.clone());
                    act.apply(Event::Failed(failure), ctx);
                }
            }
        }));
    }
}

/// A committed round's duration, steps and conflicts, as metrics.
fn record_committed(metrics: &cs_metrics::ComputeMetrics, summary: &RoundSummary) {
    let steps = summary.steps.iter().map(|s| cs_metrics::StepRecord {
        step: s.step.name(),
        direction: direction(s.step),
        seconds: s.ms as f64 / 1000.0,
        entries: s.entries,
        bytes: s.bytes,
    });
    metrics.round_committed(summary.duration_ms as f64 / 1000.0, steps, summary.conflicts.len() as u64);
}

/// Which way a step carries entries (the metrics' `direction` label).
fn direction(step: Step) -> Option<&'static str> {
    match step {
        Step::DeletesToProject | Step::WritesToProject => Some("to_project"),
        Step::DeletesToCompute | Step::WritesToCompute => Some("to_compute"),
        Step::Resolve | Step::Hello | Step::Commit => None,
    }
}

impl Actor for Coordinator {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        if let Some(rail) = self.rail.take() {
            ctx.add_stream(rail_changes(rail));
        }
        if let Some(pushes) = self.project_changes.take() {
            ctx.add_stream(pushes.map(|()| ProjectChanged));
        }
        if let Some(ups) = self.link_ups.take() {
            ctx.add_stream(ups.map(|()| LinkUp));
        }
        // Paused before the restart: stay paused, before any round starts.
        if let Some(p) = self.operator_pause.clone() {
            tracing::warn!(
                reason = p.reason.as_deref().unwrap_or(""),
                "syncing paused by the operator (`cs-actor resume` resumes)"
            );
            self.apply(Event::Pause { by: PauseBy::Operator, reason: p.reason.unwrap_or_default() }, ctx);
        }
        ctx.run_interval(self.interval, |act, ctx| act.apply(Event::Trigger(Trigger::Timer), ctx));
        // A first round at start-up: catch up with what happened while down.
        self.apply(Event::Trigger(Trigger::Timer), ctx);
    }
}

/// Start a round (or mark one to follow the round in flight).
#[derive(Message)]
#[rtype(result = "()")]
pub struct TriggerRound(pub Trigger);
impl Handler<TriggerRound> for Coordinator {
    type Result = ();
    fn handle(&mut self, m: TriggerRound, ctx: &mut Self::Context) {
        self.apply(Event::Trigger(m.0), ctx);
    }
}

/// `cs-actor sync [--wait]`: a round that starts after this request; with
/// `wait`, the answer comes when it committed (Ok(round)) or failed.
#[derive(Message)]
#[rtype(result = "WaitResult")]
pub struct SyncNow {
    pub wait: bool,
}
impl Handler<SyncNow> for Coordinator {
    type Result = ResponseFuture<WaitResult>;
    fn handle(&mut self, m: SyncNow, ctx: &mut Self::Context) -> Self::Result {
        let want = self.last_round + 1;
        let rx = if m.wait {
            let (tx, rx) = oneshot::channel();
            self.waiters.push((want, tx));
            Some(rx)
        } else {
            None
        };
        self.apply(Event::Trigger(Trigger::OnDemand), ctx);
        Box::pin(async move {
            match rx {
                None => Ok(want),
                Some(rx) => rx.await.unwrap_or_else(|_| Err(Failure::transient("the service is shutting down"))),
            }
        })
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct StepStarted(Step);
impl Handler<StepStarted> for Coordinator {
    type Result = ();
    fn handle(&mut self, m: StepStarted, ctx: &mut Self::Context) {
        self.apply(Event::StepStarted(m.0), ctx);
    }
}

/// The rail's value now, then each change, until the mount supervisor is gone.
fn rail_changes(rail: watch::Receiver<Option<String>>) -> impl Stream<Item = SetRail> {
    futures_util::stream::unfold((rail, true), |(mut rail, first)| async move {
        if !first && rail.changed().await.is_err() {
            return None;
        }
        let now = rail.borrow_and_update().clone();
        Some((SetRail(now), (rail, false)))
    })
}

impl StreamHandler<SetRail> for Coordinator {
    fn handle(&mut self, m: SetRail, ctx: &mut Self::Context) {
        self.set_rail(m, ctx);
    }

    /// The mount supervisor stopped (shutdown): keep the last rail.
    fn finished(&mut self, _: &mut Self::Context) {}
}

/// The connection to the broker is up: a backoff ends.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp;

impl StreamHandler<LinkUp> for Coordinator {
    fn handle(&mut self, _: LinkUp, ctx: &mut Self::Context) {
        if matches!(self.phase, Phase::Backoff { .. }) {
            tracing::info!("connected: the round in backoff is tried now");
        }
        self.apply(Event::LinkUp, ctx);
    }

    /// The stream never ends; if it did, backoffs would only end by their timer.
    fn finished(&mut self, _: &mut Self::Context) {}
}

/// The broker pushed `ProjectChanged`: a round brings the change.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ProjectChanged;

impl StreamHandler<ProjectChanged> for Coordinator {
    fn handle(&mut self, _: ProjectChanged, ctx: &mut Self::Context) {
        tracing::debug!("the broker says the project changed: a round");
        self.apply(Event::Trigger(Trigger::ProjectChanged), ctx);
    }

    /// Never ends while the connection actor's state lives; nothing to do if it does.
    fn finished(&mut self, _: &mut Self::Context) {}
}

/// The safety rail: the mount supervisor says whether rounds may run.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetRail(pub Option<String>);
impl Handler<SetRail> for Coordinator {
    type Result = ();
    fn handle(&mut self, m: SetRail, ctx: &mut Self::Context) {
        self.set_rail(m, ctx);
    }
}

impl Coordinator {
    fn set_rail(&mut self, m: SetRail, ctx: &mut Context<Self>) {
        let held = self.phase.pauses().holds(PauseBy::Rail);
        match m.0 {
            Some(reason) => {
                if !held {
                    tracing::warn!(reason = %reason, "safety rail up: syncing paused");
                }
                self.apply(Event::Pause { by: PauseBy::Rail, reason }, ctx)
            }
            None if held => {
                tracing::info!("safety rail down: syncing resumes");
                self.apply(Event::Resume(PauseBy::Rail), ctx)
            }
            None => {}
        }
    }
}

/// `cs-actor pause [--reason TEXT]`: no round starts until `ResumeSyncing` (a round in
/// flight finishes). Persisted first: an error leaves nothing changed. Pausing again keeps
/// the first `since` and takes the new reason.
#[derive(Message)]
#[rtype(result = "Result<OperatorPause, PauseFileError>")]
pub struct PauseSyncing {
    pub reason: Option<String>,
}
impl Handler<PauseSyncing> for Coordinator {
    type Result = Result<OperatorPause, PauseFileError>;
    fn handle(&mut self, m: PauseSyncing, ctx: &mut Self::Context) -> Self::Result {
        let since_unix_ms = self.operator_pause.as_ref().map_or_else(unix_ms, |p| p.since_unix_ms);
        let p = OperatorPause { reason: m.reason.filter(|r| !r.is_empty()), since_unix_ms };
        if let Some(file) = &self.pause_file {
            pause::save(file, &p)?;
        }
        tracing::warn!(reason = p.reason.as_deref().unwrap_or(""), "syncing paused by the operator");
        self.operator_pause = Some(p.clone());
        self.apply(Event::Pause { by: PauseBy::Operator, reason: p.reason.clone().unwrap_or_default() }, ctx);
        Ok(p)
    }
}

/// `cs-actor resume`: lifts the operator's pause (not the safety rail's); answers whether
/// there was one.
#[derive(Message)]
#[rtype(result = "Result<bool, PauseFileError>")]
pub struct ResumeSyncing;
impl Handler<ResumeSyncing> for Coordinator {
    type Result = Result<bool, PauseFileError>;
    fn handle(&mut self, _: ResumeSyncing, ctx: &mut Self::Context) -> Self::Result {
        if let Some(file) = &self.pause_file {
            pause::clear(file)?;
        }
        let was = self.operator_pause.take().is_some();
        if was {
            tracing::info!("the operator resumed syncing");
        }
        self.apply(Event::Resume(PauseBy::Operator), ctx);
        Ok(was)
    }
}

impl Observable for Coordinator {
    type State = CoordinatorState;
    fn observe(&self) -> CoordinatorState {
        let (phase, step, retries, paused_reason) = match &self.phase {
            Phase::Idle => ("idle", None, 0, None),
            Phase::Running { step, attempt, .. } => ("running", Some(*step), *attempt, None),
            Phase::Backoff { attempt, .. } => ("backoff", None, *attempt, None),
            Phase::Paused { pauses } => ("paused", None, 0, Some(pauses.describe())),
            Phase::Stopped { .. } => ("stopped", None, 0, None),
        };
        let stopped = match &self.phase {
            Phase::Stopped { failure } => Some(StoppedView {
                reason: failure.message.clone(),
                what_to_do: failure.what_to_do.clone(),
                since_unix_ms: self.stopped_since.unwrap_or(0),
            }),
            _ => None,
        };
        CoordinatorState {
            phase,
            step,
            step_number: step.map(Step::number),
            round: self.last_round,
            running_for_ms: self.round_started.map(|t| t.elapsed().as_millis() as u64),
            rounds_committed: self.stats.committed,
            rounds_failed: self.stats.failed,
            retries,
            next_retry_in_ms: self
                .retry_at
                .filter(|_| phase == "backoff")
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            paused_reason,
            operator_pause: self.operator_pause.clone(),
            stopped,
            last_error: self.stats.last_error.clone(),
            last_committed: self.stats.last_committed.clone(),
            conflicts_total: self.stats.conflicts,
            interval_ms: self.interval.as_millis() as u64,
            heartbeat_beats: self.heartbeat.beats(),
        }
    }
}

/// This machine's wall clock, in ms since the epoch, for status (never compared with P's).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

cs_supervision::observable!(Coordinator);
