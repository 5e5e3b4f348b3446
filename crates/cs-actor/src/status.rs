//! `cs-actor status`: the service's observable state, as a compact table or
//! as the raw JSON (stable, documented in docs/operations.md).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use cs_control::{ask, Request};
use serde_json::Value;

use crate::services::{default_compute_socket, default_project_socket};

/// `socket`: the one service to ask; `None`: every service running here at its default socket
/// (the compute service's, then the broker's), at least one of which must answer.
pub async fn run(socket: Option<&Path>, json: bool, watch: bool) -> Result<()> {
    loop {
        let statuses = match socket {
            Some(s) => vec![status_of(s).await?],
            None => running_here().await?,
        };
        if watch {
            print!("\x1b[2J\x1b[H");
        }
        for (i, status) in statuses.iter().enumerate() {
            if json {
                println!("{}", serde_json::to_string_pretty(status)?);
            } else {
                if i > 0 {
                    println!();
                }
                print!("{}", render(status));
            }
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn status_of(socket: &Path) -> Result<Value> {
    let resp = ask(socket, &Request::Status).await?;
    match resp.status.filter(|_| resp.ok) {
        Some(status) => Ok(status),
        None => bail!("the service answered: {}", resp.error.unwrap_or_else(|| "no status".into())),
    }
}

/// The status of each service whose default control socket answers.
async fn running_here() -> Result<Vec<Value>> {
    let sockets: [PathBuf; 2] = [default_compute_socket(), default_project_socket()];
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for s in &sockets {
        match status_of(s).await {
            Ok(st) => found.push(st),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if found.is_empty() {
        return Err(anyhow!(
            "no cs-actor service answers at the default control sockets (give --control-socket, or set {}):\n  {}",
            crate::services::RUNTIME_DIR_ENV,
            errors.join("\n  ")
        ));
    }
    Ok(found)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn ms(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 1000.0 => format!("{:.1} s", x / 1000.0),
        Some(x) => format!("{x:.1} ms"),
        None => "-".into(),
    }
}

/// How long ago `since` (unix ms, this machine's clock) was, e.g. `3.5 min`.
fn ago(since_unix_ms: u64, now_unix_ms: u64) -> String {
    let secs = now_unix_ms.saturating_sub(since_unix_ms) as f64 / 1000.0;
    match secs {
        s if s >= 7200.0 => format!("{:.1} h", s / 3600.0),
        s if s >= 120.0 => format!("{:.1} min", s / 60.0),
        s => format!("{s:.0} s"),
    }
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The human view: one line per part, the fields an operator looks at first.
pub fn render(st: &Value) -> String {
    let mut out = String::new();
    match st["service"].as_str() {
        Some("compute") => render_compute(st, &mut out),
        Some("project") => render_project(st, &mut out),
        _ => out.push_str(&format!("{st:#}\n")),
    }
    out
}

fn render_compute(st: &Value, out: &mut String) {
    let r = &st["round"];
    let phase = s(&r["phase"]);
    let head = match phase.as_str() {
        "running" => format!(
            "round {} running, step {} ({}) for {}",
            s(&r["round"]),
            s(&r["step_number"]),
            s(&r["step"]),
            ms(&r["running_for_ms"])
        ),
        "backoff" => format!(
            "round {} failed {} time(s), retry in {}",
            s(&r["round"]),
            s(&r["retries"]),
            ms(&r["next_retry_in_ms"])
        ),
        "paused" => format!("PAUSED: {}", s(&r["paused_reason"])),
        "stopped" => format!("STOPPED, not retrying: {}", s(&r["stopped"]["reason"])),
        other => format!("{other}, {} rounds committed, every {}", s(&r["rounds_committed"]), ms(&r["interval_ms"])),
    };
    out.push_str(&format!("compute server {}: {head}\n", s(&st["client"])));
    out.push_str(&crate::progress::status_line(st));
    if let Some(todo) = r["stopped"]["what_to_do"].as_str() {
        out.push_str(&format!("  what to do  {todo}\n"));
    }
    if let Some(p) = r["operator_pause"].as_object() {
        let since = p.get("since_unix_ms").and_then(Value::as_u64).unwrap_or(0);
        out.push_str(&format!(
            "  paused      by the operator{} for {}{}; `cs-actor resume` resumes syncing\n",
            p.get("reason").and_then(Value::as_str).map(|r| format!(" ({r})")).unwrap_or_default(),
            ago(since, unix_ms_now()),
            if phase == "running" { ", once the round in flight ends" } else { "" },
        ));
    }
    let m = &st["mounts"];
    if !m.is_null() {
        let u = &m["union"];
        // overlay has no process; it shows its options in force instead.
        let process = match (u["pid"].as_u64(), u["options"].as_str()) {
            (_, Some(opts)) => format!(" [{opts}]"),
            (Some(pid), None) => format!(" pid {pid}"),
            (None, None) => " pid -".into(),
        };
        out.push_str(&format!(
            "  mounts      lower {} {} ({}) | union {}{}{process} ({}), remounts {}{}\n",
            s(&m["lower"]["kind"]),
            s(&m["lower"]["state"]),
            ms(&m["lower"]["latency_ms"]),
            u["backend"].as_str().map(|b| format!("{b} ")).unwrap_or_default(),
            s(&u["state"]),
            ms(&u["latency_ms"]),
            s(&u["remounts"]),
            m["rail"].as_str().map(|r| format!(" | SAFETY RAIL: {r}")).unwrap_or_default()
        ));
        if let Some(note) = u["options_note"].as_str() {
            out.push_str(&format!("  union note  {note}\n"));
        }
        render_mount_point(&m["mount_point"], out);
    }
    let rp = &st["replica"];
    if !rp.is_null() {
        let f = &rp["fill"];
        let waiting = match f["waiting"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(", {n} opens waiting (oldest {} ms)", s(&f["oldest_waiting_ms"])),
        };
        // With --cache-max: what the fetched content holds against the bound, and evictions.
        let cache = match f["cache_max_bytes"].as_u64() {
            Some(max) => format!(
                ", cache {} of {}, evicted {} ({})",
                bytes(f["cache_bytes"].as_u64().unwrap_or(0)),
                bytes(max),
                s(&f["evicted"]),
                bytes(f["evicted_bytes"].as_u64().unwrap_or(0)),
            ),
            None => String::new(),
        };
        // With --hydrate / --prefetch: where the background fetch stands.
        let hydrate = match f["hydrate"].as_str() {
            Some(state) => format!(
                ", hydrate {state} ({} fetched, {} files ({}) left)",
                s(&f["hydrated"]),
                s(&f["hydrate_left_files"]),
                bytes(f["hydrate_left_bytes"].as_u64().unwrap_or(0)),
            ),
            None => String::new(),
        };
        // Content the tree kept from the previous one (not fetched again).
        let kept = match rp["kept"]["files"].as_u64() {
            Some(n) if n > 0 => format!(", kept {n} files ({})", bytes(rp["kept"]["bytes"].as_u64().unwrap_or(0))),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  replica     {} entries ({}{kept}), fills {} ({}, {} read ahead) in {} fetches, denied {}{cache}{hydrate}{waiting}{}\n",
            s(&rp["entries"]),
            s(&rp["origin"]),
            s(&f["fills"]),
            bytes(f["bytes"].as_u64().unwrap_or(0)),
            s(&f["read_ahead_fills"]),
            s(&f["source_calls"]),
            s(&f["denied"]),
            f["last_error"].as_str().map(|e| format!(" | last error: {e}")).unwrap_or_default(),
        ));
        if let Some(round) = rp["as_of_round"].as_u64() {
            out.push_str(&format!("  replica     the project as of round {round}\n"));
        }
        if rp["journal_continues"] == false {
            out.push_str(
                "  replica     STALE: the project's journal started over since this tree's snapshot (the broker \
                 lost its state); files no round brought show their old version: restart the compute service\n",
            );
        }
    }
    let c = &st["connection"];
    // The round trip is known once connected (measured at once, then every few seconds).
    let rtt = if c["rtt_ms"].is_number() { format!(" rtt {}", ms(&c["rtt_ms"])) } else { String::new() };
    // Following (docs/protocol.md, *Follow*): said once the broker offered it.
    let follow = match c["follow_offered"].as_bool() {
        Some(true) => format!(", project changes pushed {}", s(&c["project_pushes"])),
        Some(false) => ", the broker does not push project changes".to_string(),
        None => String::new(),
    };
    out.push_str(&format!(
        "  connection  {} {}{rtt}, reconnects {}, in {} out {}{follow}\n",
        s(&c["state"]),
        s(&c["url"]),
        s(&c["reconnects"]),
        bytes(c["bytes_received"].as_u64().unwrap_or(0)),
        bytes(c["bytes_sent"].as_u64().unwrap_or(0)),
    ));
    if let Some(last) = r["last_committed"].as_object() {
        let steps: Vec<String> = last
            .get("steps")
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter(|x| x["entries"].as_u64().unwrap_or(0) > 0 || x["ms"].as_u64().unwrap_or(0) > 0)
                    .map(|x| {
                        format!(
                            "{} {} ({}, {})",
                            s(&x["step"]),
                            s(&x["entries"]),
                            bytes(x["bytes"].as_u64().unwrap_or(0)),
                            ms(&x["ms"])
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  last round  {} in {}: {}; conflicts {}\n",
            s(&last["round"]),
            ms(&last["duration_ms"]),
            if steps.is_empty() { "nothing to do".into() } else { steps.join(", ") },
            last.get("conflicts").and_then(|c| c.as_array()).map(|c| c.len()).unwrap_or(0)
        ));
    }
    out.push_str(&format!(
        "  local       {} change events pending (since the last round started); rounds failed {}, conflicts total {}\n",
        s(&st["watcher"]["pending_events"]),
        s(&r["rounds_failed"]),
        s(&r["conflicts_total"])
    ));
    if let Some(line) = deferred_line(&st["packer"]) {
        out.push_str(&line);
    }
    out.push_str(&ignored_lines(&st["packer"]["ignored"]));
    out.push_str(&watchdog_lines(&st["watchdog"]));
    for (what, v) in
        [("round", &r["last_error"]), ("connection", &c["last_error"]), ("packer", &st["packer"]["last_error"])]
    {
        if !v.is_null() {
            out.push_str(&format!("  last error  {what}: {}\n", s(v)));
        }
    }
}

/// The watchdog: each actor's health on one line, then one line per stuck
/// actor (busy without progress for longer than the threshold).
fn watchdog_lines(w: &Value) -> String {
    let Some(actors) = w["actors"].as_object() else { return String::new() };
    if actors.is_empty() {
        return String::new();
    }
    let health: Vec<String> = actors
        .iter()
        .map(|(name, a)| match a["health"].as_str() {
            Some("stuck") => format!("{name} STUCK"),
            _ => format!("{name} {}", s(&a["health"])),
        })
        .collect();
    let mut out = format!(
        "  actors      {}
",
        health.join(", ")
    );
    for (name, a) in actors.iter().filter(|(_, a)| a["health"] == "stuck") {
        out.push_str(&format!(
            "  STUCK       {name}: busy without progress for {} (threshold {}); see docs/operations.md\n",
            ms(&a["silent_ms"]),
            ms(&w["stuck_after_ms"])
        ));
    }
    out
}

/// `.csignore`: what it keeps out of rounds (compute: `packer.ignored`;
/// project: `broker.ignore`, patterns and error only), and why the file is
/// not in force if it is not.
fn ignored_lines(ig: &Value) -> String {
    let mut out = String::new();
    let patterns = ig["patterns"].as_u64().unwrap_or(0);
    if patterns > 0 || ig["count"].as_u64().is_some_and(|n| n > 0) {
        out.push_str(&format!("  ignored     .csignore: {patterns} pattern(s)"));
        if let Some(count) = ig["count"].as_u64() {
            let paths: Vec<String> = ig["paths"].as_array().into_iter().flatten().map(s).collect();
            let more = count.saturating_sub(paths.len() as u64);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            let names = if paths.is_empty() { String::new() } else { format!(": {}{more}", paths.join(", ")) };
            out.push_str(&format!(", {count} path(s) kept apart{names}"));
        }
        out.push('\n');
    }
    if let Some(e) = ig["error"].as_str() {
        out.push_str(&format!("  IGNORE RULES NOT IN FORCE: {e} (the last good rules apply; fix the file)\n"));
    }
    out
}

/// Busy files: `packer.deferred` (or a broker session's `deferred`).
fn deferred_line(section: &Value) -> Option<String> {
    let d = &section["deferred"];
    let count = d["count"].as_u64().filter(|&n| n > 0)?;
    let files: Vec<String> = d["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let mut what = format!("{} ({}", s(&f["path"]), s(&f["reason"]));
            if f["snapshot_sent"].as_bool() == Some(true) {
                what.push_str(", snapshot sent");
            } else {
                what.push_str(&format!(", deferred {} round(s)", s(&f["deferrals"])));
            }
            what.push(')');
            what
        })
        .collect();
    let more = count.saturating_sub(files.len() as u64);
    let more = if more > 0 { format!(" and {more} more") } else { String::new() };
    Some(format!(
        "  deferred    {count} busy file(s), {} snapshot(s) sent: {}{more}\n",
        s(&section["snapshots_sent"]),
        files.join(", ")
    ))
}

/// The bare mount point: a weaker guard than the immutable attribute, and entries recovered
/// from it (what an operator must look at: docs/operations.md).
fn render_mount_point(mp: &Value, out: &mut String) {
    let guard = s(&mp["guard"]);
    if !matches!(guard.as_str(), "immutable" | "pending" | "-") {
        out.push_str(&format!("  mount point guard {guard} only: {}\n", s(&mp["guard_error"])));
    }
    let last = &mp["last_recovery"];
    if last.is_object() {
        let into_dir = last["moved_into_recovery_dir"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "  recovered   {} entries found in the bare mount point (last time: {} moved into the home{})\n",
            s(&mp["recovered_entries"]),
            s(&last["moved_into_upper"]),
            if into_dir > 0 {
                format!(", {into_dir} into {} as their names were taken", s(&last["recovery_dir"]))
            } else {
                String::new()
            }
        ));
    }
}

fn render_project(st: &Value, out: &mut String) {
    let b = &st["broker"];
    out.push_str(&format!(
        "project broker on {} (tls {}): {} session(s)\n",
        s(&b["listen"]),
        s(&b["tls"]),
        b["sessions"].as_array().map(|a| a.len()).unwrap_or(0)
    ));
    for sess in b["sessions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<16} step {:<5} rounds {:>5}, last took {}, in {} out {}, conflicts {}{}\n",
            s(&sess["client"]),
            s(&sess["step"]),
            s(&sess["rounds_committed"]),
            ms(&sess["last_round_duration_ms"]),
            bytes(sess["bytes_in"].as_u64().unwrap_or(0)),
            bytes(sess["bytes_out"].as_u64().unwrap_or(0)),
            s(&sess["conflicts_total"]),
            sess["last_error"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default(),
        ));
        if let Some(line) = deferred_line(sess) {
            out.push_str(&format!("  {line}"));
        }
    }
    if let Some(r) = b["refused"].as_object() {
        if !r.is_empty() {
            let parts: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("  refused connections: {}\n", parts.join(", ")));
        }
    }
    out.push_str(&ignored_lines(&b["ignore"]));
    out.push_str(&watchdog_lines(&b["watchdog"]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ignore_rules_show_with_their_count_and_error() {
        let st = json!({
            "service": "compute", "client": "gpu-1", "round": {"phase": "idle"}, "connection": {},
            "packer": {"ignored": {"count": 12, "patterns": 3, "error": "/home/u/.csignore line 4: bad",
                                   "paths": ["node_modules", "src/__pycache__"]}},
        });
        let text = render(&st);
        assert!(
            text.contains(
                "ignored     .csignore: 3 pattern(s), 12 path(s) kept apart: node_modules, src/__pycache__ and 10 more"
            ),
            "{text}"
        );
        assert!(text.contains("IGNORE RULES NOT IN FORCE: /home/u/.csignore line 4: bad"), "{text}");
        let st = json!({"service": "project", "broker": {"sessions": [], "ignore": {"patterns": 2, "error": null}}});
        let text = render(&st);
        assert!(text.contains("ignored     .csignore: 2 pattern(s)\n"), "{text}");
        assert!(!text.contains("NOT IN FORCE"), "{text}");
        let st = json!({"service": "project", "broker": {"sessions": [], "ignore": {"patterns": 0, "error": null}}});
        assert!(!render(&st).contains("ignored"));
    }

    #[test]
    fn compute_view_shows_the_round_the_mounts_and_errors() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "mounts": {"lower": {"kind": "sshfs", "state": "mounted", "latency_ms": 3.2},
                       "union": {"backend": "unionfs-fuse", "state": "mounted", "pid": 42, "latency_ms": 0.4,
                                 "remounts": 1, "options": null}, "rail": null},
            "connection": {"state": "connected", "url": "ws://127.0.0.1:1", "rtt_ms": 0.7, "reconnects": 2,
                           "bytes_received": 2048, "bytes_sent": 10, "last_error": null,
                           "follow_offered": true, "project_pushes": 3},
            "round": {"phase": "running", "round": 12, "step": "writes_to_project", "step_number": 3,
                      "running_for_ms": 1500, "rounds_failed": 1, "conflicts_total": 0, "last_error": "boom",
                      "last_committed": {"round": 11, "duration_ms": 340, "conflicts": [],
                                         "steps": [{"step": "writes_to_compute", "entries": 3, "bytes": 4096, "ms": 20}]}},
            "packer": {"last_error": null}, "watcher": {"pending_events": 5}
        });
        let text = render(&st);
        assert!(text.contains("round 12 running, step 3 (writes_to_project) for 1.5 s"), "{text}");
        assert!(text.contains("union unionfs-fuse mounted pid 42"), "{text}");
        assert!(text.contains("remounts 1"), "{text}");
        assert!(text.contains("rtt 0.7 ms"), "{text}");
        assert!(text.contains("in 2.0 KiB out 10 B, project changes pushed 3\n"), "{text}");
        assert!(text.contains("writes_to_compute 3 (4.0 KiB, 20.0 ms)"), "{text}");
        assert!(text.contains("last error  round: boom"), "{text}");
        assert!(!text.contains("SAFETY RAIL"), "{text}");
        assert!(!text.contains("deferred"), "{text}");
        assert!(!text.contains("recovered") && !text.contains("guard"), "{text}");
    }

    #[test]
    fn compute_view_shows_the_replica_and_its_fills() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "replica": {"entries": 48, "origin": "snapshot",
                        "fill": {"fills": 41, "bytes": 3 << 20, "read_ahead_fills": 38, "source_calls": 3,
                                 "denied": 1, "waiting": 2, "oldest_waiting_ms": 120, "last_error": "cold/x.txt: no answer"}},
            "connection": {"state": "connected", "url": "ws://127.0.0.1:1"},
            "round": {"phase": "idle"}
        });
        let text = render(&st);
        assert!(
            text.contains("replica     48 entries (snapshot), fills 41 (3.0 MiB, 38 read ahead) in 3 fetches, denied 1, 2 opens waiting (oldest 120 ms) | last error: cold/x.txt: no answer"),
            "{text}"
        );
        assert!(!text.contains("as of round") && !text.contains("STALE"), "{text}");
        let mut later = st.clone();
        later["replica"]["as_of_round"] = json!(12);
        later["replica"]["journal_continues"] = json!(true);
        let text = render(&later);
        assert!(text.contains("replica     the project as of round 12\n") && !text.contains("STALE"), "{text}");
        later["replica"]["journal_continues"] = json!(false);
        let text = render(&later);
        assert!(
            text.contains("STALE: the project's journal started over") && text.contains("restart the compute service"),
            "{text}"
        );
        let without = render(&json!({"service": "compute", "client": "gpu-1", "round": {"phase": "idle"}}));
        assert!(!without.contains("replica"), "{without}");
        assert!(!text.contains("cache"), "no bound, no cache figures: {text}");
        let mut bounded = st.clone();
        bounded["replica"]["fill"]["cache_max_bytes"] = json!(1u64 << 30);
        bounded["replica"]["fill"]["cache_bytes"] = json!(700u64 << 20);
        bounded["replica"]["fill"]["evicted"] = json!(12);
        bounded["replica"]["fill"]["evicted_bytes"] = json!(300u64 << 20);
        bounded["replica"]["kept"] = json!({"files": 30, "bytes": 2u64 << 20});
        let text = render(&bounded);
        assert!(text.contains("48 entries (snapshot, kept 30 files (2.0 MiB)), fills 41"), "{text}");
        assert!(!text.contains("hydrate"), "{text}");
        bounded["replica"]["fill"]["hydrate"] = json!("running");
        bounded["replica"]["fill"]["hydrated"] = json!(500);
        bounded["replica"]["fill"]["hydrate_left_files"] = json!(20);
        bounded["replica"]["fill"]["hydrate_left_bytes"] = json!(3u64 << 20);
        let text = render(&bounded);
        assert!(
            text.contains("(300.0 MiB), hydrate running (500 fetched, 20 files (3.0 MiB) left), 2 opens"),
            "{text}"
        );
        assert!(text.contains("denied 1, cache 700.0 MiB of 1.0 GiB, evicted 12 (300.0 MiB), "), "{text}");
    }

    #[test]
    fn compute_view_shows_the_overlay_backend_and_its_options() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "mounts": {"lower": {"kind": "command", "state": "mounted", "latency_ms": 3.2},
                       "union": {"backend": "overlay", "state": "mounted", "pid": null, "latency_ms": 0.1,
                                 "remounts": 0, "options": "redirect_dir=on,index=off,uuid=on",
                                 "options_note": "index=on refused (Device or resource busy): ..."},
                       "rail": null},
            "connection": {"state": "connected", "url": "ws://127.0.0.1:1"},
            "round": {"phase": "idle"}
        });
        let text = render(&st);
        assert!(
            text.contains("union overlay mounted [redirect_dir=on,index=off,uuid=on] (0.1 ms), remounts 0"),
            "{text}"
        );
        assert!(!text.contains("pid"), "{text}");
        assert!(text.contains("union note  index=on refused (Device or resource busy)"), "{text}");
    }

    #[test]
    fn compute_view_shows_known_fields_and_no_placeholder() {
        // Connected with a measured round trip, idle, no event left after the last round.
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "connection": {"state": "connected", "url": "ws://127.0.0.1:1", "rtt_ms": 0.3, "reconnects": 0},
            "round": {"phase": "idle", "rounds_committed": 3, "interval_ms": 5000, "rounds_failed": 0, "conflicts_total": 0},
            "packer": {}, "watcher": {"pending_events": 0, "events_total": 8}
        });
        let text = render(&st);
        assert!(text.contains("connected ws://127.0.0.1:1 rtt 0.3 ms, reconnects 0"), "{text}");
        assert!(!text.contains("pushed"), "no follow line before the broker answered: {text}");
        assert!(text.contains("local       0 change events pending"), "{text}");
        assert!(!text.contains(" - ") && !text.contains(" -,") && !text.contains(" -\n"), "{text}");
        // Not connected: the round trip is not known, and not shown as `-`.
        let st = json!({"service": "compute", "client": "gpu-1",
            "connection": {"state": "backoff", "url": "ws://127.0.0.1:1", "rtt_ms": null, "reconnects": 1},
            "round": {"phase": "idle"}, "packer": {}, "watcher": {"pending_events": 2}});
        let text = render(&st);
        assert!(text.contains("backoff ws://127.0.0.1:1, reconnects 1"), "{text}");
        assert!(!text.contains("rtt"), "{text}");
    }

    #[test]
    fn compute_view_says_who_paused_since_when_and_how_to_resume() {
        let since = unix_ms_now() - 300_000;
        let st = json!({
            "service": "compute", "client": "gpu-1", "connection": {"state": "connected"},
            "round": {"phase": "paused", "paused_reason": "by the operator: disk swap; lower mount missing",
                      "operator_pause": {"reason": "disk swap", "since_unix_ms": since}},
            "packer": {}, "watcher": {"pending_events": 4}
        });
        let text = render(&st);
        assert!(text.contains("gpu-1: PAUSED: by the operator: disk swap; lower mount missing"), "{text}");
        assert!(
            text.contains("paused      by the operator (disk swap) for 5.0 min; `cs-actor resume` resumes syncing"),
            "{text}"
        );
        assert!(text.contains("4 change events pending"), "{text}");
        // Asked during a round: it finishes first.
        let st = json!({
            "service": "compute", "client": "gpu-1", "connection": {},
            "round": {"phase": "running", "round": 3, "step": "hello", "step_number": 0, "running_for_ms": 10,
                      "operator_pause": {"reason": null, "since_unix_ms": unix_ms_now()}},
            "packer": {}, "watcher": {}
        });
        let text = render(&st);
        assert!(text.contains("paused      by the operator for 0 s, once the round in flight ends"), "{text}");
        assert_eq!(ago(0, 3 * 3600 * 1000), "3.0 h");
    }

    #[test]
    fn compute_view_says_a_stopped_service_and_what_to_do() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "connection": {"state": "stopped", "last_error": "HTTP status 401"},
            "round": {"phase": "stopped", "rounds_failed": 2,
                      "stopped": {"reason": "connection to the project: HTTP status 401",
                                  "what_to_do": "the broker refused the token: check --token-file",
                                  "since_unix_ms": 1}},
            "packer": {}, "watcher": {"pending_events": 0}
        });
        let text = render(&st);
        assert!(text.contains("gpu-1: STOPPED, not retrying: connection to the project: HTTP status 401"), "{text}");
        assert!(text.contains("what to do  the broker refused the token: check --token-file"), "{text}");
    }

    #[test]
    fn compute_and_project_views_show_a_stuck_actor() {
        let watchdog = json!({"stuck_after_ms": 2000, "stuck": ["round"], "actors": {
            "mounts": {"health": "idle", "silent_ms": 10, "beats": 4},
            "packer": {"health": "busy", "silent_ms": 5, "beats": 9},
            "round": {"health": "stuck", "silent_ms": 4500, "beats": 3}}});
        let st = json!({
            "service": "compute", "client": "gpu-1", "connection": {}, "round": {"phase": "running"},
            "packer": {}, "watcher": {}, "watchdog": watchdog
        });
        let text = render(&st);
        assert!(text.contains("actors      mounts idle, packer busy, round STUCK"), "{text}");
        assert!(text.contains("STUCK       round: busy without progress for 4.5 s (threshold 2.0 s)"), "{text}");
        let st = json!({"service": "project", "broker": {"listen": "0.0.0.0:1", "sessions": [], "watchdog": {
            "stuck_after_ms": 120000, "stuck": [], "actors": {"session gpu-1": {"health": "busy", "silent_ms": 1}}}}});
        let text = render(&st);
        assert!(text.contains("actors      session gpu-1 busy"), "{text}");
        assert!(!text.contains("STUCK"), "{text}");
    }

    #[test]
    fn compute_view_names_busy_files() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "connection": {"state": "connected"},
            "round": {"phase": "idle", "rounds_committed": 7, "interval_ms": 10000},
            "watcher": {"pending_events": 0},
            "packer": {"snapshots_sent": 1, "deferred": {"count": 3, "files": [
                {"path": "train.log", "reason": "still changing", "deferrals": 0, "snapshots": 1, "snapshot_sent": true},
                {"path": "b.log", "reason": "still changing", "deferrals": 2, "snapshots": 0, "snapshot_sent": false}]}}
        });
        let text = render(&st);
        assert!(text.contains("deferred    3 busy file(s), 1 snapshot(s) sent: train.log (still changing, snapshot sent), b.log (still changing, deferred 2 round(s)) and 1 more"), "{text}");
    }

    #[test]
    fn compute_view_shows_a_recovery_and_a_weak_guard() {
        let st = json!({
            "service": "compute", "client": "gpu-1",
            "mounts": {"lower": {"kind": "command", "state": "mounted"}, "union": {"state": "mounted"}, "rail": null,
                       "mount_point": {"guard": "read_only_mode", "guard_error": "the immutable attribute cannot be set on /home/u (Inappropriate ioctl for device)",
                                       "recoveries": 1, "recovered_entries": 5,
                                       "last_recovery": {"moved_into_upper": 3, "moved_into_recovery_dir": 2,
                                                         "recovery_dir": "/local/upper/cs-actor-recovered-20261203T081433Z"}}},
            "connection": {}, "round": {"phase": "idle"}, "packer": {}, "watcher": {}
        });
        let text = render(&st);
        assert!(text.contains("guard read_only_mode only: the immutable attribute cannot be set on /home/u"), "{text}");
        assert!(
            text.contains("recovered   5 entries found in the bare mount point (last time: 3 moved into the home, 2 into /local/upper/cs-actor-recovered-20261203T081433Z"),
            "{text}"
        );
    }
}
