//! The catalog is the one list of metrics: what the registries serve, what
//! docs/operations.md documents and what the Grafana dashboard queries all
//! agree with it.

use std::collections::BTreeSet;

use cs_metrics::catalog::{self, MetricDoc};
use cs_metrics::exposition::{parse, Sample};
use cs_metrics::*;

fn compute_text() -> String {
    let m = ComputeMetrics::new();
    let step = |step, direction| StepRecord { step, direction, seconds: 0.5, entries: 2, bytes: 10 };
    m.round_committed(1.5, [step("hello", None), step("writes_to_project", Some("to_project"))], 1);
    m.round_failed("transient", "link");
    m.render(ComputeSnapshot {
        phase: "paused".into(),
        operator_paused_since_unix_ms: Some(1_700_000_000_000),
        rtt_seconds: Some(0.002),
        mounts: Some(MountSnapshot { lower_up: true, union_up: true, ..Default::default() }),
        ..Default::default()
    })
}

fn broker_text() -> String {
    BrokerMetrics::new().render(BrokerSnapshot {
        refused: vec![("unauthorized".into(), 2)],
        tar_slots: 4,
        sessions: vec![SessionSnapshot { client: "gpu-1".into(), rounds_committed: 3, ..Default::default() }],
        ..Default::default()
    })
}

/// The catalog entries that samples belong to; fails on a sample of none.
fn served(samples: &[Sample]) -> BTreeSet<&'static str> {
    samples
        .iter()
        .map(|s| catalog::owner_of(&s.name).unwrap_or_else(|| panic!("{} is in no catalog entry", s.name)).name)
        .collect()
}

fn names(docs: &[MetricDoc]) -> BTreeSet<&'static str> {
    docs.iter().map(|d| d.name).collect()
}

#[test]
fn each_service_serves_exactly_its_catalog_with_the_documented_labels() {
    let compute = parse(&compute_text()).expect("the compute exposition parses");
    let broker = parse(&broker_text()).expect("the broker exposition parses");
    let process = names(catalog::PROCESS);
    assert_eq!(served(&compute), &names(catalog::COMPUTE) | &process);
    assert_eq!(served(&broker), &names(catalog::BROKER) | &process);
    for s in compute.iter().chain(&broker) {
        let doc = catalog::owner_of(&s.name).expect("owned");
        let labels: BTreeSet<&str> = s.labels.iter().map(|(k, _)| k.as_str()).filter(|k| *k != "le").collect();
        assert_eq!(labels, doc.labels.iter().copied().collect(), "{}", s.name);
    }
    let committed = compute.iter().find(|s| s.name == "cs_compute_rounds_committed_total").expect("committed");
    assert_eq!(committed.value, 1.0);
    let bytes = compute
        .iter()
        .find(|s| s.name == "cs_compute_step_bytes_total" && s.label("step") == Some("writes_to_project"))
        .expect("step bytes");
    assert_eq!((bytes.label("direction"), bytes.value), (Some("to_project"), 10.0));
}

fn repo_file(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_operations_guide_documents_every_metric() {
    let guide = repo_file("docs/operations.md");
    let section = guide.split("\n## Metrics").nth(1).expect("a Metrics section in docs/operations.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    for doc in catalog::all() {
        assert!(section.contains(&format!("`{}`", doc.exposed())), "docs/operations.md lacks `{}`", doc.exposed());
    }
}

/// The metric names an expression of the dashboard uses.
fn queried(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain([' ']) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("cs_") || word.starts_with("process_") {
                out.push(word.clone());
            }
            word.clear();
        }
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_served_metrics_and_shows_each() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("deploy/grafana/cs-actor.json")).expect("the dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(!all.is_empty(), "the dashboard has queries");
    let mut shown = BTreeSet::new();
    for expr in &all {
        for name in queried(expr) {
            let doc = catalog::owner_of(&name).unwrap_or_else(|| panic!("the dashboard queries {name}: not served"));
            shown.insert(doc.name);
        }
    }
    let missing: Vec<_> = catalog::all().map(|d| d.name).filter(|n| !shown.contains(n)).collect();
    assert!(missing.is_empty(), "the dashboard shows none of {missing:?}");
}
