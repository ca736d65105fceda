//! The IngestSource API against a real kube-apiserver: the CRD installs,
//! the examples apply, kubectl shows the columns and the descriptions, and
//! invalid manifests are refused at admission with messages a person can act
//! on.

mod support;

use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use sluice::crd::IngestSource;
use support::{fail, kube_with_crd, kubectl, repo, succeed};

#[test]
fn crds_directory_matches_the_generated_definition() {
    let path = repo().join("crds/ingestsources.sluice.dev.yaml");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == sluice::crd::crd_yaml(),
        "{} is not what `sluice crd` prints: run `make crds` and commit the result",
        path.display()
    );
}

/// The API server finds nothing to warn about in the CRD when it is
/// installed (it warned `unrecognized format "uint64"` while the schema
/// said so). Checked by a server-side dry run of creating it under another
/// group, since warnings come with a create.
#[test]
fn the_crd_installs_without_a_warning() {
    kube_with_crd();
    let crd = std::fs::read_to_string(repo().join("crds/ingestsources.sluice.dev.yaml"))
        .unwrap()
        .replace(
            "name: ingestsources.sluice.dev",
            "name: ingestsources.formats.sluice.dev",
        )
        .replace("group: sluice.dev", "group: formats.sluice.dev");
    let created = kubectl(&["create", "--dry-run=server", "-f", "-"], Some(&crd));
    let stderr = String::from_utf8_lossy(&created.stderr).into_owned();
    assert!(created.status.success(), "{stderr}");
    assert!(!stderr.contains("Warning"), "{stderr}");
}

#[test]
fn crd_is_established_with_its_names() {
    kube_with_crd();
    let crd: Value = serde_json::from_str(&succeed(kubectl(
        &["get", "crd", "ingestsources.sluice.dev", "-o", "json"],
        None,
    )))
    .unwrap();
    let names = &crd["status"]["acceptedNames"];
    assert_eq!(names["kind"], "IngestSource");
    assert_eq!(names["shortNames"], json!(["isrc"]));
    assert_eq!(names["categories"], json!(["sluice"]));
    // `kubectl get sluice` lists every kind in the category.
    let namespace = kube_with_crd().namespace("category").unwrap();
    apply(&namespace, &valid("by-category"));
    let listed = succeed(kubectl(
        &["get", "sluice", "-n", &namespace, "-o", "name"],
        None,
    ));
    assert!(
        listed.contains("ingestsource.sluice.dev/by-category"),
        "{listed}"
    );
}

#[test]
fn every_example_applies() {
    let namespace = kube_with_crd().namespace("examples").unwrap();
    let mut applied = 0;
    for entry in std::fs::read_dir(repo().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let out = succeed(kubectl(
                &[
                    "apply",
                    "--validate=strict",
                    "-n",
                    &namespace,
                    "-f",
                    path.to_str().unwrap(),
                ],
                None,
            ));
            assert!(out.contains("ingestsource.sluice.dev/"), "{out}");
            applied += 1;
        }
    }
    assert!(
        applied >= 2,
        "examples/ holds a working and a full manifest"
    );
}

#[test]
fn server_applies_the_documented_defaults() {
    let namespace = kube_with_crd().namespace("defaults").unwrap();
    apply(&namespace, &valid("minimal"));
    let stored: Value = serde_json::from_str(&succeed(kubectl(
        &["get", "isrc", "minimal", "-n", &namespace, "-o", "json"],
        None,
    )))
    .unwrap();
    let spec = &stored["spec"];
    assert_eq!(spec["workers"]["replicas"], 1);
    assert_eq!(spec["tasks"]["maxObjects"], 100);
    assert_eq!(spec["tasks"]["maxBytes"], "64Mi");
    assert_eq!(spec["tasks"]["leaseDuration"], "1m");
    assert_eq!(spec["tasks"]["maxAttempts"], 3);
    assert_eq!(spec["source"]["format"], "auto");
    assert_eq!(spec["source"]["compression"], "auto");
    assert_eq!(spec["suspend"], false);
    // What the server stores, the operator's types read.
    let typed: IngestSource = serde_json::from_value(stored).unwrap();
    assert_eq!(typed.spec.tasks.lease_duration.0.as_secs(), 60);
}

