//! `sluice-testenv`: the local environment as a program, for `make demo`,
//! `make test-env` and the test node's watchdog. Not part of the product.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A local environment of real components for sluice's tests and demo.
#[derive(Parser)]
#[command(name = "sluice-testenv", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver and MinIO on loopback, print how to reach
    /// them, and run until interrupted (Ctrl-C), then remove everything
    /// (`make test-env`).
    Env(EnvArgs),

    /// Run all of sluice on this machine: a real single-node Kubernetes, the
    /// chart, the operator, three IngestSources ingesting sample data, then
    /// the answers of `kubectl sluice tasks` and `history` (`make demo`).
    Demo(sluice_testenv::demo::DemoArgs),

    /// Wait until process PARENT exits, then tear down the test node it
    /// started if it did not (the node starts this itself).
    NodeWatchdog(WatchdogArgs),
}

#[derive(Args)]
struct WatchdogArgs {
    /// The process that runs the node.
    #[arg(long)]
    parent: u32,
}

#[derive(Args)]
struct EnvArgs {
    /// Manifests (files or directories) to `kubectl apply --server-side` once
    /// the API server is ready, in order.
    #[arg(long = "apply", value_name = "PATH")]
    apply: Vec<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Env(args) => sluice_testenv::serve(&args.apply).await,
        Command::Demo(args) => sluice_testenv::demo::run(&args).await,
        Command::NodeWatchdog(args) => sluice_testenv::node::watch(args.parent),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sluice-testenv: {err}");
            ExitCode::FAILURE
        }
    }
}
