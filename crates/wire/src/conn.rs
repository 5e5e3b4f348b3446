//! Authenticated websocket connections: the broker's [`accept`] (ws:// or,
//! with [`accept_tls`], wss://) and the compute server's [`connect`].
//!
//! A [`WsConn`] sends and receives [`Frame`]s; websocket Ping, Pong and
//! Close messages are handled below it. It can be [`split`](WsConn::split)
//! into a [`WsSender`] and a [`WsReceiver`] for two tasks.

use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cs_protocol::ClientId;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{self, header, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::auth::TokenStore;
use crate::bridge::StreamItem;
use crate::error::{AuthFailure, WireError};
use crate::frame::{Frame, StreamEnd, WireLimits};
use crate::messages::{ClientMsg, ServerMsg};

/// How long [`WsConn::close`] waits for the peer's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One websocket connection carrying [`Frame`]s: `In` is the message type
/// received, `Out` the one sent.
pub struct WsConn<S, In, Out> {
    ws: WebSocketStream<S>,
    limits: WireLimits,
    _types: PhantomData<fn(Out) -> In>,
}

/// The broker's end: receives [`ClientMsg`], sends [`ServerMsg`].
pub type ServerConn<S> = WsConn<S, ClientMsg, ServerMsg>;
/// The compute server's end: receives [`ServerMsg`], sends [`ClientMsg`].
pub type ClientConn = WsConn<MaybeTlsStream<TcpStream>, ServerMsg, ClientMsg>;

/// The sending half of a split [`WsConn`].
pub struct WsSender<S, Out> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    limits: WireLimits,
    _types: PhantomData<fn(Out)>,
}

/// The receiving half of a split [`WsConn`]. It also answers the peer's
/// websocket pings (they are replied to while reading).
pub struct WsReceiver<S, In> {
    stream: SplitStream<WebSocketStream<S>>,
    limits: WireLimits,
    _types: PhantomData<fn() -> In>,
}

fn ws_config(limits: &WireLimits) -> WebSocketConfig {
    let max = limits.max_ws_message_bytes();
    WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max))
}

// ---- the shared send/receive logic, over any websocket sink/stream ----

async fn send_frame<K, T>(sink: &mut K, frame: &Frame<T>, limits: &WireLimits) -> Result<(), WireError>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
    T: Serialize,
{
    let bytes = frame.encode_with(limits)?;
    sink.send(Message::Binary(bytes)).await.map_err(WireError::from)
}

async fn recv_frame<St, T>(stream: &mut St, limits: &WireLimits) -> Result<Option<Frame<T>>, WireError>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    T: DeserializeOwned,
{
    loop {
        match stream.next().await {
            None => return Ok(None),
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Binary(b))) => return Frame::decode_bytes(b, limits).map(Some),
            Some(Ok(Message::Text(t))) => return Err(WireError::TextMessage { len: t.len() }),
            // Pings are answered by tungstenite while reading; a Close is
            // answered on the next read, which then reports the end.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_))) => {}
        }
    }
}

async fn send_stream_items<K, T>(
    sink: &mut K,
    stream: u32,
    rx: &mut mpsc::Receiver<StreamItem>,
    limits: &WireLimits,
) -> Result<StreamEnd, WireError>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
    T: Serialize,
{
    while let Some(item) = rx.recv().await {
        match item {
            StreamItem::Chunk(mut data) => {
                while !data.is_empty() {
                    let part = data.split_to(data.len().min(limits.max_chunk_bytes.max(1)));
                    send_frame::<K, T>(sink, &Frame::Chunk { stream, data: part }, limits).await?;
                }
            }
            StreamItem::End(end) => {
                send_frame::<K, T>(sink, &Frame::End { stream, end: end.clone() }, limits).await?;
                return Ok(end);
            }
        }
    }
    // The writer went away without an end item: tell the peer it is cut.
    let end = StreamEnd::Abort("the sender's writer went away before the stream's end".into());
    send_frame::<K, T>(sink, &Frame::End { stream, end: end.clone() }, limits).await?;
    Ok(end)
}

async fn recv_stream_items<St, T>(
    source: &mut St,
    stream: u32,
    tx: &mpsc::Sender<StreamItem>,
    limits: &WireLimits,
) -> Result<StreamEnd, WireError>
where
    St: Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
    T: DeserializeOwned,
{
    // Once the consumer is gone, the rest of the stream is read and dropped
    // so that the connection stays in step.
    let mut consumer = true;
    let err: WireError = loop {
        match recv_frame::<St, T>(source, limits).await {
            Ok(Some(Frame::Chunk { stream: s, data })) if s == stream => {
                if consumer && tx.send(StreamItem::Chunk(data)).await.is_err() {
                    consumer = false;
                }
            }
            Ok(Some(Frame::End { stream: s, end })) if s == stream => {
                if consumer {
                    let _ = tx.send(StreamItem::End(end.clone())).await;
                }
                return Ok(end);
            }
            Ok(Some(other)) => {
                break WireError::Protocol(format!(
                    "{} arrived while stream {stream} was being received",
                    other.describe()
                ))
            }
            Ok(None) => break WireError::Closed,
            Err(e) => break e,
        }
    };
    if consumer {
        let _ = tx.send(StreamItem::End(StreamEnd::Abort(format!("stream {stream} cut: {err}")))).await;
    }
    Err(err)
}

