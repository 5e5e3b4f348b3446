//! Test support: an emulated union, tree snapshots, a model of the sync contract.
