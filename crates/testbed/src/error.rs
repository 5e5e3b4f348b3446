use std::path::PathBuf;

/// Everything that can go wrong starting or stopping a testbed process.
#[derive(thiserror::Error, Debug)]
pub enum TestbedError {
    /// A filesystem or socket call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A program failed, exited early, or did not get ready in time.
    #[error("{op}: {detail}")]
    Process { op: &'static str, detail: String },
}

impl TestbedError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TestbedError::Io { op, path: path.into(), source }
    }
    pub(crate) fn process(op: &'static str, detail: impl Into<String>) -> Self {
        TestbedError::Process { op, detail: detail.into() }
    }
}
