//! `cs-actor compute` and `cs-actor project`: flags to configs, actors
//! started in order, signals, and an orderly shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cs_compute::service::{ComputeService, ServiceConfig};
use cs_engine::{default_local_only, PathFilter, DEFAULT_EXCLUDED};
use cs_mount::{LowerSpec, MountConfig, MountSupervisor, UnionBackend};
use cs_protocol::ClientId;
use cs_supervision::ObserveExt;

use crate::config::{ComputeArgs, ProjectArgs};

/// The environment variable that moves the default control sockets (the services' and the
/// client commands' alike): `$CS_ACTOR_RUNTIME_DIR/compute.sock`, `…/project.sock`.
pub const RUNTIME_DIR_ENV: &str = "CS_ACTOR_RUNTIME_DIR";
/// Where the control sockets are by default (systemd's `RuntimeDirectory=cs-actor`).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/cs-actor";

fn runtime_dir() -> PathBuf {
    std::env::var_os(RUNTIME_DIR_ENV)
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR), PathBuf::from)
}

/// The compute service's control socket when `--control-socket` is not given.
pub fn default_compute_socket() -> PathBuf {
    runtime_dir().join("compute.sock")
}

/// The broker's control socket when `--control-socket` is not given.
pub fn default_project_socket() -> PathBuf {
    runtime_dir().join("project.sock")
}

/// A small runtime for the client commands (`sync`, `status`).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn need<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.ok_or_else(|| anyhow!("missing --{flag} (or `{}` in the --config file)", flag.replace('-', "_")))
}

fn filter(local_only: Option<Vec<String>>) -> Result<PathFilter> {
    let local: Vec<String> = local_only.unwrap_or_else(default_local_only);
    let local_refs: Vec<&str> = local.iter().map(String::as_str).collect();
    Ok(PathFilter::new(&local_refs, DEFAULT_EXCLUDED)?)
}

/// The mount's form of local-only patterns: the union's opaque directories are plain names
/// under the home (`/scratch/` → `scratch`).
fn mount_local_only(patterns: &[String]) -> Vec<String> {
    patterns.iter().map(|p| p.trim_matches('/').to_string()).collect()
}

/// Waits for SIGTERM or Ctrl-C.
pub(crate) async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Default of `--whiteout-grace-secs`: longer than sshfs's own directory
/// cache (20 s by default) plus the kernel's entry cache on top.
const DEFAULT_WHITEOUT_GRACE_SECS: f64 = 25.0;

