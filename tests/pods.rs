//! sluice's pods in real containers, on the real single-node cluster: the
//! chart's operator runs as a pod and reconciles an IngestSource into
//! coordinator and worker pods of the locally built image, under Pod
//! Security `restricted`; they become Ready through their real probes,
//! the workers find their coordinator by its Service's DNS name, and
//! `kubectl sluice tasks` reaches it through the API server's service
//! proxy.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use rand::RngExt;
use serde_json::json;
use sluice_testenv::image::{self, Image};
use sluice_testenv::node::NODE_IP;
use sluice_testenv::{MinioEnv, Node};
use support::chaos::{Chaos, DataSet, Fault, Ledger, TASK_OBJECTS, ingest_on, tail};
use support::{eventually, repo, sources};

/// How long an ingest of a few objects may take in pods.
const DONE: Duration = Duration::from_secs(180);
/// The chart's default image: `sluice:<appVersion>`.
const TAG: &str = env!("CARGO_PKG_VERSION");

/// The node of this test binary, with the sluice image imported.
fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        image::release_binary("sluice")
            .and_then(|binary| image::sluice(&binary, TAG))
            .and_then(|sluice| Node::start(&[sluice]))
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
        if let Err(err) = sluice_testenv::demo::install_chart(node().kube()) {
            panic!("{err}\n{}", kubectl(&["get", "pods", "-A", "-o", "wide"]));
        }
    });
}

/// `helm test`: the chart's test pod, of the sluice image, finds the
/// operator answering /readyz through its Service.
#[test]
fn helm_test_finds_the_operator_answering() {
    chart();
    let printed = sluice_testenv::demo::test_chart(node().kube()).unwrap_or_else(|err| {
        panic!(
            "{err}\n{}",
            kubectl(&["-n", "sluice-system", "get", "pods", "-o", "wide"])
        )
    });
    assert!(printed.contains("TEST SUITE:     sluice-test"), "{printed}");
    assert!(printed.contains("Phase:          Succeeded"), "{printed}");
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

/// MinIO's credentials as Secret `name` in `namespace`, unless it is
/// there already (sources in one namespace share it).
async fn credentials(client: &kube::Client, namespace: &str, name: &str) {
    let _ = Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &minio().credentials_secret(name))
        .await;
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
    credentials(client, namespace, "acme-s3").await;
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

/// The host's view of the first container of a running `component` pod of
/// source `instance`: the pod, the container's process id, its
/// `/proc/PID/status` and whether its root is mounted read-only. Asked
/// again until it answers: another test of this binary restarts
/// containerd, and a pod's status may name a container the runtime is
/// replacing then.
async fn container_process(
    client: &kube::Client,
    namespace: &str,
    instance: &str,
    component: &str,
) -> (Pod, u32, String, bool) {
    let what = format!("a running {component} container of {instance}");
    eventually(&what, DONE, || async {
        let pod = running_pods(client, namespace, instance, component)
            .await
            .into_iter()
            .next()?;
        let pid = node().container_pid(container_id(&pod)?).ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        let root_read_only = mounts
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| fields.get(4) == Some(&"/"))
            .is_some_and(|fields| fields[5].split(',').any(|option| option == "ro"));
        Some((pod, pid, status, root_read_only))
    })
    .await
}

/// The runtime's id of a pod's first container.
fn container_id(pod: &Pod) -> Option<&str> {
    container_status(pod)?
        .container_id
        .as_deref()?
        .strip_prefix("containerd://")
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
    let records = sluice_testenv::s3::sink_records(&minio().client().await, &sink, "")
        .await
        .unwrap();
    assert_eq!(records, 1000, "the sink holds every record once");

    let log = container_log(&namespace, "deployment/orders-coordinator").await;
    assert!(log.contains("claimed the checkpoint"), "{log}");

    // Inside the coordinator's container: uid 65532, no capabilities, no
    // privilege escalation, a seccomp filter, a read-only root.
    let (coordinator, pid, process, root_read_only) =
        container_process(&client, &namespace, "orders", "coordinator").await;
    assert_eq!(status_field(&process, "Uid"), "65532\t65532\t65532\t65532");
    assert_eq!(status_field(&process, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&process, "NoNewPrivs"), "1");
    assert_eq!(status_field(&process, "Seccomp"), "2");
    assert!(root_read_only, "the coordinator's root is writable");
    // Not BestEffort, the first pod evicted; the token readable by the
    // pod's user and group only.
    let qos = coordinator
        .status
        .as_ref()
        .and_then(|s| s.qos_class.as_deref());
    assert_eq!(qos, Some("Burstable"));
    let token = std::fs::metadata(format!("/proc/{pid}/root/var/run/secrets/sluice/token"))
        .expect("the token file, seen from the host");
    assert_eq!(
        (token.mode() & 0o777, token.gid()),
        (0o440, 65532),
        "the token file's mode and group"
    );
}

