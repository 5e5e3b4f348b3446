//! cs-actor: the command line. It only wires the library crates together.

mod check_ignore;
mod config;
mod demo;
mod doctor;
mod metrics;
mod owner;
mod progress;
mod replica;
mod services;
mod status;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide};
use cs_protocol::ClientId;

/// A compute server's home directory as fast as local disk, kept in sync
/// with the project's home several times a minute.
#[derive(Parser)]
#[command(name = "cs-actor", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the compute variant's size costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the compute-server service: mounts, the union, and sync rounds
    /// with the broker (until SIGTERM or Ctrl-C; a last round on the way out).
    Compute {
        /// TOML file with any of the flags below (flags win).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: config::ComputeArgs,
    },
    /// Run the project-side broker serving compute servers.
    Project {
        /// TOML file with any of the flags below (flags win).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        args: config::ProjectArgs,
    },
    /// Internal: the process that keeps the replica's fanotify group alive across deaths of
    /// the compute service (started by `compute --replica-dir`; docs/replica.md risk 1).
    #[command(hide = true)]
    FillHolder {
        /// Unix socket (mode 0600, root only) handing the group to the service.
        #[arg(long)]
        socket: PathBuf,
        /// The replica's filesystem (exits once it is no longer mounted).
        #[arg(long)]
        mountpoint: PathBuf,
        /// With no service holding the group for this long, answer in its place: opens of
        /// files not fetched yet fail with EIO (needs --staging and --journal, the service's).
        #[arg(long, requires_all = ["staging", "journal"])]
        stand_in_after_secs: Option<f64>,
        /// The fill service's staging directory (on the replica's filesystem).
        #[arg(long)]
        staging: Option<PathBuf>,
        /// The fill service's event journal.
        #[arg(long)]
        journal: Option<PathBuf>,
    },
    /// Ask the running compute service for a round now.
    Sync {
        /// Return only when the round committed (exit 0) or failed: exit 1 when the failure can pass
        /// (the service retries it), exit 2 when it cannot (the service stopped trying; the message
        /// says what to fix). See docs/operations.md, *Exit codes*.
        #[arg(long)]
        wait: bool,
        /// The service's control socket [default: $CS_ACTOR_RUNTIME_DIR/compute.sock, else
        /// /run/cs-actor/compute.sock].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Fetch the project's current content of PATHs (relative to the home) into DIR, through
    /// the running compute service's connection (beside any round): a file lands at its path
    /// below DIR, a directory as itself and its regular files (not deeper). Prints what came,
    /// what the project does not have and what it refused; exit 1 if the fetch failed.
    Fetch {
        /// An existing directory to write into (the service writes there, with its rights).
        #[arg(long)]
        to: PathBuf,
        /// Print the whole answer as JSON.
        #[arg(long)]
        json: bool,
        /// The compute service's control socket [default: as for `sync`].
        #[arg(long)]
        control_socket: Option<PathBuf>,
        /// Project paths, relative to the home (at most 1024).
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Pause syncing on this compute server: no round starts (timer, changes, `sync`) until
    /// `cs-actor resume`, across restarts of the service. The union keeps working; changes wait.
    Pause {
        /// Why, shown by `cs-actor status` and to `sync --wait` callers.
        #[arg(long)]
        reason: Option<String>,
        /// The compute service's control socket [default: as for `sync`].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Lift `cs-actor pause`: a round starts at once (unless the safety rail also holds).
    Resume {
        /// The compute service's control socket [default: as for `sync`].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// The project really is empty: lift the safety rail that paused syncing
    /// when the lower layer came back empty after holding files.
    AcceptEmptyLower {
        /// The compute service's control socket [default: as for `sync`].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Show what the running service is doing: without --control-socket, whichever of the
    /// compute service and the broker runs here (both if both).
    Status {
        /// The stable JSON form (see docs/operations.md).
        #[arg(long)]
        json: bool,
        /// Refresh every second.
        #[arg(long)]
        watch: bool,
        /// One service's control socket [default: both of $CS_ACTOR_RUNTIME_DIR/compute.sock and
        /// …/project.sock that answer, the directory being /run/cs-actor when the variable is unset].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Which rule of the home's `.csignore` decides each path, as `git check-ignore -v -n`
    /// prints it: `.csignore:LINE:PATTERN<TAB>PATH`, `::<TAB>PATH` when none matches.
    /// Exit 0 if a path is ignored, 1 if none is, 128 on an error (a bad `.csignore`).
    CheckIgnore {
        /// The home whose root holds `.csignore` (default: $HOME).
        #[arg(long, env = "HOME")]
        home: PathBuf,
        /// Paths, absolute or relative to the current directory (a trailing `/` or an existing
        /// directory is checked as a directory).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check what syncing needs on this machine (FUSE, packages, inotify, disk, tokens, the
    /// broker, TLS), one line per check with a fix; exit 1 when something blocks syncing.
    /// Finds the running service at the default control sockets unless told.
    Doctor {
        /// The compute service's or the broker's config file (checks it, running or not).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The running service's control socket [default: those of $CS_ACTOR_RUNTIME_DIR/compute.sock
        /// and …/project.sock that answer, the directory being /run/cs-actor when the variable is unset].
        #[arg(long)]
        control_socket: Option<PathBuf>,
    },
    /// Build a demo project and compute-server upper layer, then show rounds
    /// carrying writes, deletes and a conflict both ways (in one process).
    Demo {
        /// Where to create the demo (default: a new temporary directory, kept).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Run one sync round between an upper layer and a project home on this
    /// machine (in one process, no network).
    Round {
        /// The union's upper layer (the compute server's local copy).
        #[arg(long)]
        upper: PathBuf,
        /// The project's home directory.
        #[arg(long)]
        home: PathBuf,
        /// Compute-side state directory (manifest).
        #[arg(long)]
        compute_state: PathBuf,
        /// Project-side state directory (journal, client indexes).
        #[arg(long)]
        project_state: PathBuf,
        /// This compute server's id at the project.
        #[arg(long, default_value = "local")]
        id: String,
    },
}

/// The log filter when `RUST_LOG` is not set. notify says at `info` each time it cannot
/// drop the watch of a directory that is gone (the kernel already dropped it): one line per
/// removed directory, nothing to act on.
const DEFAULT_LOG_FILTER: &str = "info,notify=warn";

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cs-actor: error: {e:#}");
        std::process::exit(exit_code(&e));
    }
}

/// Exit status of a failed command (docs/operations.md, *Exit codes*).
const EXIT_FAILED: i32 = 1;
const EXIT_PERMANENT: i32 = 2;
/// `check-ignore` could not read the rules (as `git check-ignore`'s fatal errors).
const EXIT_CHECK_IGNORE_ERROR: i32 = 128;

/// A round failed for a reason retrying cannot fix: the service stopped trying.
#[derive(Debug)]
struct PermanentFailure(String);

impl std::fmt::Display for PermanentFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "round failed, and the service stopped retrying: {}", self.0)
    }
}

impl std::error::Error for PermanentFailure {}

/// `check-ignore` failed (not "not ignored", which is exit 1).
#[derive(Debug)]
struct CheckIgnoreFailed(String);

impl std::fmt::Display for CheckIgnoreFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckIgnoreFailed {}

fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<PermanentFailure>().is_some() {
        EXIT_PERMANENT
    } else if e.downcast_ref::<CheckIgnoreFailed>().is_some() {
        EXIT_CHECK_IGNORE_ERROR
    } else {
        EXIT_FAILED
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Compute { config, args } => {
            use config::Merge;
            let args = args.merge(config::load(config.as_deref())?);
            services::run_compute(args)
        }
        Command::Project { config, args } => {
            use config::Merge;
            let args = args.merge(config::load(config.as_deref())?);
            services::run_project(args)
        }
        Command::FillHolder { socket, mountpoint, stand_in_after_secs, staging, journal } => {
            let stand_in = match (stand_in_after_secs, staging) {
                (Some(secs), Some(staging)) => {
                    let after = std::time::Duration::try_from_secs_f64(secs).context("--stand-in-after-secs")?;
                    let mut fill = cs_replica::FillConfig::new(&mountpoint, staging);
                    fill.journal = journal;
                    Some(cs_replica::holder::StandIn { after, fill })
                }
                _ => None,
            };
            cs_replica::holder::serve(&socket, &mountpoint, stand_in).context("the replica's fill holder")
        }
        Command::Sync { wait, control_socket } => services::runtime()?.block_on(async {
            let control_socket = control_socket.unwrap_or_else(services::default_compute_socket);
            let request = cs_control::Request::Sync { wait };
            let ask = cs_control::ask(&control_socket, &request);
            // While waiting, the round's progress (a bar on a terminal, plain lines otherwise).
            let r = if wait { progress::while_waiting(&control_socket, ask).await? } else { ask.await? };
            match (r.ok, r.round) {
                (true, Some(n)) if wait => println!("round {n} committed"),
                (true, Some(n)) => println!("round {n} requested"),
                _ if r.permanent => {
                    return Err(PermanentFailure(r.error.unwrap_or_else(|| "no reason given".into())).into())
                }
                _ => anyhow::bail!("round failed: {}", r.error.unwrap_or_else(|| "no reason given".into())),
            }
            Ok(())
        }),
        Command::Fetch { to, json, control_socket, paths } => services::runtime()?.block_on(async {
            let control_socket = control_socket.unwrap_or_else(services::default_compute_socket);
            // The service runs elsewhere (its own working directory).
            let to = std::fs::canonicalize(&to).with_context(|| format!("--to {}", to.display()))?;
            let r = cs_control::ask(&control_socket, &cs_control::Request::Fetch { paths, to: to.clone() }).await?;
            if !r.ok {
                anyhow::bail!("{}", r.error.unwrap_or_else(|| "no reason given".into()));
            }
            let fetched = r.fetch.unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&fetched)?);
                return Ok(());
            }
            let list = |k: &str| fetched[k].as_array().cloned().unwrap_or_default();
            println!(
                "fetched into {}: {} written ({} bytes), {} missing, {} refused, {} withdrawn",
                to.display(),
                list("written").len(),
                fetched["file_bytes"].as_u64().unwrap_or(0),
                list("missing").len(),
                list("refused").len(),
                list("withdrawn").len()
            );
            for m in list("missing") {
                println!("missing: {}", m.as_str().unwrap_or("?"));
            }
            for r in list("refused") {
                println!("refused: {}: {}", r[0].as_str().unwrap_or("?"), r[1].as_str().unwrap_or("?"));
            }
            for w in list("withdrawn") {
                println!("withdrawn (changing on the project, ask again): {}", w.as_str().unwrap_or("?"));
            }
            Ok(())
        }),
        Command::Pause { reason, control_socket } => {
            ask_compute(control_socket, cs_control::Request::Pause { reason }, "syncing paused")
        }
        Command::Resume { control_socket } => {
            ask_compute(control_socket, cs_control::Request::Resume, "syncing resumed")
        }
        Command::AcceptEmptyLower { control_socket } => services::runtime()?.block_on(async {
            let control_socket = control_socket.unwrap_or_else(services::default_compute_socket);
            let r = cs_control::ask(&control_socket, &cs_control::Request::AcceptEmptyLower).await?;
            if !r.ok {
                anyhow::bail!("not accepted: {}", r.error.unwrap_or_else(|| "no reason given".into()));
            }
            println!("empty lower accepted: syncing resumes at the next check (within a few seconds)");
            Ok(())
        }),
        Command::Status { json, watch, control_socket } => {
            services::runtime()?.block_on(status::run(control_socket.as_deref(), json, watch))
        }
        Command::CheckIgnore { home, paths } => {
            let cwd = std::env::current_dir().context("the current directory")?;
            let v = check_ignore::check(&home, &cwd, &paths).map_err(|e| CheckIgnoreFailed(format!("{e:#}")))?;
            for line in &v.lines {
                println!("{line}");
            }
            if !v.any_ignored {
                std::process::exit(EXIT_FAILED);
            }
            Ok(())
        }
        Command::Doctor { config, control_socket } => {
            let healthy = services::runtime()?.block_on(doctor::run(config.as_deref(), control_socket.as_deref()))?;
            if !healthy {
                std::process::exit(EXIT_FAILED);
            }
            Ok(())
        }
        Command::Demo { dir } => demo::run(dir),
        Command::Round { upper, home, compute_state, project_state, id } => {
            let id = ClientId::new(id)?;
            let c = ComputeSide::open(ComputeConfig::new(id, upper.clone(), compute_state))
                .with_context(|| format!("opening the compute side on {}", upper.display()))?;
            let p = ProjectSide::open(ProjectConfig::new(home.clone(), project_state))
                .with_context(|| format!("opening the project side on {}", home.display()))?;
            let r = demo::run_round(&mut Some(c), &std::sync::Arc::new(p))
                .context("sync round failed; nothing of it was committed, run it again")?;
            println!("{}", demo::report_line(&r));
            Ok(())
        }
    }
}

