//! Runs a whole round between a [`ComputeSide`] and a [`ProjectSide`] in one
//! process: the tar streams go through OS pipes between two threads, exactly
//! as they would be streamed over a socket. Used by this crate's own tests
//! only (they cannot depend on cs-compute): the invariant suite, the property
//! test and the demo run the shipped round, `cs_compute::round`, over
//! `cs_compute::local`.

use std::thread;

use cs_protocol::{Cursor, RelPath};

use crate::{ComputeSide, EngineError, ProjectSide};

/// Where to cut a round short, as a dropped connection or a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    AfterStep1,
    AfterStep2,
    /// P stops reading the step-3 stream after this many entries.
    InStep3 {
        after_entries: usize,
    },
    AfterStep3,
    /// C stops reading the step-4 stream after this many entries.
    InStep4 {
        after_entries: usize,
    },
    AfterStep4,
    /// P committed, C did not.
    AfterProjectCommit,
}

/// What one round did.
#[derive(Debug, Clone, Default)]
pub struct RoundReport {
    pub deletes_to_project: usize,
    pub kept_on_project: Vec<RelPath>,
    pub deletes_to_compute: usize,
    pub kept_on_compute: Vec<RelPath>,
    pub sent_to_project: usize,
    pub bytes_to_project: u64,
    pub conflicts: Vec<RelPath>,
    pub sent_to_compute: usize,
    pub bytes_to_compute: u64,
    pub skipped_on_compute: Vec<RelPath>,
    pub cursor: Cursor,
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("round cut on purpose at {0:?}")]
    Cut(Cut),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("pipe between the two sides: {0}")]
    Pipe(#[from] std::io::Error),
}

fn cut_here(cut: Option<Cut>, here: Cut) -> Result<(), DriverError> {
    if cut == Some(here) {
        Err(DriverError::Cut(here))
    } else {
        Ok(())
    }
}

/// Runs steps 1 to 5. With `Some(cut)` the round stops there: what was
/// applied on disk stays, nothing more is committed.
pub fn run_round(c: &mut ComputeSide, p: &ProjectSide, cut: Option<Cut>) -> Result<RoundReport, DriverError> {
    let mut report = RoundReport::default();
    if let Some(round_id) = c.pending_round() {
        let committed = p.was_committed(&c.config().client, round_id)?;
        c.resolve_pending(committed)?;
    }
    let (mut cr, hello) = c.begin_round()?;
    let (mut pr, reply) = p.begin_round(&hello)?;
    c.hello_answered(&mut cr, &reply)?;
    if reply.need_held_list {
        p.set_held_list(&mut pr, c.held_list());
    }

    // Step 1: deletes C -> P.
    let deletes = c.deletes_to_send(&cr);
    let r1 = p.apply_deletes(&mut pr, &deletes)?;
    c.finish_deletes_reported(&mut cr, &deletes, &r1)?;
    report.deletes_to_project = r1.deleted.len();
    report.kept_on_project = r1.kept;
    cut_here(cut, Cut::AfterStep1)?;

    // Step 2: deletes P -> C.
    let gone = p.deletes_for_client(&mut pr);
    let r2 = c.apply_deletes(&mut cr, &gone)?;
    report.deletes_to_compute = r2.deleted.len();
    report.kept_on_compute = r2.kept;
    cut_here(cut, Cut::AfterStep2)?;

    // Step 3: writes C -> P.
    let paths = c.changes_to_send(&cr);
    let stop3 = match cut {
        Some(Cut::InStep3 { after_entries }) => Some(after_entries),
        _ => None,
    };
    let (reader, writer) = std::io::pipe()?;
    let (packed, applied) = thread::scope(|s| {
        let packer = s.spawn(|| c.pack_changes(&mut cr, &paths, writer));
        let applied = p.apply_writes(&mut pr, reader, stop3);
        (packer.join().expect("packer thread panicked"), applied)
    });
    if stop3.is_some() {
        return Err(DriverError::Cut(cut.expect("set")));
    }
    let (_, pack_stats) = packed?;
    let r3 = applied?;
    report.sent_to_project = pack_stats.entries as usize;
    report.bytes_to_project = pack_stats.compressed_bytes;
    report.conflicts = r3.conflicts;
    cut_here(cut, Cut::AfterStep3)?;

    // Step 4: writes P -> C.
    let stop4 = match cut {
        Some(Cut::InStep4 { after_entries }) => Some(after_entries),
        _ => None,
    };
    let (reader, writer) = std::io::pipe()?;
    let (packed, applied) = thread::scope(|s| {
        let packer = s.spawn(|| p.pack_changes(&mut pr, writer));
        let applied = c.apply_writes(&mut cr, reader, stop4);
        (packer.join().expect("packer thread panicked"), applied)
    });
    if stop4.is_some() {
        return Err(DriverError::Cut(cut.expect("set")));
    }
    let (_, pack_stats, cursor) = packed?;
    let r4 = applied?;
    report.sent_to_compute = pack_stats.entries as usize;
    report.bytes_to_compute = pack_stats.compressed_bytes;
    report.skipped_on_compute = r4.not_applied;
    cut_here(cut, Cut::AfterStep4)?;

    // Step 5: C writes its new manifest as pending, P commits, C adopts the
    // pending manifest. A C that dies in between asks P at its next round.
    let req = c.prepare_commit(&cr, cursor)?;
    report.problems = std::mem::take(&mut cr.problems);
    p.commit(pr, &req)?;
    cut_here(cut, Cut::AfterProjectCommit)?;
    c.commit(cr)?;
    report.cursor = cursor;
    Ok(report)
}
