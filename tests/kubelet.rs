//! The whole system on real parts: the operator writes an IngestSource's
//! Deployments, a kubelet stand-in runs their pods as processes exactly as
//! the templates say (the coordinator with its own ServiceAccount's token),
//! and the objects in MinIO end up in the sink, counted in the status.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::json;
use sluice::testenv::{ApiServer, Kubelet};
use support::{eventually, kube_with_crd, minio, operator, sources};

const DONE: Duration = Duration::from_secs(120);

#[tokio::test]
async fn an_ingest_source_runs_end_to_end_under_its_own_rbac() {
    let kube = kube_with_crd();
    let client = kube.client().await;
    let _operator = operator();
    let minio = minio();
    let namespace = kube.namespace("e2e").unwrap();
    let credentials = minio.credentials();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "acme-s3"},
        "stringData": {
            "AWS_ACCESS_KEY_ID": credentials.access_key_id,
            "AWS_SECRET_ACCESS_KEY": credentials.secret_access_key,
        }
    }))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let buckets = [
        minio.bucket("source").await.unwrap(),
        minio.bucket("sink").await.unwrap(),
        minio.bucket("archive").await.unwrap(),
    ];
    let mut source = sources::orders("orders");
    for (store, bucket) in ["source", "sink", "archive"].iter().zip(&buckets) {
        source["spec"][store]["s3"]["bucket"] = json!(bucket);
        source["spec"][store]["s3"]["endpoint"] = json!(minio.endpoint());
    }
    source["spec"]["workers"]["replicas"] = json!(2);

    let s3 = minio.client().await;
    for i in 0..40 {
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
    let logs = tempfile::tempdir().unwrap();
    let _kubelet = Kubelet::start(
        client.clone(),
        ApiServer {
            server: kube.server().to_owned(),
            ca_cert: kube.ca_cert().to_owned(),
        },
        &namespace,
        "app.kubernetes.io/managed-by=sluice-operator",
        env!("CARGO_BIN_EXE_sluice").into(),
        logs.path().to_owned(),
    );
    sources::apply(&client, &namespace, &source).await;

    let status = eventually("every object ingested, in the status", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        let objects = status.objects.as_ref()?;
        (objects.ingested == 40 && status.tasks.as_ref()?.running == 0).then_some(status)
    })
    .await;
    assert_eq!(status.records_ingested, Some(1000));
    assert_eq!(status.objects.unwrap().failed, 0);
    let workers = status.workers.unwrap();
    assert_eq!((workers.desired, workers.ready), (2, 2));

    let records = sluice::testenv::demo::sink_records(&s3, &buckets[1])
        .await
        .unwrap();
    assert_eq!(records, 1000, "the sink holds every record once");
}
