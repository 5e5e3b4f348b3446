//! Shared helpers of the integration tests: a loopback broker and tokens.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use cs_protocol::ClientId;
use cs_wire::{accept, ServerConn, TokenStore, WireError, WireLimits};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

pub const TOKEN_A: &str = "token-of-gpu-1-0123456789abcdef";
pub const TOKEN_B: &str = "token-of-gpu-2-fedcba9876543210";

pub fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

pub fn tokens() -> TokenStore {
    TokenStore::from_pairs([(id("gpu-1"), TOKEN_A), (id("gpu-2"), TOKEN_B)]).unwrap()
}

/// A loopback broker: accepts connections forever, reports every accept's
/// outcome on the returned channel and runs `handler` on each accepted one.
pub async fn spawn_server<F, Fut>(
    limits: WireLimits,
    hello_timeout: Duration,
    handler: F,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<ClientId, WireError>>)
where
    F: Fn(ClientId, ServerConn<TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = std::sync::Arc::new(handler);
    let store = tokens();
    tokio::spawn(async move {
        loop {
            let (tcp, _peer) = listener.accept().await.unwrap();
            let (tx, handler, store) = (tx.clone(), handler.clone(), store.clone());
            tokio::spawn(async move {
                match accept(tcp, &store, limits, hello_timeout).await {
                    Ok((client, conn)) => {
                        let _ = tx.send(Ok(client.clone()));
                        handler(client, conn).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        }
    });
    (addr, rx)
}

pub fn url(addr: SocketAddr) -> String {
    format!("ws://{addr}/sync")
}

/// 64-bit xorshift: fast deterministic "random" bytes.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}