// ---- WsConn ----

impl<S, In, Out> WsConn<S, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: DeserializeOwned,
    Out: Serialize,
{
    /// Wraps an established websocket (made with [`WireLimits::max_ws_message_bytes`]
    /// as its message limit, as [`accept`] and [`connect`] do).
    pub fn from_websocket(ws: WebSocketStream<S>, limits: WireLimits) -> Self {
        WsConn { ws, limits, _types: PhantomData }
    }

    pub fn limits(&self) -> &WireLimits {
        &self.limits
    }

    /// The underlying stream (e.g. for the peer's address).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// Sends one frame. A frame over the limits is refused with
    /// [`WireError::TooLarge`] before anything is sent.
    pub async fn send(&mut self, frame: &Frame<Out>) -> Result<(), WireError> {
        send_frame(&mut self.ws, frame, &self.limits).await
    }

    /// Convenience: sends a control message.
    pub async fn send_msg(&mut self, id: u64, body: Out) -> Result<(), WireError> {
        self.send(&Frame::control(id, body)).await
    }

    /// The next frame; `None` once the peer closed the connection cleanly.
    /// A frame that was read but did not decode is an error that is not
    /// [fatal](WireError::is_fatal): the connection can go on.
    pub async fn recv(&mut self) -> Result<Option<Frame<In>>, WireError> {
        recv_frame(&mut self.ws, &self.limits).await
    }

    /// [`WsConn::recv`] with a deadline ([`WireError::Timeout`] after `after`).
    pub async fn recv_timeout(&mut self, after: Duration) -> Result<Option<Frame<In>>, WireError> {
        match tokio::time::timeout(after, self.recv()).await {
            Ok(r) => r,
            Err(_) => Err(WireError::Timeout { what: "waiting for a message", after }),
        }
    }

    /// Forwards the items of `rx` (fed by a [`crate::ChunkWriter`]) as
    /// stream `stream`, until its end item; a channel closed without one is
    /// sent as an abort. Returns how the stream ended.
    pub async fn send_stream(
        &mut self,
        stream: u32,
        rx: &mut mpsc::Receiver<StreamItem>,
    ) -> Result<StreamEnd, WireError> {
        send_stream_items::<_, Out>(&mut self.ws, stream, rx, &self.limits).await
    }

    /// Receives stream `stream` into `tx` (read by a [`crate::ChunkReader`])
    /// up to its end frame, which is forwarded too. Waits while `tx` is full
    /// (that is the flow control). If `tx`'s receiver is gone, the rest of
    /// the stream is read and dropped. Any other frame before the end is a
    /// [`WireError::Protocol`] error; on every error `tx` gets an abort.
    pub async fn recv_stream(&mut self, stream: u32, tx: &mpsc::Sender<StreamItem>) -> Result<StreamEnd, WireError> {
        recv_stream_items::<_, In>(&mut self.ws, stream, tx, &self.limits).await
    }

    /// Closes cleanly: sends a Close and waits (a few seconds at most) for
    /// the peer's reply.
    pub async fn close(mut self) -> Result<(), WireError> {
        match self.ws.close(None).await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {}
            Err(e) => return Err(e.into()),
        }
        let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
        let _ = tokio::time::timeout(CLOSE_GRACE, drain).await;
        Ok(())
    }

    /// Splits into halves that two tasks can own.
    pub fn split(self) -> (WsSender<S, Out>, WsReceiver<S, In>) {
        let (sink, stream) = self.ws.split();
        (
            WsSender { sink, limits: self.limits, _types: PhantomData },
            WsReceiver { stream, limits: self.limits, _types: PhantomData },
        )
    }
}

impl<S, Out> WsSender<S, Out>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Out: Serialize,
{
    /// See [`WsConn::send`].
    pub async fn send(&mut self, frame: &Frame<Out>) -> Result<(), WireError> {
        send_frame(&mut self.sink, frame, &self.limits).await
    }

    /// See [`WsConn::send_msg`].
    pub async fn send_msg(&mut self, id: u64, body: Out) -> Result<(), WireError> {
        self.send(&Frame::control(id, body)).await
    }

    /// See [`WsConn::send_stream`].
    pub async fn send_stream(
        &mut self,
        stream: u32,
        rx: &mut mpsc::Receiver<StreamItem>,
    ) -> Result<StreamEnd, WireError> {
        send_stream_items::<_, Out>(&mut self.sink, stream, rx, &self.limits).await
    }

