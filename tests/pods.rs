//! sluice's pods in real containers, on the real single-node cluster: the
//! chart's operator runs as a pod and reconciles an IngestSource into
//! coordinator and worker pods of the locally built image, under Pod
//! Security `restricted`; they become Ready through their real probes,
//! the workers find their coordinator by its Service's DNS name, and
//! `kubectl sluice tasks` reaches it through the API server's service
//! proxy.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use sluice::testenv::image::{self, Image};
use sluice::testenv::node::NODE_IP;
use sluice::testenv::{MinioEnv, Node};
use support::{eventually, repo, sources};

/// How long an ingest of a few objects may take in pods.
const DONE: Duration = Duration::from_secs(180);
/// The chart's default image: `sluice:<appVersion>`.
const TAG: &str = env!("CARGO_PKG_VERSION");

/// The node of this test binary, with the sluice image imported.
fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let sluice = image::release_binary(Path::new(env!("CARGO_BIN_EXE_sluice")))
            .and_then(|binary| image::sluice(&binary, TAG))
            .unwrap_or_else(|err| panic!("{err}"));
        Node::start(&[sluice], Path::new(env!("CARGO_BIN_EXE_sluice")))
            .unwrap_or_else(|err| panic!("{err}"))
    })
}

/// MinIO on the node's address, so that pods and this process reach it.
fn minio() -> &'static MinioEnv {
    static MINIO: OnceLock<MinioEnv> = OnceLock::new();
    let _ = node();
    MINIO.get_or_init(|| {
        MinioEnv::start_at(std::net::IpAddr::V4(NODE_IP)).unwrap_or_else(|err| panic!("{err}"))
    })
}

/// kubectl against the node's API server; panics with what it printed
/// unless it succeeds.
fn kubectl(args: &[&str]) -> String {
    let output = node()
        .kube()
        .kubectl_output(args)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The chart installed once, with its defaults: the operator runs as a pod
/// of the sluice image under the chart's ServiceAccount.
fn chart() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        if let Err(err) = sluice::testenv::demo::install_chart(node().kube()) {
            panic!("{err}\n{}", kubectl(&["get", "pods", "-A", "-o", "wide"]));
        }
    });
}

/// Waits for the operator to write Deployment `name`, then for its pods to
/// be available, as `kubectl rollout status` judges it.
async fn rolled_out(client: &kube::Client, namespace: &str, name: &str) {
    sources::deployment_where(client, namespace, name, "the operator's Deployment", |_| {
        true
    })
    .await;
    kubectl(&[
        "-n",
        namespace,
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout=180s",
    ]);
}

/// A namespace where Pod Security `restricted` is enforced.
fn restricted_namespace(prefix: &str) -> String {
    let namespace = node().kube().namespace(prefix).unwrap();
    kubectl(&[
        "label",
        "namespace",
        &namespace,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    namespace
}

/// Buckets for a source, `count` objects of 25 NDJSON records in its
/// source, and the IngestSource `name` reading them with `workers`.
async fn ingest_source(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    count: usize,
    workers: u32,
) -> (serde_json::Value, String) {
    let minio = minio();
    // Two sources in one namespace share it.
    let _ = Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &minio.credentials_secret("acme-s3"))
        .await;
    let mut buckets = Vec::new();
    for store in ["source", "sink", "archive"] {
        buckets.push(minio.bucket(store).await.unwrap());
    }
    let s3 = minio.client().await;
    for i in 0..count {
        let body: String = (0..25)
            .map(|n| format!("{{\"id\":\"{i}-{n}\"}}\n"))
            .collect();
        s3.put_object()
            .bucket(&buckets[0])
            .key(format!("orders/{i:03}.ndjson"))
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    }
    let mut source = sources::orders(name);
    for (store, bucket) in ["source", "sink", "archive"].iter().zip(&buckets) {
        source["spec"][store]["s3"]["bucket"] = json!(bucket);
        source["spec"][store]["s3"]["endpoint"] = json!(minio.endpoint());
    }
    source["spec"]["workers"]["replicas"] = json!(workers);
    (source, buckets[1].clone())
}

/// The host's view of a pod's first container: its `/proc/PID/status`
/// and whether its root is mounted read-only.
fn container_process(pod: &Pod) -> (String, bool) {
    let id = pod
        .status
        .as_ref()
        .and_then(|status| {
            status
                .container_statuses
                .as_ref()?
                .first()?
                .container_id
                .clone()
        })
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_owned))
        .expect("a running container has an id");
    let tasks = node()
        .ctr()
        .unwrap()
        .args(["tasks", "ls"])
        .output()
        .unwrap();
    let tasks = String::from_utf8_lossy(&tasks.stdout).into_owned();
    let pid = tasks
        .lines()
        .find(|line| line.starts_with(&id))
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no task {id} in\n{tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root_read_only = mounts
        .lines()
        .map(|line| line.split(' ').collect::<Vec<_>>())
        .find(|fields| fields.get(4) == Some(&"/"))
        .is_some_and(|fields| fields[5].split(',').any(|option| option == "ro"));
    (status, root_read_only)
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
}

