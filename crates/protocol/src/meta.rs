//! Small value types: entry kinds, timestamps, cursors, client ids.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of entry that are synced. Anything else (devices, fifos,
/// sockets) is skipped on scan and refused on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
}

/// A point in time on ONE machine's clock, to the nanosecond.
///
/// Timestamps are carried to preserve mtimes and are compared only for
/// equality with timestamps from the same machine: never ordered across
/// machines (see docs/protocol.md, "Clocks").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Timestamp {
    pub sec: i64,
    pub nsec: u32,
}

impl Timestamp {
    pub fn new(sec: i64, nsec: u32) -> Self {
        Timestamp { sec, nsec }
    }
}

/// P's position in its own change journal, as issued to one client at its
/// last committed round. Opaque to the client: it stores and returns it.
///
/// `epoch` changes whenever P's journal is recreated, so that a cursor from
/// a lost journal is recognised as unknown instead of silently misread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

/// Digest of the set of paths a client holds in its upper layer: lets P
/// check its per-client index against the client's manifest in 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct HeldDigest(pub [u8; 32]);

impl fmt::Debug for HeldDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

/// A compute server's name at the broker: `[A-Za-z0-9_.-]{1,64}`, not
/// starting with `.`. It appears in conflict-copy names and staging paths,
/// hence the strict alphabet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClientId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("client id {0:?} is invalid: use 1 to 64 of A-Z a-z 0-9 _ . - , not starting with '.'")]
pub struct ClientIdError(pub String);

impl ClientId {
    pub fn new(s: impl Into<String>) -> Result<Self, ClientIdError> {
        let s = s.into();
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if ok {
            Ok(ClientId(s))
        } else {
            Err(ClientIdError(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ClientId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids() {
        assert!(ClientId::new("gpu-1.a_b").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(ClientId::new(bad).is_err(), "{bad:?}");
        }
    }
}
