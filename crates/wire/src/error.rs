//! Everything that can go wrong on the wire, each case naming what was wrong.

use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::messages::ErrorCode;

/// Why an upgrade request was refused (HTTP 401). The peer gets the same
/// response in every case; the reason is for the server's log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    MissingHeader,
    /// An `Authorization` header that is not `Bearer <token>` (e.g. `Basic …`).
    NotBearer,
    /// A bearer token that matches no client.
    UnknownToken,
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFailure::MissingHeader => "no Authorization header",
            AuthFailure::NotBearer => "Authorization header is not of the form `Bearer <token>`",
            AuthFailure::UnknownToken => "bearer token matches no client",
        })
    }
}

fn req(id: &Option<u64>) -> String {
    match id {
        Some(id) => format!(" (request {id})"),
        None => String::new(),
    }
}

/// An error of framing, decoding, authentication or transport.
///
/// [`WireError::is_fatal`] tells whether the connection is still usable:
/// a frame that was read whole but did not decode leaves the connection in
/// step (the caller can answer [`crate::ServerMsg::Error`] and go on), a
/// transport error or an over-limit websocket message does not.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("text websocket message of {len} bytes received: this protocol uses binary messages only")]
    TextMessage { len: usize },
    #[error("empty websocket message: a frame needs at least its tag byte")]
    EmptyFrame,
    #[error("unknown frame tag {0} (expected 0 control, 1 stream chunk, 2 stream end)")]
    UnknownTag(u8),
    #[error("truncated {what} frame: its header needs {need} bytes, the message has {got}")]
    Truncated { what: &'static str, need: usize, got: usize },
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { what: &'static str, size: usize, limit: usize },
    #[error(
        "websocket message exceeds the limit of {limit} bytes (announced {size} bytes); the connection is dropped"
    )]
    MessageTooLarge { size: usize, limit: usize },
    #[error("malformed control message{}: {detail}", req(.id))]
    Malformed { id: Option<u64>, detail: String },
    #[error("unknown control message{}: {detail}", req(.id))]
    UnknownMessage { id: Option<u64>, detail: String },
    #[error("stream end frame has status byte {0} (expected 1 ok or 0 abort)")]
    BadEndStatus(u8),
    #[error("stream end frame's reason is not UTF-8")]
    BadReason,
    #[error("could not encode {what}: {detail}")]
    Encode { what: &'static str, detail: String },
    #[error("unauthorized: {0}")]
    Unauthorized(AuthFailure),
    #[error("the server refused the websocket upgrade with HTTP status {status}{}", if *.status == 401 { " (check the token)" } else { "" })]
    Rejected { status: u16 },
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("websocket: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    #[error("connection closed")]
    Closed,
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// True when the connection cannot be used any more: drop it. False for
    /// a frame that was received whole but rejected (bad tag, malformed or
    /// unknown message, over-limit part, text message) and for a frame
    /// refused before sending.
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            WireError::TextMessage { .. }
                | WireError::EmptyFrame
                | WireError::UnknownTag(_)
                | WireError::Truncated { .. }
                | WireError::TooLarge { .. }
                | WireError::Malformed { .. }
                | WireError::UnknownMessage { .. }
                | WireError::BadEndStatus(_)
                | WireError::BadReason
                | WireError::Encode { .. }
        )
    }

    /// The request id, when the error is about a control message whose id
    /// could still be read: the id to answer [`crate::ServerMsg::Error`] with.
    pub fn request_id(&self) -> Option<u64> {
        match self {
            WireError::Malformed { id, .. } | WireError::UnknownMessage { id, .. } => *id,
            _ => None,
        }
    }

    /// The [`ErrorCode`] to report this error to the peer with.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            WireError::TooLarge { .. } | WireError::MessageTooLarge { .. } => ErrorCode::TooLarge,
            WireError::Unauthorized(_) | WireError::Rejected { status: 401 } => ErrorCode::Unauthorized,
            WireError::Encode { .. }
            | WireError::Io(_)
            | WireError::Tls(_)
            | WireError::Config(_)
            | WireError::Timeout { .. }
            | WireError::WebSocket(_)
            | WireError::Closed
            | WireError::Rejected { .. } => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }
}

impl From<tungstenite::Error> for WireError {
    fn from(e: tungstenite::Error) -> Self {
        use tungstenite::error::CapacityError;
        match e {
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                WireError::MessageTooLarge { size, limit: max_size }
            }
            tungstenite::Error::Io(io) => WireError::Io(io),
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => WireError::Closed,
            tungstenite::Error::Http(resp) => WireError::Rejected { status: resp.status().as_u16() },
            other => WireError::WebSocket(Box::new(other)),
        }
    }
}
