//! The control messages of a round (docs/protocol.md, "The round").
//!
//! C drives, P answers: every [`ClientMsg`] travels in an [`Envelope`] with a
//! request id chosen by C, and P's [`ServerMsg`] answer carries the same id.
//! Tar streams do not travel inside these messages: a message announces a
//! stream id and the stream follows as chunk frames (see [`crate::frame`]).
//!
//! Extending: the encoding is MessagePack with named fields and variants
//! named by string, so adding a variant or a field with `#[serde(default)]`
//! does not disturb existing ones. A peer that does not know a variant
//! answers [`ErrorCode::BadRequest`] (decoding yields
//! [`crate::WireError::UnknownMessage`]); bump
//! [`cs_protocol::PROTOCOL_VERSION`] when a peer must know it.

use cs_protocol::{CommitRequest, Cursor, DeleteReport, FetchReport, Hello, HelloReply, RelPath, SnapshotReport};
use serde::{Deserialize, Serialize};

/// A control message with the id that correlates a request with its answer.
/// C numbers its requests; P echoes the id of the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub id: u64,
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(id: u64, body: T) -> Self {
        Envelope { id, body }
    }
}

/// C → P requests, in the order a round sends them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// Before hello, after a crash between P's commit and C's: did the round
    /// with this id commit on P? Answer: [`ServerMsg::WasCommitted`].
    WasCommitted { round_id: u64 },
    /// Hello: opens a round (client id, protocol version, cursor, digest of
    /// the held set). Answer: [`ServerMsg::HelloReply`].
    Hello(Hello),
    /// Hello, when P asked for it (`need_held_list`): every path C's
    /// manifest holds. Answer: [`ServerMsg::HeldListOk`].
    HeldList(Vec<RelPath>),
    /// Step 1, deletes C → P: the paths of C's whiteouts.
    /// Answer: [`ServerMsg::DeleteReport`].
    Deletes(Vec<RelPath>),
    /// Step 2, deletes P → C: which held paths did P delete?
    /// Answer: [`ServerMsg::DeletesForYou`].
    AskDeletes,
    /// Step 3, writes C → P: C's tar stream follows as chunk frames on
    /// `stream`, closed by an end frame. Answer (after the end frame):
    /// [`ServerMsg::WritesApplied`].
    SendWrites { stream: u32 },
    /// Step 4, writes P → C: P sends its tar stream as chunk frames on
    /// `stream` (the id C chose), closed by an end frame, and then answers
    /// [`ServerMsg::WritesFollow`] with the cursor (known once packing is done).
    AskWrites { stream: u32 },
    /// Step 5, commit: C's held-set delta and not-applied paths.
    /// Answer: [`ServerMsg::Committed`].
    Commit(CommitRequest),
    /// Liveness and round-trip time, at any moment between requests.
    /// Answer: [`ServerMsg::Pong`] with the same `sent_ms`.
    Ping { sent_ms: u64 },
    /// Fetch, at any moment (between rounds or during one): P's current
    /// content of these paths (at most [`MAX_FETCH_PATHS`]; a directory
    /// brings its own entry and its regular files, not deeper), as a tar
    /// stream of chunk frames on `stream` (C's choice, with
    /// [`FETCH_STREAM_BIT`] set, not in use by another fetch) closed by an
    /// end frame; then [`ServerMsg::FetchFollows`]. At most
    /// [`MAX_FETCHES_IN_FLIGHT`] per connection. Needs `HelloReply::fetch`.
    Fetch { paths: Vec<RelPath>, stream: u32 },
    /// Snapshot, at any moment (between rounds or during one): P's metadata
    /// of every path its journal syncs, no content (issue 12, the replica's
    /// placeholder tree), as a snapshot stream ([`crate::snapshot`]: zstd,
    /// length-prefixed MessagePack [`cs_protocol::SnapshotEntry`] records
    /// in pre-order) of chunk frames on `stream` (C's choice, with
    /// [`FETCH_STREAM_BIT`] set, not in use by a fetch in flight) closed by
    /// an end frame; then [`ServerMsg::SnapshotFollows`]. At most
    /// [`MAX_SNAPSHOTS_IN_FLIGHT`] per connection, besides the fetches.
    /// Needs `HelloReply::snapshot`.
    Snapshot { stream: u32 },
    /// P's journal position now, at any moment: a replica resuming its
    /// previous tree checks that P's journal still continues the tree's
    /// cursor (same epoch) before it starts without a new snapshot. No
    /// refresh, no lock of the client. Answer: [`ServerMsg::JournalAt`].
    /// An older broker answers [`ErrorCode::BadRequest`] (unknown message).
    JournalAt,
}

