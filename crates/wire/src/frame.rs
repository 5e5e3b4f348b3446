//! Framing: every websocket Binary message is exactly one [`Frame`].
//!
//! ```text
//! tag 0  control   | 0 | MessagePack Envelope<T> (named fields)            |
//! tag 1  chunk     | 1 | stream id u32 LE | bytes (≤ max_chunk_bytes)     |
//! tag 2  end       | 2 | stream id u32 LE | u8 1 ok / 0 abort | UTF-8 reason |
//! ```
//!
//! Decoding never panics and never allocates more than the input's size
//! (plus serde's cautious preallocation): every failure is a [`WireError`]
//! naming what was wrong.

use std::io::Cursor;

use bytes::{BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::WireError;
use crate::messages::Envelope;

/// Tag byte of a control frame.
pub const TAG_CONTROL: u8 = 0;
/// Tag byte of a stream chunk frame.
pub const TAG_CHUNK: u8 = 1;
/// Tag byte of a stream end frame.
pub const TAG_END: u8 = 2;
/// Longest stream-end reason, in bytes; longer reasons are truncated when
/// encoding and refused when decoding.
pub const MAX_REASON_BYTES: usize = 1024;
/// Deepest MessagePack nesting accepted in a control message (ours nest 4
/// deep; this bounds the decoder's recursion on hostile input).
const MAX_DEPTH: usize = 32;

/// Size limits of one connection. Both sides should use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Largest control message (MessagePack bytes). The default, 64 MiB,
    /// fits a held list of 100 000 paths of several hundred bytes each.
    pub max_message_bytes: usize,
    /// Largest stream chunk payload. Default 256 KiB.
    pub max_chunk_bytes: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits { max_message_bytes: 64 << 20, max_chunk_bytes: 256 << 10 }
    }
}

impl WireLimits {
    /// Largest websocket message a frame within these limits can take: the
    /// websocket layer refuses anything larger before buffering it.
    pub fn max_ws_message_bytes(&self) -> usize {
        self.max_message_bytes.max(self.max_chunk_bytes).max(MAX_REASON_BYTES) + 16
    }
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The sender wrote everything: the stream is complete.
    Ok,
    /// The sender gave up (error, cancelled, writer dropped): discard what
    /// was received.
    Abort(String),
}

/// One websocket message.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<T> {
    /// A request or answer.
    Control(Envelope<T>),
    /// A piece of the tar stream `stream`.
    Chunk { stream: u32, data: Bytes },
    /// The end of stream `stream`.
    End { stream: u32, end: StreamEnd },
}

impl<T> Frame<T> {
    /// A control frame.
    pub fn control(id: u64, body: T) -> Self {
        Frame::Control(Envelope { id, body })
    }

    /// A short description for logs and errors (no payload).
    pub fn describe(&self) -> String {
        match self {
            Frame::Control(env) => format!("control message (request {})", env.id),
            Frame::Chunk { stream, data } => format!("chunk of {} bytes on stream {stream}", data.len()),
            Frame::End { stream, end: StreamEnd::Ok } => format!("end of stream {stream}"),
            Frame::End { stream, end: StreamEnd::Abort(r) } => {
                format!("abort of stream {stream}: {r}")
            }
        }
    }
}

impl<T: Serialize> Frame<T> {
    /// Encodes with the default [`WireLimits`].
    pub fn encode(&self) -> Result<Bytes, WireError> {
        self.encode_with(&WireLimits::default())
    }