/// The Running pods of `component` of source `instance` that are not
/// being deleted.
async fn running_pods(
    client: &kube::Client,
    namespace: &str,
    instance: &str,
    component: &str,
) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={instance},app.kubernetes.io/component={component}"
        )))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .collect()
}

/// The coordinator merges its finished-key segments into a file in its
/// temporary directory: in a pod with a read-only root, the emptyDir on
/// `/tmp`. Objects arrive in waves (the source is polled every second) until
/// a merge happened; each is counted by where it was written.
#[tokio::test]
async fn the_coordinator_spills_its_merges_to_the_empty_dir_on_tmp() {
    chart();
    let client = node().kube().client().await;
    let namespace = restricted_namespace("spill");
    let (mut source, _) = ingest_source(&client, &namespace, "orders", 1, 1).await;
    source["spec"]["source"]["pollInterval"] = json!("1s");
    let bucket = source["spec"]["source"]["s3"]["bucket"]
        .as_str()
        .unwrap()
        .to_owned();
    sources::apply(&client, &namespace, &source).await;
    rolled_out(&client, &namespace, "orders-coordinator").await;
    let s3 = minio().client().await;
    // The coordinator's merges so far: (written to a file, to memory).
    let merges = || {
        let metrics = kubectl(&[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/{namespace}/services/orders-coordinator:http/proxy/metrics"
            ),
        ]);
        let count = |written_to: &str| {
            let series = format!(
                "sluice_coordinator_finished_keys_merges_total{{written_to=\"{written_to}\"}} "
            );
            metrics
                .lines()
                .find_map(|line| line.strip_prefix(&series)?.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (count("file"), count("memory"))
    };
    // One object a second, one per poll of the source: the finished keys
    // of each checkpoint are a segment, and segments get merged.
    let (mut wave, mut last_wave) = (0, std::time::Instant::now());
    eventually("a merge of finished keys written to a file", DONE, || {
        let put = (last_wave.elapsed() >= Duration::from_secs(1)).then(|| {
            (wave, last_wave) = (wave + 1, std::time::Instant::now());
            s3.put_object()
                .bucket(&bucket)
                .key(format!("orders/wave-{wave}.ndjson"))
                .body(b"{\"id\":1}\n".to_vec().into())
                .send()
        });
        let (file, memory) = merges();
        assert_eq!(
            memory, 0.0,
            "a merge fell back to memory: /tmp is not writable"
        );
        async move {
            if let Some(put) = put {
                put.await.unwrap();
            }
            (file > 0.0).then_some(())
        }
    })
    .await;
}

/// Runs the sluice image with `args` as pod `name` of `namespace`, with no
/// ServiceAccount token, until it ends: whether it succeeded, and its log.
async fn pod_run(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    args: &[&str],
) -> (bool, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "sluice",
                "image": format!("docker.io/library/sluice:{TAG}"),
                "imagePullPolicy": "Never",
                "args": args,
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                },
            }],
        },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let phase = eventually(&format!("pod {name} to end"), DONE, || async {
        let phase = pods.get(name).await.ok()?.status?.phase?;
        ["Succeeded", "Failed"]
            .contains(&phase.as_str())
            .then_some(phase)
    })
    .await;
    let log = container_log(namespace, name).await;
    (phase == "Succeeded", log)
}

