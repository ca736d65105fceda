//! `sluice operator` against a real kube-apiserver (with the garbage
//! collector of kube-controller-manager): children, edits, suspension, drift,
//! no-op reconciles, credentials, deletion, health and scale.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use sluice::crd::{IngestSource, Phase};
use support::sources::*;
use support::{eventually, kube_with_crd, kubectl, mark_ready, operator, succeed};

async fn setup(prefix: &str) -> (Client, String) {
    operator();
    let kube = kube_with_crd();
    (kube.client().await, kube.namespace(prefix).unwrap())
}

#[tokio::test]
async fn creates_every_child_and_reports_readiness() {
    let (client, ns) = setup("create").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    let owner = source(&client, &ns, "orders").await;

    let workers = deployment_where(
        &client,
        &ns,
        "orders-worker",
        "the worker Deployment",
        |_| true,
    )
    .await;
    assert_eq!(replicas(&workers), 2);
    // The Deployments and the RoleBinding are applied together, in the last
    // round: the worker Deployment can be there before the other two.
    let coordinator = deployment_where(
        &client,
        &ns,
        "orders-coordinator",
        "the coordinator Deployment",
        |_| true,
    )
    .await;
    let role_binding = eventually("the coordinator's RoleBinding", SETTLE, || {
        get::<RoleBinding>(&client, &ns, "orders-coordinator")
    })
    .await;
    assert_eq!(replicas(&coordinator), 1);
    assert_eq!(
        coordinator
            .spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("Recreate")
    );
    let metas = vec![
        coordinator.metadata.clone(),
        workers.metadata.clone(),
        get::<Service>(&client, &ns, "orders-coordinator")
            .await
            .unwrap()
            .metadata,
        get::<ServiceAccount>(&client, &ns, "orders-coordinator")
            .await
            .unwrap()
            .metadata,
        get::<ServiceAccount>(&client, &ns, "orders-worker")
            .await
            .unwrap()
            .metadata,
        get::<Role>(&client, &ns, "orders-coordinator")
            .await
            .unwrap()
            .metadata,
        role_binding.metadata,
        get::<ConfigMap>(&client, &ns, "orders-config")
            .await
            .unwrap()
            .metadata,
        get::<Secret>(&client, &ns, "orders-token")
            .await
            .unwrap()
            .metadata,
    ];
    for meta in metas {
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, owner.uid().unwrap());
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.labels.unwrap()["sluice.dev/account"], "acme");
    }
    let token = get::<Secret>(&client, &ns, "orders-token")
        .await
        .unwrap()
        .data
        .unwrap();
    assert_eq!(token["token"].0.len(), 64);
    // The read token, for `kubectl sluice tasks`, beside it.
    let workers = String::from_utf8(token["token"].0.clone()).unwrap();
    assert_eq!(
        token["read-token"].0,
        sluice_core::api::read_token(&workers).into_bytes()
    );
    let config = get::<ConfigMap>(&client, &ns, "orders-config")
        .await
        .unwrap();
    assert!(config.data.unwrap()["config.json"].contains("\"collection\": \"orders\""));

    // Until the pods are ready, it is Pending and says what it waits for.
    let (status, reason, _) = eventually("Ready=False", SETTLE, || {
        condition(&client, &ns, "orders", "Ready")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "CoordinatorNotReady")
    );

    mark_ready(&client, &ns, "orders-coordinator").await;
    mark_ready(&client, &ns, "orders-worker").await;
    wait_for_phase(&client, &ns, "orders", Phase::Running).await;
    let (status, _, message) = condition(&client, &ns, "orders", "Ready").await.unwrap();
    assert_eq!(status, "True");
    assert_eq!(message, "the coordinator and 2 workers are ready");
    let row = succeed(kubectl(
        &["get", "isrc", "orders", "-n", &ns, "--no-headers"],
        None,
    ));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[..5],
        ["orders", "acme", "orders", "Running", "2/2"]
    );
    let described = succeed(kubectl(&["describe", "isrc", "orders", "-n", &ns], None));
    assert!(
        described.contains("Created") && described.contains("Deployment orders-worker"),
        "{described}"
    );
}