pub fn run_compute(a: ComputeArgs) -> Result<()> {
    // Fault tests only: a bad CS_FAILPOINTS stops here, before anything is mounted.
    cs_failpoint::check()?;
    // The combinations that cannot work are refused before anything else is looked at.
    let pull = pull_policy(a.pull.as_deref(), a.pull_max_file_size)?;
    let given_union = given_union(a.union.as_deref(), &pull)?;
    let replica = replica_args(&a)?;
    let client = ClientId::new(need(a.id, "id")?)?;
    let whiteout_grace = Duration::try_from_secs_f64(a.whiteout_grace_secs.unwrap_or(DEFAULT_WHITEOUT_GRACE_SECS))
        .context("--whiteout-grace-secs must be a number of seconds, 0 or more")?;
    let server = need(a.server, "server")?;
    let token_file = need(a.token_file, "token-file")?;
    let merged = need(a.merged, "merged")?;
    let upper = need(a.upper, "upper")?;
    let state = need(a.state, "state")?;
    let (backend, backend_why) = union_backend(given_union, &pull, &upper, &state)?;
    tracing::info!(union = %backend, why = %backend_why, "union backend");
    if replica.is_some() && backend != UnionBackend::Overlay {
        let given = if a.replica_dir.is_some() {
            "--replica-dir"
        } else {
            "with no --lower nor --lower-mount-cmd the lower is the project's replica, which"
        };
        bail!("{given} needs the overlay union (the union is {backend}: {backend_why})");
    }
    // With a replica the lower is its current tree, known once the snapshot is in.
    let lower = match (a.lower, a.lower_mount_cmd, &replica) {
        (Some(dir), None, None) => Some(LowerSpec::Adopt(dir)),
        (None, Some(cmd), None) => {
            Some(LowerSpec::Command { cmd, mountpoint: need(a.lower_mountpoint, "lower-mountpoint")? })
        }
        (None, None, Some(_)) => None,
        _ => bail!(
            "give exactly one of --lower DIR (already mounted), --lower-mount-cmd CMD with --lower-mountpoint DIR, \
             or --replica-dir DIR"
        ),
    };
    let token =
        cs_wire::read_token_file(&token_file).with_context(|| format!("token file {}", token_file.display()))?;
    let owner = match &a.user {
        Some(name) => crate::owner::effective(crate::owner::lookup(name)?, &format!("--user {name}"))?,
        None => {
            tracing::warn!("no --user: the compute user is the service's own; what rounds write belongs to it");
            None
        }
    };
    let local_only = a.local_only.clone();
    let filter = filter(a.local_only)?;
    let control_socket = a.control_socket.unwrap_or_else(default_compute_socket);
    for d in [&upper, &state, &merged] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // A corrupt pause file stops the start-up here, before anything is mounted (the service
    // reads it again when it starts its actors).
    cs_compute::pause::load(&cs_compute::pause::path_in(&state))?;
    // The union shows the upper layer's root as the merged view's root: the user's home.
    if let Some(o) = owner {
        std::os::unix::fs::lchown(&upper, Some(o.uid), Some(o.gid))
            .with_context(|| format!("giving the upper layer {} to uid {} gid {}", upper.display(), o.uid, o.gid))?;
    }
    let lower_mountpoint = match (&lower, &replica) {
        (Some(l), _) => l.mountpoint().to_path_buf(),
        (None, Some(r)) => r.lower(),
        (None, None) => unreachable!("checked above: a lower or a replica"),
    };
    let metrics_listen = crate::metrics::listen_addr(a.metrics_listen.as_deref())?;
    let setup = serde_json::json!({
        "server": server,
        "token_file": token_file,
        "ca": a.ca,
        "upper": upper,
        "merged": merged,
        "state": state,
        "lower_mountpoint": lower_mountpoint,
        "union": backend.name(),
        "union_why": backend_why,
        "overlay_work": a.overlay_work,
        "lower_mount_cmd": match &lower {
            Some(LowerSpec::Command { cmd, .. }) => Some(cmd.as_str()),
            _ => None,
        },
        "replica_dir": replica.as_ref().map(|r| &r.dir),
    });
    let conn_cfg = {
        let mut c = cs_compute::connection::ConnectionConfig::new(server.clone(), token.clone());
        c.extra_ca = a.ca.clone();
        c
    };

    actix_rt::System::new().block_on(async move {
        // The replica comes before the union: no open of a placeholder may come before its
        // fill service.
        let replica = match replica {
            Some(r) => {
                let owner = owner.map(|o| (o.uid, o.gid));
                match crate::replica::Replica::start(r, conn_cfg, owner, &state)
                    .await
                    .context("the project's replica")?
                {
                    Some(r) => Some(r),
                    None => return Ok(()), // stopped before the replica was ready: nothing else started
                }
            }
            None => None,
        };
        let lower = match (lower, &replica) {
            (Some(l), _) => l,
            (None, Some(r)) => r.lower_spec(),
            (None, None) => unreachable!("checked above: a lower or a replica"),
        };
        let mut mcfg = MountConfig::new(lower, &upper, &merged);
        if let Some(l) = local_only {
            mcfg.local_only = mount_local_only(&l);
        }
        mcfg.local_only_owner = owner.map(|o| (o.uid, o.gid));
        mcfg.backend = backend;
        mcfg.overlay_work = a.overlay_work;
        let supervisor = MountSupervisor::new(mcfg).context("mount supervisor")?;
        let (rail, mount_heartbeat) = (supervisor.rail(), supervisor.heartbeat());
        let mount = cs_supervision::spawn(supervisor);
        let union = wait_for_union(&mount).await?;
        // The next start's default is this backend (an upgrade never switches a home).
        cs_mount::record_backend(&state, backend).context("recording the union backend")?;
        if let Some(o) = owner {
            warn_if_lower_not_owned(&lower_mountpoint, o);
        }

        let cfg = ServiceConfig {
            client,
            server_url: server,
            token,
            extra_ca: a.ca,
            upper,
            state_dir: state,
            control_socket,
            interval: Duration::from_secs_f64(a.interval.unwrap_or(10.0).max(0.1)),
            debounce: Duration::from_secs(1),
            filter,
            zstd_level: a.zstd_level.unwrap_or(cs_engine::DEFAULT_ZSTD_LEVEL),
            whiteout_grace,
            owner,
            busy: busy_policy(a.snapshot_after, a.snapshot_max_mib),
            pull,
            union,
            follow_project: a.follow_project.unwrap_or(true),
            backoff: Default::default(),
            limits: Default::default(),
            setup,
        };
        let m = mount.clone();
        let mount_status: cs_compute::service::StatusFn = Arc::new(move || {
            let m = m.clone();
            Box::pin(async move {
                match m.observe().await {
                    Ok(st) => serde_json::to_value(st).unwrap_or_default(),
                    Err(_) => serde_json::Value::Null,
                }
            })
        });
        let m = mount.clone();
        let accept_empty_lower: Arc<
            dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync,
        > = Arc::new(move || {
            let m = m.clone();
            Box::pin(async move {
                m.send(cs_mount::AcceptEmptyLower).await.map_err(|e| format!("the mount supervisor is gone: {e}"))
            })
        });
        // The safety rail is pushed: the coordinator follows `rail` and
        // pauses while the mounts are unsafe.
        let hooks = cs_compute::service::MountHooks {
            status: mount_status,
            accept_empty_lower,
            rail,
            heartbeat: mount_heartbeat,
            replica: replica.as_ref().map(|r| r.status_fn()),
            replica_epoch: replica.as_ref().map(|r| r.tree_epoch()),
        };
        let (svc, control) = ComputeService::start(cfg, Some(hooks))?;
        if let Some(r) = &replica {
            r.connect(svc.link.clone());
        }
        let _metrics =
            metrics_listen.map(|addr| crate::metrics::serve_compute(addr, &svc, mount.clone())).transpose()?;
        tracing::info!("compute service running");
        stop_signal().await;
        tracing::info!("stopping: a last round, then unmount");
        svc.shutdown(Duration::from_secs(30)).await;
        control.abort();
        match mount.send(cs_mount::Shutdown).await {
            Ok(Ok(_)) => tracing::info!("unmounted"),
            Ok(Err(e)) => tracing::warn!(error = %e, "unmounting"),
            Err(e) => tracing::warn!(error = %e, "mount supervisor gone"),
        }
        if let Some(r) = replica {
            r.stop();
        }
        Ok(())
    })
}

