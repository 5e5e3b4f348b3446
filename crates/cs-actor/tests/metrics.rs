//! Issue 13, metrics: both services started with `--metrics-listen` on the real bed, their
//! `/metrics` scraped over loopback during a run: the exposition parses, every sample is a
//! metric of the catalog (cs-metrics), the expected names are there, and the counters move
//! when a round commits.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use cs_metrics::catalog;
use cs_metrics::exposition::{parse, Sample};
use support::*;

per_union! {
    both: [
        both_services_serve_metrics_that_parse_and_move_with_rounds,
    ],
}

/// `GET path` over HTTP/1.0 (the server closes the connection after the answer): status, body.
fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no end of headers")?;
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).ok_or("no status")?;
    Ok((status, body.to_owned()))
}

/// A websocket upgrade to the broker with bearer `token`; returns the answer's status line.
fn upgrade_with_token(port: u16, token: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .expect("send the upgrade");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
}

/// The samples of a scrape, checked: it parses and every sample is a metric of the catalog.
fn scrape(bed: &Bed, port: u16) -> Vec<Sample> {
    let (status, body) = poll(Duration::from_secs(30), Duration::from_millis(200), || get(port, "/metrics").ok())
        .unwrap_or_else(|| bed.fail(&format!("no answer at 127.0.0.1:{port}/metrics")));
    assert_eq!(status, 200, "{body}");
    let samples = parse(&body).unwrap_or_else(|e| bed.fail(&format!("the exposition does not parse: {e}\n{body}")));
    for s in &samples {
        assert!(catalog::owner_of(&s.name).is_some(), "{} is no metric of the catalog", s.name);
    }
    samples
}

/// The value of the sample `name` with the labels `labels` (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(v)))
        .map_or(0.0, |s| s.value)
}

fn names(samples: &[Sample]) -> std::collections::BTreeSet<&'static str> {
    samples.iter().filter_map(|s| catalog::owner_of(&s.name)).map(|d| d.name).collect()
}

fn both_services_serve_metrics_that_parse_and_move_with_rounds() {
    let mut bed = Bed::new("metrics");
    put(&bed.home, "seed.txt", "from the project\n");
    let (broker_port, compute_port) = (free_port(), free_port());
    bed.broker_extra = vec!["--metrics-listen".into(), format!("127.0.0.1:{broker_port}")];
    bed.start_broker();
    let listen = format!("127.0.0.1:{compute_port}");
    bed.start_compute_with("gpu-1", &["--metrics-listen", &listen]);
    bed.sync_wait();

    let before = scrape(&bed, compute_port);
    let served = names(&before);
    // Before any failure, before the first websocket pong and while not paused, these have no
    // sample yet.
    let later = [catalog::ROUNDS_FAILED.name, catalog::RTT.name, catalog::PAUSED_SINCE.name];
    for doc in catalog::COMPUTE.iter().chain(catalog::PROCESS).filter(|d| !later.contains(&d.name)) {
        assert!(served.contains(doc.name), "the compute service does not serve {}", doc.name);
    }
    let committed = value(&before, "cs_compute_rounds_committed_total", &[]);
    assert!(committed >= 1.0, "a round committed already");
    assert_eq!(value(&before, "cs_compute_connected", &[]), 1.0);
    assert_eq!(value(&before, "cs_compute_round_phase", &[("phase", "idle")]), 1.0);
    assert_eq!(value(&before, "cs_compute_paused_by_operator", &[]), 0.0);
    for layer in ["lower", "union"] {
        assert_eq!(value(&before, "cs_compute_mount_up", &[("layer", layer)]), 1.0, "{layer}");
    }
    assert_eq!(value(&before, "cs_compute_safety_rail_up", &[]), 0.0);
    assert!(value(&before, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(value(&before, "process_open_fds", &[]) > 0.0);
    let broker_before = scrape(&bed, broker_port);
    let client = [("client", "gpu-1")];
    assert_eq!(value(&broker_before, "cs_broker_sessions", &[]), 1.0);
    assert!(value(&broker_before, "cs_broker_tar_slots", &[]) >= 1.0);
    let broker_rounds = value(&broker_before, "cs_broker_client_rounds_committed_total", &client);
    assert!(broker_rounds >= 1.0);

    // A file written on the compute side: one more round carries it to the project.
    put(&bed.merged(), "work/result.bin", noise(7, 50_000));
    bed.sync_wait();
    let after = scrape(&bed, compute_port);
    assert!(value(&after, "cs_compute_rounds_committed_total", &[]) > committed);
    let to_project = [("step", "writes_to_project"), ("direction", "to_project")];
    for name in ["cs_compute_step_entries_total", "cs_compute_step_bytes_total"] {
        assert!(value(&after, name, &to_project) > value(&before, name, &to_project), "{name}");
    }
    let round_count = "cs_compute_round_duration_seconds_count";
    assert_eq!(value(&after, round_count, &[]), value(&after, "cs_compute_rounds_committed_total", &[]));
    assert!(value(&after, "cs_compute_watcher_events_total", &[]) > 0.0);
    assert!(
        value(&after, "cs_compute_connection_bytes_total", &[("direction", "sent")])
            > value(&before, "cs_compute_connection_bytes_total", &[("direction", "sent")])
    );
    let broker_after = scrape(&bed, broker_port);
    assert!(value(&broker_after, "cs_broker_client_rounds_committed_total", &client) > broker_rounds);
    let bytes_in = [("client", "gpu-1"), ("direction", "in")];
    assert!(
        value(&broker_after, "cs_broker_client_bytes_total", &bytes_in)
            > value(&broker_before, "cs_broker_client_bytes_total", &bytes_in)
    );
    for doc in catalog::PROCESS {
        assert!(names(&broker_after).contains(doc.name), "the broker does not serve {}", doc.name);
    }

    // A connection with a token the broker does not know: refused, and counted by reason.
    let refused = [("reason", "unknown_token")];
    assert_eq!(value(&broker_after, "cs_broker_connections_refused_total", &refused), 0.0);
    let answer = upgrade_with_token(bed.broker_port, "not-a-token");
    let counted = poll(Duration::from_secs(30), Duration::from_millis(200), || {
        (value(&scrape(&bed, broker_port), "cs_broker_connections_refused_total", &refused) == 1.0).then_some(())
    });
    assert!(counted.is_some(), "the refused connection (answered {answer:?}) is not counted");

    // Only /metrics is served.
    assert_eq!(get(compute_port, "/").map(|(s, _)| s), Ok(404));
    bed.finish();
}
