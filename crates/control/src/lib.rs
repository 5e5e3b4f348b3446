//! The control socket: how `cs-actor status` and `cs-actor sync` talk to a
//! running service on the same machine.
//!
//! One JSON object per line each way over a unix socket (mode 0600, so only
//! the service's user can ask). A request is `{"cmd":"status"}` or
//! `{"cmd":"sync","wait":true}`; the answer is `{"ok":true,"status":{…}}`,
//! `{"ok":true,"round":N}` or `{"ok":false,"error":"…"}` (with `"permanent":true`
//! when retrying cannot help: the service stopped trying). The status object
//! is the service's observable state, documented in docs/operations.md.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Run a round now; with `wait`, answer when it committed or failed.
    Sync {
        wait: bool,
    },
    /// The lower layer is empty on purpose (the project was emptied): lift
    /// the safety rail that paused syncing.
    AcceptEmptyLower,
    /// `cs-actor pause`: no round starts until `resume` (kept across restarts).
    Pause {
        #[serde(default)]
        reason: Option<String>,
    },
    /// `cs-actor resume`: lift the operator's pause.
    Resume,
    /// `cs-actor fetch`: the compute service fetches P's current content of
    /// these project paths over its connection (beside any round) and
    /// unpacks it into `to`, an existing directory, with the service's own
    /// rights (the socket is mode 0600: only the service's user asks).
    Fetch {
        paths: Vec<String>,
        to: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<serde_json::Value>,
    /// The round that answered a `sync`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub round: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    /// The error will not pass by itself (a refused token, a protocol version mismatch):
    /// the service stopped retrying. `cs-actor sync --wait` exits with its own code then.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub permanent: bool,
    /// What a request that changed something did, for the person who asked.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message: Option<String>,
    /// What a `fetch` brought (sent, missing, refused, written...).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fetch: Option<serde_json::Value>,
}

impl Response {
    pub fn status(v: serde_json::Value) -> Self {
        Response { status: Some(v), ..Response::done() }
    }
    pub fn round(n: u64) -> Self {
        Response { round: Some(n), ..Response::done() }
    }
    pub fn done() -> Self {
        Response { ok: true, status: None, round: None, error: None, permanent: false, message: None, fetch: None }
    }
    pub fn fetched(v: serde_json::Value) -> Self {
        Response { fetch: Some(v), ..Response::done() }
    }
    /// Done, saying what was done.
    pub fn done_with(message: impl Into<String>) -> Self {
        Response { message: Some(message.into()), ..Response::done() }
    }
    pub fn error(e: impl Into<String>) -> Self {
        Response { ok: false, error: Some(e.into()), ..Response::done() }
    }
    /// An error that retrying cannot fix.
    pub fn permanent_error(e: impl Into<String>) -> Self {
        Response { permanent: true, ..Response::error(e) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}; is the service running, and is this its --control-socket?")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("control socket {path}: bad answer: {reason}")]
    BadAnswer { path: PathBuf, reason: String },
    #[error("control socket {path}: cannot listen: {source}")]
    Listen { path: PathBuf, source: std::io::Error },
}

/// What the service does with a request.
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Serves the socket until the returned task is aborted. A stale socket file
/// from a previous run is replaced.
pub fn serve(path: &Path, handler: Handler) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let err = |source| ControlError::Listen { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(e) = serve_one(stream, handler).await {
                    tracing::debug!(error = %e, "control connection ended");
                }
            });
        }
    }))
}

async fn serve_one(stream: UnixStream, handler: Handler) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler(req).await,
            Err(e) => Response::error(format!("bad request {line:?}: {e}")),
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Sends one request and reads the answer (client side, for the CLI).
pub async fn ask(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let stream =
        UnixStream::connect(path).await.map_err(|source| ControlError::Connect { path: path.to_path_buf(), source })?;
    let io = |source| ControlError::Io { path: path.to_path_buf(), source };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    w.write_all(&line).await.map_err(io)?;
    let mut lines = BufReader::new(r).lines();
    let answer = lines
        .next_line()
        .await
        .map_err(io)?
        .ok_or_else(|| ControlError::BadAnswer { path: path.to_path_buf(), reason: "connection closed".into() })?;
    serde_json::from_str(&answer)
        .map_err(|e| ControlError::BadAnswer { path: path.to_path_buf(), reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_bad_request() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("ctl.sock");
        let handler: Handler = Arc::new(|req| {
            Box::pin(async move {
                match req {
                    Request::Status => Response::status(serde_json::json!({"phase": "idle"})),
                    Request::Sync { wait } => {
                        if wait {
                            Response::round(7)
                        } else {
                            Response::error("nope")
                        }
                    }
                    Request::AcceptEmptyLower | Request::Resume => Response::done(),
                    Request::Pause { reason } => Response::done_with(format!("paused: {reason:?}")),
                    Request::Fetch { paths, to } => Response::fetched(serde_json::json!({"paths": paths, "to": to})),
                }
            })
        });
        let task = serve(&sock, handler).unwrap();
        let mode = std::fs::metadata(&sock).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let r = ask(&sock, &Request::Status).await.unwrap();
        assert_eq!(r.status.unwrap()["phase"], "idle");
        assert_eq!(ask(&sock, &Request::Sync { wait: true }).await.unwrap().round, Some(7));
        let r = ask(&sock, &Request::Sync { wait: false }).await.unwrap();
        assert!(!r.ok && r.error.as_deref() == Some("nope") && !r.permanent);
        let line = serde_json::to_string(&Response::permanent_error("401")).unwrap();
        assert_eq!(line, r#"{"ok":false,"error":"401","permanent":true}"#);
        assert!(serde_json::from_str::<Response>(&line).unwrap().permanent);
        // A garbage line gets an error answer, not a dropped connection.
        let mut s = UnixStream::connect(&sock).await.unwrap();
        s.write_all(b"{not json\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).await.unwrap();
        assert!(line.contains("\"ok\":false") && line.contains("bad request"), "{line}");
        let r = ask(&sock, &Request::Pause { reason: Some("maintenance".into()) }).await.unwrap();
        assert_eq!(r.message.as_deref(), Some("paused: Some(\"maintenance\")"));
        // A pause without a reason: the field may be left out.
        let req: Request = serde_json::from_str(r#"{"cmd":"pause"}"#).unwrap();
        assert_eq!(req, Request::Pause { reason: None });
        assert!(ask(&sock, &Request::Resume).await.unwrap().ok);
        // A fetch's answer carries what it brought.
        let req = Request::Fetch { paths: vec!["src/a.rs".into()], to: "/tmp/x".into() };
        let r = ask(&sock, &req).await.unwrap();
        assert_eq!(r.fetch, Some(serde_json::json!({"paths": ["src/a.rs"], "to": "/tmp/x"})));
        task.abort();
        let missing = ask(&dir.path().join("nope.sock"), &Request::Status).await.unwrap_err().to_string();
        assert!(missing.contains("is the service running"), "{missing}");
    }
}
