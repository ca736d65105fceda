//! The commands a person runs at a terminal: `sluice tasks` (who is doing
//! what now, asked of the coordinators) and `sluice history` (what happened
//! before, read from the archive in S3). Installed as `kubectl-sluice` on
//! the PATH, the same binary is the kubectl plugin `kubectl sluice`.

pub mod cluster;
pub mod history;
pub mod output;
pub mod tasks;

/// The name the binary answers to when kubectl runs it as a plugin.
pub const PLUGIN: &str = "kubectl-sluice";
