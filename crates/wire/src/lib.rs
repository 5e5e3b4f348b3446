//! cs-actor's wire: one authenticated websocket per compute server, carrying
//! framed MessagePack control messages and chunked tar streams.
//!
//! - [`messages`]: the round's requests ([`ClientMsg`]) and answers
//!   ([`ServerMsg`]), correlated by the request id of their [`Envelope`];
//! - [`frame`]: one [`Frame`] per websocket Binary message, with
//!   [`WireLimits`];
//! - [`auth`]: bearer tokens ([`TokenStore`], [`read_token_file`]);
//! - [`conn`]: [`accept`] / [`accept_tls`] on the broker, [`connect`] on the
//!   compute server, and the [`WsConn`] they give;
//! - [`bridge`]: [`ChunkWriter`] / [`ChunkReader`], blocking `std::io`
//!   adapters with bounded memory for the tar streams;
//! - [`steps`]: the round's steps ([`Step`]) in order, defined once, and which
//!   request may come at each point ([`RoundAt`]).

pub mod auth;
pub mod bridge;
pub mod conn;
pub mod error;
pub mod frame;
pub mod messages;
pub mod snapshot;
pub mod steps;

pub use auth::{read_token_file, TokenFileError, TokenStore, MIN_TOKEN_LEN};
pub use bridge::{
    park_on, stream_channel, ChunkReader, ChunkWriter, Plain, StreamHook, StreamItem, DEFAULT_STREAM_CHANNEL,
};
pub use conn::{
    accept, accept_tls, connect, tls_peer_certificates, ClientConn, ServerConn, TlsAcceptorConfig, WsConn, WsReceiver,
    WsSender,
};
pub use error::{AuthFailure, WireError};
pub use frame::{Frame, StreamEnd, WireLimits, MAX_REASON_BYTES};
pub use messages::{
    ClientMsg, Envelope, ErrorCode, ServerMsg, FETCH_STREAM_BIT, MAX_FETCHES_IN_FLIGHT, MAX_FETCH_PATHS,
    MAX_SNAPSHOTS_IN_FLIGHT, UNSOLICITED_ID,
};
pub use snapshot::{
    SnapshotDecoder, SnapshotEncoder, SnapshotLimits, SnapshotStreamError, MAX_SNAPSHOT_ENTRIES,
    MAX_SNAPSHOT_RECORD_BYTES,
};
pub use steps::{OrderError, RoundAt, Step};

/// Re-exported so that callers name the same stream types.
pub use tokio_tungstenite::MaybeTlsStream;
