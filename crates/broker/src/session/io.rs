//! The connection's I/O tasks: the reader routes control frames to the
//! actor and step 3's chunks to their stream slot; the writer sends what
//! the actor queues, and forwards step 4's stream.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use cs_protocol::ClientId;
use cs_wire::{ClientMsg, ErrorCode, Frame, ServerMsg, StreamEnd, StreamItem, WireError, WsReceiver, WsSender};
use tokio::sync::{mpsc, watch};

use super::{BadFrame, ConnectionLost, Inbound, Session, FLUSH_GRACE};
use crate::bridge::Activity;
use crate::BoxedIo;

/// The chunks of step-3 streams, routed by the reader task.
#[derive(Default)]
pub(super) struct Routes {
    open: HashMap<u32, mpsc::Sender<StreamItem>>,
    /// Streams whose consumer is gone (refused, failed or cancelled): their
    /// remaining frames are dropped without further complaint.
    discarding: HashSet<u32>,
    /// The session ended: no stream is opened or fed any more.
    closed: bool,
}

impl Routes {
    /// The session ended: no stream is opened or fed any more.
    pub(super) fn close(&mut self) {
        self.closed = true;
    }

    /// The consumer of stream `sid` is gone: unless its end frame came
    /// already, its remaining frames are dropped quietly.
    pub(super) fn discard(&mut self, sid: u32) {
        if self.open.remove(&sid).is_some() {
            self.discarding.insert(sid);
        }
    }

    /// Every open stream's consumer is gone (the step was cancelled).
    pub(super) fn discard_all(&mut self) {
        let ids: Vec<u32> = self.open.keys().copied().collect();
        for id in ids {
            self.discard(id);
        }
    }
}

pub(super) type SharedRoutes = Arc<Mutex<Routes>>;

pub(super) fn routes(r: &SharedRoutes) -> std::sync::MutexGuard<'_, Routes> {
    r.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the writer task sends.
pub(super) enum Outgoing {
    Frame(Frame<ServerMsg>),
    /// A stream of P's (step 4, a fetch): forwarded chunk by chunk up to its
    /// end, interleaved with the other streams and frames.
    Stream {
        stream: u32,
        rx: mpsc::Receiver<StreamItem>,
    },
    /// A frame that must follow the end of `stream` (the answer to the
    /// request whose stream it is): held while that stream is open.
    After {
        stream: u32,
        frame: Frame<ServerMsg>,
    },
}

