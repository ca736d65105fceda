//! The operator alone against its API server, one test at a time: writes
//! counted with no other source in play, leader election between two
//! operator processes, an API server restart, and a backlog of hundreds of
//! sources at start (with no second operator reconciling them too).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::jiff::SignedDuration;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use sluice::crd::{IngestSource, Phase};
use support::sources::*;
use support::{Operator, eventually, kube_with_crd, mark_ready};

/// Tests here start their own operators, which would reconcile each other's
/// sources, so they take turns.
static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEASE: [&str; 4] = ["--lease-duration", "3s", "--lease-renew-interval", "1s"];

#[tokio::test]
async fn a_reconcile_that_changes_nothing_writes_nothing() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let operator = Operator::start(kube, "noop", &[]);
    let (client, ns) = (kube.client().await, kube.namespace("noop").unwrap());
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;
    mark_ready(&client, &ns, "orders-coordinator").await;
    mark_ready(&client, &ns, "orders-worker").await;
    wait_for_phase(&client, &ns, "orders", Phase::Running).await;
    let versions = || async {
        let mut versions = BTreeMap::new();
        for deployment in Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            versions.insert(
                format!("Deployment/{}", deployment.name_any()),
                deployment.resource_version(),
            );
        }
        for config in Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            versions.insert(
                format!("ConfigMap/{}", config.name_any()),
                config.resource_version(),
            );
        }
        for secret in Api::<Secret>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap()
        {
            versions.insert(
                format!("Secret/{}", secret.name_any()),
                secret.resource_version(),
            );
        }
        versions.insert(
            "status".into(),
            Some(format!("{:?}", source(&client, &ns, "orders").await.status)),
        );
        versions
    };
    // Touching the IngestSource's metadata triggers a reconcile that finds
    // nothing to do.
    let touch = |round: u32| {
        let (client, ns, operator) = (client.clone(), ns.clone(), &operator);
        async move {
            let reconciles = operator.metric("sluice_operator_reconciles_total");
            Api::<IngestSource>::namespaced(client, &ns)
                .patch(
                    "orders",
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {"test/touch": round.to_string()}}}),
                    ),
                )
                .await
                .unwrap();
            eventually("a reconcile of the touched source", SETTLE, || async {
                (operator.metric("sluice_operator_reconciles_total") > reconciles).then_some(())
            })
            .await;
        }
    };
    // The reconcile that wrote the Running status may still be finishing
    // (the API server shows the status before the operator counts its
    // write): once a reconcile after it has been counted, so has it.
    touch(0).await;
    let before = versions().await;
    let writes = operator.metric("sluice_operator_api_writes_total");
    for round in 1..=3 {
        touch(round).await;
    }
    assert_eq!(
        operator.metric("sluice_operator_api_writes_total"),
        writes,
        "no-op reconciles wrote to the API:\n{}",
        operator.log()
    );
    assert_eq!(versions().await, before);
}

async fn lease(client: &kube::Client) -> Option<LeaseSpec> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("sluice-operator")
        .await
        .unwrap()?
        .spec
}

async fn lease_holder(client: &kube::Client) -> Option<String> {
    lease(client).await?.holder_identity
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_standby_takes_over() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let client = kube.client().await;
    let ns = kube.namespace("failover").unwrap();
    create_credentials(&client, &ns).await;

    let first = Operator::start(kube, "first", &LEASE);
    eventually("first holds the lease", SETTLE, || async {
        (lease_holder(&client).await.as_deref() == Some("first")).then_some(())
    })
    .await;
    let second = Operator::start(kube, "second", &LEASE);
    apply(&client, &ns, &orders("before")).await;
    deployment_where(&client, &ns, "before-worker", "the leader's work", |_| true).await;
    // Counted when the reconcile ends, a moment after its Deployment exists.
    eventually("the leader's reconcile counted", SETTLE, || async {
        (first.metric("sluice_operator_reconciles_total") > 0.0).then_some(())
    })
    .await;
    assert_eq!(
        second.metric("sluice_operator_reconciles_total"),
        0.0,
        "the standby reconciled:\n{}",
        second.log()
    );
    assert_eq!(lease_holder(&client).await.as_deref(), Some("first"));

    // The leader dies without releasing its lease. Its last renewal is the
    // one the lease shows now (or, if a renewal was still on its way, a
    // later one: then the check below measures from an earlier time, so it
    // can pass more easily but never fail wrongly).
    let killed = Instant::now();
    // SAFETY: signalling a child process the test started.
    unsafe { libc::kill(first.pid() as i32, libc::SIGKILL) };
    let last = lease(&client).await.unwrap();
    assert_eq!(last.holder_identity.as_deref(), Some("first"));
    let last_renewed = last.renew_time.unwrap().0;
    apply(&client, &ns, &orders("after")).await;
    deployment_where(&client, &ns, "after-worker", "the standby's work", |_| true).await;
    eprintln!(
        "standby took over and reconciled {:?} after the leader was killed",
        killed.elapsed()
    );
    let taken = lease(&client).await.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some("second"));
    assert_eq!(
        taken.lease_transitions,
        last.lease_transitions.map(|n| n + 1)
    );
    assert!(second.metric("sluice_operator_reconciles_total") > 0.0);
    // Not before the dead leader's lease ran out: until then it might still
    // have been reconciling, and two leaders would fight over every object.
    let acquired = taken.acquire_time.unwrap().0;
    let waited = acquired.duration_since(last_renewed);
    assert!(
        waited >= SignedDuration::from_secs(3),
        "the standby took the lease {waited:?} after the leader's last renewal, within its 3s"
    );
}