/// Sends `req` to the compute service and prints its answer (`done` when it gives none);
/// a refusal is the error, with the service's reason.
fn ask_compute(control_socket: Option<PathBuf>, req: cs_control::Request, done: &str) -> anyhow::Result<()> {
    services::runtime()?.block_on(async {
        let socket = control_socket.unwrap_or_else(services::default_compute_socket);
        let r = cs_control::ask(&socket, &req).await?;
        if !r.ok {
            anyhow::bail!("{}", r.error.unwrap_or_else(|| "no reason given".into()));
        }
        println!("{}", r.message.unwrap_or_else(|| done.into()));
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cs-actor compute --union overlay --pull held` stops at once, saying why, before it
    /// looks at anything else (no other flag is needed to see the refusal).
    #[test]
    fn compute_refuses_overlay_with_pull_held() {
        let cli = Cli::try_parse_from(["cs-actor", "compute", "--union", "overlay", "--pull", "held"]).unwrap();
        let e = format!("{:#}", run(cli).unwrap_err());
        assert!(e.contains("--union overlay cannot run with --pull held"), "{e}");
        // The same from the config file.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("compute.toml");
        std::fs::write(&file, "union = \"overlay\"\npull = \"held\"\n").unwrap();
        let cli = Cli::try_parse_from(["cs-actor", "compute", "--config", file.to_str().unwrap()]).unwrap();
        let e = format!("{:#}", run(cli).unwrap_err());
        assert!(e.contains("--union overlay cannot run with --pull held"), "{e}");
        // An unknown backend is refused by the flag's parser.
        assert!(Cli::try_parse_from(["cs-actor", "compute", "--union", "aufs"]).is_err());
    }
}
