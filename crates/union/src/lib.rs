//! The union filesystem behind one small interface.
//!
//! A compute server's home is a unionfs-fuse copy-on-write union: upper = fast local dir,
//! lower = the project's home. Deleting a lower entry through the merged view leaves a
//! *whiteout marker* in the upper layer; the sync engine reads those to propagate deletes.
//! This crate decodes, writes and removes markers for both meta-dir layouts
//! ([`Layout::UnionfsFuse1`]: `.unionfs-fuse`, [`Layout::Unionfs2`]: `.unionfs`), and runs
//! the real union ([`UnionfsFuse`], [`MountGuard`]). The observed on-disk behaviour is
//! written up in `docs/unionfs-notes.md`.

mod error;
mod mount;
pub mod overlay;
mod whiteout;

pub use error::UnionError;
pub use mount::{access_options, is_mounted, mount_entry, MountEntry, MountGuard, UnionfsFuse};
pub use whiteout::{
    create_dir_whiteout, create_whiteout, is_hidden, is_meta_path, list_whiteouts, remove_whiteout, remove_whiteout_at,
    Layout, Whiteout, WhiteoutScan, HIDE_SUFFIX,
};