    /// Encodes, refusing a frame the peer would refuse under `limits`.
    pub fn encode_with(&self, limits: &WireLimits) -> Result<Bytes, WireError> {
        match self {
            Frame::Control(env) => {
                let mut buf = Vec::with_capacity(64);
                buf.push(TAG_CONTROL);
                rmp_serde::encode::write_named(&mut buf, env)
                    .map_err(|e| WireError::Encode { what: "control message", detail: e.to_string() })?;
                let size = buf.len() - 1;
                if size > limits.max_message_bytes {
                    return Err(WireError::TooLarge { what: "control message", size, limit: limits.max_message_bytes });
                }
                Ok(Bytes::from(buf))
            }
            Frame::Chunk { stream, data } => {
                if data.len() > limits.max_chunk_bytes {
                    return Err(WireError::TooLarge {
                        what: "stream chunk",
                        size: data.len(),
                        limit: limits.max_chunk_bytes,
                    });
                }
                let mut buf = BytesMut::with_capacity(5 + data.len());
                buf.put_u8(TAG_CHUNK);
                buf.put_u32_le(*stream);
                buf.put_slice(data);
                Ok(buf.freeze())
            }
            Frame::End { stream, end } => {
                let (ok, reason) = match end {
                    StreamEnd::Ok => (1u8, ""),
                    StreamEnd::Abort(r) => (0u8, truncate(r, MAX_REASON_BYTES)),
                };
                let mut buf = BytesMut::with_capacity(6 + reason.len());
                buf.put_u8(TAG_END);
                buf.put_u32_le(*stream);
                buf.put_u8(ok);
                buf.put_slice(reason.as_bytes());
                Ok(buf.freeze())
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl<T: DeserializeOwned> Frame<T> {
    /// Decodes with the default [`WireLimits`].
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        Self::decode_with(bytes, &WireLimits::default())
    }

    /// Decodes one websocket Binary message's payload.
    pub fn decode_with(bytes: &[u8], limits: &WireLimits) -> Result<Self, WireError> {
        decode_inner(bytes, limits, |range| Bytes::copy_from_slice(&bytes[range]))
    }

    /// Like [`Frame::decode_with`], but a chunk's data shares `bytes`
    /// instead of being copied.
    pub fn decode_bytes(bytes: Bytes, limits: &WireLimits) -> Result<Self, WireError> {
        decode_inner(&bytes, limits, |range| bytes.slice(range))
    }
}

fn decode_inner<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &WireLimits,
    data: impl FnOnce(std::ops::RangeFrom<usize>) -> Bytes,
) -> Result<Frame<T>, WireError> {
    let (&tag, rest) = bytes.split_first().ok_or(WireError::EmptyFrame)?;
    match tag {
        TAG_CONTROL => {
            if rest.len() > limits.max_message_bytes {
                return Err(WireError::TooLarge {
                    what: "control message",
                    size: rest.len(),
                    limit: limits.max_message_bytes,
                });
            }
            decode_envelope(rest).map(Frame::Control)
        }
        TAG_CHUNK => {
            let stream = stream_id(rest, "stream chunk", 5)?;
            let size = rest.len() - 4;
            if size > limits.max_chunk_bytes {
                return Err(WireError::TooLarge { what: "stream chunk", size, limit: limits.max_chunk_bytes });
            }
            Ok(Frame::Chunk { stream, data: data(5..) })
        }
        TAG_END => {
            let stream = stream_id(rest, "stream end", 6)?;
            let status = *rest.get(4).ok_or(WireError::Truncated { what: "stream end", need: 6, got: bytes.len() })?;
            let reason = &rest[5..];
            if reason.len() > MAX_REASON_BYTES {
                return Err(WireError::TooLarge {
                    what: "stream end reason",
                    size: reason.len(),
                    limit: MAX_REASON_BYTES,
                });
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WireError::BadReason)?;
            let end = match status {
                1 => StreamEnd::Ok,
                0 => StreamEnd::Abort(reason.to_owned()),
                other => return Err(WireError::BadEndStatus(other)),
            };
            Ok(Frame::End { stream, end })
        }
        other => Err(WireError::UnknownTag(other)),
    }
}

/// The stream id after the tag; `need` is the frame's minimal length.
fn stream_id(rest: &[u8], what: &'static str, need: usize) -> Result<u32, WireError> {
    match rest.get(..4) {
        Some(id) => Ok(u32::from_le_bytes(id.try_into().expect("4 bytes"))),
        None => Err(WireError::Truncated { what, need, got: rest.len() + 1 }),
    }
}

fn decode_envelope<T: DeserializeOwned>(msg: &[u8]) -> Result<Envelope<T>, WireError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(msg));
    de.set_max_depth(MAX_DEPTH);
    match Envelope::<T>::deserialize(&mut de) {
        Ok(env) => {
            let used = de.position() as usize;
            if used != msg.len() {
                return Err(WireError::Malformed {
                    id: Some(env.id),
                    detail: format!("{} trailing bytes after the message", msg.len() - used),
                });
            }
            Ok(env)
        }
        Err(e) => {
            let id = envelope_id(msg);
            let mut detail = e.to_string();
            if let Some(field) = locate_bad_path(msg, &detail) {
                detail = format!("field {field}: {detail}");
            }
            if matches!(&e, rmp_serde::decode::Error::Syntax(s) if s.contains("unknown variant")) {
                Err(WireError::UnknownMessage { id, detail })
            } else {
                Err(WireError::Malformed { id, detail })
            }
        }
    }
}

