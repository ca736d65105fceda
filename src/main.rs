use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// sluice runs S3 ingest workloads on Kubernetes and makes them easy to debug.
///
/// An IngestSource (sluice.dev/v1alpha1) names an account, a collection, an S3
/// source, a sink and an archive; the operator turns it into a coordinator and
/// a pool of workers.
#[derive(Parser)]
#[command(name = "sluice", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the IngestSource CustomResourceDefinition as YAML.
    ///
    /// Install it with `sluice crd | kubectl apply --server-side -f -`; the
    /// Helm chart installs the same definition.
    Crd,

    /// Run the operator: reconcile every IngestSource into a coordinator and
    /// a pool of workers, and report their state in its status.
    ///
    /// Reads the Kubernetes credentials from KUBECONFIG or, in a pod, from
    /// its service account.
    Operator(sluice::operator::OperatorArgs),

    /// Run the coordinator of one IngestSource: list its source, lease
    /// tasks to its workers, checkpoint and archive to S3.
    ///
    /// The operator runs it in the `NAME-coordinator` Deployment; it also
    /// runs as a plain process.
    Coordinator(sluice::coordinator::CoordinatorArgs),

    /// Run a worker of one IngestSource: lease tasks from the coordinator
    /// and ingest their objects into the sink.
    ///
    /// The operator runs a pool of them in the `NAME-worker` Deployment;
    /// they also run as plain processes.
    Worker(sluice::worker::WorkerArgs),

    Tasks(sluice::cli::tasks::TasksArgs),

    History(sluice::cli::history::HistoryArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    match parse().command {
        Command::Crd => print(&sluice::crd::crd_yaml()),
        Command::Operator(args) => exit("operator", sluice::operator::run(args).await),
        Command::Coordinator(args) => exit("coordinator", sluice::coordinator::run(args).await),
        Command::Worker(args) => exit("worker", sluice::worker::run(args).await),
        Command::Tasks(args) => exit("tasks", sluice::cli::tasks::run(args).await),
        Command::History(args) => exit("history", sluice::cli::history::run(args).await),
    }
}

/// The command line; invoked as `kubectl-sluice` (kubectl runs plugins so),
/// the help names the command `kubectl sluice`.
fn parse() -> Cli {
    let mut command = Cli::command();
    let invoked_as = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|path| {
            path.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        });
    if invoked_as.as_deref() == Some(sluice::cli::PLUGIN) {
        command = command.name("kubectl sluice").bin_name("kubectl sluice");
    }
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|err| err.exit())
}

/// Success, or the error on stderr and a failing exit code.
fn exit(command: &str, result: Result<(), impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice {command}: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout; a closed pipe (`sluice crd | head`) is not an error.
fn print(text: &str) -> ExitCode {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice: cannot write to stdout: {err}");
            ExitCode::FAILURE
        }
    }
}