#[tokio::test]
async fn get_shows_the_columns_and_the_status_fills_them() {
    let kube = kube_with_crd();
    let namespace = kube.namespace("columns").unwrap();
    apply(&namespace, &valid("orders"));

    let table = succeed(kubectl(&["get", "isrc", "-n", &namespace], None));
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "ACCOUNT",
            "COLLECTION",
            "PHASE",
            "WORKERS",
            "PENDING",
            "RUNNING",
            "DONE",
            "FAILED",
            "AGE"
        ]
    );

    // Status is written through the status subresource, as the operator and
    // the coordinator will.
    let api: Api<IngestSource> = Api::namespaced(kube.client().await, &namespace);
    let status = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "IngestSource",
        "status": {
            "phase": "Running",
            "workers": {"desired": 3, "ready": 2, "summary": "2/3"},
            "tasks": {"pending": 41, "running": 5, "succeeded": 1200, "failed": 2},
            "lagSeconds": 17,
            "bytesIngested": 123456789,
            "coordinatorHeartbeatTime": "2026-11-24T13:00:05Z",
            "activeTasks": [
                {"id": "3-1041", "worker": "orders-worker-7d9f-abcde", "objects": 100, "tries": 1,
                 "started": "2026-11-24T12:59:50Z", "records": 5000, "readBytes": 1048576},
                {"id": "3-1042", "worker": "orders-worker-7d9f-fghij", "objects": 12, "tries": 2,
                 "started": "2026-11-24T12:59:58Z", "records": 10, "readBytes": 2048}
            ],
            "recentFailures": [
                {"id": "3-977", "key": "orders/part-0977.ndjson", "tries": 3,
                 "lastError": "s3 object \"orders/part-0977.ndjson\": line 3: expected value at column 8",
                 "time": "2026-11-24T12:58:00Z"}
            ]
        }
    });
    api.patch_status(
        "orders",
        &PatchParams::apply("sluice-test").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();

    let table = succeed(kubectl(&["get", "isrc", "orders", "-n", &namespace], None));
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..9],
        [
            "orders", "acme", "orders", "Running", "2/3", "41", "5", "1200", "2"
        ]
    );

    let wide = succeed(kubectl(
        &["get", "isrc", "orders", "-n", &namespace, "-o", "wide"],
        None,
    ));
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(&header[9..], ["LAG", "BYTES", "AGE"]);
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[9..11], ["17", "123456789"]);

    // `kubectl describe` prints each entry's fields in alphabetical order,
    // without a marker between entries: the field names make the id come
    // first, so each entry starts with it.
    let described = succeed(kubectl(
        &["describe", "isrc", "orders", "-n", &namespace],
        None,
    ));
    let fields = |section: &str| -> Vec<(String, String)> {
        described
            .lines()
            .skip_while(|line| line.trim() != section)
            .skip(1)
            .take_while(|line| line.starts_with("    "))
            .map(|line| {
                let (name, value) = line.trim().split_once(':').unwrap();
                (name.to_owned(), value.trim().to_owned())
            })
            .collect()
    };
    let active = fields("Active Tasks:");
    let names: Vec<&str> = active.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "Id",
            "Objects",
            "Read Bytes",
            "Records",
            "Started",
            "Tries",
            "Worker",
            "Id",
            "Objects",
            "Read Bytes",
            "Records",
            "Started",
            "Tries",
            "Worker"
        ],
        "{described}"
    );
    assert_eq!(active[0].1, "3-1041");
    assert_eq!(active[4].1, "2026-11-24T12:59:50Z");
    let failures = fields("Recent Failures:");
    assert_eq!(
        failures,
        [
            ("Id".to_owned(), "3-977".to_owned()),
            ("Key".to_owned(), "orders/part-0977.ndjson".to_owned()),
            (
                "Last Error".to_owned(),
                "s3 object \"orders/part-0977.ndjson\": line 3: expected value at column 8"
                    .to_owned()
            ),
            ("Time".to_owned(), "2026-11-24T12:58:00Z".to_owned()),
            ("Tries".to_owned(), "3".to_owned()),
        ],
        "{described}"
    );
    assert!(
        described.contains("Coordinator Heartbeat Time:  2026-11-24T13:00:05Z"),
        "{described}"
    );
}

