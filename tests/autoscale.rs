//! Sizing the worker pool on a real API server: the scale subresource
//! (`kubectl scale`, what a HorizontalPodAutoscaler or KEDA uses) and
//! `spec.workers.autoscale`, which follows the backlog the coordinator
//! publishes (written here as the coordinator writes it: server-side apply
//! with field manager `sluice-coordinator`).

mod support;

use std::time::{Duration, Instant};

use kube::Client;
use serde_json::{Value, json};
use sluice::crd::{IngestSource, Phase};
use support::sources::*;
use support::{Operator, eventually, kube_with_crd, kubectl, mark_ready, succeed};

/// The scale-down stabilization of most tests' operators, short so that
/// the tests see the pool shrink.
const STABILIZATION: Duration = Duration::from_secs(4);

/// `source` applied in a new namespace `prefix-N`, served by an operator of
/// its own (kept alive by the caller) whose scale-down stabilization is
/// `stabilization`.
async fn setup(
    prefix: &str,
    source: &Value,
    stabilization: Duration,
) -> (Client, String, Operator) {
    let kube = kube_with_crd();
    let (client, ns) = (kube.client().await, kube.namespace(prefix).unwrap());
    let operator = Operator::start(
        kube,
        &format!("autoscale-{ns}"),
        &[
            "--watch-namespace",
            &ns,
            "--leader-election=false",
            &format!("--scale-down-stabilization={}s", stabilization.as_secs()),
        ],
    );
    create_credentials(&client, &ns).await;
    apply(&client, &ns, source).await;
    (client, ns, operator)
}

fn backlog(pending: u64, running: u64) -> Value {
    json!({"tasks": {"pending": pending, "running": running, "succeeded": 0, "failed": 0}})
}

async fn desired(client: &Client, ns: &str) -> Option<i32> {
    Some(source(client, ns, "orders").await.status?.workers?.desired)
}

