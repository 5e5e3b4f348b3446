//! Snapshots (`ClientMsg::Snapshot`): P's metadata of the whole project,
//! walked on a thread of its own beside the round as fetches are (never
//! behind a step, never under the client's lock: it reads the home and the
//! journal's cursor, nothing of the round), encoded as a snapshot stream
//! ([`cs_wire::snapshot`]) on the client's stream id, answered after the
//! stream's end with the cursor taken before the walk.
//!
//! Bounds: [`MAX_SNAPSHOTS_IN_FLIGHT`] per session (apart from the fetches'
//! bound), the stream codec's entry and record bounds, and the broker's tar
//! slots (`max_concurrent_tar`) shared with the rounds and the fetches: a
//! snapshot holds one only while it works, never while the client is slow
//! to read. Over a bound: an error answer with the reason, for that
//! snapshot only.

use std::sync::atomic::Ordering;

use actix::prelude::*;
use cs_engine::EngineError;
use cs_supervision::ExitStatus;
use cs_wire::{ErrorCode, ServerMsg, SnapshotEncoder, FETCH_STREAM_BIT, MAX_SNAPSHOTS_IN_FLIGHT};

use super::engine::on_own_thread;
use super::io::Outgoing;
use super::Session;
use crate::bridge::{SlotWriter, TarWork};

impl Session {
    /// Refuses snapshot `id`: answered, counted, the session and its round go on.
    fn refuse_snapshot(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        self.stats.snapshot.refused += 1;
        self.error(ctx, id, code, format!("snapshot refused: {message}"));
    }

    pub(super) fn snapshot_request(&mut self, ctx: &mut Context<Self>, id: u64, stream: u32) {
        if self.closing {
            return;
        }
        if stream & FETCH_STREAM_BIT == 0 {
            let message =
                format!("stream id {stream:#x}: a snapshot's stream id has bit 31 set (round streams never do)");
            return self.refuse_snapshot(ctx, id, ErrorCode::BadRequest, message);
        }
        if self.snapshots.len() >= MAX_SNAPSHOTS_IN_FLIGHT {
            let message = format!(
                "{} snapshot in flight, at most {MAX_SNAPSHOTS_IN_FLIGHT} per connection: wait for its answer",
                self.snapshots.len()
            );
            return self.refuse_snapshot(ctx, id, ErrorCode::Busy, message);
        }
        if self.fetches.contains(&stream) || self.snapshots.contains(&stream) {
            let message = format!("stream {stream:#x} is already in use by a request in flight");
            return self.refuse_snapshot(ctx, id, ErrorCode::BadRequest, message);
        }
        let Some(out) = self.out.clone() else { return };
        let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
        if out.try_send(Outgoing::Stream { stream, rx }).is_err() {
            self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
            return;
        }
        self.snapshots.insert(stream);
        self.hold.insert(id, stream);
        let work = TarWork::new(
            self.shared.tar.clone(),
            self.fetch_cancel.clone(),
            self.heartbeat.clone(),
            self.activity.clone(),
        )
        .with_silence_limit(self.shared.idle_timeout);
        let max_chunk = self.shared.limits.max_chunk_bytes;
        let project = self.shared.project.clone();
        let level = project.config().zstd_level;
        let calls = self.shared.engine_calls.clone();
        let client = self.client.clone();
        // Without the client's lock: the round's steps go on meanwhile.
        let fut = async move {
            on_own_thread(&calls, "cs-broker-snapshot", move || walk(&project, &client, tx, max_chunk, work, level))
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.snapshots.remove(&stream);
            act.activity.touch();
            match res {
                Ok(Ok((report, bytes))) => {
                    act.stats.snapshot.served += 1;
                    act.stats.snapshot.entries_sent += report.entries;
                    act.stats.snapshot.bytes_sent += bytes;
                    act.stats.snapshot.paths_refused += report.refused_count;
                    act.reply(ctx, id, ServerMsg::SnapshotFollows { stream, report });
                }
                Ok(Err(e)) => {
                    act.stats.snapshot.failed += 1;
                    let cancelled = act.fetch_cancel.load(Ordering::Relaxed);
                    let code = if cancelled { ErrorCode::Internal } else { super::engine::code_of(&e) };
                    act.error(ctx, id, code, format!("snapshot: {}", cs_supervision::error_chain(&e)));
                }
                Err(e) => {
                    act.stats.snapshot.failed += 1;
                    tracing::error!(client = %act.client, "snapshot failed: {e}");
                    act.error(ctx, id, ErrorCode::Internal, format!("internal error: {e}"));
                }
            }
        }));
    }

    /// `ClientMsg::JournalAt`: P's journal position, read on a thread of its own (a
    /// refresh under way holds the journal's lock) and answered beside the round.
    pub(super) fn journal_at(&mut self, ctx: &mut Context<Self>, id: u64) {
        let project = self.shared.project.clone();
        let calls = self.shared.engine_calls.clone();
        let fut = async move { on_own_thread(&calls, "cs-broker-cursor", move || project.journal_cursor()).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| match res {
            Ok(cursor) => act.reply(ctx, id, ServerMsg::JournalAt { cursor }),
            Err(e) => act.error(ctx, id, ErrorCode::Internal, format!("internal error: {e}")),
        }));
    }
}

/// The walk into the stream: the report and the stream's compressed bytes.
/// Any failure aborts the stream (its end frame says so).
fn walk(
    project: &cs_engine::ProjectSide,
    client: &cs_protocol::ClientId,
    tx: tokio::sync::mpsc::Sender<cs_wire::StreamItem>,
    max_chunk: usize,
    work: TarWork,
    level: i32,
) -> Result<(cs_protocol::SnapshotReport, u64), EngineError> {
    let stream_err =
        |e: cs_wire::SnapshotStreamError| EngineError::Stream { peer: "client", source: std::io::Error::other(e) };
    let mut writer = SlotWriter::with_hook(tx, max_chunk, work);
    if let Err(e) = writer.start() {
        let _ = writer.abort(&e.to_string());
        return Err(EngineError::Stream { peer: "client", source: e });
    }
    let mut enc = SnapshotEncoder::new(writer, level).map_err(stream_err)?;
    let report = project.snapshot(Some(client), &mut |e| enc.push(&e).map_err(stream_err))?;
    // Dropping the encoder unfinished (an error above) drops the writer,
    // which aborts the stream.
    let (writer, entries, bytes) = enc.finish().map_err(stream_err)?;
    debug_assert_eq!(entries, report.entries);
    writer.finish().map_err(|source| EngineError::Stream { peer: "client", source })?;
    Ok((report, bytes))
}