    /// Sends a Close; the receiving half then sees the end when the peer
    /// replies.
    pub async fn close(mut self) -> Result<(), WireError> {
        match self.sink.close().await {
            Ok(()) | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

impl<S, In> WsReceiver<S, In>
where
    S: AsyncRead + AsyncWrite + Unpin,
    In: DeserializeOwned,
{
    /// See [`WsConn::recv`].
    pub async fn recv(&mut self) -> Result<Option<Frame<In>>, WireError> {
        recv_frame(&mut self.stream, &self.limits).await
    }

    /// See [`WsConn::recv_stream`].
    pub async fn recv_stream(&mut self, stream: u32, tx: &mpsc::Sender<StreamItem>) -> Result<StreamEnd, WireError> {
        recv_stream_items::<_, In>(&mut self.stream, stream, tx, &self.limits).await
    }
}

// ---- server side ----

/// Checks `Authorization: Bearer <token>`.
fn authorize(request: &Request, tokens: &TokenStore) -> Result<ClientId, AuthFailure> {
    let value = request.headers().get(header::AUTHORIZATION).ok_or(AuthFailure::MissingHeader)?;
    let value = value.to_str().map_err(|_| AuthFailure::NotBearer)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthFailure::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthFailure::NotBearer);
    }
    tokens.authenticate(token).ok_or(AuthFailure::UnknownToken)
}

/// The one response to every refused upgrade: it does not tell why.
fn unauthorized() -> ErrorResponse {
    let mut resp = http::Response::new(Some("unauthorized\n".to_owned()));
    *resp.status_mut() = http::StatusCode::UNAUTHORIZED;
    resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
    resp
}

/// The broker's side of a new connection: performs the websocket upgrade
/// and authenticates it by its `Authorization: Bearer <token>` header.
///
/// A missing header, another scheme or an unknown token all get the same
/// HTTP 401 and yield [`WireError::Unauthorized`] with the reason, for the
/// caller to log with the peer's address. The upgrade must complete within
/// `hello_timeout`: a peer that connects and sends nothing gets
/// [`WireError::Timeout`] and is dropped (waiting for the first message is
/// the caller's, see [`WsConn::recv_timeout`]).
pub async fn accept<S>(
    stream: S,
    tokens: &TokenStore,
    limits: WireLimits,
    hello_timeout: Duration,
) -> Result<(ClientId, ServerConn<S>), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut outcome: Option<Result<ClientId, AuthFailure>> = None;
    // The signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        let result = authorize(request, tokens);
        let ok = result.is_ok();
        outcome = Some(result);
        if ok {
            Ok(response)
        } else {
            Err(unauthorized())
        }
    };
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(ws_config(&limits)));
    let result = tokio::time::timeout(hello_timeout, upgrade).await;
    match (result, outcome) {
        (Err(_), _) => Err(WireError::Timeout { what: "websocket upgrade", after: hello_timeout }),
        (Ok(Err(_)), Some(Err(failure))) => Err(WireError::Unauthorized(failure)),
        (Ok(Err(e)), _) => Err(e.into()),
        (Ok(Ok(ws)), Some(Ok(client))) => Ok((client, WsConn::from_websocket(ws, limits))),
        (Ok(Ok(_)), _) => Err(WireError::Protocol("upgrade completed without authentication".into())),
    }
}

/// [`accept`] over TLS: the TLS handshake and the upgrade together must
/// complete within `hello_timeout`.
pub async fn accept_tls<S>(
    stream: S,
    tls: &TlsAcceptorConfig,
    tokens: &TokenStore,
    limits: WireLimits,
    hello_timeout: Duration,
) -> Result<(ClientId, ServerConn<tokio_rustls::server::TlsStream<S>>), WireError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let start = Instant::now();
    let tls_stream = match tokio::time::timeout(hello_timeout, tls.acceptor.accept(stream)).await {
        Err(_) => return Err(WireError::Timeout { what: "TLS handshake", after: hello_timeout }),
        Ok(Err(e)) => return Err(WireError::Tls(format!("handshake failed: {e}"))),
        Ok(Ok(s)) => s,
    };
    let left = hello_timeout.saturating_sub(start.elapsed());
    match accept(tls_stream, tokens, limits, left).await {
        Err(WireError::Timeout { what, .. }) => Err(WireError::Timeout { what, after: hello_timeout }),
        other => other,
    }
}