/// The token is derived, not stored: someone who empties the token Secret
/// gets the same token back at the next reconcile, which an edit makes.
#[tokio::test]
async fn edits_roll_out_and_the_token_is_kept() {
    let (client, ns) = setup("edit").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    let before = deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;
    let token = get::<Secret>(&client, &ns, "orders-token")
        .await
        .unwrap()
        .data;
    Api::<Secret>::namespaced(client.clone(), &ns)
        .patch(
            "orders-token",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": null})),
        )
        .await
        .unwrap();

    let mut edited = orders("orders");
    edited["spec"]["workers"]["replicas"] = json!(5);
    edited["spec"]["tasks"] = json!({"maxObjects": 500, "maxBytes": "1Gi"});
    edited["spec"]["sink"]["s3"]["bucket"] = json!("acme-collections-v2");
    apply(&client, &ns, &edited).await;

    let after = deployment_where(&client, &ns, "orders-worker", "5 workers", |d| {
        replicas(d) == 5
    })
    .await;
    assert_ne!(
        checksum(&before),
        checksum(&after),
        "a config change restarts the pods"
    );
    // Applied together with the workers': it may land a moment later.
    deployment_where(
        &client,
        &ns,
        "orders-coordinator",
        "the coordinator restarted for the new config",
        |d| checksum(d) == checksum(&after),
    )
    .await;
    let config = get::<ConfigMap>(&client, &ns, "orders-config")
        .await
        .unwrap()
        .data
        .unwrap();
    let config: Value = serde_json::from_str(&config["config.json"]).unwrap();
    assert_eq!(config["tasks"]["maxObjects"], 500);
    assert_eq!(config["tasks"]["maxBytes"], 1u64 << 30);
    assert_eq!(config["sink"]["bucket"], "acme-collections-v2");
    eventually("the same token back", SETTLE, || async {
        let now = get::<Secret>(&client, &ns, "orders-token").await?.data;
        (now == token).then_some(())
    })
    .await;
    let described = eventually("the Scaled event", SETTLE, || async {
        let described = succeed(kubectl(&["describe", "isrc", "orders", "-n", &ns], None));
        described
            .contains("scaled orders-worker from 2 to 5 workers")
            .then_some(described)
    })
    .await;
    assert!(described.contains("Normal"), "{described}");
}

/// A rotated credentials Secret reaches the pods when they restart (they
/// read it into their environment at start). The operator reads no Secret,
/// so it cannot tell: `kubectl rollout restart` of the source's Deployments
/// is the way, and the operator keeps that restart rather than undoing it
/// when it applies them again.
#[tokio::test]
async fn a_rollout_restart_for_rotated_credentials_is_kept() {
    let (client, ns) = setup("rotate").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;
    succeed(kubectl(
        &[
            "rollout",
            "restart",
            "-n",
            &ns,
            "deployment/orders-coordinator",
            "deployment/orders-worker",
        ],
        None,
    ));
    let mut edited = orders("orders");
    edited["spec"]["workers"]["replicas"] = json!(3);
    apply(&client, &ns, &edited).await;
    deployment_where(&client, &ns, "orders-worker", "3 workers", |d| {
        replicas(d) == 3
    })
    .await;
    for name in ["orders-coordinator", "orders-worker"] {
        let deployment = get::<Deployment>(&client, &ns, name).await.unwrap();
        let annotations = deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert!(
            annotations.contains_key("kubectl.kubernetes.io/restartedAt"),
            "{name}: {annotations:?}"
        );
    }
}

