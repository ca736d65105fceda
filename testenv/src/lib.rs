//! A local environment of real components for tests, benchmarks and
//! `make demo`: etcd with kube-apiserver (RBAC on, client-certificate
//! admin), MinIO as the S3 store (and moto, a store that ignores
//! conditional writes), and a real single-node Kubernetes whose
//! pods run in containers ([`Node`]).
//!
//! Not part of the operator: it starts servers as local processes from the
//! binaries `tools/build.sh` builds at pinned versions. The control planes
//! and MinIO take free loopback ports, so several test binaries can run at
//! once; the node is one per machine.

pub mod demo;
pub mod image;
mod kube;
mod minio;
mod moto;
pub mod node;
mod process;
pub mod s3;
pub mod tools;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::kube::KubeEnv;
pub use self::minio::MinioEnv;
pub use self::moto::MotoEnv;
pub use self::node::Node;
pub use self::process::{Daemon, free_port, http, http_at, http_get};

/// Why a component of the environment could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{name} is not built (looked in {searched}): run `make tools`, which make test and make demo also run"
    )]
    ToolMissing { name: String, searched: String },

    #[error("cannot find the tool directories (`{script} path`): {reason}")]
    ToolsPath { script: PathBuf, reason: String },

    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },

    #[error("{name} exited ({status}) while starting\n{log_tail}")]
    Exited {
        name: String,
        status: String,
        log_tail: String,
    },

    #[error("{name} was not ready within {timeout:?}\n{log_tail}")]
    NotReady {
        name: String,
        timeout: Duration,
        log_tail: String,
    },

    #[error("{what} failed: {stderr}")]
    Command { what: String, stderr: String },

    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },

    #[error("this machine cannot run the test node: {0}")]
    Precondition(String),

    #[error("generating test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
}

/// How often a server start is retried with fresh ports when another
/// process took a port between choosing and binding it.
const START_ATTEMPTS: usize = 3;

/// Runs `start` up to [`START_ATTEMPTS`] times while it fails because the
/// server exited (typically a port clash).
fn with_port_retries<T>(mut start: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut attempt = 1;
    loop {
        match start() {
            Err(Error::Exited { .. }) if attempt < START_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// The repository (the workspace root), where `tools/`, `charts/` and
/// `crds/` are.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the harness is a crate inside the workspace")
}

/// `root` and every file and directory under it, at any depth.
fn walk(root: &Path) -> impl Iterator<Item = PathBuf> + use<> {
    let mut pending = vec![root.to_owned()];
    std::iter::from_fn(move || {
        let path = pending.pop()?;
        if path.is_dir()
            && let Ok(entries) = std::fs::read_dir(&path)
        {
            pending.extend(entries.flatten().map(|entry| entry.path()));
        }
        Some(path)
    })
}

/// A fresh directory under the system temp dir, removed when the returned
/// guard drops or, for environments held in statics, when the process exits.
fn scratch_dir(prefix: &str) -> Result<tempfile::TempDir, Error> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|source| Error::Io {
            what: "creating a scratch directory".into(),
            source,
        })?;
    process::remove_at_exit(dir.path());
    Ok(dir)
}

/// `sluice-testenv env` (`make test-env`): starts the environment, applies
/// `manifests`, prints how to reach everything, and waits for Ctrl-C (or
/// SIGTERM), then stops and removes it all.
pub async fn serve(manifests: &[std::path::PathBuf]) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};

    let start = std::time::Instant::now();
    let (kube, minio) =
        tokio::task::spawn_blocking(|| Ok::<_, Error>((KubeEnv::start()?, MinioEnv::start()?)))
            .await
            .expect("starting the environment does not panic")?;
    for manifest in manifests {
        print!("{}", kube.apply(manifest)?);
    }
    // Listen before saying "press Ctrl-C", or an early Ctrl-C kills the
    // process with its default action and skips the clean-up.
    let listen = |kind: SignalKind| {
        signal(kind).map_err(|source| Error::Io {
            what: "listening for signals".into(),
            source,
        })
    };
    let (mut interrupt, mut terminate) = (
        listen(SignalKind::interrupt())?,
        listen(SignalKind::terminate())?,
    );
    let credentials = minio.credentials();
    println!(
        "\nReady in {:.1}s. In another shell:\n\n  export KUBECONFIG={}\n  kubectl get ingestsources -A\n\n\
         S3 (MinIO): {} (access key {}, secret key {})\n\
         Logs and data: {} and {}\n\nPress Ctrl-C to stop and remove everything.",
        start.elapsed().as_secs_f64(),
        kube.kubeconfig().display(),
        minio.endpoint(),
        credentials.access_key_id,
        credentials.secret_access_key,
        kube.dir().display(),
        minio.dir().display(),
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("Stopping.");
    Ok(())
}
