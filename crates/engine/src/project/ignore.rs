//! P's `.csignore`: read from the home's root at every hello. The rules in
//! force are the file's while it parses; a file that does not (unreadable,
//! a bad pattern) leaves the last good rules in force (kept in the state
//! directory across restarts) and its error is logged once, shown in status
//! and sent to clients. With no good rules ever, no round runs: one without
//! them would sync what they keep apart.

use std::io::Read;
use std::sync::Arc;

use cs_protocol::RelPath;
use serde::Serialize;

use super::{lock, ProjectSide};
use crate::{EngineError, IgnoreError, IgnoreRules, PathFilter, IGNORE_FILE, IGNORE_FILE_MAX};

/// The last good rules, in the state directory.
const LAST_GOOD_FILE: &str = "csignore.in-force";

/// The rules in force and why the file is not, if it is not.
#[derive(Default)]
pub(super) struct IgnoreState {
    /// The configured filter with the rules in force; `None`: no good rules
    /// known (the file was bad from the start).
    pub in_force: Option<Arc<PathFilter>>,
    pub error: Option<String>,
}

/// The `.csignore` part of the broker's status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IgnoreStatus {
    /// Patterns in the rules in force.
    pub patterns: usize,
    /// Why the home's `.csignore` is not in force (file and line), if so.
    pub error: Option<String>,
}

impl ProjectSide {
    /// The home's `.csignore`: none is no rules. Read without following a
    /// symlink (a link out of the home is not the project's rules).
    fn read_ignore_file(&self) -> Result<IgnoreRules, IgnoreError> {
        let shown = self.cfg.home.join(IGNORE_FILE).display().to_string();
        let fail = |reason: String| IgnoreError::File { file: shown.clone(), reason };
        let rel = RelPath::new(IGNORE_FILE).expect("a valid name");
        let f = match self.home.open_file(&rel) {
            Ok(f) => f,
            Err(e) if e.is_not_found() => return Ok(IgnoreRules::default()),
            Err(e) => return Err(fail(e.to_string())),
        };
        let mut bytes = Vec::new();
        f.take(IGNORE_FILE_MAX as u64 + 1).read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
        IgnoreRules::parse(&shown, &bytes)
    }

    /// At open: the file's rules, else the last good ones.
    pub(super) fn initial_ignore(&self) -> IgnoreState {
        match self.read_ignore_file() {
            Ok(rules) => {
                self.save_last_good(&rules);
                IgnoreState { in_force: Some(Arc::new(self.cfg.filter.with_ignore(Arc::new(rules)))), error: None }
            }
            Err(e) => {
                let path = self.cfg.state_dir.join(LAST_GOOD_FILE);
                let last = std::fs::read(&path).ok().and_then(|b| IgnoreRules::parse("last good rules", &b).ok());
                tracing::warn!(error = %e, last_good = last.is_some(), ".csignore not used: the last good rules stay in force (none: no round runs)");
                let in_force = last.map(|r| Arc::new(self.cfg.filter.with_ignore(Arc::new(r))));
                IgnoreState { in_force, error: Some(e.to_string()) }
            }
        }
    }

    fn save_last_good(&self, rules: &IgnoreRules) {
        let path = self.cfg.state_dir.join(LAST_GOOD_FILE);
        if std::fs::read(&path).ok().as_deref() == Some(rules.text().as_bytes()) {
            return;
        }
        if let Err(e) = cs_safe_fs::write_atomic(&path, rules.text().as_bytes()) {
            tracing::warn!(path = %path.display(), error = %e, "saving the ignore rules in force");
        }
    }

    /// Reads the file again (each hello): the filter of the refresh about
    /// to run, and whether its rules changed (then the refresh is a full
    /// rescan: newly ignored paths leave the journal, no longer ignored ones
    /// enter it with new sequence numbers).
    pub(super) fn reload_ignore(&self) -> Result<(Arc<PathFilter>, bool), EngineError> {
        let read = self.read_ignore_file();
        let mut st = lock(&self.ignore);
        match read {
            Ok(rules) => {
                if st.error.take().is_some() {
                    tracing::info!(".csignore is usable again");
                }
                if let Some(f) = st.in_force.as_ref().filter(|f| f.ignore_rules().text() == rules.text()) {
                    return Ok((f.clone(), false));
                }
                tracing::info!(patterns = rules.patterns(), ".csignore changed: new rules from this round on");
                self.save_last_good(&rules);
                let f = Arc::new(self.cfg.filter.with_ignore(Arc::new(rules)));
                st.in_force = Some(f.clone());
                Ok((f, true))
            }
            Err(e) => {
                let shown = e.to_string();
                if st.error.as_deref() != Some(shown.as_str()) {
                    tracing::warn!(error = %shown, ".csignore not used: the last good rules stay in force");
                }
                st.error = Some(shown);
                match &st.in_force {
                    Some(f) => Ok((f.clone(), false)),
                    None => Err(e.into()),
                }
            }
        }
    }

    /// The rules' part of status.
    pub fn ignore_status(&self) -> IgnoreStatus {
        let st = lock(&self.ignore);
        IgnoreStatus {
            patterns: st.in_force.as_ref().map_or(0, |f| f.ignore_rules().patterns()),
            error: st.error.clone(),
        }
    }

    /// The error to send with the rules (see [`cs_protocol::HelloReply`]).
    pub(super) fn ignore_error(&self) -> Option<String> {
        lock(&self.ignore).error.clone()
    }
}
