//! The phase and conditions follow what the coordinator publishes, on a real
//! API server: Running while there is work, Idle when caught up, Degraded
//! while a task failed for good recently (TasksFailed) or when the
//! coordinator stops reporting (CoordinatorUnavailable), with an Event on
//! the way in and out.
//!
//! No kubelet runs here, so these tests write the coordinator's part of the
//! status themselves, as the coordinator does (server-side apply, field
//! manager `sluice-coordinator`); `tests/status.rs` runs a real one.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use kube::Client;
use serde_json::{Value, json};
use sluice::crd::Phase;
use support::sources::*;
use support::{Operator, eventually, kube_with_crd, kubectl, mark_ready, succeed};

/// This binary's operator's coordinator timeout (and a 2 s failure window),
/// short so that the tests see them pass.
const COORDINATOR_TIMEOUT: Duration = Duration::from_secs(6);

fn operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        Operator::start(
            kube_with_crd(),
            "phase",
            &["--failure-window=2s", "--coordinator-timeout=6s"],
        )
    })
}

async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let kube = kube_with_crd();
    let (client, ns) = (kube.client().await, kube.namespace(prefix).unwrap());
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(
        &client,
        &ns,
        "orders-worker",
        "the worker Deployment",
        |_| true,
    )
    .await;
    (client, ns)
}

/// What a coordinator publishes: task counts, and the failures given.
fn counts(pending: u64, running: u64, failures: &[Value]) -> Value {
    json!({
        "tasks": {"pending": pending, "running": running, "succeeded": 10, "failed": failures.len()},
        "recentFailures": failures,
    })
}

fn failure(id: &str) -> Value {
    json!({
        "id": id,
        "key": "orders/2026/11/24/part-0977.ndjson",
        "lastError": "s3 object \"orders/2026/11/24/part-0977.ndjson\": line 3: expected value at column 8",
        "tries": 3,
        "time": now(),
    })
}

async fn phase(client: &Client, ns: &str) -> Option<Phase> {
    source(client, ns, "orders").await.status?.phase
}

/// Waits until the Degraded condition is `status` with `reason`, and returns
/// its message.
async fn degraded(client: &Client, ns: &str, status: &str, reason: &str) -> String {
    let (_, _, message) = eventually(&format!("Degraded={status} {reason}"), SETTLE, || async {
        condition(client, ns, "orders", "Degraded")
            .await
            .filter(|(s, r, _)| s == status && r == reason)
    })
    .await;
    message
}