/// Reads frames: control messages go to the actor (one at a time: the
/// bounded mailbox is the backpressure), chunks to their stream's channel
/// (a full channel stops the reading, and TCP's window stops the client).
pub(super) async fn read_loop(
    mut rx: WsReceiver<BoxedIo, ClientMsg>,
    addr: Addr<Session>,
    table: SharedRoutes,
    activity: Activity,
) {
    let reason = loop {
        let frame = match rx.recv().await {
            Ok(Some(f)) => f,
            Ok(None) => break None,
            Err(e) if !e.is_fatal() => {
                activity.touch();
                let bad = BadFrame { id: e.request_id(), code: e.error_code(), reason: e.to_string() };
                if addr.send(bad).await.is_err() {
                    return;
                }
                continue;
            }
            Err(WireError::Closed) => break None,
            Err(e) => break Some(e.to_string()),
        };
        activity.touch();
        if routes(&table).closed {
            // The session ended: feed no stream any more.
            return;
        }
        match frame {
            Frame::Control(env) => {
                let mut stream = None;
                if let ClientMsg::SendWrites { stream: sid } = env.body {
                    let opened = {
                        let mut r = routes(&table);
                        if r.open.contains_key(&sid) {
                            None
                        } else {
                            let (tx, srx) = cs_wire::stream_channel(cs_wire::DEFAULT_STREAM_CHANNEL);
                            r.discarding.remove(&sid);
                            r.open.insert(sid, tx);
                            Some(srx)
                        }
                    };
                    if opened.is_none() {
                        let bad = BadFrame {
                            id: Some(env.id),
                            code: ErrorCode::BadRequest,
                            reason: format!("stream {sid} is already open"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    stream = opened;
                }
                if addr.send(Inbound { id: env.id, msg: env.body, stream }).await.is_err() {
                    return;
                }
            }
            Frame::Chunk { stream: sid, data } => {
                let tx = {
                    let mut r = routes(&table);
                    match r.open.get(&sid) {
                        Some(tx) => Ok(tx.clone()),
                        None if r.discarding.contains(&sid) => Err(false),
                        None => {
                            r.discarding.insert(sid);
                            Err(true)
                        }
                    }
                };
                match tx {
                    Ok(tx) => {
                        if tx.send(StreamItem::Chunk(data)).await.is_err() {
                            // The step stopped reading (it failed or was
                            // cancelled): drop the rest of the stream.
                            let mut r = routes(&table);
                            r.open.remove(&sid);
                            r.discarding.insert(sid);
                        }
                    }
                    Err(true) => {
                        let bad = BadFrame {
                            id: None,
                            code: ErrorCode::BadRequest,
                            reason: format!("stream chunk for stream {sid}, which no accepted SendWrites opened"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                    }
                    Err(false) => {}
                }
            }
            Frame::End { stream: sid, end } => {
                let tx = {
                    let mut r = routes(&table);
                    let tx = r.open.remove(&sid);
                    let known = tx.is_some() || r.discarding.remove(&sid);
                    (tx, known)
                };
                match tx {
                    (Some(tx), _) => {
                        let _ = tx.send(StreamItem::End(end)).await;
                    }
                    (None, true) => {}
                    (None, false) => {
                        let bad = BadFrame {
                            id: None,
                            code: ErrorCode::BadRequest,
                            reason: format!("end frame for stream {sid}, which is not open"),
                        };
                        if addr.send(bad).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    // `send().await`: the session must learn that its connection is gone;
    // this task waits for room. An error means the session already stopped.
    let _ = addr.send(ConnectionLost { reason }).await;
}

/// The next item of any open stream, taking them in turn (so a fetch
/// moves while step 4 streams, and the other way round): the stream's index
/// and the item (`None`: its sender is gone without an end).
fn next_item<'a>(
    streams: &'a mut [(u32, mpsc::Receiver<StreamItem>)],
    turn: &'a mut usize,
) -> impl std::future::Future<Output = (usize, Option<StreamItem>)> + 'a {
    std::future::poll_fn(move |cx| {
        let n = streams.len();
        for k in 0..n {
            let i = (*turn + k) % n;
            if let std::task::Poll::Ready(item) = streams[i].1.poll_recv(cx) {
                *turn = i + 1;
                return std::task::Poll::Ready((i, item));
            }
        }
        std::task::Poll::Pending
    })
}

/// Sends `frame`; while streams are open, gives up when the session ends
/// (`Ok(false)`) rather than wait for a socket that may be stuck.
async fn send(
    tx: &mut WsSender<BoxedIo, ServerMsg>,
    frame: &Frame<ServerMsg>,
    ended: &mut watch::Receiver<()>,
    streaming: bool,
    activity: &Activity,
) -> Result<bool, WireError> {
    if streaming {
        tokio::select! {
            r = tx.send(frame) => r?,
            // `changed` fails only when the session drops `alive`.
            _ = ended.changed() => return Ok(false),
        }
    } else {
        tx.send(frame).await?;
    }
    activity.touch();
    Ok(true)
}

/// Sends what the actor queues, in order, and P's streams (step 4 and
/// fetches) chunk by chunk, several at once in turn; a frame queued as
/// [`Outgoing::After`] a stream goes once that stream ended. Closes the
/// connection when the queue ends.
pub(super) async fn write_loop(
    mut tx: WsSender<BoxedIo, ServerMsg>,
    mut queue: mpsc::Receiver<Outgoing>,
    mut ended: watch::Receiver<()>,
    addr: Addr<Session>,
    activity: Activity,
    client: ClientId,
) {
    let result: Result<(), WireError> = async {
        let mut streams: Vec<(u32, mpsc::Receiver<StreamItem>)> = Vec::new();
        let mut held: Vec<(u32, Frame<ServerMsg>)> = Vec::new();
        let mut turn = 0usize;
        loop {
            let streaming = !streams.is_empty();
            tokio::select! {
                biased;
                // The session ended in the middle of a stream: drop the
                // channels now (the packers' next sends fail), without
                // waiting for a socket that may be stuck; the rest of the
                // queue is no use to a client cut mid-stream.
                _ = ended.changed(), if streaming => break,
                item = queue.recv() => {
                    let frame = match item {
                        None => break,
                        Some(Outgoing::Frame(f)) => f,
                        Some(Outgoing::Stream { stream, rx }) => {
                            streams.push((stream, rx));
                            continue;
                        }
                        Some(Outgoing::After { stream, frame }) => {
                            if streams.iter().any(|(s, _)| *s == stream) {
                                held.push((stream, frame));
                                continue;
                            }
                            frame
                        }
                    };
                    if !send(&mut tx, &frame, &mut ended, streaming, &activity).await? {
                        break;
                    }
                }
                (i, item) = next_item(&mut streams, &mut turn), if streaming => {
                    let stream = streams[i].0;
                    let frame = match item {
                        Some(StreamItem::Chunk(data)) => Frame::Chunk { stream, data },
                        Some(StreamItem::End(end)) => Frame::End { stream, end },
                        None => Frame::End {
                            stream,
                            end: StreamEnd::Abort("the project side stopped before the stream's end".into()),
                        },
                    };
                    let last = matches!(frame, Frame::End { .. });
                    if last {
                        streams.remove(i);
                    }
                    if !send(&mut tx, &frame, &mut ended, true, &activity).await? {
                        break;
                    }
                    if last {
                        // Its answers, in the order they were queued.
                        let (now, later): (Vec<_>, Vec<_>) = held.drain(..).partition(|(s, _)| *s == stream);
                        held = later;
                        for (_, frame) in now {
                            if !send(&mut tx, &frame, &mut ended, !streams.is_empty(), &activity).await? {
                                return Ok(());
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            let _ = tokio::time::timeout(FLUSH_GRACE, tx.close()).await;
        }
        Err(e) => {
            tracing::debug!(client = %client, "writer: {e}");
            // As in the reader: wait for room, never drop it.
            let _ = addr.send(ConnectionLost { reason: Some(format!("sending: {e}")) }).await;
        }
    }
}
