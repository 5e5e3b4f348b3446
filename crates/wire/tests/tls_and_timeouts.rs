//! wss:// with a self-signed broker certificate, and silent peers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use cs_wire::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn self_signed() -> TlsFiles {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("broker.crt");
    let key = dir.path().join("broker.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    TlsFiles { _dir: dir, cert, key }
}

/// A wss:// broker answering pings; reports each accept's outcome.
async fn tls_server(
    tls: TlsAcceptorConfig,
    hello_timeout: Duration,
) -> (std::net::SocketAddr, mpsc::UnboundedReceiver<Result<cs_protocol::ClientId, WireError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let store = tokens();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tls, store, tx) = (tls.clone(), store.clone(), tx.clone());
            tokio::spawn(async move {
                match accept_tls(tcp, &tls, &store, WireLimits::default(), hello_timeout).await {
                    Ok((client, mut conn)) => {
                        tx.send(Ok(client)).unwrap();
                        while let Ok(Some(Frame::Control(Envelope { id, body: ClientMsg::Ping { sent_ms } }))) =
                            conn.recv().await
                        {
                            conn.send_msg(id, ServerMsg::Pong { sent_ms }).await.unwrap();
                        }
                    }
                    Err(e) => tx.send(Err(e)).unwrap(),
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn wss_with_a_self_signed_certificate_trusted_via_extra_ca() {
    let files = self_signed();
    let tls = TlsAcceptorConfig::from_pem(&files.cert, &files.key).unwrap();
    let (addr, mut accepted) = tls_server(tls, Duration::from_secs(5)).await;
    let url = format!("wss://127.0.0.1:{}/sync", addr.port());

    let mut conn = connect(&url, TOKEN_A, Some(&files.cert), WireLimits::default()).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), id("gpu-1"));
    assert!(matches!(conn.get_ref(), MaybeTlsStream::Rustls(_)), "the stream is TLS");
    conn.send_msg(1, ClientMsg::Ping { sent_ms: 42 }).await.unwrap();
    assert_eq!(
        conn.recv().await.unwrap().unwrap(),
        Frame::Control(Envelope { id: 1, body: ServerMsg::Pong { sent_ms: 42 } })
    );
    conn.close().await.unwrap();

    // Without the extra CA the certificate is unknown: refused.
    let e = match connect(&url, TOKEN_A, None, WireLimits::default()).await {
        Err(e) => e,
        Ok(_) => panic!("an untrusted certificate was accepted"),
    };
    match &e {
        // This machine may have no system roots at all.
        WireError::Tls(m) => assert!(m.contains("UnknownIssuer") || m.contains("no trusted root"), "{m}"),
        other => panic!("expected a TLS error, got {other}"),
    }
    assert!(accepted.recv().await.unwrap().is_err());

    // And a bad token is still refused over TLS.
    assert!(matches!(
        connect(&url, "wrong-token-wrong-token", Some(&files.cert), WireLimits::default()).await,
        Err(WireError::Rejected { status: 401 })
    ));
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::UnknownToken))));
}

#[test]
fn a_key_readable_by_everyone_is_refused() {
    let files = self_signed();
    std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = TlsAcceptorConfig::from_pem(&files.cert, &files.key).unwrap_err();
    assert!(e.to_string().contains("chmod o-rwx"), "{e}");
}

/// Connects, sends nothing, and measures when the server hangs up.
async fn silent_peer(addr: std::net::SocketAddr) -> Duration {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the server hung up without a word");
    start.elapsed()
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_hello_timeout() {
    let timeout = Duration::from_millis(300);
    let (addr, mut accepted) = spawn_server(WireLimits::default(), timeout, |_c, _conn| async {}).await;
    let waited = silent_peer(addr).await;
    assert!(waited >= timeout && waited < Duration::from_secs(3), "{waited:?}");
    match accepted.recv().await.unwrap() {
        Err(e @ WireError::Timeout { .. }) => assert!(e.to_string().contains("websocket upgrade"), "{e}"),
        other => panic!("{other:?}"),
    }
    // A real client is still served.
    connect(&url(addr), TOKEN_A, None, WireLimits::default()).await.unwrap();
    assert!(accepted.recv().await.unwrap().is_ok());
}

#[tokio::test]
async fn a_silent_tls_client_is_dropped_after_hello_timeout() {
    let files = self_signed();
    let tls = TlsAcceptorConfig::from_pem(&files.cert, &files.key).unwrap();
    let timeout = Duration::from_millis(300);
    let (addr, mut accepted) = tls_server(tls, timeout).await;
    let waited = silent_peer(addr).await;
    assert!(waited >= timeout && waited < Duration::from_secs(3), "{waited:?}");
    match accepted.recv().await.unwrap() {
        Err(e @ WireError::Timeout { .. }) => assert!(e.to_string().contains("TLS handshake"), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// What `cs-actor doctor` asks of a wss:// broker: the handshake alone, with the service's trust.
#[tokio::test]
async fn the_tls_handshake_alone_gives_the_verified_chain() {
    use rustls_pki_types::pem::PemObject;
    let files = self_signed();
    let tls = TlsAcceptorConfig::from_pem(&files.cert, &files.key).unwrap();
    let (addr, _accepted) = tls_server(tls, Duration::from_secs(5)).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let chain = tls_peer_certificates(tcp, "127.0.0.1", Some(&files.cert)).await.unwrap();
    let pem = std::fs::read(&files.cert).unwrap();
    let expected = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(chain.first().map(|c| c.as_ref()), Some(expected.as_ref()));
    // Without the extra CA the certificate is unknown: the doctor reports the handshake's error.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let e = tls_peer_certificates(tcp, "127.0.0.1", None).await.unwrap_err();
    assert!(matches!(e, WireError::Tls(_)), "{e}");
}