/// Republishes `status` every second while it lives, as a coordinator's
/// heartbeat does.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(client: &Client, ns: &str, status: Value) -> Self {
        let (client, ns) = (client.clone(), ns.to_owned());
        Self(tokio::spawn(async move {
            loop {
                publish(&client, &ns, "orders", &status).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn the_phase_follows_the_counts_and_recent_failures() {
    let (client, ns) = setup("counts").await;
    // No report and no ready pod yet: Pending, as before the coordinator's
    // first report.
    wait_for_phase(&client, &ns, "orders", Phase::Pending).await;

    // Work reported: Running, although no pod is ready (no kubelet here).
    publish(&client, &ns, "orders", &counts(5, 2, &[])).await;
    wait_for_phase(&client, &ns, "orders", Phase::Running).await;
    let (ready, reason, _) = condition(&client, &ns, "orders", "Ready").await.unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "CoordinatorNotReady")
    );
    mark_ready(&client, &ns, "orders-coordinator").await;
    mark_ready(&client, &ns, "orders-worker").await;
    eventually("Ready=True", SETTLE, || async {
        condition(&client, &ns, "orders", "Ready")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;

    // Caught up: Idle, and still Ready.
    publish(&client, &ns, "orders", &counts(0, 0, &[])).await;
    wait_for_phase(&client, &ns, "orders", Phase::Idle).await;
    assert_eq!(
        condition(&client, &ns, "orders", "Ready").await.unwrap().0,
        "True"
    );
    let row = succeed(kubectl(
        &["get", "isrc", "orders", "-n", &ns, "--no-headers"],
        None,
    ));
    assert_eq!(
        row.split_whitespace().take(9).collect::<Vec<_>>(),
        [
            "orders", "acme", "orders", "Idle", "2/2", "0", "0", "10", "0"
        ]
    );

    // A task failed for good: Degraded, with what to do, and told.
    let failed = counts(0, 0, &[failure("3-977")]);
    let heartbeat = Heartbeat::start(&client, &ns, failed);
    let message = degraded(&client, &ns, "True", "TasksFailed").await;
    for expected in [
        "3-977",
        "\"orders/2026/11/24/part-0977.ndjson\"",
        "line 3: expected value at column 8",
        "kubectl sluice history --account acme --collection orders --state failed --since 2s",
    ] {
        assert!(message.contains(expected), "{expected:?} not in {message}");
    }
    assert_eq!(phase(&client, &ns).await, Some(Phase::Degraded));
    let (ready, reason, _) = condition(&client, &ns, "orders", "Ready").await.unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "TasksFailed"));
    let warning = told(&client, &ns, "orders", "TasksFailed", "3-977").await;
    assert_eq!(warning.type_, "Warning");

    // The failure leaves the window while the coordinator keeps reporting
    // it: recovered on its own, without a write from the coordinator.
    degraded(&client, &ns, "False", "AsExpected").await;
    assert_eq!(phase(&client, &ns).await, Some(Phase::Idle));
    told(
        &client,
        &ns,
        "orders",
        "Recovered",
        "TasksFailed no longer applies",
    )
    .await;
    drop(heartbeat);
}

#[tokio::test]
async fn a_silent_coordinator_is_unavailable_until_it_reports_again() {
    let (client, ns) = setup("silent").await;
    mark_ready(&client, &ns, "orders-coordinator").await;
    mark_ready(&client, &ns, "orders-worker").await;
    publish(&client, &ns, "orders", &counts(3, 1, &[])).await;
    wait_for_phase(&client, &ns, "orders", Phase::Running).await;

    // Nothing more from the coordinator: its heartbeat goes stale, and the
    // operator notices without any write to wake it.
    let silent_since = std::time::Instant::now();
    let message = degraded(&client, &ns, "True", "CoordinatorUnavailable").await;
    let noticed = silent_since.elapsed();
    assert!(
        noticed >= COORDINATOR_TIMEOUT - Duration::from_secs(2),
        "unavailable after {noticed:?}, before the {COORDINATOR_TIMEOUT:?} timeout"
    );
    assert!(
        message.contains("has not reported since")
            && message.contains(&format!(
                "kubectl logs deployment/orders-coordinator -n {ns}"
            )),
        "{message}"
    );
    assert_eq!(phase(&client, &ns).await, Some(Phase::Degraded));
    let warning = told(
        &client,
        &ns,
        "orders",
        "CoordinatorUnavailable",
        "not reported",
    )
    .await;
    assert_eq!(warning.type_, "Warning");

    publish(&client, &ns, "orders", &counts(0, 0, &[])).await;
    wait_for_phase(&client, &ns, "orders", Phase::Idle).await;
    degraded(&client, &ns, "False", "AsExpected").await;
    told(
        &client,
        &ns,
        "orders",
        "Recovered",
        "CoordinatorUnavailable no longer applies",
    )
    .await;
}

#[tokio::test]
async fn suspension_comes_before_the_coordinator_s_report() {
    let (client, ns) = setup("suspended").await;
    publish(&client, &ns, "orders", &counts(0, 0, &[failure("3-1")])).await;
    degraded(&client, &ns, "True", "TasksFailed").await;
    let mut suspended = orders("orders");
    suspended["spec"]["suspend"] = json!(true);
    apply(&client, &ns, &suspended).await;
    wait_for_phase(&client, &ns, "orders", Phase::Suspended).await;
    let (ready, reason, _) = condition(&client, &ns, "orders", "Ready").await.unwrap();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", "Suspended"));
    // The recent failure no longer makes it Degraded: suspension says all.
    assert_eq!(
        condition(&client, &ns, "orders", "Degraded")
            .await
            .unwrap()
            .0,
        "False"
    );
}