#[tokio::test]
async fn suspending_scales_to_zero_and_resuming_restores() {
    let (client, ns) = setup("suspend").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;

    let mut suspended = orders("orders");
    suspended["spec"]["suspend"] = json!(true);
    apply(&client, &ns, &suspended).await;
    deployment_where(&client, &ns, "orders-worker", "no workers", |d| {
        replicas(d) == 0
    })
    .await;
    deployment_where(&client, &ns, "orders-coordinator", "no coordinator", |d| {
        replicas(d) == 0
    })
    .await;
    wait_for_phase(&client, &ns, "orders", Phase::Suspended).await;

    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers back", |d| {
        replicas(d) == 2
    })
    .await;
    deployment_where(
        &client,
        &ns,
        "orders-coordinator",
        "coordinator back",
        |d| replicas(d) == 1,
    )
    .await;
    let described = eventually("Resumed event", SETTLE, || async {
        let described = succeed(kubectl(&["describe", "isrc", "orders", "-n", &ns], None));
        described.contains("Resumed").then_some(described)
    })
    .await;
    assert!(described.contains("Suspended"), "{described}");
}

#[tokio::test]
async fn drift_is_repaired() {
    let (client, ns) = setup("drift").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let original = config_maps.get("orders-config").await.unwrap();

    config_maps
        .delete("orders-config", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually("the ConfigMap back", SETTLE, || async {
        config_maps
            .get_opt("orders-config")
            .await
            .unwrap()
            .filter(|c| c.uid() != original.uid())
    })
    .await;
    assert_eq!(recreated.data, original.data);

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .patch(
            "orders-worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 9}})),
        )
        .await
        .unwrap();
    deployment_where(
        &client,
        &ns,
        "orders-worker",
        "replicas restored to 2",
        |d| replicas(d) == 2,
    )
    .await;

    Api::<Service>::namespaced(client.clone(), &ns)
        .delete("orders-coordinator", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the Service back", SETTLE, || async {
        get::<Service>(&client, &ns, "orders-coordinator").await
    })
    .await;
}

#[tokio::test]
async fn missing_credentials_degrade_until_the_secret_exists() {
    let (client, ns) = setup("creds").await;
    apply(&client, &ns, &orders("orders")).await;
    let (status, reason, message) = eventually("Degraded", SETTLE, || async {
        condition(&client, &ns, "orders", "Degraded")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "CredentialsSecretNotFound")
    );
    assert!(
        message.contains("\"acme-s3\"") && message.contains("spec.source.s3"),
        "{message}"
    );
    assert_eq!(
        source(&client, &ns, "orders").await.status.unwrap().phase,
        Some(Phase::Degraded)
    );
    let described = succeed(kubectl(&["describe", "isrc", "orders", "-n", &ns], None));
    assert!(
        described.contains("Warning") && described.contains("CredentialsSecretNotFound"),
        "{described}"
    );

    create_credentials(&client, &ns).await;
    eventually("Degraded=False once the Secret exists", SETTLE, || async {
        condition(&client, &ns, "orders", "Degraded")
            .await
            .filter(|(s, _, _)| s == "False")
    })
    .await;
}

