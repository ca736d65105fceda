//! The coordinator publishes live task status into its IngestSource, and
//! the operator turns it into the phase, on a real API server, while a
//! coordinator and workers run as processes against a real MinIO.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sluice::crd::{IngestSource, Phase};
use support::dataplane::{Ingest, wait_until_done};
use support::{Operator, eventually, kube_with_crd, kubectl, sources, succeed};

const DONE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn the_status_follows_the_coordinator_within_its_write_budget() {
    let kube = kube_with_crd();
    let client = kube.client().await;
    let namespace = kube.namespace("status").unwrap();
    let mut ingest = Ingest::new("orders", 5, Duration::from_secs(30), 3).await;
    ingest.config.id.namespace = namespace.clone();
    ingest.write_config();
    ingest.use_kubeconfig(kube.kubeconfig());
    let mut source = sources::orders("orders");
    source["spec"]["source"]["s3"]["bucket"] = json!(ingest.config.source.s3.bucket);
    sources::apply(&client, &namespace, &source).await;

    // Small objects, and one big enough to be seen running.
    let mut objects: Vec<_> = (0..200)
        .map(|i| {
            (
                format!("{i:04}.ndjson"),
                format!("{{\"id\":\"o{i}\"}}\n").into_bytes(),
            )
        })
        .collect();
    let big: String = (0..300_000)
        .map(|n| format!("{{\"id\":\"big-{n}\",\"pad\":\"{n:0>60}\"}}\n"))
        .collect();
    objects.push(("9999-big.ndjson".into(), big.into_bytes()));
    ingest.put(objects).await;

    let started = Instant::now();
    let coordinator = ingest.coordinator(None, &["--status-interval=500ms"]);
    let _workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|name| ingest.worker(coordinator.port, name))
        .collect();

    let active = eventually("a running task in the status", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        status.active_tasks.filter(|tasks| {
            tasks
                .iter()
                .any(|task| task.objects == 1 && task.worker.starts_with('w'))
        })
    })
    .await;
    assert!(active.len() <= 20);

    let summary = wait_until_done(&coordinator, 201, DONE).await;
    let status = eventually("the final counts in the status", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let tasks = status.tasks.as_ref()?;
        (tasks.succeeded == summary.tasks.succeeded && tasks.running == 0).then_some(status)
    })
    .await;
    let elapsed = started.elapsed();
    let objects = status.objects.unwrap();
    assert_eq!(
        (objects.discovered, objects.ingested, objects.failed),
        (201, 201, 0)
    );
    assert_eq!(status.records_ingested, Some(300_200));
    assert_eq!(status.bytes_ingested, Some(summary.bytes_ingested));
    assert!(status.last_checkpoint_time.is_some());
    assert_eq!(status.active_tasks.map(|t| t.len()), Some(0));

    // At most one write per interval, and none once nothing changes.
    let writes = coordinator.metric("sluice_coordinator_status_writes_total");
    let budget = elapsed.as_secs_f64() / 0.5 + 1.0;
    assert!(
        writes >= 2.0 && writes <= budget,
        "{writes} writes in {elapsed:?}"
    );
    // (After the last checkpoint's time has been published.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let settled = coordinator.metric("sluice_coordinator_status_writes_total");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        coordinator.metric("sluice_coordinator_status_writes_total"),
        settled,
        "an idle coordinator keeps writing its status"
    );

    // The coordinator's fields are its own: the operator's apply of its
    // fields leaves them alone.
    let api = kube::Api::<IngestSource>::namespaced(client.clone(), &namespace);
    let operator_status = json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": "IngestSource",
        "status": {"phase": "Idle", "observedGeneration": 1}
    });
    api.patch_status(
        "orders",
        &kube::api::PatchParams::apply("sluice-operator").force(),
        &kube::api::Patch::Apply(&operator_status),
    )
    .await
    .unwrap();
    let status = api.get_status("orders").await.unwrap().status.unwrap();
    assert_eq!(status.tasks.unwrap().succeeded, summary.tasks.succeeded);
}

/// A namespace with an operator of its own (for it alone, so its
/// reconciles are this source's) and the IngestSource `orders` over the
/// source of `ingest`, whose coordinator, run as a process, publishes to
/// the same API server.
struct Watched {
    client: kube::Client,
    namespace: String,
    operator: Operator,
    ingest: Ingest,
}

