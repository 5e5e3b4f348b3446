//! cs-actor: the command line. It only wires the library crates together.

mod demo;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use cs_engine::driver::run_round;
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

#[derive(Subcommand)]
enum Command {
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cs-actor: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Demo { dir } => demo::run(dir),
        Command::Round { upper, home, compute_state, project_state, id } => {
            let id = ClientId::new(id)?;
            let mut c = ComputeSide::open(ComputeConfig::new(id, upper.clone(), compute_state))
                .with_context(|| format!("opening the compute side on {}", upper.display()))?;
            let p = ProjectSide::open(ProjectConfig::new(home.clone(), project_state))
                .with_context(|| format!("opening the project side on {}", home.display()))?;
            let r = run_round(&mut c, &p, None).context("sync round failed; nothing of it was committed, run it again")?;
            println!("{}", demo::report_line(&r));
            Ok(())
        }
    }
}