/// `--replica-dir` and its companions. With no lower given (`--lower`, `--lower-mount-cmd`)
/// the lower is the project's replica in `STATE/replica` (issue 12: no sshfs needed).
fn replica_args(a: &ComputeArgs) -> Result<Option<crate::replica::ReplicaArgs>> {
    let Some(dir) = a.replica_dir_or_default() else {
        if a.replica_size_gib.is_some()
            || a.replica_inodes.is_some()
            || a.fetch_timeout_secs.is_some()
            || a.cache_max.is_some()
            || a.hydrate == Some(true)
            || a.prefetch.is_some()
            || a.fresh_snapshot == Some(true)
        {
            bail!(
                "--replica-size-gib, --replica-inodes, --fetch-timeout-secs, --cache-max, --hydrate, --prefetch and \
                 --fresh-snapshot go with --replica-dir"
            );
        }
        return Ok(None);
    };
    let secs = a.fetch_timeout_secs.unwrap_or(crate::replica::DEFAULT_FETCH_TIMEOUT_SECS);
    let fetch_timeout = Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--fetch-timeout-secs must be a number of seconds above 0")?;
    let cache_max = match &a.cache_max {
        Some(s) => Some(parse_size(s).with_context(|| format!("--cache-max {s:?}"))?),
        None => None,
    };
    Ok(Some(crate::replica::ReplicaArgs {
        dir,
        size_bytes: a.replica_size_gib.unwrap_or(crate::replica::DEFAULT_SIZE_GIB).saturating_mul(1 << 30),
        inodes: a.replica_inodes.unwrap_or(crate::replica::DEFAULT_INODES),
        fetch_timeout,
        cache_max,
        // --hydrate takes everything, so it wins over --prefetch.
        background: match (a.hydrate.unwrap_or(false), &a.prefetch) {
            (true, _) => Some(None),
            (false, Some(p)) if !p.is_empty() => Some(Some(p.clone())),
            _ => None,
        },
        fresh_snapshot: a.fresh_snapshot.unwrap_or(false),
    }))
}

