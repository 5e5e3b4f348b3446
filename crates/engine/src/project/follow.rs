//! Follow (docs/protocol.md, *Follow*): between a client's rounds, has the
//! project changed in a way that client has not seen and did not cause?
//! The broker asks this for each connected client whose hello asked
//! `follow`, while no round of that client runs, and pushes
//! `ProjectChanged` when the answer is yes.
//!
//! The echo rule is the journal's `author`: an entry whose last change is
//! the client's own round (step 1's deletions, step 3's writes) is never
//! news to it, or every round would announce the next one forever. Another
//! client's writes are news; so are P's own processes' (author `None`).
//! Excluded, local-only and ignored paths are never in the journal, so they
//! are never news either.

use cs_protocol::{ClientId, Cursor};

use super::{lock, ProjectSide};
use crate::EngineError;

/// The answer of [`ProjectSide::follow_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FollowNews {
    /// The journal's position when checked: once a push told the client of
    /// these changes, pass it back as `after`, so that they are not told again.
    pub checked: Cursor,
    /// Journal entries past the client's committed cursor and past `after`
    /// whose last change is not the client's own. 0: nothing to tell.
    pub changes: u64,
}

impl ProjectSide {
    /// Brings the journal up to date where inotify saw changes (only if
    /// events are queued: an idle home costs one `poll`), then counts what
    /// `client` has not seen and did not make since its committed cursor
    /// and since `after` (the position of the last push). Without a cursor
    /// of this journal (and no `after`), every entry not its own counts.
    ///
    /// Without complete inotify events (unavailable, or the watch limit
    /// reached) the journal is not refreshed here: that would be a full
    /// rescan per check; the hello's refresh covers it, and another
    /// client's round writes are still seen, being recorded as they happen.
    pub fn follow_check(&self, client: &ClientId, after: Option<Cursor>) -> Result<FollowNews, EngineError> {
        self.refresh_if_events()?;
        let committed = self.client_state(client)?.last_cursor;
        let j = lock(&self.journal);
        let journal = &j.journal;
        let checked = journal.cursor();
        // Positions in this journal only: another epoch's cursor says nothing.
        let from = [committed, after].into_iter().filter_map(|c| journal.position(c)).max();
        let changes = match from {
            Some(from) if from >= journal.seq => 0,
            _ => journal
                .entries
                .values()
                .filter(|e| from.is_none_or(|f| e.seq > f) && e.author.as_ref() != Some(client))
                .count() as u64,
        };
        Ok(FollowNews { checked, changes })
    }