async fn workers(client: &Client, ns: &str, what: &str, want: i32) {
    deployment_where(client, ns, "orders-worker", what, |d| replicas(d) == want).await;
    eventually(
        &format!("status.workers.desired {want}"),
        SETTLE,
        || async { (desired(client, ns).await == Some(want)).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn kubectl_scale_sizes_the_pool_and_the_scale_subresource_selects_it() {
    let (client, ns, _operator) = setup("scale", &orders("orders"), STABILIZATION).await;
    deployment_where(&client, &ns, "orders-worker", "2 workers", |d| {
        replicas(d) == 2
    })
    .await;

    succeed(kubectl(
        &["scale", "isrc", "orders", "-n", &ns, "--replicas=5"],
        None,
    ));
    let deployment = deployment_where(&client, &ns, "orders-worker", "5 workers", |d| {
        replicas(d) == 5
    })
    .await;
    assert_eq!(
        source(&client, &ns, "orders").await.spec.workers.replicas,
        5
    );
    mark_ready(&client, &ns, "orders-worker").await;

    let scale = eventually("the scale subresource's status", SETTLE, || async {
        let scale: Value = serde_json::from_str(&succeed(kubectl(
            &[
                "get",
                "isrc",
                "orders",
                "-n",
                &ns,
                "--subresource=scale",
                "-o",
                "json",
            ],
            None,
        )))
        .unwrap();
        (scale["status"]["replicas"] == 5).then_some(scale)
    })
    .await;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 5);
    // The selector is the worker Deployment's, so an autoscaler counts the
    // right pods.
    let selector = scale["status"]["selector"].as_str().unwrap().to_owned();
    let labels = deployment.spec.unwrap().selector.match_labels.unwrap();
    let expected: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(selector, expected.join(","));
    assert!(
        selector.contains("app.kubernetes.io/component=worker"),
        "{selector}"
    );
    told(&client, &ns, "orders", "Scaled", "from 2 to 5 workers").await;
}

#[tokio::test]
async fn autoscale_follows_the_backlog_up_to_max_and_down_to_min() {
    let mut manifest = orders("orders");
    // replicas is ignored while autoscale is set.
    manifest["spec"]["workers"] = json!({
        "replicas": 7,
        "autoscale": {"minReplicas": 0, "maxReplicas": 3, "tasksPerWorker": 2},
    });
    let (client, ns, _operator) = setup("autoscale", &manifest, STABILIZATION).await;

    // Before the coordinator's first count: minReplicas.
    workers(&client, &ns, "no workers before the first count", 0).await;

    // A backlog of 20 tasks wants 10 workers: capped at 3.
    publish(&client, &ns, "orders", &backlog(18, 2)).await;
    workers(&client, &ns, "the pool grown to maxReplicas", 3).await;
    let scaled = told(&client, &ns, "orders", "Scaled", "from 0 to 3 workers").await;
    assert!(
        scaled
            .note
            .contains("backlog of 20 tasks pending or running")
            && scaled.note.contains("at most maxReplicas 3"),
        "{}",
        scaled.note
    );

    // The backlog shrinks to 3 tasks (2 workers): the pool holds for the
    // stabilization window, then shrinks.
    let lowered = Instant::now();
    publish(&client, &ns, "orders", &backlog(1, 2)).await;
    workers(&client, &ns, "the pool shrunk to 2", 2).await;
    let held = lowered.elapsed();
    assert!(
        held >= STABILIZATION / 2,
        "shrank after {held:?}, before the {STABILIZATION:?} stabilization"
    );

    // No work: down to minReplicas.
    publish(&client, &ns, "orders", &backlog(0, 0)).await;
    workers(&client, &ns, "the pool down to minReplicas", 0).await;
    let scaled = told(&client, &ns, "orders", "Scaled", "from 2 to 0 workers").await;
    assert!(
        scaled.note.contains("no tasks pending or running"),
        "{}",
        scaled.note
    );
    wait_for_phase(&client, &ns, "orders", Phase::Idle).await;
    let status = source(&client, &ns, "orders").await.status.unwrap();
    assert_eq!(status.workers.unwrap().summary, "0/0");
}

/// Growing does not wait for the stabilization window: with a window of an
/// hour, a pool that the window also held back would stay at 2 (the size
/// the backlog asked for a moment before) all test long.
#[tokio::test]
async fn autoscale_grows_at_once_however_long_the_stabilization_window() {
    let mut manifest = orders("orders");
    manifest["spec"]["workers"] = json!({
        "autoscale": {"minReplicas": 0, "maxReplicas": 3, "tasksPerWorker": 2},
    });
    let hour = Duration::from_secs(3600);
    let (client, ns, _operator) = setup("grow", &manifest, hour).await;
    workers(&client, &ns, "no workers before the first count", 0).await;
    publish(&client, &ns, "orders", &backlog(3, 0)).await;
    workers(&client, &ns, "the pool grown to 2 within the window", 2).await;
    publish(&client, &ns, "orders", &backlog(4, 2)).await;
    workers(&client, &ns, "the pool grown to 3 within the window", 3).await;
}

#[tokio::test]
async fn autoscale_bounds_are_checked_at_admission() {
    let (_, ns, _operator) = setup("bounds", &orders("valid"), STABILIZATION).await;
    for (autoscale, expected) in [
        (
            json!({"minReplicas": 5, "maxReplicas": 3}),
            "spec.workers.autoscale.minReplicas: Invalid value: spec.workers.autoscale.minReplicas must not be greater than spec.workers.autoscale.maxReplicas",
        ),
        (
            json!({"maxReplicas": 0}),
            "spec.workers.autoscale.maxReplicas in body should be greater than or equal to 1",
        ),
        (
            json!({"maxReplicas": 3, "tasksPerWorker": 0}),
            "spec.workers.autoscale.tasksPerWorker in body should be greater than or equal to 1",
        ),
        (
            json!({"minReplicas": 1}),
            "spec.workers.autoscale.maxReplicas: Required value",
        ),
    ] {
        let mut manifest = orders("bad");
        manifest["spec"]["workers"] = json!({"autoscale": autoscale});
        let stderr = support::fail(kubectl(
            &["apply", "-n", &ns, "-f", "-"],
            Some(&manifest.to_string()),
        ));
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
    }
    // Defaults: minReplicas 0, tasksPerWorker 4.
    let mut manifest = orders("defaults");
    manifest["spec"]["workers"] = json!({"autoscale": {"maxReplicas": 2}});
    succeed(kubectl(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&manifest.to_string()),
    ));
    let stored: IngestSource = serde_json::from_str(&succeed(kubectl(
        &["get", "isrc", "defaults", "-n", &ns, "-o", "json"],
        None,
    )))
    .unwrap();
    let autoscale = stored.spec.workers.autoscale.unwrap();
    assert_eq!((autoscale.min_replicas, autoscale.tasks_per_worker), (0, 4));
}
