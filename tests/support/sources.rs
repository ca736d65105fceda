//! IngestSources and their children, as the operator tests handle them.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use serde_json::{Value, json};
use sluice::crd::{IngestSource, Phase};

use super::eventually;

/// How long the operator may take to act on a change.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The orders example, with its credentials Secret `acme-s3` optional.
pub fn orders(name: &str) -> Value {
    let mut source: Value =
        serde_yaml::from_str(include_str!("../../examples/orders.yaml")).unwrap();
    source["metadata"]["name"] = json!(name);
    source
}

pub async fn create_credentials(client: &Client, namespace: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "acme-s3"},
        "stringData": {"AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "key"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

pub async fn apply(client: &Client, namespace: &str, source: &Value) {
    let name = source["metadata"]["name"].as_str().unwrap();
    Api::<IngestSource>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("sluice-test").force(),
            &Patch::Apply(source),
        )
        .await
        .unwrap();
}

pub async fn get<K>(client: &Client, namespace: &str, name: &str) -> Option<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
}

pub async fn source(client: &Client, namespace: &str, name: &str) -> IngestSource {
    get(client, namespace, name).await.unwrap()
}

/// The Deployment once it satisfies `test`.
pub async fn deployment_where(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    test: impl Fn(&Deployment) -> bool,
) -> Deployment {
    eventually(what, SETTLE, || async {
        get::<Deployment>(client, namespace, name)
            .await
            .filter(|d| test(d))
    })
    .await
}

pub fn replicas(deployment: &Deployment) -> i32 {
    deployment.spec.as_ref().unwrap().replicas.unwrap()
}

pub fn checksum(deployment: &Deployment) -> String {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["sluice.dev/config-checksum"]
        .clone()
}

pub async fn condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let status = source(client, namespace, name).await.status?;
    let condition = status.conditions.into_iter().find(|c| c.type_ == type_)?;
    Some((condition.status, condition.reason, condition.message))
}

/// Waits until the operator reports `phase`.
pub async fn wait_for_phase(client: &Client, namespace: &str, name: &str, phase: Phase) {
    eventually(&format!("phase {phase:?}"), SETTLE, || async {
        let status = source(client, namespace, name).await.status?;
        (status.phase == Some(phase)).then_some(())
    })
    .await;
}

/// Publishes `status` into IngestSource `name` the way its coordinator does:
/// server-side apply on the status subresource with the coordinator's field
/// manager, stamped with the current time as its heartbeat. (No kubelet runs
/// here, so tests that need no real coordinator write its part themselves.)
pub async fn publish(client: &Client, namespace: &str, name: &str, status: &Value) {
    let mut status = status.clone();
    status["coordinatorHeartbeatTime"] = json!(now());
    Api::<IngestSource>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::apply(sluice::coordinator::publish::MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": "sluice.dev/v1alpha1",
                "kind": "IngestSource",
                "status": status,
            })),
        )
        .await
        .unwrap();
}

/// The current time as the API server writes it (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// An Event about IngestSource `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Told {
    pub type_: String,
    pub reason: String,
    pub note: String,
}

/// The Events recorded about IngestSource `name`, oldest first.
pub async fn events(client: &Client, namespace: &str, name: &str) -> Vec<Told> {
    let mut events: Vec<_> = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|event| {
            event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                && event.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("IngestSource")
        })
        .collect();
    events.sort_by_key(|event| event.event_time.as_ref().map(|time| time.0));
    events
        .into_iter()
        .map(|event| Told {
            type_: event.type_.unwrap_or_default(),
            reason: event.reason.unwrap_or_default(),
            note: event.note.unwrap_or_default(),
        })
        .collect()
}

/// Waits for an Event with `reason` whose note contains `text`.
pub async fn told(client: &Client, namespace: &str, name: &str, reason: &str, text: &str) -> Told {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let events = events(client, namespace, name).await;
        if let Some(told) = events
            .iter()
            .find(|told| told.reason == reason && told.note.contains(text))
        {
            return told.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {reason} event saying {text:?} after {SETTLE:?}; the events: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