/// A [`Watched`] source in a new namespace `prefix-N`.
async fn watched(prefix: &str) -> Watched {
    let kube = kube_with_crd();
    let client = kube.client().await;
    let namespace = kube.namespace(prefix).unwrap();
    let operator = Operator::start(
        kube,
        &format!("status-{prefix}"),
        &["--watch-namespace", &namespace, "--leader-election=false"],
    );
    let mut ingest = Ingest::new("orders", 5, Duration::from_secs(30), 3).await;
    ingest.config.id.namespace = namespace.clone();
    ingest.write_config();
    ingest.use_kubeconfig(kube.kubeconfig());
    sources::create_credentials(&client, &namespace).await;
    let mut source = sources::orders("orders");
    source["spec"]["source"]["s3"]["bucket"] = json!(ingest.config.source.s3.bucket);
    sources::apply(&client, &namespace, &source).await;
    Watched {
        client,
        namespace,
        operator,
        ingest,
    }
}

/// The operator follows a real coordinator's reports: Running during the
/// ingest, Idle after it, and the coordinator's frequent count updates do
/// not each cost a reconcile.
#[tokio::test]
async fn the_phase_follows_a_real_ingest() {
    let Watched {
        client,
        namespace,
        operator,
        ingest,
    } = watched("phase").await;
    sources::wait_for_phase(&client, &namespace, "orders", Phase::Pending).await;

    let mut objects: Vec<_> = (0..100)
        .map(|i| {
            (
                format!("{i:04}.ndjson"),
                format!("{{\"id\":\"o{i}\"}}\n").into_bytes(),
            )
        })
        .collect();
    let big: String = (0..600_000)
        .map(|n| format!("{{\"id\":\"big-{n}\",\"pad\":\"{n:0>60}\"}}\n"))
        .collect();
    objects.push(("9999-big.ndjson".into(), big.into_bytes()));
    ingest.put(objects).await;

    // No kubelet runs the Deployment: the coordinator runs as a process
    // with the same configuration.
    let coordinator = ingest.coordinator(None, &["--status-interval=100ms"]);
    let workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|name| ingest.worker(coordinator.port, name))
        .collect();

    let running = eventually("Running while tasks run", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let tasks = status.tasks.as_ref()?;
        (status.phase == Some(Phase::Running) && tasks.pending + tasks.running > 0)
            .then_some(status)
    })
    .await;
    assert!(running.coordinator_heartbeat_time.is_some());
    // The operator exports the source's state for alerts, from the status.
    let source = format!("namespace=\"{namespace}\",name=\"orders\",account=\"acme\"");
    eventually("the operator's metrics show work to do", DONE, || async {
        (operator.metric_with("sluice_source_tasks", &source) > 0.0
            && operator.metric_with("sluice_source_phase", "phase=\"Running\"") == 1.0)
            .then_some(())
    })
    .await;
    let count = || {
        (
            coordinator.metric("sluice_coordinator_status_writes_total"),
            operator.metric("sluice_operator_reconciles_total"),
        )
    };
    let (writes_before, reconciles_before) = count();

    let summary = wait_until_done(&coordinator, 101, DONE).await;
    // While the ingest moves along, the coordinator's writes change its
    // counts but nothing the operator acts on.
    let (writes_after, reconciles_after) = count();
    let (writes, reconciles) = (
        writes_after - writes_before,
        reconciles_after - reconciles_before,
    );
    eprintln!(
        "while running: {writes} coordinator status writes, {reconciles} operator reconciles"
    );
    assert!(
        writes >= 5.0,
        "too short an ingest to tell: {writes} writes"
    );
    assert!(
        reconciles <= 3.0,
        "{reconciles} reconciles for {writes} coordinator status writes:\n{}",
        operator.log()
    );
    let status = eventually("Idle once done", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        (status.phase == Some(Phase::Idle)
            && status.tasks.as_ref()?.succeeded == summary.tasks.succeeded)
            .then_some(status)
    })
    .await;
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert_eq!(degraded.status, "False", "{degraded:?}");
    eventually(
        "the operator's metrics show the source caught up",
        DONE,
        || async {
            (operator.metric_with("sluice_source_ingested_objects", &source) == 101.0
                && operator.metric_with("sluice_source_tasks", &source) == 0.0
                && operator.metric_with("sluice_source_phase", "phase=\"Idle\"") == 1.0
                && operator.metric_with("sluice_source_degraded", "reason=\"AsExpected\"") == 0.0
                && operator.metric("sluice_source_last_checkpoint_timestamp_seconds") > 1.7e9)
                .then_some(())
        },
    )
    .await;
    assert_eq!(operator.metric("sluice_source_lag_seconds"), 0.0);
    assert_eq!(operator.metric("sluice_source_dead_letter_objects"), 0.0);
    for part in [&coordinator, &workers[0]] {
        assert_eq!(part.metric("sluice_build_info"), 1.0);
    }
    assert_eq!(operator.metric("sluice_build_info"), 1.0);
    let succeeded = |part: &support::dataplane::Part| {
        let (_, body) = part.request("GET", "/metrics", None, "");
        support::metric_with(
            &body,
            "sluice_worker_tasks_finished_total",
            "state=\"succeeded\"",
        )
    };
    let attempts: f64 = workers.iter().map(succeeded).sum();
    assert!(attempts as u64 >= summary.tasks.succeeded, "{attempts}");
    let read: f64 = workers
        .iter()
        .map(|worker| worker.metric("sluice_worker_read_bytes_total"))
        .sum();
    assert!(read > 0.0);

    let wide = succeed(kubectl(
        &[
            "get",
            "isrc",
            "orders",
            "-n",
            &namespace,
            "-o",
            "wide",
            "--no-headers",
        ],
        None,
    ));
    let row: Vec<&str> = wide.split_whitespace().collect();
    assert_eq!(&row[3..5], ["Idle", "0/2"], "{wide}");
    assert_eq!(row[7], summary.tasks.succeeded.to_string(), "{wide}");
    assert_eq!(row[9], "0", "no lag once caught up: {wide}");
    assert_eq!(row[10], summary.bytes_ingested.to_string(), "{wide}");
}

