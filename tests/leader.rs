//! Leader election against a real API server: of two processes sharing a
//! Lease only one leads; a standby takes over within a lease duration when
//! the leader stops renewing, and at once when it releases the lease.

mod support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::SignedDuration;
use kube::Api;
use kube::api::PostParams;
use sluice::operator::leader::{LeaderElector, LeaseConfig, Lost};
use tokio::task::JoinHandle;
use tokio::time::timeout;

const LEASE_DURATION: Duration = Duration::from_secs(2);
const RENEW_INTERVAL: Duration = Duration::from_millis(500);
/// Long enough for an uncontended acquire on a loaded machine.
const PROMPTLY: Duration = Duration::from_secs(10);

/// Two electors for one Lease in a fresh namespace, and that Lease's API.
async fn two_candidates(prefix: &str) -> (Arc<LeaderElector>, Arc<LeaderElector>, Api<Lease>) {
    let kube = support::kube();
    let namespace = kube.namespace(prefix).unwrap();
    let client = kube.client().await;
    let elector = |identity: &str| {
        Arc::new(LeaderElector::new(
            client.clone(),
            LeaseConfig {
                namespace: namespace.clone(),
                name: "sluice-operator".into(),
                identity: identity.into(),
                lease_duration: LEASE_DURATION,
                renew_interval: RENEW_INTERVAL,
            },
        ))
    };
    let (first, second) = (elector("first"), elector("second"));
    (first, second, Api::namespaced(client, &namespace))
}

async fn lease_spec(leases: &Api<Lease>) -> LeaseSpec {
    leases
        .get("sluice-operator")
        .await
        .unwrap()
        .spec
        .expect("the Lease has a spec")
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    lease_spec(leases).await.holder_identity
}

/// Acquires for `elector` and keeps renewing in a task.
async fn lead(elector: &Arc<LeaderElector>) -> JoinHandle<Lost> {
    timeout(PROMPTLY, elector.acquire())
        .await
        .expect("a free lease is acquired promptly")
        .unwrap();
    let elector = elector.clone();
    tokio::spawn(async move { elector.hold().await })
}

fn stand_by(elector: &Arc<LeaderElector>) -> JoinHandle<()> {
    let elector = elector.clone();
    tokio::spawn(async move { elector.acquire().await.unwrap() })
}

#[tokio::test]
async fn standby_does_not_lead_while_the_leader_renews() {
    let (first, second, leases) = two_candidates("leader-exclusive").await;
    let holding = lead(&first).await;
    let spec = lease_spec(&leases).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("first"));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.lease_duration_seconds, Some(2));

    // The lease would have expired twice over without renewals.
    let standby = timeout(2 * LEASE_DURATION, second.acquire()).await;
    assert!(
        standby.is_err(),
        "the standby acquired a lease the leader renews"
    );
    assert!(!holding.is_finished(), "the leader stopped holding");
    let renewed = lease_spec(&leases).await;
    assert_eq!(renewed.holder_identity.as_deref(), Some("first"));
    assert_eq!(renewed.acquire_time, spec.acquire_time);
    assert!(renewed.renew_time > spec.renew_time);
    holding.abort();
}

#[tokio::test]
async fn standby_takes_over_within_the_lease_duration_when_the_leader_stops_renewing() {
    let (first, second, leases) = two_candidates("leader-takeover").await;
    let holding = lead(&first).await;
    let standby = stand_by(&second);

    holding.abort();
    let last_renewal = lease_spec(&leases).await.renew_time.unwrap().0;
    timeout(LEASE_DURATION + RENEW_INTERVAL, standby)
        .await
        .expect("the standby takes over within a lease duration")
        .unwrap();

    let spec = lease_spec(&leases).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("second"));
    assert_eq!(spec.lease_transitions, Some(1));
    let acquired = spec.acquire_time.unwrap().0;
    assert!(
        last_renewal.duration_until(acquired) >= SignedDuration::try_from(LEASE_DURATION).unwrap(),
        "taken over at {acquired}, before the lease renewed at {last_renewal} expired"
    );
}

#[tokio::test]
async fn standby_takes_over_at_once_when_the_leader_releases() {
    let (first, second, leases) = two_candidates("leader-release").await;
    let holding = lead(&first).await;
    let standby = stand_by(&second);
    assert_eq!(holder(&leases).await.as_deref(), Some("first"));

    holding.abort();
    first.release().await;
    // Well before the released lease would have expired (at most 2s away).
    timeout(LEASE_DURATION / 2, standby)
        .await
        .expect("the standby takes over a released lease at once")
        .unwrap();
    let spec = lease_spec(&leases).await;
    assert_eq!(spec.holder_identity.as_deref(), Some("second"));
    assert_eq!(spec.lease_transitions, Some(1));

    // Releasing a lease held by someone else changes nothing.
    first.release().await;
    assert_eq!(holder(&leases).await.as_deref(), Some("second"));
}

#[tokio::test]
async fn leader_notices_when_another_process_takes_the_lease() {
    let (first, _, leases) = two_candidates("leader-intruder").await;
    let holding = lead(&first).await;

    loop {
        let mut lease = leases.get("sluice-operator").await.unwrap();
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = Some("intruder".into());
        }
        match leases
            .replace("sluice-operator", &PostParams::default(), &lease)
            .await
        {
            Ok(_) => break,
            // The leader renewed between our read and our write.
            Err(kube::Error::Api(status)) if status.is_conflict() => continue,
            Err(err) => panic!("{err}"),
        }
    }

    // The next renewal, at most one renew interval away, sees it.
    let lost = timeout(2 * RENEW_INTERVAL, holding)
        .await
        .expect("the leader notices within a renew interval")
        .unwrap();
    assert!(
        matches!(&lost, Lost::TakenOver { holder, .. } if holder == "intruder"),
        "{lost:?}"
    );
    assert_eq!(holder(&leases).await.as_deref(), Some("intruder"));
}
