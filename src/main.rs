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

    /// Ask a health endpoint and succeed on a 2xx answer.
    ///
    /// The chart's `helm test` runs it in a pod of the sluice image (which
    /// has no shell and no curl) against the operator's /readyz.
    Probe {
        /// The URL to GET, such as http://sluice-metrics.sluice-system:8080/readyz.
        url: String,
        /// How long to wait for the answer, as a duration such as 10s.
        #[arg(long, default_value = "10s", value_parser = sluice_core::duration::parse_std)]
        timeout: std::time::Duration,
    },

    /// Print the shell completion script of `sluice`.
    ///
    /// bash: `source <(sluice completion bash)`; zsh:
    /// `sluice completion zsh >"${fpath[1]}/_sluice"`; fish:
    /// `sluice completion fish | source`.
    /// For `kubectl sluice <TAB>` (kubectl 1.26 and later), put the binary
    /// on the PATH as `kubectl_complete-sluice` too (a symlink will do):
    /// kubectl asks it, and it completes source names from the cluster.
    Completion {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },

    Tasks(sluice::cli::tasks::TasksArgs),

    History(sluice::cli::history::HistoryArgs),

    Redrive(sluice::cli::redrive::RedriveArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    if invoked_as().as_deref() == Some(sluice::cli::complete::COMPLETER) {
        let words: Vec<String> = std::env::args().skip(1).collect();
        return print(&sluice::cli::complete::complete(Cli::command(), &words).await);
    }
    match parse().command {
        Command::Crd => print(&sluice::crd::crd_yaml()),
        Command::Operator(args) => exit("operator", sluice::operator::run(args).await),
        Command::Coordinator(args) => exit("coordinator", sluice::coordinator::run(args).await),
        Command::Worker(args) => exit("worker", sluice::worker::run(args).await),
        Command::Probe { url, timeout } => {
            exit("probe", sluice::telemetry::probe(&url, timeout).await)
        }
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut script);
            print(&String::from_utf8_lossy(&script))
        }
        Command::Tasks(args) => exit("tasks", sluice::cli::tasks::run(args).await),
        Command::History(args) => exit("history", sluice::cli::history::run(args).await),
        Command::Redrive(args) => exit("redrive", sluice::cli::redrive::run(args).await),
    }
}

/// The name the binary was run by: `sluice`, or one of its kubectl names.
fn invoked_as() -> Option<String> {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|path| {
            path.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
}

/// The command line; invoked as `kubectl-sluice` (kubectl runs plugins so),
/// the help names the command `kubectl sluice`.
fn parse() -> Cli {
    let mut command = Cli::command();
    if invoked_as().as_deref() == Some(sluice::cli::PLUGIN) {
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