/// A coordinator that cannot use its checkpoint says why in the status
/// (`startupError`), and the operator makes that the Degraded reason
/// CheckpointUnusable, shown by `kubectl describe`; once the checkpoint is
/// reset on purpose, the same coordinator serves and the reason is gone.
#[tokio::test]
async fn a_coordinator_that_cannot_use_its_checkpoint_says_why_in_the_status() {
    let Watched {
        client,
        namespace,
        operator: _operator,
        ingest,
    } = watched("unusable").await;
    ingest
        .put(vec![("0.ndjson".into(), b"{\"id\":\"o0\"}\n".to_vec())])
        .await;
    let archive = ingest.config.archive.bucket.clone();
    ingest
        .client
        .put_object()
        .bucket(&archive)
        .key(ingest.manifest_key())
        .body(b"overwritten".to_vec().into())
        .send()
        .await
        .unwrap();

    let coordinator = ingest.coordinator_unchecked();
    let manifest = format!("s3://{archive}/{}", ingest.manifest_key());
    let degraded = eventually("Degraded: CheckpointUnusable", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let degraded = status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.reason == "CheckpointUnusable")?;
        (status.phase == Some(Phase::Degraded)).then_some(degraded)
    })
    .await;
    assert!(
        degraded.message.contains(&manifest)
            && degraded
                .message
                .contains("delete the checkpoint's manifest"),
        "{}",
        degraded.message
    );
    let described = succeed(kubectl(
        &["describe", "isrc", "orders", "-n", &namespace],
        None,
    ));
    assert!(described.contains("CheckpointUnusable"), "{described}");

    // Reset on purpose: the manifest deleted, the next try starts afresh.
    ingest
        .client
        .delete_object()
        .bucket(&archive)
        .key(ingest.manifest_key())
        .send()
        .await
        .unwrap();
    eventually(
        "the coordinator's counts back, and no more Degraded",
        DONE,
        || async {
            let status = sources::source(&client, &namespace, "orders")
                .await
                .status?;
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded")?;
            (status.startup_error.is_none()
                && status.objects.as_ref()?.discovered == 1
                && degraded.status == "False")
                .then_some(())
        },
    )
    .await;
    drop(coordinator);
}