/// A size in bytes: a whole number, optionally with a binary unit (K, M, G, T; `KiB` and
/// `KB` mean the same), e.g. `500M`, `20G`, `1048576`. Above 0.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num.parse().map_err(|_| anyhow::anyhow!("not a size: give bytes or a number with K, M, G or T"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => bail!("unknown unit {other:?}: use K, M, G or T"),
    };
    let bytes = n.checked_mul(1u64 << shift).context("too large")?;
    if bytes == 0 {
        bail!("must be above 0");
    }
    Ok(bytes)
}

/// The project's files must show as the compute user's in the merged view (the kernel checks
/// the modes against the owner the lower reports): the lower mount maps them, e.g. sshfs
/// `-o uid=N,gid=M`. cs-actor does not rewrite the user's mount command; it says so here.
fn warn_if_lower_not_owned(lower: &std::path::Path, o: cs_engine::Owner) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(lower) else { return };
    if (md.uid(), md.gid()) != (o.uid, o.gid) {
        tracing::warn!(
            lower = %lower.display(),
            "the lower layer shows the project's files as uid {} gid {}, not the compute user's {} {}: \
             the user may be refused its own project files; map them in the lower mount (sshfs: -o uid={},gid={})",
            md.uid(), md.gid(), o.uid, o.gid, o.uid, o.gid
        );
    }
}

