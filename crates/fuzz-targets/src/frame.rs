//! Target `frame`: [`Frame::decode_with`] of both directions' messages.

use bytes::Bytes;
use cs_protocol::RelPath;
use cs_wire::{ClientMsg, Frame, ServerMsg, StreamEnd, WireError, WireLimits, MAX_REASON_BYTES};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::alloc_meter::measure;
use crate::relpath::check_accepted;

/// Small limits, so that the size checks are reached by small inputs.
pub const SMALL_LIMITS: WireLimits = WireLimits { max_message_bytes: 4096, max_chunk_bytes: 1024 };

/// Most heap a decode of `len` input bytes may take: serde's cautious
/// preallocation (1 MiB per sequence being filled; our messages nest at most
/// two sequences), plus a generous constant factor of the input (a 2-byte
/// MessagePack string becomes a 24-byte `String` and its heap bytes, and a
/// `Vec` may hold twice its length while it grows).
pub fn alloc_bound(len: usize) -> usize {
    (2 << 20) + (64 << 10) + 64 * len
}

/// Every path inside a message, to check each one against the rule.
pub trait Paths {
    fn paths(&self) -> Vec<&RelPath>;
}

impl Paths for ClientMsg {
    fn paths(&self) -> Vec<&RelPath> {
        match self {
            ClientMsg::Hello(h) => h.held_added.iter().chain(&h.held_removed).collect(),
            ClientMsg::HeldList(v) | ClientMsg::Deletes(v) | ClientMsg::Fetch { paths: v, .. } => v.iter().collect(),
            ClientMsg::Commit(c) => c.held.added.iter().chain(&c.held.removed).chain(&c.not_applied).collect(),
            ClientMsg::WasCommitted { .. }
            | ClientMsg::AskDeletes
            | ClientMsg::SendWrites { .. }
            | ClientMsg::AskWrites { .. }
            | ClientMsg::Ping { .. }
            | ClientMsg::Snapshot { .. }
            | ClientMsg::JournalAt => Vec::new(),
        }
    }
}

impl Paths for ServerMsg {
    fn paths(&self) -> Vec<&RelPath> {
        match self {
            ServerMsg::DeleteReport(r) => {
                r.deleted.iter().chain(&r.kept).chain(r.refused.iter().map(|(p, _)| p)).collect()
            }
            ServerMsg::DeletesForYou(v) => v.iter().collect(),
            ServerMsg::FetchFollows { report, .. } => report
                .sent
                .iter()
                .map(|v| &v.path)
                .chain(&report.missing)
                .chain(report.refused.iter().map(|(p, _)| p))
                .collect(),
            ServerMsg::SnapshotFollows { report, .. } => report.refused.iter().map(|(p, _)| p).collect(),
            ServerMsg::WritesApplied { conflicts, refused, .. } => {
                conflicts.iter().chain(refused.iter().map(|(p, _)| p)).collect()
            }
            ServerMsg::WasCommitted(_)
            | ServerMsg::HelloReply(_)
            | ServerMsg::HeldListOk
            | ServerMsg::WritesFollow { .. }
            | ServerMsg::Committed { .. }
            | ServerMsg::Pong { .. }
            | ServerMsg::JournalAt { .. }
            | ServerMsg::ProjectChanged { .. }
            | ServerMsg::Error { .. } => Vec::new(),
        }
    }
}