/// The field (e.g. `body.Hello.held_added[3]`) of the first string in `msg`
/// that is refused as a path (or client id) with exactly the error `detail`
/// reports. The message is walked without building anything (only the
/// field's name is kept), and the walk stops at that string.
fn locate_bad_path(msg: &[u8], detail: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, Error, MapAccess, SeqAccess, Visitor};
    use std::cell::Cell;

    fn refused_as(s: &str, detail: &str) -> bool {
        cs_protocol::RelPath::new(s).err().is_some_and(|e| detail.contains(&e.to_string()))
            || cs_protocol::ClientId::new(s).err().is_some_and(|e| detail.contains(&e.to_string()))
    }

    struct Walk<'a> {
        at: &'a mut String,
        detail: &'a str,
        found: &'a Cell<bool>,
    }

    impl<'a> Walk<'a> {
        fn child(&mut self) -> Walk<'_> {
            Walk { at: self.at, detail: self.detail, found: self.found }
        }
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any MessagePack value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_bytes<E>(self, _: &[u8]) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_none<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<(), E> {
            if refused_as(v, self.detail) {
                self.found.set(true);
                // Stops the walk; the field is in `at`.
                return Err(E::custom("found"));
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut a: A) -> Result<(), A::Error> {
            for i in 0.. {
                let len = self.at.len();
                self.at.push_str(&format!("[{i}]"));
                let more = a.next_element_seed(self.child())?.is_some();
                self.at.truncate(len);
                if !more {
                    break;
                }
            }
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut a: A) -> Result<(), A::Error> {
            while let Some(key) = a.next_key::<String>()? {
                let len = self.at.len();
                if len > 0 {
                    self.at.push('.');
                }
                self.at.push_str(&key);
                a.next_value_seed(self.child())?;
                self.at.truncate(len);
            }
            Ok(())
        }
    }

    let mut at = String::new();
    let found = Cell::new(false);
    let mut de = rmp_serde::Deserializer::new(Cursor::new(msg));
    de.set_max_depth(MAX_DEPTH);
    let _ = Walk { at: &mut at, detail, found: &found }.deserialize(&mut de);
    (found.get() && !at.is_empty()).then_some(at)
}