#[tokio::test]
async fn the_charts_operator_runs_a_source_in_restricted_pods_that_ingest_everything() {
    chart();
    let kube = node().kube();
    let client = kube.client().await;
    let namespace = restricted_namespace("pods");
    let (source, sink) = ingest_source(&client, &namespace, "orders", 40, 2).await;
    sources::apply(&client, &namespace, &source).await;

    // Ready through their real probes, as the Deployment controller sees it.
    for deployment in ["orders-coordinator", "orders-worker"] {
        rolled_out(&client, &namespace, deployment).await;
    }
    let status = eventually("every object ingested, in the status", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let objects = status.objects.as_ref()?;
        (objects.ingested == 40 && status.tasks.as_ref()?.running == 0).then_some(status)
    })
    .await;
    assert_eq!(status.records_ingested, Some(1000));
    let workers = status.workers.unwrap();
    assert_eq!((workers.desired, workers.ready), (2, 2));
    let records = sluice::testenv::demo::sink_records(&minio().client().await, &sink)
        .await
        .unwrap();
    assert_eq!(records, 1000, "the sink holds every record once");

    let log = kubectl(&["-n", &namespace, "logs", "deployment/orders-coordinator"]);
    assert!(log.contains("claimed the checkpoint"), "{log}");

    // Inside the coordinator's container: uid 65532, no capabilities, no
    // privilege escalation, a seccomp filter, a read-only root.
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels("app.kubernetes.io/component=coordinator"))
        .await
        .unwrap();
    let coordinator = pods.items.first().expect("a coordinator pod");
    let (process, root_read_only) = container_process(coordinator);
    assert_eq!(status_field(&process, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(status_field(&process, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&process, "NoNewPrivs"), "1");
    assert_eq!(status_field(&process, "Seccomp"), "2");
    assert!(root_read_only, "the coordinator's root is writable");
}

/// `sluice tasks` as the user runs it, against the node's API server,
/// its answer as NDJSON: one task per line.
fn sluice_tasks(args: &[&str]) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("KUBECONFIG", node().kube().kubeconfig())
        .arg("tasks")
        .args(args)
        .args(["-o", "ndjson"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.is_empty(),
        "sluice tasks {}: {stderr}",
        args.join(" ")
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn kubectl_sluice_tasks_answers_through_the_api_servers_service_proxy() {
    chart();
    let kube = node().kube();
    let client = kube.client().await;
    let namespace = restricted_namespace("proxy");
    // No workers: the tasks stay pending, one per object.
    for (name, account) in [("orders", "acme"), ("refunds", "globex")] {
        let (mut source, _) = ingest_source(&client, &namespace, name, 3, 0).await;
        source["spec"]["account"] = json!(account);
        source["spec"]["tasks"] = json!({"maxObjects": 1});
        sources::apply(&client, &namespace, &source).await;
    }
    for name in ["orders", "refunds"] {
        rolled_out(&client, &namespace, &format!("{name}-coordinator")).await;
    }

    // No --coordinator: the CLI asks each coordinator through
    // /api/v1/namespaces/NS/services/NAME-coordinator:http/proxy.
    let every = eventually(
        "both coordinators' tasks through the proxy",
        DONE,
        || async {
            let tasks = sluice_tasks(&["-n", &namespace]);
            (tasks.len() == 6).then_some(tasks)
        },
    )
    .await;
    assert!(
        every.iter().all(|task| task["state"] == "pending"),
        "{every:?}"
    );
    let sources_of = |tasks: &[serde_json::Value]| {
        let mut sources: Vec<String> = tasks
            .iter()
            .map(|task| task["source"].as_str().unwrap().to_owned())
            .collect();
        sources.dedup();
        sources
    };
    let globex = sluice_tasks(&["-n", &namespace, "--account", "globex"]);
    assert_eq!(globex.len(), 3);
    assert_eq!(sources_of(&globex), [format!("{namespace}/refunds")]);
    let orders = sluice_tasks(&["-n", &namespace, "orders"]);
    assert_eq!(sources_of(&orders), [format!("{namespace}/orders")]);
    assert_eq!(
        sluice_tasks(&["-n", &namespace, "--collection", "orders"]).len(),
        6
    );
    assert_eq!(
        sluice_tasks(&["-n", &namespace, "--state", "pending"]).len(),
        6
    );
    assert!(sluice_tasks(&["-n", &namespace, "--state", "running"]).is_empty());
}

/// The real Deployment controller and kubelet act on what the operator
/// writes: `kubectl scale isrc` changes how many worker pods run, and an
/// edit of the spec replaces the pods (the configuration's checksum is in
/// their template).
#[tokio::test]
async fn scaling_and_editing_a_source_change_the_pods_that_run() {
    chart();
    let kube = node().kube();
    let client = kube.client().await;
    let namespace = restricted_namespace("scale");
    let (mut source, _) = ingest_source(&client, &namespace, "orders", 2, 1).await;
    sources::apply(&client, &namespace, &source).await;
    rolled_out(&client, &namespace, "orders-worker").await;
    let pods = |component: &'static str| {
        let (client, namespace) = (client.clone(), namespace.clone());
        async move {
            let mut names: Vec<String> = Api::<Pod>::namespaced(client, &namespace)
                .list(&ListParams::default().labels(&format!(
                    "app.kubernetes.io/instance=orders,app.kubernetes.io/component={component}"
                )))
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|pod| {
                    pod.metadata.deletion_timestamp.is_none()
                        && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                })
                .filter_map(|pod| pod.metadata.name)
                .collect();
            names.sort();
            names
        }
    };

    kubectl(&["-n", &namespace, "scale", "isrc", "orders", "--replicas=3"]);
    eventually("three running worker pods", DONE, || async {
        (pods("worker").await.len() == 3).then_some(())
    })
    .await;
    kubectl(&["-n", &namespace, "scale", "isrc", "orders", "--replicas=1"]);
    eventually("one running worker pod", DONE, || async {
        (pods("worker").await.len() == 1).then_some(())
    })
    .await;

    let coordinator_before = pods("coordinator").await;
    source["spec"]["workers"]["replicas"] = json!(1);
    source["spec"]["tasks"] = json!({"maxObjects": 7});
    sources::apply(&client, &namespace, &source).await;
    eventually(
        "a new coordinator pod for the new configuration",
        DONE,
        || async {
            let now = pods("coordinator").await;
            (now.len() == 1 && now != coordinator_before).then_some(())
        },
    )
    .await;
    rolled_out(&client, &namespace, "orders-coordinator").await;
}

/// The image the harness writes and the `Dockerfile` users build describe
/// the same image: the binary at the same path as the entrypoint, the same
/// user, CA certificates where distroless keeps them.
#[test]
fn the_dockerfile_builds_the_image_the_tests_run() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let last_stage = dockerfile
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .unwrap();
    assert!(
        last_stage.starts_with("gcr.io/distroless/cc-debian12:nonroot"),
        "distroless cc (glibc, libgcc, CA certificates at {}) as the harness's image: {last_stage}",
        image::CA_CERTIFICATES
    );
    let instruction = |name: &str| {
        last_stage
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in the Dockerfile's last stage"))
            .trim()
            .to_owned()
    };
    assert_eq!(instruction("USER"), image::SLUICE_USER);
    assert_eq!(
        instruction("ENTRYPOINT"),
        format!("[\"{}\"]", image::SLUICE_BINARY)
    );
    assert!(
        instruction("COPY").ends_with(&format!(" {}", image::SLUICE_BINARY)),
        "the binary goes to {}",
        image::SLUICE_BINARY
    );
    let image: Image = image::sluice(Path::new(env!("CARGO_BIN_EXE_sluice")), TAG).unwrap();
    assert_eq!(image.user, image::SLUICE_USER);
    assert_eq!(image.entrypoint, [image::SLUICE_BINARY]);
    assert_eq!(image.name, format!("docker.io/library/sluice:{TAG}"));
    for path in [
        image::SLUICE_BINARY,
        image::CA_CERTIFICATES,
        "/etc/passwd",
        "/tmp",
    ] {
        assert!(
            image.files.iter().any(|file| file.path == path),
            "{path} is not in the image"
        );
    }
}