fn same_outcome<T: PartialEq + std::fmt::Debug>(
    a: &Result<Frame<T>, WireError>,
    b: &Result<Frame<T>, WireError>,
) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// Decodes `data` as a `Frame<T>` under `limits` and checks the outcome.
pub fn check_decode<T>(data: &[u8], limits: &WireLimits)
where
    T: DeserializeOwned + Serialize + PartialEq + Clone + std::fmt::Debug + Paths,
{
    let (res, peak) = measure(|| Frame::<T>::decode_with(data, limits));
    if let Some(peak) = peak {
        assert!(
            peak <= alloc_bound(data.len()),
            "decoding {} bytes took {peak} bytes of heap (bound {})",
            data.len(),
            alloc_bound(data.len())
        );
    }
    // The zero-copy variant agrees.
    let shared = Frame::<T>::decode_bytes(Bytes::copy_from_slice(data), limits);
    assert!(same_outcome(&res, &shared), "decode_with {res:?} vs decode_bytes {shared:?}");

    let frame = match res {
        Err(e) => {
            // Errors are printable and classified without panicking.
            let _ = (e.to_string(), e.is_fatal(), e.request_id(), e.error_code());
            if matches!(e, WireError::Malformed { .. } | WireError::UnknownMessage { .. }) {
                assert_eq!(data.first(), Some(&0), "only control frames carry MessagePack");
            }
            return;
        }
        Ok(f) => f,
    };
    let _ = frame.describe();
    match &frame {
        Frame::Control(env) => {
            assert_eq!(data[0], 0);
            assert!(data.len() - 1 <= limits.max_message_bytes, "oversized control message accepted");
            for p in env.body.paths() {
                check_accepted(p, None);
            }
            // Re-encoding gives a frame that decodes to the same value (the
            // input may have used a more compact MessagePack form, so the
            // bytes may differ; use the default limits for that reason).
            let again = frame.encode().expect("re-encoding a decoded control frame");
            assert_eq!(again[0], 0);
            let back = Frame::<T>::decode(&again).expect("decoding a re-encoded control frame");
            assert_eq!(back, frame, "control frame changed through encode/decode");
            // Re-encoding is canonical: a second round gives the same bytes.
            assert_eq!(back.encode().expect("re-encoding"), again);
        }
        Frame::Chunk { stream, data: payload } => {
            assert!(payload.len() <= limits.max_chunk_bytes, "oversized chunk accepted");
            assert_eq!(u32::from_le_bytes(data[1..5].try_into().unwrap()), *stream);
            assert_eq!(&payload[..], &data[5..]);
            // The chunk layout has one encoding: re-encoding gives the input.
            assert_eq!(&frame.encode_with(limits).expect("re-encoding a chunk")[..], data);
        }
        Frame::End { stream, end } => {
            assert_eq!(u32::from_le_bytes(data[1..5].try_into().unwrap()), *stream);
            let again = frame.encode_with(limits).expect("re-encoding an end frame");
            match end {
                StreamEnd::Ok => {
                    // A reason after status 1 is ignored.
                    assert_eq!(data[5], 1);
                    assert_eq!(&again[..], &data[..6]);
                }
                StreamEnd::Abort(reason) => {
                    assert!(reason.len() <= MAX_REASON_BYTES);
                    assert_eq!(&again[..], data, "abort frame changed through decode/encode");
                }
            }
        }
    }
}

/// The `frame` target: `data` as one websocket message, decoded as a
/// client's and as a broker's frame, under small and default limits.
/// Panics on a decoder panic, on more heap than [`alloc_bound`] (when
/// [`crate::CountingAlloc`] is installed), on an accepted frame over the
/// limits or holding an invalid path, and when re-encoding a decoded frame
/// does not give back the same value.
pub fn fuzz_frame(data: &[u8]) {
    check_decode::<ClientMsg>(data, &SMALL_LIMITS);
    check_decode::<ServerMsg>(data, &SMALL_LIMITS);
    check_decode::<ClientMsg>(data, &WireLimits::default());
    check_decode::<ServerMsg>(data, &WireLimits::default());
    // The same bytes as a control payload, so MessagePack is always reached.
    if data.first() != Some(&0) {
        let mut control = Vec::with_capacity(data.len() + 1);
        control.push(0);
        control.extend_from_slice(data);
        check_decode::<ClientMsg>(&control, &WireLimits::default());
        check_decode::<ServerMsg>(&control, &WireLimits::default());
    }
}