/// The union must be up before the engine opens the upper layer. Returns
/// the union's kind as the engine needs it (unionfs-fuse: where step 2 writes
/// whiteouts; overlay: the merged view every change goes through).
async fn wait_for_union(mount: &actix::Addr<MountSupervisor>) -> Result<cs_engine::UnionKind> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = mount.observe().await.context("mount supervisor")?;
        if st.union.state == cs_mount::UnionStatus::Mounted {
            return union_kind(&st.union);
        }
        if Instant::now() > deadline {
            bail!(
                "the union did not come up within 60 s (lower: {:?}, {}; union: {})",
                st.lower.state,
                st.lower.last_error.as_deref().unwrap_or("no error"),
                st.union.last_error.as_deref().unwrap_or("no error")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The engine's view of the mounted union.
fn union_kind(u: &cs_mount::UnionState) -> Result<cs_engine::UnionKind> {
    match u.backend {
        UnionBackend::Overlay => Ok(cs_engine::UnionKind::Overlay { merged: u.merged.clone() }),
        UnionBackend::UnionfsFuse => {
            let layout = u.whiteout_dir.and_then(cs_engine::WhiteoutLayout::from_meta_dir);
            let layout = layout.context("the mounted union's whiteout layout is unknown")?;
            Ok(cs_engine::UnionKind::UnionfsFuse(layout))
        }
    }
}

/// `--union` as given, refused with a pull policy it cannot work with: checked before
/// anything else is looked at.
fn given_union(union: Option<&str>, pull: &cs_engine::PullPolicy) -> Result<Option<UnionBackend>> {
    let Some(name) = union else { return Ok(None) };
    let backend: UnionBackend = name.parse()?;
    if backend == UnionBackend::Overlay && matches!(pull, cs_engine::PullPolicy::Held) {
        bail!(
            "--union overlay cannot run with --pull held: overlayfs never looks again at a name the compute \
             server looked up before the project created it, so the project's changes must arrive through the \
             rounds (--pull changed, the default), not through the lower layer (docs/union.md, point 2)"
        );
    }
    Ok(Some(backend))
}

/// The backend to run: the one given ([`given_union`]), else the default for this upper
/// layer, state directory, pull policy and kernel ([`cs_mount::default_backend`]); and why
/// (for the log and `status`).
fn union_backend(
    given: Option<UnionBackend>,
    pull: &cs_engine::PullPolicy,
    upper: &Path,
    state: &Path,
) -> Result<(UnionBackend, String)> {
    if let Some(b) = given {
        return Ok((b, "given (--union or union =)".into()));
    }
    let held = matches!(pull, cs_engine::PullPolicy::Held);
    let inputs = cs_mount::DefaultInputs::probe(upper, state, held)
        .with_context(|| format!("choosing the union for the upper layer {}", upper.display()))?;
    let c = cs_mount::default_backend(&inputs);
    Ok((c.backend, c.why))
}

/// `--pull` and `--pull-max-file-size` over the engine's default.
fn pull_policy(pull: Option<&str>, max_file_size: Option<u64>) -> Result<cs_engine::PullPolicy> {
    match pull {
        Some("held") if max_file_size.is_some() => bail!("--pull-max-file-size goes with --pull changed, not held"),
        Some("held") => Ok(cs_engine::PullPolicy::Held),
        None | Some("changed") => Ok(cs_engine::PullPolicy::Changed {
            max_file_size: Some(max_file_size.unwrap_or(cs_engine::DEFAULT_PULL_MAX_FILE_SIZE)),
        }),
        Some(other) => bail!("--pull must be `held` or `changed`, not `{other}`"),
    }
}

/// `--snapshot-after` and `--snapshot-max-mib` over the engine's defaults.
fn busy_policy(after: Option<u32>, max_mib: Option<u64>) -> cs_engine::BusyPolicy {
    let d = cs_engine::BusyPolicy::default();
    cs_engine::BusyPolicy {
        snapshot_after: after.unwrap_or(d.snapshot_after),
        snapshot_max_bytes: max_mib.map_or(d.snapshot_max_bytes, |m| m.saturating_mul(1 << 20)),
    }
}

pub fn run_project(a: ProjectArgs) -> Result<()> {
    let home = need(a.home, "home")?;
    let listen: std::net::SocketAddr = need(a.listen, "listen")?.parse().context("--listen must be IP:PORT")?;
    let tokens = need(a.tokens, "tokens")?;
    let state = a.state.unwrap_or_else(|| home.join(".cs-actor/broker"));
    let control_socket = a.control_socket.unwrap_or_else(default_project_socket);
    let metrics_listen = crate::metrics::listen_addr(a.metrics_listen.as_deref())?;
    let owner = match &a.user {
        Some(name) => crate::owner::effective(crate::owner::lookup(name)?, &format!("--user {name}"))?,
        None => {
            crate::owner::effective(crate::owner::of_path(&home)?, &format!("the owner of --home {}", home.display()))?
        }
    };
    let setup = serde_json::json!({
        "home": home,
        "tokens": tokens,
        "listen": listen.to_string(),
        "state": state,
        "tls_cert": a.tls_cert,
    });
    let mut cfg = cs_broker::BrokerConfig::new(home, state, listen, tokens);
    cfg.owner = owner;
    cfg.local_only = a.local_only;
    cfg.busy = busy_policy(a.snapshot_after, a.snapshot_max_mib);
    if let Some(secs) = a.full_rescan_secs {
        cfg.full_rescan = Duration::try_from_secs_f64(secs)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--full-rescan-secs must be a positive number of seconds")?;
    }
    cfg.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(cs_broker::TlsFiles { cert, key }),
        _ => None,
    };
    if cfg.tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening without TLS on a non-loopback address: tokens and files travel in clear; give --tls-cert and --tls-key");
    }
    actix_rt::System::new().block_on(async move {
        let broker = cs_broker::run(cfg).await?;
        tracing::info!(listen = %broker.local_addr, "project broker running");
        let _metrics = metrics_listen.map(|addr| crate::metrics::serve_project(addr, broker.clone())).transpose()?;
        let handle = broker.clone();
        let setup = Arc::new(setup);
        let handler: cs_control::Handler = Arc::new(move |req| {
            let handle = handle.clone();
            let setup = setup.clone();
            Box::pin(async move {
                match req {
                    cs_control::Request::Status => match handle.observe().await {
                        Ok(st) => cs_control::Response::status(serde_json::json!({
                            "service": "project",
                            "broker": st,
                            "setup": *setup,
                        })),
                        Err(e) => cs_control::Response::error(format!("the broker is gone: {e}")),
                    },
                    cs_control::Request::AcceptEmptyLower => cs_control::Response::error(
                        "the lower layer is a compute server's: run `cs-actor accept-empty-lower` there",
                    ),
                    cs_control::Request::Sync { .. } => cs_control::Response::error(
                        "rounds are driven by the compute servers: run `cs-actor sync` there",
                    ),
                    cs_control::Request::Fetch { .. } => cs_control::Response::error(
                        "fetches are asked by the compute servers: run `cs-actor fetch` there",
                    ),
                    // The broker only answers rounds: pausing the compute servers stops them.
                    cs_control::Request::Pause { .. } | cs_control::Request::Resume => cs_control::Response::error(
                        "rounds are driven by the compute servers: run `cs-actor pause`/`resume` on each of them",
                    ),
                }
            })
        });
        let control = cs_control::serve(&control_socket, handler)?;
        stop_signal().await;
        tracing::info!("stopping the broker");
        let _ = broker.shutdown().await;
        control.abort();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn with_no_lower_the_lower_is_the_projects_replica_in_the_state_directory() {
        let state = ComputeArgs { state: Some("/var/lib/cs/state".into()), ..Default::default() };
        let r = replica_args(&state).unwrap().expect("the default lower is a replica");
        assert_eq!(r.dir, Path::new("/var/lib/cs/state/replica"));
        // --replica-dir says where.
        let given = ComputeArgs { replica_dir: Some("/srv/replica".into()), ..state.clone() };
        assert_eq!(replica_args(&given).unwrap().expect("a replica").dir, Path::new("/srv/replica"));
        // A lower given: no replica, and the replica's options are refused, naming them.
        let sshfs = ComputeArgs { lower_mount_cmd: Some("sshfs …".into()), ..state.clone() };
        assert!(replica_args(&sshfs).unwrap().is_none());
        let adopted = ComputeArgs { lower: Some("/mnt/p".into()), cache_max: Some("1G".into()), ..state };
        let e = replica_args(&adopted).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("--cache-max") && e.contains("go with --replica-dir"), "{e}");
    }

    #[test]
    fn cache_max_takes_bytes_or_a_binary_unit_and_names_what_is_wrong() {
        assert_eq!(parse_size("1048576").unwrap(), 1 << 20);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("20g").unwrap(), 20 << 30);
        assert_eq!(parse_size("2 GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("64KB").unwrap(), 64 << 10);
        for bad in ["", "G", "1.5G", "-1", "0", "10Q", "99999999999T"] {
            let e = parse_size(bad).map(|_| ()).unwrap_err();
            eprintln!("{bad:?}: {e:#}");
        }
        assert!(format!("{:#}", parse_size("10Q").unwrap_err()).contains("unknown unit \"Q\""));
        assert!(format!("{:#}", parse_size("0").unwrap_err()).contains("above 0"));
    }

    #[test]
    fn overlay_with_pull_held_is_refused_and_says_why() {
        let held = pull_policy(Some("held"), None).unwrap();
        let changed = pull_policy(None, None).unwrap();
        let t = tempfile::tempdir().unwrap();
        let fresh = t.path();
        let e = given_union(Some("overlay"), &held).unwrap_err().to_string();
        assert!(e.contains("--union overlay cannot run with --pull held"), "{e}");
        assert!(e.contains("docs/union.md"), "{e}");
        assert_eq!(given_union(Some("overlay"), &changed).unwrap(), Some(UnionBackend::Overlay));
        assert_eq!(given_union(None, &held).unwrap(), None);
        assert_eq!(union_backend(None, &held, fresh, fresh).unwrap().0, UnionBackend::UnionfsFuse);
        assert_eq!(given_union(Some("unionfs-fuse"), &held).unwrap(), Some(UnionBackend::UnionfsFuse));
        assert!(given_union(Some("aufs"), &changed).is_err());
        // Given, it wins over what the upper layer says (the supervisor refuses a mismatch).
        let (b, why) = union_backend(Some(UnionBackend::Overlay), &changed, fresh, fresh).unwrap();
        assert_eq!((b, why.as_str()), (UnionBackend::Overlay, "given (--union or union =)"));
        // Not given: overlayfs where the kernel has it, for a fresh upper layer; an upper layer
        // unionfs-fuse wrote stays on unionfs-fuse.
        let expected = if cs_union::overlay::kernel_can_mount_overlay() {
            UnionBackend::Overlay
        } else {
            UnionBackend::UnionfsFuse
        };
        assert_eq!(union_backend(None, &changed, fresh, fresh).unwrap().0, expected);
        std::fs::create_dir(fresh.join(".unionfs-fuse")).unwrap();
        let (b, why) = union_backend(None, &changed, fresh, fresh).unwrap();
        assert_eq!(b, UnionBackend::UnionfsFuse);
        assert!(why.contains("written by unionfs-fuse"), "{why}");
        // A home that ran with unionfs-fuse before stays on it, marks or not.
        let (home, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        cs_mount::record_backend(state.path(), UnionBackend::UnionfsFuse).unwrap();
        let (b, why) = union_backend(None, &changed, home.path(), state.path()).unwrap();
        assert_eq!(b, UnionBackend::UnionfsFuse);
        assert!(why.contains("ran with unionfs-fuse"), "{why}");
    }

    #[test]
    fn the_engine_gets_the_overlay_with_its_merged_view() {
        let mut u = cs_mount::UnionState {
            backend: UnionBackend::Overlay,
            merged: "/home/u".into(),
            upper: "/var/u".into(),
            work_dir: Some("/var/u.overlay-work".into()),
            options: Some("redirect_dir=on,index=on".into()),
            options_note: None,
            state: cs_mount::UnionStatus::Mounted,
            pid: None,
            latency_ms: None,
            remounts: 0,
            failed_attempts: 0,
            last_error: None,
            since_ms: 0,
            whiteout_dir: None,
        };
        assert!(
            matches!(union_kind(&u).unwrap(), cs_engine::UnionKind::Overlay { merged } if merged == Path::new("/home/u"))
        );
        u.backend = UnionBackend::UnionfsFuse;
        assert!(union_kind(&u).is_err(), "unionfs-fuse without a layout");
        u.whiteout_dir = Some(".unionfs-fuse");
        assert!(matches!(union_kind(&u).unwrap(), cs_engine::UnionKind::UnionfsFuse(_)));
    }

    /// Without configuration the filter keeps out of rounds exactly the directories the mount
    /// makes opaque: the two defaults are one list.
    #[test]
    fn default_local_only_of_the_filter_and_the_mount_agree() {
        let filter = filter(None).expect("default filter");
        let mount = MountConfig::new(cs_mount::LowerSpec::Adopt("/l".into()), "/u", "/m");
        assert_eq!(mount_local_only(filter.local_only_patterns()), mount.local_only);
        for dir in &mount.local_only {
            let p = cs_protocol::RelPath::new(dir.as_str()).expect("a valid path");
            assert!(filter.is_local_only(&p, true), "{dir}");
            assert!(!filter.is_local_only(&cs_protocol::RelPath::new(format!("src/{dir}")).expect("path"), true));
        }
    }
}