#[test]
fn explain_teaches_the_fields() {
    kube_with_crd();
    // The API server publishes a new CRD's OpenAPI a moment after it is
    // Established; until then kubectl cannot find the resource.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let tasks = loop {
        let output = kubectl(&["explain", "ingestsource.spec.tasks"], None);
        if output.status.success() || std::time::Instant::now() > deadline {
            break succeed(output);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for expected in [
        "How objects are packed into tasks",
        "leaseDuration",
        "at least 5s",
        "maxAttempts",
        "dead letter",
        "maxBytes",
        "maxObjects",
    ] {
        assert!(
            tasks.contains(expected),
            "explain spec.tasks lacks {expected:?}:\n{tasks}"
        );
    }
    let account = succeed(kubectl(&["explain", "isrc.spec.account"], None));
    assert!(account.contains("Immutable"), "{account}");
    let bucket = succeed(kubectl(&["explain", "isrc.spec.source.s3.bucket"], None));
    assert!(bucket.contains("3 to 63 characters"), "{bucket}");
    let template = succeed(kubectl(
        &["explain", "isrc.spec.template.workers.pod"],
        None,
    ));
    for expected in [
        "imagePullSecrets",
        "nodeSelector",
        "tolerations",
        "affinity",
        "topologySpreadConstraints",
        "priorityClassName",
        "hostPath",
    ] {
        assert!(
            template.contains(expected),
            "{expected:?} not in:\n{template}"
        );
    }
    let account = succeed(kubectl(
        &["explain", "isrc.spec.template.workers.serviceAccount"],
        None,
    ));
    assert!(account.contains("IRSA"), "{account}");
    let autoscale = succeed(kubectl(&["explain", "isrc.spec.workers.autoscale"], None));
    for expected in ["tasksPerWorker", "minReplicas", "maxReplicas", "ignored"] {
        assert!(
            autoscale.contains(expected),
            "{expected:?} not in:\n{autoscale}"
        );
    }
}

/// Each case: what is wrong, how to make a valid manifest wrong that way,
/// and what the user must read in kubectl's error.
#[test]
fn invalid_manifests_are_refused_with_clear_messages() {
    let namespace = kube_with_crd().namespace("invalid").unwrap();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "missing account",
            without(valid("x"), "/spec/account"),
            "spec.account: Required value",
        ),
        (
            "account not a DNS label",
            with(valid("x"), "/spec/account", json!("Acme_Corp")),
            "spec.account must be a lowercase DNS label",
        ),
        (
            "collection longer than 63",
            with(valid("x"), "/spec/collection", json!("c".repeat(64))),
            "spec.collection: Too long: may not be more than 63",
        ),
        (
            "collection ends with a dash",
            with(valid("x"), "/spec/collection", json!("orders-")),
            "spec.collection must be a lowercase DNS label",
        ),
        (
            "missing source bucket",
            without(valid("x"), "/spec/source/s3/bucket"),
            "spec.source.s3.bucket: Required value",
        ),
        (
            "invalid bucket name",
            with(valid("x"), "/spec/sink/s3/bucket", json!("My_Bucket")),
            "bucket must be a valid S3 bucket name",
        ),
        (
            "bucket formatted as an IP address",
            with(valid("x"), "/spec/archive/s3/bucket", json!("192.168.1.10")),
            "bucket must be a valid S3 bucket name",
        ),
        (
            "replicas above 1000",
            with(valid("x"), "/spec/workers", json!({"replicas": 1001})),
            "spec.workers.replicas in body should be less than or equal to 1000",
        ),
        (
            "negative replicas",
            with(valid("x"), "/spec/workers", json!({"replicas": -1})),
            "spec.workers.replicas in body should be greater than or equal to 0",
        ),
        (
            "poll interval not a duration",
            with(valid("x"), "/spec/source/pollInterval", json!("5 minutes")),
            "spec.source.pollInterval must be a duration such as 30s, 5m or 1h30m",
        ),
        (
            "lease duration under 5s",
            with(valid("x"), "/spec/tasks", json!({"leaseDuration": "2s"})),
            "spec.tasks.leaseDuration must be at least 5s",
        ),
        (
            "lease duration not a duration",
            with(valid("x"), "/spec/tasks", json!({"leaseDuration": "1d"})),
            "spec.tasks.leaseDuration must be a duration such as 30s",
        ),
        (
            "maxAttempts 0",
            with(valid("x"), "/spec/tasks", json!({"maxAttempts": 0})),
            "spec.tasks.maxAttempts in body should be greater than or equal to 1",
        ),
        (
            "maxObjects above 10000",
            with(valid("x"), "/spec/tasks", json!({"maxObjects": 10001})),
            "spec.tasks.maxObjects in body should be less than or equal to 10000",
        ),
        (
            "maxBytes zero",
            with(valid("x"), "/spec/tasks", json!({"maxBytes": "0"})),
            "spec.tasks.maxBytes must be a positive quantity of bytes",
        ),
        (
            "maxBytes not a quantity",
            with(valid("x"), "/spec/tasks", json!({"maxBytes": "lots"})),
            "spec.tasks.maxBytes must be a positive quantity of bytes",
        ),
        (
            "unknown format",
            with(valid("x"), "/spec/source/format", json!("xml")),
            "spec.source.format: Unsupported value: \"xml\": supported values: \"ndjson\", \"json\", \"csv\", \"auto\"",
        ),
        (
            "unknown compression",
            with(valid("x"), "/spec/source/compression", json!("lz4")),
            "spec.source.compression: Unsupported value: \"lz4\"",
        ),
        (
            "endpoint with another scheme",
            with(
                valid("x"),
                "/spec/source/s3/endpoint",
                json!("ftp://minio:9000"),
            ),
            "endpoint must be an http:// or https:// URL with a host",
        ),
        (
            "name too long for the children's names",
            with(valid("x"), "/metadata/name", json!("n".repeat(52))),
            "metadata.name must be at most 51 characters",
        ),
        (
            "name starting with a digit",
            with(valid("x"), "/metadata/name", json!("1orders")),
            "sluice names the coordinator's Service NAME-coordinator",
        ),
        (
            "endpoint without a host",
            with(valid("x"), "/spec/sink/s3/endpoint", json!("http://")),
            "endpoint must be an http:// or https:// URL with a host",
        ),
        (
            "a template volume named like sluice's own",
            with(
                valid("x"),
                "/spec/template",
                json!({"workers": {"pod": {"volumes": [{"name": "token", "emptyDir": {}}]}}}),
            ),
            "the names ['config', 'token', 'tmp'] are sluice's own",
        ),
        (
            "a hostPath volume",
            with(
                valid("x"),
                "/spec/template",
                json!({"coordinator": {"pod": {"volumes": [{"name": "node", "hostPath": {"path": "/"}}]}}}),
            ),
            "hostPath volumes are refused",
        ),
        (
            "a mount over sluice's token",
            with(
                valid("x"),
                "/spec/template",
                json!({"workers": {
                    "pod": {"volumes": [{"name": "mine", "emptyDir": {}}]},
                    "container": {"volumeMounts": [{"name": "mine", "mountPath": "/var/run/secrets/sluice/token"}]},
                }}),
            ),
            "sluice mounts its own volumes at",
        ),
        (
            "a mount of no template volume",
            with(
                valid("x"),
                "/spec/template",
                json!({"workers": {"container": {"volumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/ca"}]}}}),
            ),
            "every container.volumeMounts[].name must be the name of one of pod.volumes",
        ),
        (
            "an environment variable sluice sets",
            with(
                valid("x"),
                "/spec/template",
                json!({"workers": {"container": {"env": [{"name": "SLUICE_TOKEN", "value": "x"}]}}}),
            ),
            "are set by sluice itself",
        ),
    ];
    for (what, manifest, expected) in cases {
        let stderr = fail(kubectl(
            &["apply", "-n", &namespace, "-f", "-"],
            Some(&manifest.to_string()),
        ));
        assert!(
            stderr.contains(expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
    }
    // Nothing invalid was stored.
    let listed = succeed(kubectl(
        &["get", "isrc", "-n", &namespace, "-o", "name"],
        None,
    ));
    assert_eq!(listed, "", "refused manifests left objects behind");
}

/// The corpus in `tests/corpus/manifests/`: one broken manifest per file,
/// each opening with `# expect: TEXT`, the words kubectl must show. Every
/// file is applied with kubectl's strict validation (its default) and must
/// be refused with its text; none may leave an object behind.
#[test]
fn the_manifest_corpus_is_refused_with_clear_messages() {
    let namespace = kube_with_crd().namespace("corpus").unwrap();
    let dir = support::repo().join("tests/corpus/manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "the corpus is in {}", dir.display());
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expected = text
            .lines()
            .find_map(|line| line.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", file.display()));
        let output = kubectl(
            &["apply", "--validate=strict", "-n", &namespace, "-f", "-"],
            Some(&text),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || !stderr.contains(expected) {
            wrong.push(format!(
                "{}: expected a refusal with {expected:?}, got ({}):\n{stderr}",
                file.display(),
                output.status
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let listed = succeed(kubectl(
        &["get", "isrc", "-n", &namespace, "-o", "name"],
        None,
    ));
    assert_eq!(listed, "", "refused manifests left objects behind");
}

#[test]
fn unknown_fields_are_refused_under_strict_validation() {
    let namespace = kube_with_crd().namespace("strict").unwrap();
    let manifest = with(valid("typo"), "/spec/workerz", json!({"replicas": 2}));
    let stderr = fail(kubectl(
        &["apply", "--validate=strict", "-n", &namespace, "-f", "-"],
        Some(&manifest.to_string()),
    ));
    assert!(
        stderr.contains("unknown field \"spec.workerz\""),
        "{stderr}"
    );
}

#[test]
fn account_collection_and_the_archive_location_are_immutable() {
    let namespace = kube_with_crd().namespace("immutable").unwrap();
    apply(&namespace, &valid("orders"));
    for (field, message) in [
        ("/spec/account", "spec.account is immutable"),
        ("/spec/collection", "spec.collection is immutable"),
        (
            "/spec/archive/s3/bucket",
            "spec.archive.s3.bucket and prefix are immutable: the checkpoint lives there",
        ),
        (
            "/spec/archive/s3/prefix",
            "spec.archive.s3.bucket and prefix are immutable: the checkpoint lives there",
        ),
    ] {
        let changed = with(valid("orders"), field, json!("changed"));
        let stderr = fail(kubectl(
            &["apply", "-n", &namespace, "-f", "-"],
            Some(&changed.to_string()),
        ));
        assert!(stderr.contains(message), "{field}: {stderr}");
    }
    // Other fields stay editable, the archive's endpoint among them.
    let edited = with(valid("orders"), "/spec/workers", json!({"replicas": 5}));
    apply(
        &namespace,
        &with(
            edited,
            "/spec/archive/s3/endpoint",
            json!("http://minio.other:9000"),
        ),
    );
    let replicas = succeed(kubectl(
        &[
            "get",
            "isrc",
            "orders",
            "-n",
            &namespace,
            "-o",
            "jsonpath={.spec.workers.replicas}",
        ],
        None,
    ));
    assert_eq!(replicas, "5");
}

/// Every store names its credentials, or says it uses the pods' own identity:
/// none is read or written with the node's identity by leaving both out.
#[test]
fn a_store_names_its_credentials_or_says_it_uses_the_pods_identity() {
    let namespace = kube_with_crd().namespace("credentials").unwrap();
    let neither = without(valid("neither"), "/spec/sink/s3/credentialsSecretRef");
    let both = with(
        valid("both"),
        "/spec/archive/s3/ambientCredentials",
        json!(true),
    );
    for (manifest, field) in [(neither, "spec.sink.s3"), (both, "spec.archive.s3")] {
        let stderr = fail(kubectl(
            &["apply", "-n", &namespace, "-f", "-"],
            Some(&manifest.to_string()),
        ));
        assert!(
            stderr.contains(field) && stderr.contains("set exactly one of credentialsSecretRef"),
            "{stderr}"
        );
    }
    let ambient = with(
        without(valid("ambient"), "/spec/source/s3/credentialsSecretRef"),
        "/spec/source/s3/ambientCredentials",
        json!(true),
    );
    apply(&namespace, &ambient);
}

/// A valid IngestSource named `name`: the smallest manifest the API accepts.
fn valid(name: &str) -> Value {
    let location = |bucket: &str| json!({"s3": {"bucket": bucket, "endpoint": "http://minio.storage:9000", "forcePathStyle": true, "credentialsSecretRef": {"name": "acme-s3"}}});
    json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "IngestSource",
        "metadata": {"name": name},
        "spec": {
            "account": "acme",
            "collection": "orders",
            "source": location("acme-raw"),
            "sink": location("acme-collections"),
            "archive": location("acme-archive"),
        }
    })
}

fn with(mut manifest: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    manifest.pointer_mut(parent).unwrap()[key] = value;
    manifest
}

fn without(mut manifest: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    manifest
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    manifest
}

fn apply(namespace: &str, manifest: &Value) {
    succeed(kubectl(
        &["apply", "-n", namespace, "-f", "-"],
        Some(&manifest.to_string()),
    ));
}