/// The stream ids of fetches have this bit set, those of rounds never: the
/// two never collide, whatever each counter does.
pub const FETCH_STREAM_BIT: u32 = 1 << 31;
/// Most paths one [`ClientMsg::Fetch`] may name (more: [`ErrorCode::TooLarge`]).
pub const MAX_FETCH_PATHS: usize = 1024;
/// Most fetches one connection may have unanswered (more: [`ErrorCode::Busy`]).
pub const MAX_FETCHES_IN_FLIGHT: usize = 4;
/// Most snapshots one connection may have unanswered (more: [`ErrorCode::Busy`]).
/// A bound of its own: a snapshot walks the whole home, a fetch a few
/// paths, and neither should wait for a slot the other holds.
pub const MAX_SNAPSHOTS_IN_FLIGHT: usize = 1;

/// P → C answers; each carries the id of the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// Answer to [`ClientMsg::WasCommitted`]: `true` if P committed that round.
    WasCommitted(bool),
    /// Hello: whether P needs the full held list, whether C's cursor is
    /// unknown to P's journal.
    HelloReply(HelloReply),
    /// Hello: the held list was received and P's index of the client updated.
    HeldListOk,
    /// Step 1: what P deleted, kept (modified on P since the cursor) or refused.
    DeleteReport(DeleteReport),
    /// Step 2: the paths C holds that P's journal no longer has.
    DeletesForYou(Vec<RelPath>),
    /// Step 3: the outcome of C's stream, entry by entry.
    WritesApplied {
        /// Entries written over (or created at) their target.
        applied: u64,
        /// Entries changed by others on P but with equal content: nothing to do.
        unchanged: u64,
        /// Content differs from P's changed version: stored as conflict copies.
        conflicts: Vec<RelPath>,
        /// Not accepted, with the reason (unsafe path, excluded, bad entry).
        refused: Vec<(RelPath, String)>,
    },
    /// Step 4: P's tar stream follows on `stream`; `cursor` is P's journal
    /// position when step 4 started, the cursor step 5 commits.
    WritesFollow { stream: u32, cursor: Cursor },
    /// Step 5: P persisted journal and index; C may now persist its manifest
    /// with this cursor.
    Committed { cursor: Cursor },
    /// Answer to [`ClientMsg::Ping`].
    Pong { sent_ms: u64 },
    /// Answer to [`ClientMsg::Fetch`], after the end frame of its `stream`:
    /// what the stream carried, what P does not have, what it refused.
    FetchFollows { stream: u32, report: FetchReport },
    /// Answer to [`ClientMsg::Snapshot`], after the end frame of its
    /// `stream`: how many entries it carried, the journal cursor taken
    /// before the walk, what was left out.
    SnapshotFollows { stream: u32, report: SnapshotReport },
    /// Answer to [`ClientMsg::JournalAt`]: P's journal position as of its
    /// last refresh.
    JournalAt { cursor: Cursor },
    /// Unsolicited, never an answer: P's home changed since the client's
    /// cursor (by P's own processes or another client's round, never by this
    /// client's rounds), while no round of this client ran. Sent only to a
    /// client whose hello asked `follow`, debounced, always with the id
    /// [`UNSOLICITED_ID`], which no request uses (C numbers its requests
    /// from 1). C starts a round (docs/protocol.md, *Follow*). `changes`:
    /// how many journal entries are new to the client (for logs and status).
    ProjectChanged { changes: u64 },
    /// The request failed; a round's request: the round fails and is retried
    /// from hello; a fetch's or a snapshot's: that request only, the round
    /// is not touched.
    Error { code: ErrorCode, message: String },
}

/// The envelope id of an unsolicited message ([`ServerMsg::ProjectChanged`]):
/// C numbers its requests from 1, so no answer carries it for a request
/// (an error about a frame whose id P could not read carries it too: C has
/// no request waiting on it either way).
pub const UNSOLICITED_ID: u64 = 0;

impl ServerMsg {
    /// An unsolicited message: never the answer to a request, whatever its id.
    pub fn is_unsolicited(&self) -> bool {
        matches!(self, ServerMsg::ProjectChanged { .. })
    }
}

/// Why P refused or failed a request ([`ServerMsg::Error`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// Malformed, unknown or out-of-order message.
    BadRequest,
    /// The connection's client may not do this (e.g. a hello naming another client).
    Unauthorized,
    /// A message or stream exceeded a limit.
    TooLarge,
    /// P is busy (e.g. a round of this client is already in progress); retry later.
    Busy,
    /// P failed (I/O error, bug); nothing of the round was committed.
    Internal,
    /// C speaks a protocol version P does not.
    ProtocolVersion,
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}
