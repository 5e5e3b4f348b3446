//! Prometheus metrics of the compute service and the project broker.
//!
//! The names, types, labels and meanings live in one table, [`catalog`].
//! The services stay thin: the compute side's round coordinator records
//! round outcomes on a [`ComputeMetrics`] where it counts them for `status`;
//! everything else is read from the services' status at each scrape and
//! handed over as a [`ComputeSnapshot`] or [`BrokerSnapshot`]. [`serve`]
//! answers `GET /metrics` (`--metrics-listen`).
//!
//! Built on `prometheus-client` (the Prometheus project's Rust client: typed
//! registry, OpenMetrics text encoding, no global state) and `tiny_http` (a
//! small blocking HTTP server, one thread, nothing shared with the services'
//! async runtime but a spawned task per scrape).

pub mod broker;
pub mod catalog;
pub mod compute;
mod encode;
pub mod exposition;
pub mod process;
pub mod server;

pub use broker::{BrokerMetrics, BrokerSnapshot, SessionSnapshot};
pub use compute::{ComputeMetrics, ComputeSnapshot, MountSnapshot, StepRecord};
pub use server::{serve, Endpoint, Render};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint on {addr}: {message}")]
    Listen { addr: std::net::SocketAddr, message: String },
    #[error("the metrics endpoint must start inside the service's runtime")]
    NoRuntime,
}

/// The registry's exposition: OpenMetrics text, ending with `# EOF`.
fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing to a String fails only if a metric's encoder does: ours do not.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!(error = %e, "encoding the metrics");
    }
    out
}