#[tokio::test]
async fn a_graceful_stop_hands_over_at_once() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let client = kube.client().await;
    let first = Operator::start(
        kube,
        "graceful-first",
        &["--lease-duration", "30s", "--lease-renew-interval", "5s"],
    );
    eventually("graceful-first holds the lease", SETTLE, || async {
        (lease_holder(&client).await.as_deref() == Some("graceful-first")).then_some(())
    })
    .await;
    let second = Operator::start(
        kube,
        "graceful-second",
        &["--lease-duration", "30s", "--lease-renew-interval", "5s"],
    );
    let _log1 = LogOnPanic(&first);
    let _log2 = LogOnPanic(&second);
    // SAFETY: signalling a child process the test started.
    unsafe { libc::kill(first.pid() as i32, libc::SIGTERM) };
    // Well within the 30 s lease: the leader released it on SIGTERM.
    eventually(
        "graceful-second holds the lease",
        Duration::from_secs(10),
        || async {
            (lease_holder(&client).await.as_deref() == Some("graceful-second")).then_some(())
        },
    )
    .await;
    drop(_log2);
    drop(second);
}

/// SIGTERM at several moments after the Lease is taken, while the first
/// reconciles wait for the caches of the children: each time the operator
/// releases the Lease and exits, within a fraction of the Lease's 30 s.
#[tokio::test]
async fn a_stop_at_any_moment_after_start_releases_the_lease_and_exits() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let client = kube.client().await;
    let ns = kube.namespace("stop-early").unwrap();
    create_credentials(&client, &ns).await;
    // Sources to reconcile the moment the operator has listed them.
    for index in 0..20 {
        apply(&client, &ns, &orders(&format!("early-{index}"))).await;
    }
    for after_ms in [0, 10, 20, 30, 40, 60, 80, 100, 150, 200, 300, 500] {
        let mut operator = Operator::start(
            kube,
            "stop-early",
            &["--lease-duration", "30s", "--lease-renew-interval", "5s"],
        );
        eventually("stop-early holds the lease", SETTLE, || async {
            (lease_holder(&client).await.as_deref() == Some("stop-early")).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(after_ms)).await;
        let exited = operator.stop(Duration::from_secs(10));
        assert!(
            exited.is_some_and(|status| status.success()),
            "SIGTERM {after_ms} ms after taking the Lease: {exited:?} 10 s later:\n{}",
            operator.log()
        );
        assert_eq!(
            lease_holder(&client).await,
            None,
            "SIGTERM {after_ms} ms after taking the Lease: the Lease is still held:\n{}",
            operator.log()
        );
    }
}

#[tokio::test]
async fn the_operator_carries_on_after_the_api_server_restarts() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let operator = Operator::start(kube, "restart", &[]);
    let client = kube.client().await;
    let ns = kube.namespace("restart").unwrap();
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("early")).await;
    deployment_where(
        &client,
        &ns,
        "early-worker",
        "children before the restart",
        |_| true,
    )
    .await;

    kube.restart_apiserver().unwrap();
    let _log_on_failure = LogOnPanic(&operator);

    let client = kube.client().await;
    let mut edited = orders("early");
    edited["spec"]["workers"]["replicas"] = json!(4);
    apply(&client, &ns, &edited).await;
    apply(&client, &ns, &orders("late")).await;
    deployment_where(
        &client,
        &ns,
        "early-worker",
        "the edit after the restart",
        |d| replicas(d) == 4,
    )
    .await;
    deployment_where(
        &client,
        &ns,
        "late-worker",
        "a new source after the restart",
        |_| true,
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut names: Vec<String> = deployments.items.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "early-coordinator",
            "early-worker",
            "late-coordinator",
            "late-worker"
        ],
        "{}",
        operator.log()
    );
}

/// Prints the operator's log when the test fails, for the reader.
struct LogOnPanic<'a>(&'a Operator);

impl Drop for LogOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("operator log:\n{}", self.0.log());
        }
    }
}

/// A backlog at start does not starve the leader Lease. With every source's
/// reconcile in flight at once, 1,000 sources kept the Lease's renewal
/// unanswered until the operator lost it and exited.
#[tokio::test]
async fn a_backlog_at_start_keeps_the_lease() {
    let _alone = ALONE.lock().await;
    let kube = kube_with_crd();
    let client = kube.client().await;
    let ns = kube.namespace("backlog").unwrap();
    create_credentials(&client, &ns).await;
    let count = 300;
    futures::stream::iter(0..count)
        .for_each_concurrent(8, |i| {
            let (client, ns) = (&client, &ns);
            async move { apply(client, ns, &orders(&format!("source-{i}"))).await }
        })
        .await;
    let mut operator = Operator::start(
        kube,
        "backlog",
        &[
            "--watch-namespace",
            &ns,
            "--lease-name=sluice-backlog",
            "--lease-duration=2s",
            "--lease-renew-interval=500ms",
        ],
    );
    eventually(
        "every source's workers",
        Duration::from_secs(120),
        || async {
            let log = operator.log();
            assert!(!log.contains("lost the leader Lease"), "{log}");
            let workers = Api::<Deployment>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels("app.kubernetes.io/component=worker"))
                .await
                .unwrap();
            (workers.items.len() == count).then_some(())
        },
    )
    .await;
    assert!(
        operator.running() && !operator.log().contains("lost the leader Lease"),
        "{}",
        operator.log()
    );
}
