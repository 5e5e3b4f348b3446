//! Writing values read at scrape time (the services' status) as metrics of
//! the exposition, under the names and help texts of the catalog.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::catalog::{Kind, MetricDoc};

/// A label set of a sample: `(label, value)` pairs in the catalog's order.
pub type Labels = Vec<(&'static str, String)>;

/// One value read at scrape time.
#[derive(Debug, Clone, Copy)]
pub enum Value {
    Count(u64),
    Level(f64),
}

/// Writes metric `doc` with the samples `values` (one per label set; an unlabelled
/// metric has one with no labels). Nothing is written for no samples.
pub fn samples(enc: &mut DescriptorEncoder, doc: &MetricDoc, values: &[(Labels, Value)]) -> fmt::Result {
    if values.is_empty() {
        return Ok(());
    }
    let metric_type = match doc.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        // Histograms are recorded as events (see `compute`), never read at scrape time.
        Kind::Histogram => return Err(fmt::Error),
    };
    let mut metric = enc.encode_descriptor(doc.name, doc.help, None, metric_type)?;
    if let [(labels, value)] = values {
        if labels.is_empty() {
            // An unlabelled metric: no `{}` after its name.
            return encode_value(metric, *value);
        }
    }
    for (labels, value) in values {
        encode_value(metric.encode_family(labels)?, *value)?;
    }
    Ok(())
}

fn encode_value(m: prometheus_client::encoding::MetricEncoder, value: Value) -> fmt::Result {
    match value {
        Value::Count(v) => ConstCounter::new(v).encode(m),
        Value::Level(v) => ConstGauge::new(v).encode(m),
    }
}

/// An unlabelled counter.
pub fn counter(enc: &mut DescriptorEncoder, doc: &MetricDoc, v: u64) -> fmt::Result {
    samples(enc, doc, &[(Labels::new(), Value::Count(v))])
}

/// An unlabelled gauge.
pub fn gauge(enc: &mut DescriptorEncoder, doc: &MetricDoc, v: f64) -> fmt::Result {
    samples(enc, doc, &[(Labels::new(), Value::Level(v))])
}

/// 1.0 for true.
pub fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}