/// The request id of an envelope whose body did not decode, if its
/// MessagePack is sound enough to find it.
fn envelope_id(msg: &[u8]) -> Option<u64> {
    use serde::de::{Error, IgnoredAny, MapAccess, Visitor};
    use std::cell::Cell;
    /// Reads the map's entries up to `id` and stops there (with an error,
    /// as the decoder insists on maps being read whole): the body after it
    /// (e.g. an array announcing more elements than the message holds) is
    /// never looked at.
    struct IdFirst<'a>(&'a Cell<Option<u64>>);
    impl<'de> Visitor<'de> for IdFirst<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an envelope map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while let Some(key) = a.next_key::<String>()? {
                if key == "id" {
                    self.0.set(Some(a.next_value::<u64>()?));
                    return Err(A::Error::custom("found"));
                }
                a.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let found = Cell::new(None);
    let mut de = rmp_serde::Deserializer::new(Cursor::new(msg));
    de.set_max_depth(MAX_DEPTH);
    let _ = serde::Deserializer::deserialize_map(&mut de, IdFirst(&found));
    found.get()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ClientMsg, ServerMsg};
    use proptest::prelude::*;

    #[test]
    fn control_round_trip_and_named_fields() {
        let f = Frame::control(7, ClientMsg::SendWrites { stream: 3 });
        let bytes = f.encode().unwrap();
        assert_eq!(bytes[0], TAG_CONTROL);
        // Named fields and variant names, not indices.
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("SendWrites") && text.contains("stream") && text.contains("body"));
        assert_eq!(Frame::<ClientMsg>::decode(&bytes).unwrap(), f);
    }

    #[test]
    fn chunk_and_end_layout() {
        let f: Frame<ServerMsg> = Frame::Chunk { stream: 0x01020304, data: Bytes::from_static(b"xy") };
        assert_eq!(&f.encode().unwrap()[..], &[1, 4, 3, 2, 1, b'x', b'y']);
        let f: Frame<ServerMsg> = Frame::End { stream: 9, end: StreamEnd::Abort("no".into()) };
        assert_eq!(&f.encode().unwrap()[..], &[2, 9, 0, 0, 0, 0, b'n', b'o']);
        let f: Frame<ServerMsg> = Frame::End { stream: 9, end: StreamEnd::Ok };
        assert_eq!(&f.encode().unwrap()[..], &[2, 9, 0, 0, 0, 1]);
    }

    #[test]
    fn specific_errors() {
        type F = Frame<ClientMsg>;
        assert!(matches!(F::decode(&[]), Err(WireError::EmptyFrame)));
        assert!(matches!(F::decode(&[7, 1, 2]), Err(WireError::UnknownTag(7))));
        assert!(matches!(F::decode(&[1, 1, 2]), Err(WireError::Truncated { what: "stream chunk", .. })));
        assert!(matches!(F::decode(&[2, 1, 2, 3, 4]), Err(WireError::Truncated { what: "stream end", .. })));
        assert!(matches!(F::decode(&[2, 1, 2, 3, 4, 5]), Err(WireError::BadEndStatus(5))));
        assert!(matches!(F::decode(&[2, 1, 2, 3, 4, 0, 0xff]), Err(WireError::BadReason)));
        assert!(matches!(F::decode(&[0, 0xc1]), Err(WireError::Malformed { id: None, .. })));

        // An unknown variant, with its request id recovered.
        #[derive(Serialize)]
        enum Future {
            Teleport { to: u32 },
        }
        let bytes = Frame::control(42, Future::Teleport { to: 1 }).encode().unwrap();
        match F::decode(&bytes) {
            Err(e @ WireError::UnknownMessage { id: Some(42), .. }) => {
                assert!(e.to_string().contains("Teleport"), "{e}");
                assert!(!e.is_fatal());
                assert_eq!(e.request_id(), Some(42));
            }
            other => panic!("{other:?}"),
        }

        // A known variant whose path is unsafe.
        #[derive(Serialize)]
        enum Lying {
            Deletes(Vec<String>),
        }
        let bytes = Frame::control(5, Lying::Deletes(vec!["ok".into(), "../etc/passwd".into()])).encode().unwrap();
        match F::decode(&bytes) {
            Err(WireError::Malformed { id: Some(5), detail }) => {
                assert!(detail.contains("..") && detail.contains("field body.Deletes[1]:"), "{detail}")
            }
            other => panic!("{other:?}"),
        }

        // Trailing bytes.
        let mut bytes = Frame::control(1, ClientMsg::AskDeletes).encode().unwrap().to_vec();
        bytes.push(0);
        assert!(matches!(F::decode(&bytes), Err(WireError::Malformed { id: Some(1), .. })));
    }

    #[test]
    fn limits_on_both_sides() {
        let limits = WireLimits { max_message_bytes: 100, max_chunk_bytes: 10 };
        let big = Frame::<ClientMsg>::Chunk { stream: 1, data: Bytes::from(vec![0; 11]) };
        assert!(matches!(
            big.encode_with(&limits),
            Err(WireError::TooLarge { what: "stream chunk", size: 11, limit: 10 })
        ));
        let bytes = big.encode().unwrap();
        assert!(matches!(Frame::<ClientMsg>::decode_with(&bytes, &limits), Err(WireError::TooLarge { .. })));

        let paths = (0..50).map(|i| cs_protocol::RelPath::new(format!("p{i}")).unwrap()).collect();
        let msg = Frame::control(1, ClientMsg::HeldList(paths));
        assert!(matches!(msg.encode_with(&limits), Err(WireError::TooLarge { what: "control message", .. })));
        let bytes = msg.encode().unwrap();
        assert!(matches!(Frame::<ClientMsg>::decode_with(&bytes, &limits), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn default_limit_fits_a_held_list_of_100k_paths() {
        let paths: Vec<_> = (0..100_000)
            .map(|i| cs_protocol::RelPath::new(format!("projects/some-repo/src/module-{i}/file-{i}.rs")).unwrap())
            .collect();
        let f = Frame::control(1, ClientMsg::HeldList(paths));
        let bytes = f.encode().unwrap();
        assert!(bytes.len() < WireLimits::default().max_message_bytes);
        assert_eq!(Frame::<ClientMsg>::decode(&bytes).unwrap(), f);
    }

    /// An older broker's hello answer has no `fetch` field: it reads as
    /// `false`, so the client knows not to ask.
    #[test]
    fn an_old_brokers_hello_reply_says_no_fetch() {
        #[derive(serde::Serialize)]
        struct OldHelloReply {
            need_held_list: bool,
            cursor_unknown: bool,
            ignore_rules: String,
            ignore_error: Option<String>,
        }
        #[derive(serde::Serialize)]
        enum OldServerMsg {
            HelloReply(OldHelloReply),
        }
        let old = OldServerMsg::HelloReply(OldHelloReply {
            need_held_list: true,
            cursor_unknown: false,
            ignore_rules: String::new(),
            ignore_error: None,
        });
        let mut bytes = vec![TAG_CONTROL];
        rmp_serde::encode::write_named(&mut bytes, &crate::Envelope::new(9, old)).unwrap();
        match Frame::<ServerMsg>::decode(&bytes).unwrap() {
            Frame::Control(env) => match env.body {
                ServerMsg::HelloReply(r) => assert!(!r.fetch && !r.snapshot && !r.follow && r.need_held_list),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // And a current one says so.
        let now = ServerMsg::HelloReply(cs_protocol::HelloReply {
            need_held_list: false,
            cursor_unknown: false,
            ignore_rules: String::new(),
            ignore_error: None,
            fetch: true,
            snapshot: true,
            follow: true,
        });
        let f = Frame::control(1, now);
        assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
    }

    #[test]
    fn long_reasons_are_truncated_at_a_char_boundary() {
        let f: Frame<ClientMsg> = Frame::End { stream: 1, end: StreamEnd::Abort("é".repeat(1000)) };
        let bytes = f.encode().unwrap();
        match Frame::<ClientMsg>::decode(&bytes).unwrap() {
            Frame::End { end: StreamEnd::Abort(r), .. } => assert_eq!(r.len(), MAX_REASON_BYTES),
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Frame::<ClientMsg>::decode(&bytes);
            let _ = Frame::<ServerMsg>::decode(&bytes);
        }

        #[test]
        fn random_control_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut b = vec![TAG_CONTROL];
            b.extend_from_slice(&bytes);
            let _ = Frame::<ClientMsg>::decode(&b);
            let _ = Frame::<ServerMsg>::decode(&b);
        }

        #[test]
        fn chunk_and_end_round_trip(stream in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..2048),
                                    ok in any::<bool>(), reason in ".{0,40}") {
            let f: Frame<ClientMsg> = Frame::Chunk { stream, data: Bytes::from(data) };
            prop_assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
            let end = if ok { StreamEnd::Ok } else { StreamEnd::Abort(reason) };
            let f: Frame<ClientMsg> = Frame::End { stream, end };
            prop_assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
        }

        #[test]
        fn control_round_trip(id in any::<u64>(), round_id in any::<u64>(), sent_ms in any::<u64>(),
                              paths in proptest::collection::vec("[a-z]{1,8}(/[a-z][a-z0-9._-]{0,7}){0,3}", 0..20),
                              which in 0usize..10) {
            let paths: Vec<_> = paths.into_iter().map(|p| cs_protocol::RelPath::new(p).unwrap()).collect();
            let body = match which {
                0 => ClientMsg::WasCommitted { round_id },
                1 => ClientMsg::HeldList(paths),
                2 => ClientMsg::Deletes(paths),
                3 => ClientMsg::AskWrites { stream: round_id as u32 },
                4 => ClientMsg::Ping { sent_ms },
                5 => ClientMsg::Fetch { paths: paths.clone(), stream: crate::FETCH_STREAM_BIT | round_id as u32 },
                6 => {
                    // P's answer to a fetch, every field filled.
                    let report = cs_protocol::FetchReport {
                        sent: paths
                            .iter()
                            .map(|p| cs_protocol::FileVersion {
                                path: p.clone(),
                                kind: cs_protocol::EntryKind::File,
                                size: sent_ms,
                                mtime: cs_protocol::Timestamp::new(round_id as i64, (sent_ms % 1_000_000_000) as u32),
                            })
                            .collect(),
                        missing: paths.clone(),
                        refused: paths.iter().map(|p| (p.clone(), "a symlink".to_string())).collect(),
                    };
                    let f: Frame<ServerMsg> = Frame::control(id, ServerMsg::FetchFollows { stream: round_id as u32, report });
                    prop_assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
                    return Ok(());
                }
                7 => ClientMsg::JournalAt,
                8 => {
                    let cursor = cs_protocol::Cursor { epoch: round_id, seq: sent_ms };
                    let f: Frame<ServerMsg> = Frame::control(id, ServerMsg::JournalAt { cursor });
                    prop_assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
                    return Ok(());
                }
                _ => ClientMsg::AskDeletes,
            };
            let f = Frame::control(id, body);
            prop_assert_eq!(Frame::decode(&f.encode().unwrap()).unwrap(), f);
        }
    }
}
