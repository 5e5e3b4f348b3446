//! Fetches (`ClientMsg::Fetch`): P's current content of named paths, packed
//! on a thread of their own beside the round (never behind a step, never
//! under the client's lock: they read the home and nothing of the round),
//! streamed on the client's stream id, answered after the stream's end.
//!
//! Bounds: [`MAX_FETCH_PATHS`] paths per request, [`MAX_FETCHES_IN_FLIGHT`]
//! per session, [`cs_engine::project::MAX_FETCH_ENTRIES`] entries per
//! stream, and the broker's tar slots (`max_concurrent_tar`) shared with
//! the rounds. Over a bound: an error answer with the reason, for that
//! fetch only.

use std::sync::atomic::Ordering;

use actix::prelude::*;
use cs_engine::EngineError;
use cs_protocol::RelPath;
use cs_supervision::ExitStatus;
use cs_wire::{ErrorCode, ServerMsg, FETCH_STREAM_BIT, MAX_FETCHES_IN_FLIGHT, MAX_FETCH_PATHS};

use super::engine::on_own_thread;
use super::io::Outgoing;
use super::Session;
use crate::bridge::{SlotWriter, TarWork};

impl Session {
    /// Refuses fetch `id`: answered, counted, the session and its round go on.
    fn refuse_fetch(&mut self, ctx: &mut Context<Self>, id: u64, code: ErrorCode, message: String) {
        self.stats.fetch.refused += 1;
        self.error(ctx, id, code, format!("fetch refused: {message}"));
    }

    pub(super) fn fetch(&mut self, ctx: &mut Context<Self>, id: u64, paths: Vec<RelPath>, stream: u32) {
        if self.closing {
            return;
        }
        if stream & FETCH_STREAM_BIT == 0 {
            let message = format!("stream id {stream:#x}: a fetch's stream id has bit 31 set (round streams never do)");
            return self.refuse_fetch(ctx, id, ErrorCode::BadRequest, message);
        }
        if paths.len() > MAX_FETCH_PATHS {
            let message = format!("{} paths, at most {MAX_FETCH_PATHS} per fetch", paths.len());
            return self.refuse_fetch(ctx, id, ErrorCode::TooLarge, message);
        }
        if self.fetches.len() >= MAX_FETCHES_IN_FLIGHT {
            let message = format!(
                "{} fetches in flight, at most {MAX_FETCHES_IN_FLIGHT} per connection: wait for an answer",
                self.fetches.len()
            );
            return self.refuse_fetch(ctx, id, ErrorCode::Busy, message);
        }
        if self.fetches.contains(&stream) || self.snapshots.contains(&stream) {
            let message = format!("stream {stream:#x} is already in use by a request in flight");
            return self.refuse_fetch(ctx, id, ErrorCode::BadRequest, message);
        }
        let Some(out) = self.out.clone() else { return };
        let (tx, rx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
        if out.try_send(Outgoing::Stream { stream, rx }).is_err() {
            self.end(ctx, ExitStatus::Failure("the client does not read its answers".into()));
            return;
        }
        self.fetches.insert(stream);
        self.hold.insert(id, stream);
        self.stats.fetch.paths_asked += paths.len() as u64;
        let work = TarWork::new(
            self.shared.tar.clone(),
            self.fetch_cancel.clone(),
            self.heartbeat.clone(),
            self.activity.clone(),
        )
        .with_silence_limit(self.shared.idle_timeout);
        let max_chunk = self.shared.limits.max_chunk_bytes;
        let project = self.shared.project.clone();
        let calls = self.shared.engine_calls.clone();
        // Without the client's lock: the round's steps go on meanwhile.
        let fut = async move {
            on_own_thread(&calls, "cs-broker-fetch", move || {
                let mut writer = SlotWriter::with_hook(tx, max_chunk, work);
                match writer.start() {
                    Err(e) => {
                        let _ = writer.abort(&e.to_string());
                        Err(EngineError::Stream { peer: "client", source: e })
                    }
                    Ok(()) => match project.fetch_paths(&paths, writer) {
                        Ok((writer, report, stats)) => match writer.finish() {
                            Ok(()) => Ok((report, stats)),
                            Err(source) => Err(EngineError::Stream { peer: "client", source }),
                        },
                        Err(e) => Err(e),
                    },
                }
            })
            .await
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.fetches.remove(&stream);
            act.activity.touch();
            match res {
                Ok(Ok((report, stats))) => {
                    act.stats.fetch.served(&report, stats.compressed_bytes);
                    act.reply(ctx, id, ServerMsg::FetchFollows { stream, report });
                }
                Ok(Err(e)) => {
                    act.stats.fetch.failed += 1;
                    let cancelled = act.fetch_cancel.load(Ordering::Relaxed);
                    let code = if cancelled { ErrorCode::Internal } else { super::engine::code_of(&e) };
                    act.error(ctx, id, code, format!("fetch: {}", cs_supervision::error_chain(&e)));
                }
                Err(e) => {
                    act.stats.fetch.failed += 1;
                    tracing::error!(client = %act.client, "fetch failed: {e}");
                    act.error(ctx, id, ErrorCode::Internal, format!("internal error: {e}"));
                }
            }
        }));
    }
}