/// `kubectl logs` of `target` (a pod or `deployment/NAME`). The kubelet
/// reads a log through the runtime, which another test of this binary
/// restarts now and then: asked again until it answers. While it cannot ask
/// the runtime, the kubelet may answer with its own error as if it were the
/// log, and `kubectl logs` succeeds: that is no answer either.
async fn container_log(namespace: &str, target: &str) -> String {
    eventually(&format!("the log of {target}"), DONE, || async {
        let output = node()
            .kube()
            .kubectl_output(&["-n", namespace, "logs", target])
            .ok()?;
        let log = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && !log.starts_with("unable to retrieve container logs for "))
            .then_some(log)
    })
    .await
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
    // No workers: the tasks stay pending, one per object. Each account has
    // its own credentials Secret.
    for (name, account) in [("orders", "acme"), ("refunds", "globex")] {
        let (mut source, _) = ingest_source(&client, &namespace, name, 3, 0).await;
        let secret = format!("{account}-s3");
        credentials(&client, &namespace, &secret).await;
        for store in ["source", "sink", "archive"] {
            source["spec"][store]["s3"]["credentialsSecretRef"]["name"] = json!(secret);
        }
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
    // Any other pod of the cluster reaches the coordinator's Service, but
    // reads nothing without the read token, which only the token Secret
    // holds.
    let (succeeded, log) = pod_run(
        &client,
        &namespace,
        "curious",
        &[
            "tasks",
            "--coordinator",
            "http://orders-coordinator:8080",
            "--read-token",
            "a-guess",
        ],
    )
    .await;
    assert!(
        !succeeded && log.contains("HTTP 401") && log.contains("wrong token"),
        "{log}"
    );
    assert!(!log.contains("orders/000.ndjson"), "{log}");

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

    // The refunds coordinator gone: its pod deleted, and its replacement
    // cannot start without its Secret. The orders coordinator still
    // answers, and the answer names the source that did not.
    kubectl(&["-n", &namespace, "delete", "secret", "globex-s3"]);
    kubectl(&[
        "-n",
        &namespace,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/instance=refunds,app.kubernetes.io/component=coordinator",
        "--wait",
    ]);
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .env("KUBECONFIG", node().kube().kubeconfig())
        .args(["tasks", "-n", &namespace, "-o", "ndjson"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.lines().count(), 3, "the orders tasks: {stdout}");
    assert!(
        stderr.contains(&format!(
            "error: IngestSource {namespace}/refunds: the coordinator is not available"
        )),
        "{stderr}"
    );
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
            let mut names: Vec<String> = running_pods(&client, &namespace, "orders", component)
                .await
                .into_iter()
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

/// Containers die under a running ingest: worker pods force-deleted, the
/// coordinator's container killed through the runtime (the kubelet
/// restarts it, and it resumes from its checkpoint) and containerd
/// restarted, at random moments of a seeded schedule. Afterwards the sink
/// holds every record exactly once and the archive every task once.
#[tokio::test]
async fn killed_containers_and_a_restarted_runtime_lose_and_duplicate_nothing() {
    const TEST: &str = "chaos on the node";
    let kinds = [
        Fault::ForceDeleteWorkerPod,
        Fault::KillCoordinatorContainer,
        Fault::RestartContainerd,
    ];
    chart();
    let mut chaos = Chaos::new(TEST);
    let started = std::time::Instant::now();
    let client = node().kube().client().await;
    let namespace = restricted_namespace("chaos");
    let minio = minio();
    credentials(&client, &namespace, "acme-s3").await;
    let ingest = ingest_on(minio, "orders").await;
    let mut source = sources::orders("orders");
    for (store, location) in [
        ("source", &ingest.config.source.s3),
        ("sink", &ingest.config.sink),
        ("archive", &ingest.config.archive),
    ] {
        source["spec"][store]["s3"]["bucket"] = json!(location.bucket);
        source["spec"][store]["s3"]["prefix"] = json!(location.prefix);
        source["spec"][store]["s3"]["endpoint"] = json!(minio.endpoint());
    }
    source["spec"]["source"]["pollInterval"] = json!("1s");
    source["spec"]["tasks"] = json!({"maxObjects": TASK_OBJECTS, "leaseDuration": "5s"});
    source["spec"]["workers"]["replicas"] = json!(2);
    let mut data = DataSet::new(chaos.rounds);
    data.put_wave(&ingest).await;
    sources::apply(&client, &namespace, &source).await;
    for deployment in ["orders-coordinator", "orders-worker"] {
        rolled_out(&client, &namespace, deployment).await;
    }

    let mut ledger = Ledger::default();
    let mut coordinator_kills = 0;
    for fault in chaos.schedule(&kinds) {
        data.put_wave(&ingest).await;
        chaos.pause().await;
        println!("{TEST} {:>6.1}s: {fault}", started.elapsed().as_secs_f64());
        match fault {
            Fault::ForceDeleteWorkerPod => {
                let workers = running_pods(&client, &namespace, "orders", "worker").await;
                if let Some(pod) = workers.get(chaos.rng.random_range(0..workers.len().max(1))) {
                    let name = pod.metadata.name.as_deref().unwrap();
                    kubectl(&[
                        "-n",
                        &namespace,
                        "delete",
                        "pod",
                        name,
                        "--grace-period=0",
                        "--force",
                    ]);
                }
            }
            Fault::KillCoordinatorContainer => {
                // The container the kubelet restarted after the last kill.
                let pod = eventually("a running coordinator container", DONE, || async {
                    running_pods(&client, &namespace, "orders", "coordinator")
                        .await
                        .into_iter()
                        .find(|pod| restarts(pod) == coordinator_kills && container_running(pod))
                })
                .await;
                let killed = node()
                    .ctr()
                    .unwrap()
                    .args([
                        "tasks",
                        "kill",
                        "--signal",
                        "SIGKILL",
                        container_id(&pod).expect("a running container has an id"),
                    ])
                    .output()
                    .unwrap();
                assert!(
                    killed.status.success(),
                    "{}",
                    String::from_utf8_lossy(&killed.stderr)
                );
                coordinator_kills += 1;
            }
            Fault::RestartContainerd => node().restart_containerd().unwrap(),
            _ => unreachable!("not scheduled here"),
        }
        ledger.fault(fault);
    }
    while data.put < data.objects {
        data.put_wave(&ingest).await;
    }
    eventually("every object ingested, in the status", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let (objects, tasks) = (status.objects?, status.tasks?);
        (objects.ingested + objects.failed >= data.objects as u64
            && tasks.pending == 0
            && tasks.running == 0)
            .then_some(())
    })
    .await;
    // No container restarted but the killed ones.
    for pod in Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        let coordinator = pod
            .labels()
            .get("app.kubernetes.io/component")
            .is_some_and(|component| component == "coordinator");
        let expected = if coordinator { coordinator_kills } else { 0 };
        if restarts(&pod) != expected {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let log = node()
                .kube()
                .kubectl_output(&["-n", &namespace, "logs", &name, "--previous"])
                .unwrap();
            let log = String::from_utf8_lossy(&[log.stdout, log.stderr].concat()).into_owned();
            let last = container_status(&pod)
                .and_then(|c| c.last_state.as_ref()?.terminated.as_ref())
                .map(|t| format!("{:?}, exit code {}", t.reason, t.exit_code))
                .unwrap_or_default();
            // A container containerd lost while it restarted, before its
            // process ran, left no previous container: not an exit of ours.
            if log.contains("previous terminated container") && log.contains("not found") {
                eprintln!(
                    "{TEST}: {name} was started again by the runtime ({last}); no process of it had run"
                );
                continue;
            }
            ledger.unplanned_exits.push(format!(
                "{name} restarted {} times ({last}):\n{}",
                restarts(&pod),
                tail(&log)
            ));
        }
    }
    ledger.check(&ingest, &data.ids(), data.objects).await;
    ledger.print(TEST, &chaos, started.elapsed());
    ledger.assert_clean(&kinds);
}

