//! The `/metrics` endpoint: a small HTTP server (tiny_http) on its own
//! thread. Each scrape asks the service's runtime for the exposition (its
//! status is read by actor messages, which run there) and waits for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::MetricsError;

/// Produces the exposition text on the service's runtime.
pub type Render = Arc<dyn Fn() -> BoxFuture<'static, String> + Send + Sync>;

/// A scrape waits this long for the service's status, then answers 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// The media type of prometheus-client's text encoding (Prometheus reads it).
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The running endpoint; dropping it stops the server.
pub struct Endpoint {
    /// Where it listens (the port the system chose for port 0).
    pub local_addr: SocketAddr,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

/// Serves `GET /metrics` on `addr`. Must be called inside a tokio runtime:
/// `render` runs on it.
pub fn serve(addr: SocketAddr, render: Render) -> Result<Endpoint, MetricsError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| MetricsError::NoRuntime)?;
    let server = tiny_http::Server::http(addr).map_err(|e| MetricsError::Listen { addr, message: e.to_string() })?;
    let local_addr =
        server.server_addr().to_ip().ok_or(MetricsError::Listen { addr, message: "not an IP listener".into() })?;
    let server = Arc::new(server);
    let serving = server.clone();
    let thread = std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for request in serving.incoming_requests() {
                answer(request, &runtime, &render);
            }
        })
        .map_err(|e| MetricsError::Listen { addr, message: format!("starting its thread: {e}") })?;
    tracing::info!(%local_addr, "serving metrics at /metrics");
    Ok(Endpoint { local_addr, server, thread: Some(thread) })
}

fn answer(request: tiny_http::Request, runtime: &tokio::runtime::Handle, render: &Render) {
    let path = request.url().split('?').next().unwrap_or_default();
    let response = if *request.method() != tiny_http::Method::Get {
        text(405, "only GET is served\n")
    } else if path != "/metrics" {
        text(404, "metrics are served at /metrics\n")
    } else {
        let (tx, rx) = std::sync::mpsc::channel();
        let exposition = render();
        runtime.spawn(async move {
            let _ = tx.send(exposition.await);
        });
        match rx.recv_timeout(SCRAPE_TIMEOUT) {
            Ok(body) => text(200, &body).with_header(header("Content-Type", CONTENT_TYPE)),
            Err(_) => text(503, "the service did not give its status in time\n"),
        }
    };
    if let Err(e) = request.respond(response) {
        tracing::debug!(error = %e, "answering a metrics scrape");
    }
}

fn text(status: u16, body: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    tiny_http::Response::from_string(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    // Both are this file's constants: valid header bytes.
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("a valid header")
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