/// The broker's TLS identity, for wss://.
#[derive(Clone)]
pub struct TlsAcceptorConfig {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsAcceptorConfig")
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsAcceptorConfig {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key
    /// (PKCS#8, PKCS#1 or SEC1). The key file is refused if others (not the
    /// group: e.g. Debian's `ssl-cert`) may access it.
    pub fn from_pem(cert_path: &Path, key_path: &Path) -> Result<Self, WireError> {
        let certs = CertificateDer::pem_file_iter(cert_path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| WireError::Tls(format!("cannot read certificates from {}: {e}", cert_path.display())))?;
        if certs.is_empty() {
            return Err(WireError::Tls(format!("no certificate in {}", cert_path.display())));
        }
        {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(key_path)
                .map_err(|e| WireError::Tls(format!("cannot read key {}: {e}", key_path.display())))?;
            if meta.mode() & 0o007 != 0 {
                return Err(WireError::Tls(format!(
                    "private key {} has mode {:04o}, which lets others read it; fix with `chmod o-rwx {}`",
                    key_path.display(),
                    meta.mode() & 0o7777,
                    key_path.display()
                )));
            }
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| WireError::Tls(format!("cannot read a private key from {}: {e}", key_path.display())))?;
        Self::from_der(certs, key)
    }

    /// From DER certificate chain and key.
    pub fn from_der(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, WireError> {
        let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| WireError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| WireError::Tls(format!("certificate and key do not make a TLS identity: {e}")))?;
        Ok(TlsAcceptorConfig { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    /// The tokio-rustls acceptor (for callers that do the TLS handshake themselves).
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.acceptor.clone()
    }
}

// ---- client side ----

fn client_tls_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, WireError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(errors = ?native.errors, "some system root certificates could not be loaded");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| WireError::Tls(format!("cannot read CA certificates from {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(WireError::Tls(format!("no certificate in {}", path.display())));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| WireError::Tls(format!("unusable CA certificate in {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(WireError::Tls(
            "no trusted root certificates: the system has none and no extra CA file was given".into(),
        ));
    }
    Ok(rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| WireError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The TLS handshake a `wss://` connection makes, alone, over `stream` (connected to the broker):
/// the server's certificate chain, leaf first, once it verified against the same roots as
/// [`connect`] (the system's plus `extra_ca`). For `cs-actor doctor`, which reports validity
/// and expiry without a token.
pub async fn tls_peer_certificates(
    stream: TcpStream,
    host: &str,
    extra_ca: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, WireError> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_tls_config(extra_ca)?));
    let name = rustls_pki_types::ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']').to_owned())
        .map_err(|e| WireError::Config(format!("bad broker host {host:?}: {e}")))?;
    let tls = connector.connect(name, stream).await.map_err(|e| WireError::Tls(e.to_string()))?;
    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(certs.iter().map(|c| c.clone().into_owned()).collect())
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The compute server's side: connects to the broker at `url` (`ws://` or
/// `wss://`), presenting `token` as `Authorization: Bearer <token>`.
///
/// For wss://, the server certificate is checked against the system's
/// roots plus, if given, the PEM certificates of `extra_ca` (e.g. a broker's
/// self-signed certificate). A refused upgrade is [`WireError::Rejected`]
/// with the HTTP status (401 for a bad token). There is no connect timeout:
/// wrap the call in `tokio::time::timeout`.
pub async fn connect(
    url: &str,
    token: &str,
    extra_ca: Option<&Path>,
    limits: WireLimits,
) -> Result<ClientConn, WireError> {
    let mut request =
        url.into_client_request().map_err(|e| WireError::Config(format!("bad broker URL {url:?}: {e}")))?;
    let scheme = request.uri().scheme_str().unwrap_or("").to_ascii_lowercase();
    let host = request.uri().host().unwrap_or("").to_owned();
    let connector = match scheme.as_str() {
        "wss" => Connector::Rustls(Arc::new(client_tls_config(extra_ca)?)),
        "ws" => {
            if !is_loopback(&host) {
                tracing::warn!(
                    url,
                    "plain ws:// to a non-loopback host: the token and data travel unencrypted; use wss://"
                );
            }
            Connector::Plain
        }
        other => {
            return Err(WireError::Config(format!("broker URL {url:?} has scheme {other:?}; use ws:// or wss://")))
        }
    };
    let mut auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| WireError::Config("the token has characters that cannot travel in an HTTP header".into()))?;
    auth.set_sensitive(true);
    request.headers_mut().insert(header::AUTHORIZATION, auth);
    let (ws, _response) =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config(&limits)), true, Some(connector))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Tls(t) => WireError::Tls(t.to_string()),
                tungstenite::Error::Io(io) => match io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls @ rustls::Error::InvalidCertificate(_)) => WireError::Tls(format!(
                        "{tls} (for a broker with a self-signed certificate, pass that certificate as the extra CA)"
                    )),
                    Some(tls) => WireError::Tls(tls.to_string()),
                    None => WireError::Io(io),
                },
                other => WireError::from(other),
            })?;
    Ok(WsConn::from_websocket(ws, limits))
}
