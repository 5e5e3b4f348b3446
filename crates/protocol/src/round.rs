//! The data a round exchanges between the compute server and the project,
//! step by step (see docs/protocol.md). Tar streams travel separately.

use serde::{Deserialize, Serialize};

use crate::{ClientId, Cursor, EntryKind, HeldDigest, RelPath, Timestamp};

/// Opens a round: who the client is, the cursor of its last committed round,
/// and a digest of what it holds so P can check its per-client index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub client: ClientId,
    pub protocol: u32,
    pub cursor: Option<Cursor>,
    pub held_digest: HeldDigest,
    pub held_count: u64,
    /// How what C holds now differs from its committed manifest (the digest
    /// above): P's versions that an interrupted round already wrote, and
    /// synced copies no longer in the upper layer. P's view of what C holds
    /// for this round is its index plus `held_added` minus `held_removed`.
    #[serde(default)]
    pub held_added: Vec<RelPath>,
    #[serde(default)]
    pub held_removed: Vec<RelPath>,
    /// Paths whose deletion P confirmed and that C still hides (whiteouts
    /// kept for their grace): whatever P has there now, C has not seen.
    /// Roots only (no path below another).
    #[serde(default)]
    pub hidden: Vec<RelPath>,
    /// Which of P's other changes step 4 (and step 2) carries: see
    /// [`PullPolicy`]. A client that does not send it gets `Held`, the
    /// behaviour before the field existed.
    #[serde(default)]
    pub pull: PullPolicy,
    /// C asks to be told of P's changes between its rounds
    /// (`ServerMsg::ProjectChanged`, docs/protocol.md, *Follow*). Absent
    /// from an older client's hello: `false`, and P never pushes to it.
    #[serde(default)]
    pub follow: bool,
}

/// What P sends C beyond the paths C holds in its upper layer (the pull
/// policy, docs/protocol.md steps 2 and 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Only what C holds: P's other changes reach C's merged view through
    /// the lower layer, as fresh as its caches.
    #[default]
    Held,
    /// Also every other file, directory and symlink P changed since C's
    /// cursor (files up to `max_file_size` bytes each, `None`: any size),
    /// written into C's upper layer, and every path P deleted since then
    /// (C hides it with a whiteout): visible when the round commits,
    /// whatever the lower's caches still show.
    Changed { max_file_size: Option<u64> },
}

/// P's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// P's index of this client does not match the digest: send the full
    /// held list before step 1.
    pub need_held_list: bool,
    /// The client's cursor is from another journal epoch (P lost or reset its
    /// journal): this round treats every P file as changed, conservatively.
    pub cursor_unknown: bool,
    /// The text of the project's `.csignore` rules in force for this round
    /// (empty: none). C applies exactly these, so both sides skip the same
    /// paths (docs/protocol.md, *Ignore rules*).
    #[serde(default)]
    pub ignore_rules: String,
    /// Why the project's current `.csignore` is not in force (unreadable,
    /// bad pattern: file and line), if so; the rules above are the last good ones.
    #[serde(default)]
    pub ignore_error: Option<String>,
    /// P serves `Fetch` (docs/protocol.md, *Fetch*). Absent from an older
    /// broker's answer: `false`, and C must not ask.
    #[serde(default)]
    pub fetch: bool,
    /// P serves `Snapshot` (docs/protocol.md, *Snapshot*). Absent from an
    /// older broker's answer: `false`, and C must not ask.
    #[serde(default)]
    pub snapshot: bool,
    /// P pushes `ProjectChanged` to a client whose hello asked `follow`
    /// (docs/protocol.md, *Follow*). Absent from an older broker's answer:
    /// `false`, and C's rounds come from its timer and its own changes only.
    #[serde(default)]
    pub follow: bool,
}

/// One entry a fetch sent: the path and P's version of it as packed (kind,
/// size and mtime as P's `lstat` gave them; the mtime is P's clock, opaque
/// to C: compared for equality only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    pub path: RelPath,
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: Timestamp,
}

/// P's answer to a fetch, after the stream's end: what the stream carries,
/// what P does not have, and what it refused to serve (with the reason).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReport {
    pub sent: Vec<FileVersion>,
    /// No such path on P (or it vanished while packed).
    pub missing: Vec<RelPath>,
    /// Not served: through a symlink, not a regular file or directory, excluded
    /// or local-only, changing while read, unreadable.
    pub refused: Vec<(RelPath, String)>,
}

/// Outcome of a batch of deletes (step 1 on P, step 2 on C).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteReport {
    pub deleted: Vec<RelPath>,
    /// Not deleted because the other side modified them: modification wins.
    pub kept: Vec<RelPath>,
    /// Not deleted because the path may not be touched (excluded, local-only,
    /// or reached through a symlink), with the reason.
    pub refused: Vec<(RelPath, String)>,
}

/// Step 5: how the set of paths C holds in its upper layer changed in this
/// round, so P's per-client index mirrors C's manifest without a full listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldDelta {
    pub added: Vec<RelPath>,
    pub removed: Vec<RelPath>,
    /// Digest of the complete held set after the delta.
    pub digest: HeldDigest,
}

/// Step 5, C to P: what C now holds, and which of P's step-4 entries it did
/// not apply (the user changed the file meanwhile). P keeps treating those as
/// unseen by this client, so that C's version meets the conflict rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRequest {
    /// Random per round: lets a client that crashed between P's commit and
    /// its own ask P whether this round committed (see `ProjectSide::was_committed`).
    pub round_id: u64,
    pub held: HeldDelta,
    pub not_applied: Vec<RelPath>,
}