/// The status of a pod's first container.
fn container_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// How often a pod's first container was restarted.
fn restarts(pod: &Pod) -> u32 {
    container_status(pod).map_or(0, |container| container.restart_count as u32)
}

/// Whether a pod's first container runs now.
fn container_running(pod: &Pod) -> bool {
    container_status(pod)
        .and_then(|container| container.state.as_ref()?.running.as_ref())
        .is_some()
}

/// `spec.template` on real pods: a node selector that matches keeps them
/// running and ingesting, with the pull secret, the CA bundle (a ConfigMap
/// mounted and named by SSL_CERT_FILE), the pod label and the
/// ServiceAccount annotation where the template put them; a node selector
/// that matches no node leaves the workers Pending, and `kubectl describe
/// isrc` says why in the scheduler's words.
#[tokio::test]
async fn a_template_places_the_pods_and_an_unschedulable_one_is_explained() {
    chart();
    let client = node().kube().client().await;
    let namespace = restricted_namespace("template");
    let (mut placed, sink) = ingest_source(&client, &namespace, "placed", 4, 1).await;
    // The first certificate of the host's bundle: a real PEM file.
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap();
    let end = "-----END CERTIFICATE-----";
    let first = &bundle[..bundle.find(end).unwrap() + end.len()];
    let ca = first[first.find("-----BEGIN").unwrap()..].to_owned() + "\n";
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "private-ca"},
                "data": {"ca.crt": ca},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let template = json!({
        "pod": {
            "metadata": {"labels": {"team": "data-platform"}},
            "imagePullSecrets": [{"name": "registry-credentials"}],
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "volumes": [{"name": "private-ca", "configMap": {"name": "private-ca"}}],
        },
        "container": {
            "env": [{"name": "SSL_CERT_FILE", "value": "/etc/ssl/private-ca/ca.crt"}],
            "volumeMounts": [{"name": "private-ca", "mountPath": "/etc/ssl/private-ca", "readOnly": true}],
        },
        "serviceAccount": {"metadata": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/ingest"}}},
    });
    placed["spec"]["template"] = json!({"coordinator": template, "workers": template});
    sources::apply(&client, &namespace, &placed).await;
    for deployment in ["placed-coordinator", "placed-worker"] {
        rolled_out(&client, &namespace, deployment).await;
    }
    eventually("every object ingested", DONE, || async {
        let status = sources::source(&client, &namespace, "placed")
            .await
            .status?;
        (status.objects.as_ref()?.ingested == 4).then_some(())
    })
    .await;
    let records = sluice_testenv::s3::sink_records(&minio().client().await, &sink, "")
        .await
        .unwrap();
    assert_eq!(records, 100, "the sink holds every record once");
    for component in ["coordinator", "worker"] {
        let (pod, pid, _, _) = container_process(&client, &namespace, "placed", component).await;
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod.labels()["team"], "data-platform");
        assert_eq!(
            spec.image_pull_secrets.as_ref().unwrap()[0].name,
            "registry-credentials"
        );
        let container = &spec.containers[0];
        let env = container.env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "SSL_CERT_FILE"), "{env:?}");
        // The bundle is there, seen from inside the container.
        let mounted =
            std::fs::read_to_string(format!("/proc/{pid}/root/etc/ssl/private-ca/ca.crt")).unwrap();
        assert_eq!(mounted, ca);
        let account: k8s_openapi::api::core::v1::ServiceAccount =
            sources::get(&client, &namespace, &format!("placed-{component}"))
                .await
                .unwrap();
        assert_eq!(
            account.annotations()["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::123456789012:role/ingest"
        );
    }

    // Workers for a node that does not exist.
    let (mut unplaced, _) = ingest_source(&client, &namespace, "unplaced", 1, 1).await;
    unplaced["spec"]["template"] =
        json!({"workers": {"pod": {"nodeSelector": {"sluice.dev/pool": "nowhere"}}}});
    sources::apply(&client, &namespace, &unplaced).await;
    let described = eventually(
        "kubectl describe isrc naming the unschedulable worker",
        DONE,
        || async {
            let described = kubectl(&["-n", &namespace, "describe", "isrc", "unplaced"]);
            (described.contains("didn't match Pod's node affinity/selector")
                && described.contains("WorkersNotReady"))
            .then_some(described)
        },
    )
    .await;
    assert!(described.contains("is Unschedulable"), "{described}");
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=unplaced,app.kubernetes.io/component=worker"),
        )
        .await
        .unwrap();
    assert!(
        pods.items
            .iter()
            .all(|pod| pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")),
        "{pods:?}"
    );
}
