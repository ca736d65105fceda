//! Shared harness for the integration tests: one real API server and one
//! real MinIO per test binary, started on first use and stopped when the
//! binary exits (however it exits). Tests isolate themselves with their own
//! namespaces and buckets.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::OnceLock;

use sluice::testenv::{KubeEnv, MinioEnv};

/// The repository root, where `crds/` and `examples/` are.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// This binary's API server (etcd + kube-apiserver).
pub fn kube() -> &'static KubeEnv {
    static KUBE: OnceLock<KubeEnv> = OnceLock::new();
    KUBE.get_or_init(|| KubeEnv::start().unwrap_or_else(|err| panic!("{err}")))
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
        succeed(kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/ingestsources.sluice.dev",
            ],
            None,
        ));
    });
    kube
}

/// This binary's MinIO server.
pub fn minio() -> &'static MinioEnv {
    static MINIO: OnceLock<MinioEnv> = OnceLock::new();
    MINIO.get_or_init(|| MinioEnv::start().unwrap_or_else(|err| panic!("{err}")))
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
