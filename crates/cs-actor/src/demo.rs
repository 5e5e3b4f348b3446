//! `cs-actor demo`: a self-contained tour of a round on one machine.
//!
//! The upper layer is a plain directory and deletions through the merged
//! view are made the way unionfs-fuse makes them (a whiteout marker), so the
//! engine sees exactly what it sees under a real union.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use cs_compute::local::RoundReport;
use cs_engine::{ComputeConfig, ComputeSide, ProjectConfig, ProjectSide};
use cs_protocol::{ClientId, RelPath};

pub fn run(dir: Option<PathBuf>) -> Result<()> {
    let root = match dir {
        Some(d) => {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => tempfile::Builder::new().prefix("cs-actor-demo-").tempdir()?.keep(),
    };
    let home = root.join("project-home");
    let upper = root.join("compute-upper");
    for d in [&home, &upper] {
        if d.exists() {
            anyhow::bail!("{} already exists: give --dir an empty or new directory", d.display());
        }
        fs::create_dir_all(d)?;
    }
    println!("demo in {}", root.display());
    println!("  project home: {}\n  upper layer:  {}\n", home.display(), upper.display());

    write(&home, "src/main.c", "int main(void) { return 0; }\n")?;
    write(&home, "README", "a project\n")?;
    write(&home, "notes/old.txt", "to be deleted on the compute server\n")?;

    let id = ClientId::new("gpu-1")?;
    let mut c = Some(ComputeSide::open(ComputeConfig::new(id, upper.clone(), root.join("compute-state")))?);
    let p = Arc::new(ProjectSide::open(ProjectConfig::new(home.clone(), root.join("project-state")))?);
    let round = |what: &str, c: &mut Option<ComputeSide>, p: &Arc<ProjectSide>| -> Result<RoundReport> {
        let r = run_round(c, p).context("round failed")?;
        println!("{what}\n  {}", report_line(&r));
        Ok(r)
    };

    round("round 1: nothing held yet, nothing to do", &mut c, &p)?;

    write(&upper, "build/main.o", "object code")?;
    write(&upper, "src/main.c", "int main(void) { return 42; }\n")?;
    cs_union::create_whiteout(&upper, cs_union::Layout::UnionfsFuse1, &RelPath::new("notes/old.txt")?)?;
    round("round 2: compute server compiled, edited src/main.c, deleted notes/old.txt", &mut c, &p)?;
    show(&home, "src/main.c")?;
    println!("  project has notes/old.txt: {}", home.join("notes/old.txt").exists());

    write(&home, "src/main.c", "int main(void) { return 7; } /* edited on the project */\n")?;
    round("round 3: the project edited src/main.c, which the compute server holds", &mut c, &p)?;
    show(&upper, "src/main.c")?;

    write(&home, "src/main.c", "/* project's edit */\n")?;
    write(&upper, "src/main.c", "/* compute server's edit */\n")?;
    let r = round("round 4: both edited src/main.c: the project wins, nothing is lost", &mut c, &p)?;
    show(&home, "src/main.c")?;
    for copy in &r.conflicts {
        show(&home, copy)?;
    }

    fs::remove_file(home.join("build/main.o"))?;
    round("round 5: the project deleted build/main.o", &mut c, &p)?;
    println!("  compute server still has build/main.o: {}", upper.join("build/main.o").exists());

    round("round 6: idle", &mut c, &p)?;
    println!("\ndone: both trees are left in {} for you to inspect", root.display());
    Ok(())
}

/// One round through the compute service's round code over the in-memory link
/// (`cs_compute::local`); `c` is taken for the round and put back.
pub fn run_round(c: &mut Option<ComputeSide>, p: &Arc<ProjectSide>) -> Result<RoundReport> {
    let side = c.take().context("the compute side was lost by an earlier round")?;
    let (side, _, report) = cs_compute::local::run_round(side, p.clone(), None);
    *c = Some(side);
    Ok(report?)
}

pub fn report_line(r: &RoundReport) -> String {
    format!(
        "C→P: {} deleted, {} kept, {} entries sent ({} B) | P→C: {} deleted, {} entries sent ({} B), {} not applied | conflicts: {}",
        r.deletes_to_project,
        r.kept_on_project.len(),
        r.sent_to_project,
        r.bytes_to_project,
        r.deletes_to_compute,
        r.sent_to_compute,
        r.bytes_to_compute,
        r.skipped_on_compute.len(),
        r.conflicts.len()
    )
}

fn write(root: &Path, rel: &str, content: &str) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&p, content).with_context(|| format!("writing {}", p.display()))
}

/// `rel`: a `&str`, or a `RelPath` (read by its bytes, shown escaped).
fn show(root: &Path, rel: impl AsRef<Path> + std::fmt::Display) -> Result<()> {
    let text = fs::read_to_string(root.join(&rel)).with_context(|| format!("reading {rel}"))?;
    println!("  {} {rel}: {}", if root.ends_with("project-home") { "project" } else { "compute" }, text.trim_end());
    Ok(())
}
