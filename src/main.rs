use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crd => print(&sluice::crd::crd_yaml()),
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
