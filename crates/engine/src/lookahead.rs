//! The look-ahead apply loop both sides run on a received tar stream (C's
//! step 4, P's step 3). A file entry is written to a temporary name and
//! renamed into place only once the next header (or the stream's end) has
//! been read intact: an entry the sender found torn is followed by a
//! withdraw marker (or a cut stream), and is then discarded. What each side
//! does with an entry is its [`LookAhead`] implementation.

use std::io::Read;

use cs_protocol::RelPath;
use cs_tarstream::{EntryHeader, Event, Limits, VisitError};

use crate::EngineError;

/// What differs between the two sides' apply of a stream.
pub(crate) trait LookAhead {
    /// A file written to its temporary name, waiting for the rest of the
    /// stream to prove it whole.
    type Staged;

    /// The path the stream named for `st` (what a withdraw marker names).
    fn entry_path(st: &Self::Staged) -> &RelPath;

    /// Applies one entry: a file or symlink is staged (returned), anything
    /// else is done at once or refused (`None`).
    fn apply_entry(&mut self, h: &EntryHeader, data: &mut dyn Read) -> Result<Option<Self::Staged>, EngineError>;

    /// The stream went on intact past `st`: it goes into place (or where
    /// the side's rule puts it).
    fn finalize(&mut self, st: Self::Staged) -> Result<(), EngineError>;

    /// Removes a staged copy that will not be used.
    fn discard(&mut self, st: Self::Staged) -> Result<(), EngineError>;

    /// The sender withdrew `path` (its staged copy, if any, is discarded).
    fn withdrawn(&mut self, path: &RelPath);

    /// Runs before each entry is applied, once the previous one is in place
    /// (a fault test's failpoint).
    fn before_entry(&mut self) -> Result<(), EngineError> {
        Ok(())
    }
}

/// The visitor's way of stopping a stream on purpose (fault injection).
#[derive(Debug, thiserror::Error)]
#[error("interrupted on purpose")]
pub struct Interrupted;

/// Applies the tar stream `input` through `side`. `stop_after` aborts
/// (with [`Interrupted`]) after that many entries (fault tests). On an
/// error, the entry still staged is discarded.
pub(crate) fn apply_stream<S: LookAhead, R: Read>(
    side: &mut S,
    input: R,
    limits: &Limits,
    stop_after: Option<usize>,
) -> Result<(), EngineError> {
    let mut seen = 0usize;
    let mut staged: Option<S::Staged> = None;
    let boxed = |e: EngineError| Box::new(e) as VisitError;
    let result = cs_tarstream::unpack_events(input, limits, |ev| {
        let (h, data) = match ev {
            Event::Entry(h, data) => (h, data),
            Event::Withdraw(path) => {
                if let Some(st) = staged.take_if(|st| S::entry_path(st) == path) {
                    side.discard(st).map_err(boxed)?;
                }
                side.withdrawn(path);
                return Ok(());
            }
        };
        if stop_after.is_some_and(|n| seen >= n) {
            return Err(Box::new(Interrupted));
        }
        seen += 1;
        if let Some(st) = staged.take() {
            side.finalize(st).map_err(boxed)?;
        }
        side.before_entry().map_err(boxed)?;
        staged = side.apply_entry(h, data).map_err(boxed)?;
        Ok(())
    });
    match result {
        Ok(_) => match staged.take() {
            Some(st) => side.finalize(st),
            None => Ok(()),
        },
        Err(e) => {
            if let Some(st) = staged.take() {
                let _ = side.discard(st);
            }
            Err(e.into())
        }
    }
}
