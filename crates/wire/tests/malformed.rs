//! Hostile or broken input: every case is a specific WireError, the
//! connection survives what can be survived, and the broker keeps serving.

mod common;

use std::time::Duration;

use common::*;
use cs_wire::*;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// A broker that answers pings, answers decodable-but-bad frames with an
/// Error reply (as the spec asks), reports every error, and drops the
/// connection on a fatal one.
async fn robust_server() -> (std::net::SocketAddr, mpsc::UnboundedReceiver<String>) {
    let (err_tx, err_rx) = mpsc::unbounded_channel();
    let (addr, _accepted) = spawn_server(WireLimits::default(), Duration::from_secs(5), move |_c, mut conn| {
        let err_tx = err_tx.clone();
        async move {
            loop {
                match conn.recv().await {
                    Ok(None) => return,
                    Ok(Some(Frame::Control(Envelope { id, body: ClientMsg::Ping { sent_ms } }))) => {
                        conn.send_msg(id, ServerMsg::Pong { sent_ms }).await.unwrap();
                    }
                    Ok(Some(other)) => panic!("unexpected {other:?}"),
                    Err(e) => {
                        let fatal = e.is_fatal();
                        err_tx.send(format!("{}{e}", if fatal { "FATAL " } else { "" })).unwrap();
                        if fatal {
                            return;
                        }
                        let reply = ServerMsg::Error { code: e.error_code(), message: e.to_string() };
                        conn.send_msg(e.request_id().unwrap_or(0), reply).await.unwrap();
                    }
                }
            }
        }
    })
    .await;
    (addr, err_rx)
}

async fn raw_client(
    addr: std::net::SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = url(addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {TOKEN_A}")).unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap().0
}

/// The next Binary frame from the server, decoded.
async fn next_reply(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Envelope<ServerMsg> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap() {
            Message::Binary(b) => match Frame::<ServerMsg>::decode(&b).unwrap() {
                Frame::Control(env) => return env,
                other => panic!("{other:?}"),
            },
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn malformed_frames_are_specific_errors_and_the_broker_keeps_serving() {
    let (addr, mut errors) = robust_server().await;
    let mut ws = raw_client(addr).await;

    // Each bad message: the error the broker saw, and the code it replied with.
    #[derive(serde::Serialize)]
    enum Unknown {
        Teleport { to: u32 },
    }
    let unknown = Frame::control(9, Unknown::Teleport { to: 1 }).encode().unwrap();
    let cases: Vec<(Message, &str, ErrorCode, u64)> = vec![
        (Message::binary(vec![0xde, 0xad, 0xbe, 0xef]), "unknown frame tag 222", ErrorCode::BadRequest, 0),
        (Message::binary(vec![0, 0xc1, 0x00, 0x17]), "malformed control message", ErrorCode::BadRequest, 0),
        (Message::text("hello"), "text websocket message", ErrorCode::BadRequest, 0),
        (Message::binary(vec![7, 0, 0, 0, 0]), "unknown frame tag 7", ErrorCode::BadRequest, 0),
        (Message::binary(vec![1, 0, 0]), "truncated stream chunk frame", ErrorCode::BadRequest, 0),
        (Message::binary(vec![]), "empty websocket message", ErrorCode::BadRequest, 0),
        (Message::binary(unknown), "unknown control message (request 9)", ErrorCode::BadRequest, 9),
        (
            Message::binary(vec![1, 0, 0, 0, 0].into_iter().chain(vec![0; 256 * 1024 + 1]).collect::<Vec<u8>>()),
            "stream chunk of 262145 bytes exceeds the limit",
            ErrorCode::TooLarge,
            0,
        ),
    ];
    for (msg, needle, code, id) in cases {
        ws.send(msg).await.unwrap();
        let seen = errors.recv().await.unwrap();
        assert!(seen.contains(needle) && !seen.starts_with("FATAL"), "expected {needle:?}, got {seen:?}");
        let reply = next_reply(&mut ws).await;
        assert_eq!(reply.id, id);
        assert!(matches!(reply.body, ServerMsg::Error { code: c, .. } if c == code), "{reply:?}");
    }

    // The same connection still serves.
    ws.send(Message::binary(Frame::control(5, ClientMsg::Ping { sent_ms: 1 }).encode().unwrap())).await.unwrap();
    assert_eq!(next_reply(&mut ws).await, Envelope { id: 5, body: ServerMsg::Pong { sent_ms: 1 } });

    // A 100 MiB message is refused from its header, before it is buffered,
    // and the connection is dropped.
    let huge = vec![0u8; 100 << 20];
    let _ = ws.send(Message::binary(huge)).await; // may fail: the broker hangs up
    let seen = tokio::time::timeout(Duration::from_secs(10), errors.recv()).await.unwrap().unwrap();
    assert!(seen.starts_with("FATAL") && seen.contains("exceeds the limit"), "{seen}");

    // The broker still serves new connections.
    let mut conn = connect(&url(addr), TOKEN_B, None, WireLimits::default()).await.unwrap();
    conn.send_msg(6, ClientMsg::Ping { sent_ms: 2 }).await.unwrap();
    assert_eq!(
        conn.recv().await.unwrap().unwrap(),
        Frame::Control(Envelope { id: 6, body: ServerMsg::Pong { sent_ms: 2 } })
    );
}

#[tokio::test]
async fn oversize_frames_are_refused_before_sending() {
    let (addr, _errors) = robust_server().await;
    let limits = WireLimits { max_message_bytes: 1024, max_chunk_bytes: 100 };
    let mut conn = connect(&url(addr), TOKEN_A, None, limits).await.unwrap();
    let paths = (0..200).map(|i| cs_protocol::RelPath::new(format!("file-{i}")).unwrap()).collect();
    let e = conn.send_msg(1, ClientMsg::HeldList(paths)).await.unwrap_err();
    assert!(matches!(e, WireError::TooLarge { what: "control message", .. }) && !e.is_fatal(), "{e}");
    // Nothing was sent: the connection is still in step.
    conn.send_msg(2, ClientMsg::Ping { sent_ms: 3 }).await.unwrap();
    assert_eq!(
        conn.recv().await.unwrap().unwrap(),
        Frame::Control(Envelope { id: 2, body: ServerMsg::Pong { sent_ms: 3 } })
    );
}
