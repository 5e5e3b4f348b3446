//! Authentication of the websocket upgrade, and the token files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use cs_wire::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

async fn echo_server(
) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Result<cs_protocol::ClientId, WireError>>) {
    spawn_server(WireLimits::default(), Duration::from_secs(5), |client, mut conn| async move {
        while let Ok(Some(Frame::Control(Envelope { id, body: ClientMsg::Ping { .. } }))) = conn.recv().await {
            // Answer with the authenticated id's length, so the client can tell who it is.
            conn.send_msg(id, ServerMsg::Pong { sent_ms: client.as_str().len() as u64 }).await.unwrap();
        }
    })
    .await
}

/// Upgrade with an arbitrary Authorization header (or none), raw.
async fn raw_upgrade(addr: std::net::SocketAddr, auth: Option<&str>) -> Result<(), u16> {
    let mut req = url(addr).into_client_request().unwrap();
    if let Some(a) = auth {
        req.headers_mut().insert("authorization", HeaderValue::from_str(a).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn upgrade_requires_a_known_bearer_token() {
    let (addr, mut accepted) = echo_server().await;

    // No header.
    assert_eq!(raw_upgrade(addr, None).await, Err(401));
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::MissingHeader))));

    // Another scheme, even with a valid token inside.
    assert_eq!(raw_upgrade(addr, Some(&format!("Basic {TOKEN_A}"))).await, Err(401));
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::NotBearer))));
    assert_eq!(raw_upgrade(addr, Some("Bearer")).await, Err(401));
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::NotBearer))));

    // Wrong token, through the real client.
    match connect(&url(addr), "not-the-right-token-at-all", None, WireLimits::default()).await {
        Err(e @ WireError::Rejected { status: 401 }) => assert!(e.to_string().contains("401")),
        Err(e) => panic!("unexpected {e}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::UnknownToken))));
    // A valid token's prefix is a wrong token.
    assert!(matches!(
        connect(&url(addr), &TOKEN_A[..TOKEN_A.len() - 1], None, WireLimits::default()).await,
        Err(WireError::Rejected { status: 401 })
    ));
    assert!(matches!(accepted.recv().await.unwrap(), Err(WireError::Unauthorized(AuthFailure::UnknownToken))));

    // Valid tokens: accepted with the right client id ("bearer" is case-insensitive).
    let mut conn = connect(&url(addr), TOKEN_B, None, WireLimits::default()).await.unwrap();
    assert_eq!(accepted.recv().await.unwrap().unwrap(), id("gpu-2"));
    conn.send_msg(1, ClientMsg::Ping { sent_ms: 0 }).await.unwrap();
    assert!(matches!(
        conn.recv().await.unwrap(),
        Some(Frame::Control(Envelope { id: 1, body: ServerMsg::Pong { sent_ms: 5 } }))
    ));
    assert_eq!(raw_upgrade(addr, Some(&format!("bearer {TOKEN_A}"))).await, Ok(()));
    assert_eq!(accepted.recv().await.unwrap().unwrap(), id("gpu-1"));
}

/// The raw HTTP response to an upgrade with the given extra header lines.
async fn raw_http(addr: std::net::SocketAddr, extra: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /sync HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Until EOF (a refusal closes the connection) or the end of a 101's headers.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await.unwrap().unwrap();
        out.extend_from_slice(&buf[..n]);
        if n == 0 || (out.starts_with(b"HTTP/1.1 101") && out.windows(4).any(|w| w == b"\r\n\r\n")) {
            break;
        }
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn refusals_look_the_same_whatever_the_reason() {
    let (addr, _accepted) = echo_server().await;
    let missing = raw_http(addr, "").await;
    let basic = raw_http(addr, "Authorization: Basic dXNlcjpwYXNz\r\n").await;
    let wrong = raw_http(addr, "Authorization: Bearer wrong-token-wrong-token\r\n").await;
    assert!(missing.starts_with("HTTP/1.1 401"), "{missing}");
    assert!(missing.to_ascii_lowercase().contains("www-authenticate: bearer"), "{missing}");
    assert!(missing.ends_with("\r\n\r\nunauthorized\n"), "{missing}");
    assert_eq!(missing, basic);
    assert_eq!(missing, wrong);
    let ok = raw_http(addr, &format!("Authorization: Bearer {TOKEN_A}\r\n")).await;
    assert!(ok.starts_with("HTTP/1.1 101"), "{ok}");
}

#[test]
fn a_token_file_readable_by_others_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    std::fs::write(&path, format!("# broker tokens\ngpu-1 {TOKEN_A}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = TokenStore::load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&format!("chmod 600 {}", path.display())), "{msg}");
    assert!(msg.contains("0644"), "{msg}");
    assert!(!msg.contains(TOKEN_A));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let store = TokenStore::load(&path).unwrap();
    assert_eq!(store.authenticate(TOKEN_A), Some(id("gpu-1")));
    assert_eq!(store.authenticate(TOKEN_B), None);

    let client = dir.path().join("client-token");
    std::fs::write(&client, format!("{TOKEN_A}\n")).unwrap();
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(read_token_file(&client).unwrap_err().to_string().contains("chmod 600"));
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(read_token_file(&client).unwrap(), TOKEN_A);
}
