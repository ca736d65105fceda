//! The test environment itself: real kube-apiserver (RBAC on, the pinned
//! version), real MinIO reachable with aws-sdk-s3 the way sluice reaches S3,
//! several environments side by side, and nothing left behind.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use serde_json::Value;
use sluice_testenv::{KubeEnv, MinioEnv};

/// This binary's shared API server and MinIO.
fn kube() -> &'static KubeEnv {
    KubeEnv::shared()
}

fn minio() -> &'static MinioEnv {
    MinioEnv::shared()
}

/// The pinned kubectl's stdout against this binary's API server; a failure
/// panics with its stderr.
fn kubectl(args: &[&str]) -> String {
    let output = kube().kubectl_output(args).unwrap();
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

#[test]
fn api_server_reports_the_pinned_version() {
    let go_mod = std::fs::read_to_string(sluice_testenv::repo().join("tools/kube/go.mod")).unwrap();
    let pinned = go_mod
        .lines()
        .find_map(|line| line.strip_prefix("require k8s.io/kubernetes "))
        .expect("tools/kube/go.mod pins k8s.io/kubernetes")
        .trim();
    let version: Value = serde_json::from_str(&kubectl(&["version", "-o", "json"])).unwrap();
    assert_eq!(version["serverVersion"]["gitVersion"], pinned);
    assert_eq!(version["clientVersion"]["gitVersion"], pinned);
}

#[test]
fn api_server_authorizes_with_rbac() {
    let kube = kube();
    let namespace = kube.namespace("rbac").unwrap();
    kubectl(&["create", "serviceaccount", "nobody", "-n", &namespace]);
    let token = kubectl(&["create", "token", "nobody", "-n", &namespace]);
    let as_nobody = |args: &[&str]| {
        std::process::Command::new(kube.kubectl().get_program())
            .args(["--kubeconfig=/dev/null", "--server", kube.server()])
            .arg(format!(
                "--certificate-authority={}",
                kube.ca_cert().display()
            ))
            .args(["--token", token.trim(), "-n", &namespace])
            .args(args)
            .output()
            .unwrap()
    };
    let denied = as_nobody(&["get", "configmaps"]);
    assert!(!denied.status.success());
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(
        stderr.contains("forbidden")
            && stderr.contains(&format!("system:serviceaccount:{namespace}:nobody")),
        "{stderr}"
    );

    kubectl(&[
        "create",
        "role",
        "read-configmaps",
        "--verb=list",
        "--resource=configmaps",
        "-n",
        &namespace,
    ]);
    kubectl(&[
        "create",
        "rolebinding",
        "nobody-reads",
        "--role=read-configmaps",
        &format!("--serviceaccount={namespace}:nobody"),
        "-n",
        &namespace,
    ]);
    let allowed = as_nobody(&["get", "configmaps"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[tokio::test]
async fn minio_serves_s3_to_the_sdk_with_path_style_addressing() {
    let minio = minio();
    let bucket = minio.bucket("harness").await.unwrap();
    let s3 = minio.client().await;
    for i in 0..25 {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("events/{i:03}.ndjson"))
            .body(ByteStream::from(format!("{{\"id\":{i}}}\n").into_bytes()))
            .send()
            .await
            .unwrap();
    }
    s3.put_object()
        .bucket(&bucket)
        .key("other/ignored.ndjson")
        .body(ByteStream::from_static(b"{}\n"))
        .send()
        .await
        .unwrap();

    // Paginated listing of a prefix, 10 keys a page, as the coordinator lists.
    let mut pages = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("events/")
        .max_keys(10)
        .into_paginator()
        .send();
    let mut keys = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next().await {
        page_count += 1;
        keys.extend(
            page.unwrap()
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    assert_eq!(page_count, 3);
    assert_eq!(keys.len(), 25);
    assert_eq!(keys[0], "events/000.ndjson");
    assert_eq!(keys[24], "events/024.ndjson");

    let body = s3
        .get_object()
        .bucket(&bucket)
        .key("events/007.ndjson")
        .send()
        .await
        .unwrap();
    let bytes = body.body.collect().await.unwrap().into_bytes();
    assert_eq!(&bytes[..], b"{\"id\":7}\n");
}

#[test]
fn environments_run_side_by_side_and_leave_nothing_behind() {
    // This binary's shared environment is up; start a second of each.
    let first = kube();
    minio();
    let (second_kube, second_minio) = (KubeEnv::start().unwrap(), MinioEnv::start().unwrap());
    assert_ne!(first.server(), second_kube.server());
    assert_ne!(minio().endpoint(), second_minio.endpoint());
    let nodes = second_kube
        .kubectl_output(&["get", "--raw=/readyz"])
        .unwrap();
    assert!(nodes.status.success());

    let mut pids = second_kube.pids();
    pids.push(second_minio.pid());
    let dirs = [second_kube.dir().to_owned(), second_minio.dir().to_owned()];
    drop(second_kube);
    drop(second_minio);

    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived its environment"
        );
    }
    for dir in dirs {
        assert!(!dir.exists(), "{} outlived its environment", dir.display());
    }
    // The shared environment is unaffected.
    kubectl(&["get", "--raw=/readyz"]);
}

/// `sluice-testenv env` (what `make test-env` runs) stops everything on Ctrl-C,
/// and its servers die with it even when it is killed with SIGKILL.
#[test]
fn the_env_command_takes_its_servers_along_however_it_ends() {
    for signal in [libc::SIGINT, libc::SIGKILL] {
        let mut env = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_sluice-testenv"))
                .arg("env")
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let mut dirs = Vec::new();
        for line in BufReader::new(env.0.stdout.take().unwrap()).lines() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("Logs and data: ") {
                dirs = rest.split(" and ").map(PathBuf::from).collect();
            }
            if line.starts_with("Press Ctrl-C") {
                break;
            }
        }
        assert_eq!(
            dirs.len(),
            2,
            "sluice-testenv env names its kube and minio directories"
        );
        let servers = processes_under(&dirs);
        assert_eq!(
            servers.len(),
            4,
            "etcd, kube-apiserver, kube-controller-manager and minio run: {servers:?}"
        );

        // SAFETY: signalling a child we started.
        unsafe { libc::kill(env.0.id() as i32, signal) };
        let status = env.0.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !processes_under(&dirs).is_empty() {
            assert!(
                Instant::now() < deadline,
                "servers outlived sluice-testenv env after signal {signal}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if signal == libc::SIGINT {
            assert!(status.success(), "Ctrl-C is a clean stop: {status}");
            assert!(
                dirs.iter().all(|dir| !dir.exists()),
                "Ctrl-C removes {dirs:?}"
            );
        } else {
            dirs.iter()
                .for_each(|dir| drop(std::fs::remove_dir_all(dir)));
        }
    }
}

/// A child that is killed if the test fails before it ends it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pids of processes whose command line names one of `dirs`.
fn processes_under(dirs: &[PathBuf]) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            dirs.iter()
                .any(|dir| cmdline.contains(dir.to_str().unwrap()))
        })
        .collect()
}
