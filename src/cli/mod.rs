//! The commands a person runs at a terminal: `sluice tasks` (who is doing
//! what now, asked of the coordinators), `sluice history` (what happened
//! before, read from the archive in S3) and `sluice redrive` (dead letters
//! queued again). Installed as `kubectl-sluice` on
//! the PATH, the same binary is the kubectl plugin `kubectl sluice`; as
//! `kubectl_complete-sluice`, it completes `kubectl sluice <TAB>`.

pub mod cluster;
pub mod complete;
pub mod history;
pub mod output;
pub mod redrive;
pub mod tasks;

/// The name the binary answers to when kubectl runs it as a plugin.
pub const PLUGIN: &str = "kubectl-sluice";

/// `--state`: one of `states`, which `--help` and completion offer.
pub fn task_states(
    states: &'static [sluice_core::api::TaskState],
) -> impl clap::builder::TypedValueParser<Value = sluice_core::api::TaskState> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(states.iter().map(|state| state.as_str()))
        .map(|name| name.parse().expect("a possible value is a state"))
}