/// A source never takes over an object of one of its children's names that
/// it did not create (the operator's caches hold only its own objects, so
/// such an object looks missing): the source is Degraded with NameConflict
/// naming it, and the object keeps its contents and outlives the source.
#[tokio::test]
async fn objects_of_the_same_name_are_never_taken_over() {
    let (client, ns) = setup("takeover").await;
    create_credentials(&client, &ns).await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let theirs_config: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "app-config"},
        "data": {"owner": "someone else"},
    }))
    .unwrap();
    let theirs_token: Secret = serde_json::from_value(json!({
        "metadata": {"name": "other-token"},
        "stringData": {"token": "theirs"},
    }))
    .unwrap();
    config_maps
        .create(&PostParams::default(), &theirs_config)
        .await
        .unwrap();
    secrets
        .create(&PostParams::default(), &theirs_token)
        .await
        .unwrap();
    apply(&client, &ns, &orders("app")).await;
    apply(&client, &ns, &orders("other")).await;

    for (source, object) in [
        ("app", "ConfigMap \"app-config\""),
        ("other", "Secret \"other-token\""),
    ] {
        let (_, reason, message) = eventually("Degraded", SETTLE, || async {
            condition(&client, &ns, source, "Degraded")
                .await
                .filter(|(s, _, _)| s == "True")
        })
        .await;
        assert_eq!(reason, "NameConflict", "{source}: {message}");
        assert!(message.contains(object), "{source}: {message}");
        wait_for_phase(&client, &ns, source, Phase::Degraded).await;
    }
    let untouched = |meta: &kube::api::ObjectMeta| {
        meta.owner_references.is_none()
            && meta.labels.is_none()
            && meta
                .managed_fields
                .iter()
                .flatten()
                .all(|entry| entry.manager.as_deref() != Some("sluice-operator"))
    };
    let config = config_maps.get("app-config").await.unwrap();
    assert!(untouched(&config.metadata), "{config:?}");
    assert_eq!(config.data, theirs_config.data);
    let token = secrets.get("other-token").await.unwrap();
    assert!(untouched(&token.metadata), "{:?}", token.metadata);
    assert_eq!(
        token.data.unwrap()["token"].0,
        b"theirs".to_vec(),
        "the other Secret's token"
    );

    // Deleting the sources leaves them: the garbage collector has no owner
    // to follow.
    let sources = Api::<IngestSource>::namespaced(client.clone(), &ns);
    for name in ["app", "other"] {
        sources
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("the sources' own children gone", SETTLE, || async {
        let ours = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sluice-operator"))
            .await
            .unwrap();
        let gone = sources
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty();
        (gone && ours.items.is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        config_maps.get("app-config").await.unwrap().data,
        theirs_config.data
    );
    assert!(secrets.get_opt("other-token").await.unwrap().is_some());
}

#[tokio::test]
async fn deleting_the_source_removes_every_child() {
    let (client, ns) = setup("delete").await;
    create_credentials(&client, &ns).await;
    apply(&client, &ns, &orders("orders")).await;
    deployment_where(&client, &ns, "orders-worker", "workers", |_| true).await;
    Api::<IngestSource>::namespaced(client.clone(), &ns)
        .delete("orders", &DeleteParams::default())
        .await
        .unwrap();
    eventually("every child gone", SETTLE, || async {
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=sluice-operator"))
            .await
            .unwrap();
        let services = Api::<Service>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
            .unwrap();
        let token = get::<Secret>(&client, &ns, "orders-token").await;
        (deployments.items.is_empty()
            && config_maps.items.is_empty()
            && services.items.is_empty()
            && token.is_none())
        .then_some(())
    })
    .await;
    // The credentials Secret is the user's: it stays.
    assert!(get::<Secret>(&client, &ns, "acme-s3").await.is_some());
}

#[tokio::test]
async fn an_unusable_spec_fails_with_the_reason() {
    let (client, ns) = setup("unusable").await;
    create_credentials(&client, &ns).await;
    let mut source_manifest = orders("orders");
    // 0.1 bytes: admission refuses it now, but an IngestSource admitted
    // under an older, looser CRD may hold it. The test loosens the CRD for
    // as long as it takes to store one.
    source_manifest["spec"]["tasks"] = json!({"maxBytes": "100m"});
    let restore = loosen_max_bytes_rule(&client).await;
    eventually("the source stored under the looser CRD", SETTLE, || async {
        Api::<IngestSource>::namespaced(client.clone(), &ns)
            .patch(
                "orders",
                &PatchParams::apply("sluice-test").force(),
                &Patch::Apply(&source_manifest),
            )
            .await
            .ok()
    })
    .await;
    restore_crd(&client, restore).await;
    let (_, reason, message) = eventually("Degraded", SETTLE, || async {
        condition(&client, &ns, "orders", "Degraded")
            .await
            .filter(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(reason, "InvalidSpec");
    assert!(
        message.contains("spec.tasks.maxBytes") && message.contains("\"100m\""),
        "{message}"
    );
    assert_eq!(
        source(&client, &ns, "orders").await.status.unwrap().phase,
        Some(Phase::Failed)
    );

    // Others are served meanwhile.
    apply(&client, &ns, &orders("healthy")).await;
    deployment_where(
        &client,
        &ns,
        "healthy-worker",
        "the healthy source's workers",
        |_| true,
    )
    .await;
}

/// The CRD path of spec.tasks.maxBytes's CEL rules.
const MAX_BYTES_RULES: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/tasks/properties/maxBytes/x-kubernetes-validations";

/// Removes the CEL rules of spec.tasks.maxBytes from the installed CRD,
/// as an older CRD without them; returns the rules to put back.
async fn loosen_max_bytes_rule(client: &Client) -> Value {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = serde_json::to_value(crds.get(CRD_NAME).await.unwrap()).unwrap();
    let (parent, key) = MAX_BYTES_RULES.rsplit_once('/').unwrap();
    let rules = crd
        .pointer_mut(parent)
        .and_then(|field| field.as_object_mut())
        .and_then(|field| field.remove(key))
        .expect("the CRD has rules on spec.tasks.maxBytes");
    replace_crd(&crds, &crd).await;
    rules
}

/// Puts back the rules [`loosen_max_bytes_rule`] removed.
async fn restore_crd(client: &Client, rules: Value) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crd = serde_json::to_value(crds.get(CRD_NAME).await.unwrap()).unwrap();
    let (parent, key) = MAX_BYTES_RULES.rsplit_once('/').unwrap();
    crd.pointer_mut(parent)
        .and_then(|field| field.as_object_mut())
        .unwrap()
        .insert(key.into(), rules);
    replace_crd(&crds, &crd).await;
}

async fn replace_crd(crds: &Api<CustomResourceDefinition>, crd: &Value) {
    crds.replace(
        CRD_NAME,
        &kube::api::PostParams::default(),
        &serde_json::from_value(crd.clone()).unwrap(),
    )
    .await
    .unwrap();
}

const CRD_NAME: &str = "ingestsources.sluice.dev";

#[tokio::test]
async fn health_and_metrics_are_served() {
    setup("health").await;
    let operator = operator();
    assert_eq!(operator.get("/healthz").unwrap().0, 200);
    eventually("/readyz", SETTLE, || async {
        (operator.get("/readyz")?.0 == 200).then_some(())
    })
    .await;
    let (status, metrics) = operator.get("/metrics").unwrap();
    assert_eq!(status, 200);
    for name in [
        "sluice_operator_reconciles_total",
        "sluice_operator_reconcile_duration_seconds_bucket",
        "sluice_operator_api_writes_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn two_hundred_sources_settle() {
    let (client, ns) = setup("many").await;
    create_credentials(&client, &ns).await;
    let started = Instant::now();
    let count = 200;
    for i in 0..count {
        apply(&client, &ns, &orders(&format!("source-{i}"))).await;
    }
    let applied = started.elapsed();
    eventually(
        "every source's workers and status",
        Duration::from_secs(120),
        || async {
            let sources = Api::<IngestSource>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap();
            let settled = sources
                .items
                .iter()
                .filter(|s| {
                    s.status
                        .as_ref()
                        .is_some_and(|st| st.observed_generation == s.metadata.generation)
                })
                .count();
            let workers = Api::<Deployment>::namespaced(client.clone(), &ns)
                .list(&ListParams::default().labels("app.kubernetes.io/component=worker"))
                .await
                .unwrap()
                .items
                .len();
            (settled == count && workers == count).then_some(())
        },
    )
    .await;
    eprintln!(
        "{count} IngestSources: applied in {:.1}s, settled (children and status) {:.1}s after the first apply",
        applied.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