    /// Refreshes the journal if inotify has events queued (see
    /// [`ProjectSide::follow_check`]); returns whether it did.
    fn refresh_if_events(&self) -> Result<bool, EngineError> {
        {
            let w = lock(&self.watch);
            match &w.home {
                Some(hw) if hw.complete() && hw.has_events() => {}
                _ => return Ok(false),
            }
        }
        self.refresh_journal()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use cs_protocol::ClientId;

    use super::*;
    use crate::driver::run_round;
    use crate::{ComputeConfig, ComputeSide, ProjectConfig};

    struct Bed {
        dir: tempfile::TempDir,
        p: ProjectSide,
    }

    impl Bed {
        fn new() -> Bed {
            let dir = tempfile::tempdir().unwrap();
            let home = dir.path().join("home");
            std::fs::create_dir_all(home.join("d")).unwrap();
            std::fs::write(home.join("d/seed"), b"seed").unwrap();
            let p = ProjectSide::open(ProjectConfig::new(home, dir.path().join("pstate"))).unwrap();
            Bed { dir, p }
        }

        fn home(&self) -> &Path {
            &self.p.config().home
        }

        fn client(&self, id: &str) -> ComputeSide {
            let root = self.dir.path().join(id);
            std::fs::create_dir_all(root.join("upper")).unwrap();
            let cfg = ComputeConfig::new(ClientId::new(id).unwrap(), root.join("upper"), root.join("state"));
            ComputeSide::open(cfg).unwrap()
        }

        fn changes(&self, id: &str) -> u64 {
            self.p.follow_check(&ClientId::new(id).unwrap(), None).unwrap().changes
        }
    }

    #[test]
    fn a_clients_own_round_is_never_news_to_it_but_is_to_the_others() {
        let b = Bed::new();
        let (mut c1, mut c2) = (b.client("c1"), b.client("c2"));
        run_round(&mut c1, &b.p, None).unwrap();
        run_round(&mut c2, &b.p, None).unwrap();
        assert_eq!((b.changes("c1"), b.changes("c2")), (0, 0), "both up to date");
        // c1 writes a file and deletes P's: its round records both as its own.
        std::fs::create_dir_all(c1.config().upper.join("new")).unwrap();
        std::fs::write(c1.config().upper.join("new/f"), b"from c1").unwrap();
        run_round(&mut c1, &b.p, None).unwrap();
        assert!(b.home().join("new/f").exists());
        assert_eq!(b.changes("c1"), 0, "its own writes, after the journal saw their events");
        assert_eq!(b.changes("c2"), 2, "c1's directory and file are c2's news");
        run_round(&mut c2, &b.p, None).unwrap();
        assert_eq!((b.changes("c1"), b.changes("c2")), (0, 0));
    }

    /// The loop hazard: a round cut after step 3 (or still running) leaves
    /// the client's writes on P past its committed cursor. Were they news to
    /// it, the push would start a round that writes, and so on.
    #[test]
    fn writes_of_a_clients_uncommitted_round_are_not_news_to_it() {
        let b = Bed::new();
        let (mut c1, mut c2) = (b.client("c1"), b.client("c2"));
        run_round(&mut c1, &b.p, None).unwrap();
        run_round(&mut c2, &b.p, None).unwrap();
        std::fs::write(c1.config().upper.join("mine"), b"from c1").unwrap();
        std::fs::write(c1.config().upper.join("also-mine"), b"x").unwrap();
        let cut = run_round(&mut c1, &b.p, Some(crate::driver::Cut::AfterStep3));
        assert!(cut.is_err(), "cut on purpose");
        assert!(b.home().join("mine").exists(), "step 3 wrote on P");
        assert_eq!(b.changes("c1"), 0, "its own writes, past its committed cursor");
        assert_eq!(b.changes("c2"), 2);
    }

    #[test]
    fn a_project_write_or_delete_is_news_until_a_round_or_a_push_covers_it() {
        let b = Bed::new();
        let mut c1 = b.client("c1");
        run_round(&mut c1, &b.p, None).unwrap();
        let id = ClientId::new("c1").unwrap();
        assert_eq!(b.changes("c1"), 0);
        std::fs::write(b.home().join("d/new"), b"written on P").unwrap();
        let news = b.p.follow_check(&id, None).unwrap();
        assert_eq!(news.changes, 1, "found by the refresh the check makes");
        // Pushed: the same change is not news again.
        assert_eq!(b.p.follow_check(&id, Some(news.checked)).unwrap().changes, 0);
        std::fs::remove_file(b.home().join("d/seed")).unwrap();
        assert_eq!(b.p.follow_check(&id, Some(news.checked)).unwrap().changes, 1, "a deletion");
        assert_eq!(b.changes("c1"), 2, "both, without the push's position");
        run_round(&mut c1, &b.p, None).unwrap();
        assert_eq!(b.changes("c1"), 0, "the round carried them");
        // A cursor of another journal, or none: what is not its own counts
        // (`d` and `d/new`; the tombstone every client has seen is pruned).
        let other = Cursor { epoch: news.checked.epoch ^ 1, seq: 1 };
        assert_eq!(b.p.follow_check(&ClientId::new("c9").unwrap(), Some(other)).unwrap().changes, 2);
    }

    #[test]
    fn excluded_and_local_only_paths_are_never_news() {
        let b = Bed::new();
        let mut c1 = b.client("c1");
        run_round(&mut c1, &b.p, None).unwrap();
        for rel in [".cache/x", "scratch/y", ".local/z", ".cs-actor/state", "d/.csa-tmp-1"] {
            let p = b.home().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"never synced").unwrap();
        }
        assert_eq!(b.changes("c1"), 0);
        std::fs::write(b.home().join("d/synced"), b"x").unwrap();
        assert_eq!(b.changes("c1"), 1, "the check does see the home");
    }
}