/// Dead letters come back once their cause is fixed: with the sink bucket
/// gone every task fails for good; once it is back, `kubectl sluice
/// redrive --failed` queues them again, each record lands once, the
/// archive records the redrive, and a coordinator restarted afterwards
/// does not do it again.
#[tokio::test]
async fn a_redrive_queues_the_dead_letters_again_once() {
    let Watched {
        client,
        namespace,
        operator: _operator,
        ingest,
    } = watched("redrive").await;
    let objects: Vec<_> = (0..6)
        .map(|i| {
            let lines: String = (0..5)
                .map(|n| format!("{{\"id\":\"o{i}-{n}\"}}\n"))
                .collect();
            (format!("{i:04}.ndjson"), lines.into_bytes())
        })
        .collect();
    ingest.put(objects).await;
    // The cause: the sink bucket is gone.
    let sink = ingest.config.sink.bucket.clone();
    ingest
        .client
        .delete_bucket()
        .bucket(&sink)
        .send()
        .await
        .unwrap();

    let mut coordinator = ingest.coordinator(None, &["--status-interval=100ms"]);
    let _worker = ingest.worker(coordinator.port, "w1");
    let status = |client: kube::Client, namespace: String| async move {
        sources::source(&client, &namespace, "orders").await.status
    };
    eventually("every object failed for good", DONE, || async {
        let status = status(client.clone(), namespace.clone()).await?;
        let (objects, tasks) = (status.objects?, status.tasks?);
        (objects.failed == 6 && tasks.pending + tasks.running == 0).then_some(())
    })
    .await;

    // Fixed; asked for.
    ingest
        .client
        .create_bucket()
        .bucket(&sink)
        .send()
        .await
        .unwrap();
    let kubeconfig = kube_with_crd().kubeconfig().to_str().unwrap().to_owned();
    let redrive = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "redrive",
                "orders",
                "--kubeconfig",
                &kubeconfig,
                "-n",
                &namespace,
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let said = succeed(redrive(&["--failed"]));
    assert!(said.contains("6 objects queued again"), "{said}");
    let done = eventually("every object ingested after the redrive", DONE, || async {
        let status = status(client.clone(), namespace.clone()).await?;
        let objects = status.objects.clone()?;
        (objects.ingested == 6 && objects.failed == 0).then_some(status)
    })
    .await;
    let ids = ingest.sink_ids().await;
    assert_eq!(ids.len(), 30, "{ids:?}");
    assert!(ids.values().all(|count| *count == 1), "{ids:?}");
    let redriven = done.last_redrive.unwrap();
    assert_eq!(
        (redriven.objects, redriven.skipped, redriven.missing),
        (6, 0, 0)
    );
    let recorded = ingest
        .objects(
            &ingest.config.archive.bucket,
            &format!("sluice/redrives/{namespace}.orders/"),
        )
        .await;
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].0.ends_with(&format!("{}.json", redriven.id)));

    // Once: a restarted coordinator finds the redrive in its checkpoint;
    // asking for a key that did not fail changes nothing.
    coordinator.kill();
    let restarted = jiff::Timestamp::now();
    let coordinator = ingest.coordinator(None, &["--status-interval=100ms"]);
    // Killed before its last checkpoint, it may leave tasks to run again.
    let _worker = ingest.worker(coordinator.port, "w2");
    let after = eventually("a status from the restarted coordinator", DONE, || async {
        let status = status(client.clone(), namespace.clone()).await?;
        (status.coordinator_heartbeat_time.as_ref()?.0 > restarted).then_some(status)
    })
    .await;
    // Its checkpoint kept the redrive, so it knows it is done.
    assert_eq!(after.last_redrive.as_ref(), Some(&redriven));
    let said = succeed(redrive(&["--key", "in/0001.ndjson"]));
    assert!(
        said.contains("0 objects queued again") && said.contains("1 not failed for good"),
        "{said}"
    );
    let summary = wait_until_done(&coordinator, 6, DONE).await;
    assert_eq!(summary.objects.ingested, 6);
    let ids = ingest.sink_ids().await;
    assert!(
        ids.len() == 30 && ids.values().all(|count| *count == 1),
        "{ids:?}"
    );
}
