//! Shared harness for the integration tests: one real API server and one
//! real MinIO per test binary, started on first use and stopped when the
//! binary exits (however it exits). Tests isolate themselves with their own
//! namespaces and buckets.
#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod chaos;
pub mod dataplane;
pub mod silence;
pub mod sources;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use sluice_testenv::{Daemon, KubeEnv, MinioEnv, free_port, http_get};

/// The task records an archive object holds, read the plain way (whole
/// zstd stream, one JSON record per line), independently of `sluice
/// history`'s reader.
pub fn archive_records(object: &[u8]) -> Vec<sluice_core::archive::TaskRecord> {
    let lines = zstd::decode_all(object).expect("an archive object is zstd");
    lines
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(index, line)| {
            serde_json::from_slice(line)
                .unwrap_or_else(|err| panic!("archive record {}: {err}", index + 1))
        })
        .collect()
}

/// The repository root, where `crds/` and `examples/` are.
pub fn repo() -> &'static Path {
    sluice_testenv::repo()
}

/// This binary's API server (etcd + kube-apiserver).
pub fn kube() -> &'static KubeEnv {
    KubeEnv::shared()
}

/// This binary's API server with the IngestSource CRD installed and
/// Established.
pub fn kube_with_crd() -> &'static KubeEnv {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    let kube = kube();
    INSTALLED.get_or_init(|| {
        let crd = repo().join("crds/ingestsources.sluice.dev.yaml");
        succeed(kubectl(
            &["apply", "--server-side", "-f", crd.to_str().unwrap()],
            None,
        ));
        // kubectl wait fails at once, instead of waiting, while the new
        // CRD has no conditions at all yet.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let waited = kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/ingestsources.sluice.dev",
                ],
                None,
            );
            if waited.status.success() || Instant::now() > deadline {
                succeed(waited);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        kube.restart_controller_manager()
            .unwrap_or_else(|err| panic!("{err}"));
    });
    kube
}

/// This binary's MinIO server.
pub fn minio() -> &'static MinioEnv {
    MinioEnv::shared()
}

/// Runs the pinned kubectl against this binary's API server, with `stdin`
/// piped in when given.
pub fn kubectl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = kube()
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl starts");
    let mut input = child.stdin.take().expect("stdin is piped");
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .expect("kubectl reads its input");
    drop(input);
    child.wait_with_output().expect("kubectl finishes")
}

/// The stdout of a command that must succeed; otherwise panics with its
/// stderr.
pub fn succeed(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// The stderr of a command that must fail; otherwise panics with its stdout.
pub fn fail(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command succeeded but should have failed:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stderr).expect("kubectl prints UTF-8")
}

/// Polls `probe` every 50 ms until it yields a value, or panics naming
/// `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `sluice operator` process against an API server, stopped on drop.
/// The token key of every test operator: the same for all, so that
/// operators taking over from each other derive the same tokens.
pub const TOKEN_KEY: &str = "a test token key of at least 32 bytes";

pub struct Operator {
    daemon: Daemon,
    admin_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator binary against `kube` (admin credentials) with
    /// `args` added, and waits until it serves /healthz.
    pub fn start(kube: &KubeEnv, identity: &str, args: &[&str]) -> Self {
        Self::start_logging(kube, identity, args, "info,sluice=debug")
    }

    /// [`Operator::start`] with the `RUST_LOG` filter `log` (benchmarks run
    /// it at `info`, as the chart does, not at the tests' `debug`).
    pub fn start_logging(kube: &KubeEnv, identity: &str, args: &[&str], log_filter: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let admin_port = free_port().unwrap();
        let key = dir.path().join("token-key");
        std::fs::write(&key, TOKEN_KEY).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .env("KUBECONFIG", kube.kubeconfig())
            .env("RUST_LOG", log_filter)
            .args(["operator", "--image", "sluice:test", "--identity", identity])
            .arg("--token-key-file")
            .arg(&key)
            .arg(format!("--admin-address=127.0.0.1:{admin_port}"))
            .args(args);
        let mut daemon = Daemon::spawn("sluice operator", command, &log).unwrap();
        daemon
            .wait_ready(Duration::from_secs(30), || {
                http_get(admin_port, "/healthz").is_some()
            })
            .unwrap_or_else(|err| panic!("{err}"));
        Self {
            daemon,
            admin_port,
            log,
            _dir: dir,
        }
    }

    /// The sum of every series of the Prometheus metric `name`.
    pub fn metric(&self, name: &str) -> f64 {
        self.metric_with(name, "")
    }

    /// The sum of the series of the metric `name` with `label`.
    pub fn metric_with(&self, name: &str, label: &str) -> f64 {
        let (_, body) =
            http_get(self.admin_port, "/metrics").expect("the operator serves /metrics");
        metric_with(&body, name, label)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin_port, path)
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Asks the operator to stop (SIGTERM) and waits up to `grace` for it
    /// to exit: its exit status, or None if it still runs.
    pub fn stop(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        self.daemon.terminate(grace);
        self.daemon.wait_exit(Duration::ZERO)
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.daemon.check_running().is_ok()
    }

    /// What the operator logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    /// A graceful stop, so the operator releases its leader Lease for the
    /// next one.
    fn drop(&mut self) {
        self.daemon.terminate(Duration::from_secs(10));
    }
}

/// The sum of every series of the Prometheus metric `name` in the text
/// exposition `body`.
pub fn metric(body: &str, name: &str) -> f64 {
    metric_with(body, name, "")
}

/// The sum of the series of the Prometheus metric `name` in `body` whose
/// labels include `label` (such as `phase="Idle"`).
pub fn metric_with(body: &str, name: &str, label: &str) -> f64 {
    body.lines()
        .filter(|line| line.split(['{', ' ']).next() == Some(name))
        .filter(|line| {
            let labels = line
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'));
            labels.map_or(label.is_empty(), |(labels, _)| labels.contains(label))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// This binary's operator: all namespaces, leader-elected, against
/// [`kube_with_crd`].
pub fn operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| Operator::start(kube_with_crd(), "shared", &[]))
}

/// Stands in for the Deployment controller and the kubelet: once the
/// operator has written Deployment `name` (it applies the coordinator's and
/// the workers' at once, in either order), reports every wanted pod of it
/// as updated and ready.
pub async fn mark_ready(client: &kube::Client, namespace: &str, name: &str) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = eventually(&format!("Deployment {name}"), sources::SETTLE, || {
        let api = api.clone();
        async move { api.get_opt(name).await.unwrap() }
    })
    .await;
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = serde_json::json!({"status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}
