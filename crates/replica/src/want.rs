//! `user.cs.want`: set on a placeholder while its content is not there, removed by the
//! fill once the content is durable. It holds what the fill needs without any other
//! state: the path to ask P for (relative to the tree's root: the event's own path is
//! relative to whichever mount overlayfs opened it on, so it cannot be used) and P's size
//! and mtime at the snapshot (the read-ahead's byte caps; a check that the path is the
//! placeholder's).
//!
//! Layout (little-endian): `cs1` version tag, size u64, mtime seconds i64, nanoseconds
//! u32, then the path's bytes.

use cs_protocol::{RelPath, Timestamp};

pub const XATTR: &str = "user.cs.want";
const TAG: &[u8; 3] = b"cs1";
const HEAD: usize = 3 + 8 + 8 + 4;

/// What a placeholder's `user.cs.want` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub path: RelPath,
    pub size: u64,
    pub mtime: Timestamp,
}

impl Want {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEAD + self.path.as_bytes().len());
        v.extend_from_slice(TAG);
        v.extend_from_slice(&self.size.to_le_bytes());
        v.extend_from_slice(&self.mtime.sec.to_le_bytes());
        v.extend_from_slice(&self.mtime.nsec.to_le_bytes());
        v.extend_from_slice(self.path.as_bytes());
        v
    }

    /// `None` for anything this version did not write (read from disk: never trusted).
    pub fn decode(b: &[u8]) -> Option<Want> {
        if b.len() <= HEAD || &b[..3] != TAG {
            return None;
        }
        let size = u64::from_le_bytes(b[3..11].try_into().ok()?);
        let sec = i64::from_le_bytes(b[11..19].try_into().ok()?);
        let nsec = u32::from_le_bytes(b[19..23].try_into().ok()?);
        let path = RelPath::new(b[HEAD..].to_vec()).ok()?;
        Some(Want { path, size, mtime: Timestamp::new(sec, nsec) })
    }
}

/// Upper bound of an encoded value: the header plus Linux's PATH_MAX.
pub(crate) const MAX_LEN: usize = HEAD + 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let w = Want { path: RelPath::new(b"d/\xe9".to_vec()).unwrap(), size: 7, mtime: Timestamp::new(-3, 9) };
        assert_eq!(Want::decode(&w.encode()), Some(w.clone()));
        assert_eq!(Want::decode(b"1"), None);
        assert_eq!(Want::decode(&w.encode()[..HEAD]), None);
        let mut bad = w.encode();
        bad.extend_from_slice(b"/../x");
        assert_eq!(Want::decode(&bad), None);
    }
}
