//! The Helm chart (`charts/sluice`) with the real helm against a real
//! kube-apiserver with RBAC: it lints and renders, refuses bad values with a
//! clear message, and installs what it should; the operator, run as a local
//! process with nothing but the token of the chart's ServiceAccount, does
//! everything; every verb the chart grants is needed (dropping any one breaks
//! the call that uses it); every pod meets Pod Security "restricted".

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice::crd::IngestSource;
use sluice_testenv::{Daemon, free_port, http_get, tools};
use support::sources::{SETTLE, apply, create_credentials, get, orders};
use support::{TOKEN_KEY, eventually, kube, kubectl, repo, succeed};

/// The release name every test installs or renders the chart as.
const RELEASE: &str = "sluice";

/// The operator in cluster-wide mode serves every namespace, so it would
/// also serve (and repair) what the namespaced operators of other tests are
/// meant to do alone: it runs only while no other operator does.
static CLUSTER_WIDE: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn chart() -> PathBuf {
    repo().join("charts/sluice")
}

/// Runs the pinned helm with its configuration and cache in a scratch
/// directory, never the user's.
fn helm(args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    let helm = tools::binary("helm").unwrap_or_else(|err| panic!("{err}"));
    Command::new(helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .expect("helm runs")
}

/// The Kubernetes version the tests run, for `helm template`: without a
/// cluster helm assumes the one compiled into it, and the pinned helm is
/// built without it (so it would assume 1.20, below the chart's kubeVersion).
fn kube_version() -> String {
    let go_mod = std::fs::read_to_string(repo().join("tools/kube/go.mod")).unwrap();
    go_mod
        .lines()
        .find_map(|line| line.strip_prefix("require k8s.io/kubernetes "))
        .expect("tools/kube/go.mod pins k8s.io/kubernetes")
        .trim()
        .to_owned()
}

/// `helm template` of the chart as release `sluice` in `namespace` with
/// `values` (YAML): the objects, or what helm said when it refused.
fn render(namespace: &str, values: &str) -> Result<Vec<Value>, String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), values).unwrap();
    let output = helm(&[
        "template",
        RELEASE,
        chart().to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        &kube_version(),
        "--values",
        file.path().to_str().unwrap(),
    ]);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(documents(&String::from_utf8(output.stdout).unwrap()))
}

fn yaml_stream(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|document| !document.is_null())
        .collect()
}

/// `Kind namespace/name` of every object, for comparing sets.
fn inventory(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let namespace = o["metadata"]["namespace"].as_str().unwrap_or("");
            format!(
                "{} {namespace}/{}",
                o["kind"].as_str().unwrap(),
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, namespace: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str().unwrap_or("") == namespace
        })
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} in {:?}", inventory(objects)))
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    serde_json::from_value(container(deployment)["args"].clone()).unwrap()
}

/// Whether a `matchLabels` selector selects an object with `labels`.
fn selects(match_labels: &Value, labels: &Value) -> bool {
    match_labels.as_object().is_some_and(|wanted| {
        wanted
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
    })
}

#[test]
fn lint_is_clean_with_default_and_other_values() {
    let chart = chart();
    for values in [None, Some(OTHER_VALUES)] {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut command = vec!["lint", "--strict", chart.to_str().unwrap()];
        if let Some(values) = values {
            std::fs::write(file.path(), values).unwrap();
            command.extend(["--values", file.path().to_str().unwrap()]);
        }
        let output = helm(&command);
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{printed}");
        assert!(
            printed.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{printed}"
        );
        // Only the icon, which sluice does not have, is left to recommend.
        let remarks: Vec<&str> = printed
            .lines()
            .filter(|line| line.starts_with('['))
            .filter(|line| *line != "[INFO] Chart.yaml: icon is recommended")
            .collect();
        assert!(remarks.is_empty(), "{printed}");
    }
}

#[test]
fn defaults_render_the_operator_with_cluster_wide_rbac() {
    let objects = render("sluice-system", "").unwrap();
    assert_eq!(
        inventory(&objects),
        BTreeSet::from(
            [
                "ServiceAccount sluice-system/sluice",
                "ClusterRole /sluice",
                "ClusterRoleBinding /sluice",
                "ClusterRole /sluice-sluice-system-view",
                "ClusterRole /sluice-sluice-system-edit",
                "Role sluice-system/sluice-leader-election",
                "RoleBinding sluice-system/sluice-leader-election",
                "Deployment sluice-system/sluice",
                "Service sluice-system/sluice-metrics",
                "Pod sluice-system/sluice-test",
                "Secret sluice-system/sluice-token-key",
            ]
            .map(String::from)
        )
    );
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart_yaml["appVersion"],
        env!("CARGO_PKG_VERSION"),
        "Chart.yaml's appVersion is the crate's version (the image tag the chart runs)"
    );

    let deployment = find(&objects, "Deployment", "sluice-system", "sluice");
    let image = format!("sluice:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(container(deployment)["image"], image.as_str());
    assert_eq!(deployment["spec"]["replicas"], 1);
    let args = args(deployment);
    for expected in [
        "operator".to_owned(),
        format!("--image={image}"),
        "--image-pull-policy=IfNotPresent".into(),
        "--admin-address=0.0.0.0:8080".into(),
        "--leader-election=true".into(),
        "--lease-namespace=sluice-system".into(),
        "--lease-name=sluice-operator".into(),
        "--log-format=text".into(),
        r#"--coordinator-resources={"limits":{"memory":"1Gi"},"requests":{"cpu":"100m","memory":"256Mi"}}"#.into(),
        "--coordinator-scratch-limit=1Gi".into(),
        "--token-key-file=/var/run/sluice/token-key/key".into(),
    ] {
        assert!(args.contains(&expected), "{expected} not in {args:?}");
    }
    // The token key: random, mounted where the flag says, for the operator
    // alone (0440, its group), which reads no Secret through the API.
    let key = find(&objects, "Secret", "sluice-system", "sluice-token-key");
    let decoded: k8s_openapi::ByteString =
        serde_json::from_value(key["data"]["key"].clone()).unwrap();
    assert_eq!(decoded.0.len(), 64);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"],
        json!([{"name": "token-key", "secret": {"secretName": "sluice-token-key", "defaultMode": 0o440}}])
    );
    assert_eq!(
        container(deployment)["volumeMounts"],
        json!([{"name": "token-key", "mountPath": "/var/run/sluice/token-key", "readOnly": true}])
    );
    assert!(!args.iter().any(|a| a.starts_with("--watch-namespace")));
    let container = container(deployment);
    assert_eq!(
        container["ports"][0],
        json!({"name": "admin", "containerPort": 8080, "protocol": "TCP"})
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "admin"})
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "admin"})
    );
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["serviceAccountName"], "sluice");
    let binding = find(&objects, "ClusterRoleBinding", "", "sluice");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "sluice", "namespace": "sluice-system"}])
    );
}

/// Every value changed from its default (and the optional objects on).
const OTHER_VALUES: &str = r#"
image: {repository: registry.example/sluice, tag: 1.2.3, pullPolicy: Always}
imagePullSecrets: [{name: regcred}]
replicaCount: 2
leaderElection: {leaseDuration: 30s, renewInterval: 10s}
rbac: {scope: namespaces, aggregateToDefaultRoles: false}
watchNamespaces: [team-a, team-b]
serviceAccount: {name: ingest-operator, annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::1:role/x"}}
logLevel: info,sluice=debug
logFormat: json
adminPort: 9090
resources: {requests: {cpu: 200m, memory: 128Mi}, limits: {memory: 1Gi}}
nodeSelector: {kubernetes.io/os: linux}
tolerations: [{key: dedicated, operator: Equal, value: ingest, effect: NoSchedule}]
affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app.kubernetes.io/name: sluice}}}}]}}
priorityClassName: system-cluster-critical
extraEnv: [{name: AWS_REGION, value: eu-west-1}]
podAnnotations: {example.com/team: ingest}
podLabels: {example.com/cost-center: data}
metrics: {serviceMonitor: {enabled: true, workloads: true, interval: 15s, labels: {release: prometheus}}, prometheusRule: {enabled: true, lagSeconds: 600}}
networkPolicy: {enabled: true, from: [{ipBlock: {cidr: 10.0.0.10/32}}]}
"#;

#[test]
fn other_values_render_where_they_belong() {
    let objects = render("ops", OTHER_VALUES).unwrap();
    assert_eq!(
        inventory(&objects),
        BTreeSet::from(
            [
                "Secret ops/sluice-token-key",
                "ServiceAccount ops/ingest-operator",
                "Role team-a/sluice",
                "RoleBinding team-a/sluice",
                "Role team-b/sluice",
                "RoleBinding team-b/sluice",
                "Role ops/sluice-leader-election",
                "RoleBinding ops/sluice-leader-election",
                "Deployment ops/sluice",
                "PodDisruptionBudget ops/sluice",
                "Service ops/sluice-metrics",
                "Pod ops/sluice-test",
                "ServiceMonitor ops/sluice",
                "ServiceMonitor ops/sluice-coordinators",
                "PodMonitor ops/sluice-workers",
                "PrometheusRule ops/sluice",
                "NetworkPolicy team-a/sluice-coordinators",
                "NetworkPolicy team-b/sluice-coordinators",
            ]
            .map(String::from)
        )
    );
    // The watched namespaces' Roles hold exactly the cluster-wide rules.
    let cluster_wide = render("ops", "").unwrap();
    let cluster_rules = &find(&cluster_wide, "ClusterRole", "", "sluice")["rules"];
    for namespace in ["team-a", "team-b"] {
        assert_eq!(
            &find(&objects, "Role", namespace, "sluice")["rules"],
            cluster_rules
        );
        let binding = find(&objects, "RoleBinding", namespace, "sluice");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "ingest-operator", "namespace": "ops"}])
        );
    }
    let account = find(&objects, "ServiceAccount", "ops", "ingest-operator");
    assert_eq!(
        account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "arn:aws:iam::1:role/x"
    );

    let deployment = find(&objects, "Deployment", "ops", "sluice");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let container = container(deployment);
    assert_eq!(container["image"], "registry.example/sluice:1.2.3");
    assert_eq!(container["imagePullPolicy"], "Always");
    let args = args(deployment);
    for expected in [
        "--image=registry.example/sluice:1.2.3",
        "--image-pull-policy=Always",
        "--watch-namespace=team-a,team-b",
        "--admin-address=0.0.0.0:9090",
        "--lease-duration=30s",
        "--lease-renew-interval=10s",
        "--log-format=json",
    ] {
        assert!(
            args.iter().any(|a| a == expected),
            "{expected} not in {args:?}"
        );
    }
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "RUST_LOG", "value": "info,sluice=debug"})));
    assert!(env.contains(&json!({"name": "AWS_REGION", "value": "eu-west-1"})));
    assert_eq!(container["ports"][0]["containerPort"], 9090);
    assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
    let pod = &deployment["spec"]["template"];
    assert_eq!(pod["metadata"]["annotations"]["example.com/team"], "ingest");
    assert_eq!(pod["metadata"]["labels"]["example.com/cost-center"], "data");
    assert_eq!(pod["spec"]["serviceAccountName"], "ingest-operator");
    assert_eq!(
        pod["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    let test = find(&objects, "Pod", "ops", "sluice-test");
    assert_eq!(
        test["spec"]["imagePullSecrets"],
        json!([{"name": "regcred"}])
    );
    assert_eq!(
        test["spec"]["containers"][0]["args"],
        json!(["probe", "http://sluice-metrics.ops.svc:9090/readyz"])
    );
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["spec"]["tolerations"][0]["value"], "ingest");
    assert_eq!(pod["spec"]["priorityClassName"], "system-cluster-critical");
    assert!(pod["spec"]["affinity"]["podAntiAffinity"].is_object());
    let monitor = find(&objects, "ServiceMonitor", "ops", "sluice");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(monitor["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(
        find(&objects, "ServiceMonitor", "ops", "sluice-coordinators")["spec"]["namespaceSelector"],
        json!({"matchNames": ["team-a", "team-b"]})
    );
}

/// nameOverride and fullnameOverride rename what the chart makes, and
/// everything that selects or names the operator follows.
#[test]
fn name_overrides_rename_everything_consistently() {
    for (values, fullname, name) in [
        ("nameOverride: ingest\n", "sluice-ingest", "ingest"),
        (
            "fullnameOverride: platform-ingest\n",
            "platform-ingest",
            "sluice",
        ),
    ] {
        let objects = render("ops", values).unwrap();
        let deployment = find(&objects, "Deployment", "ops", fullname);
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        assert_eq!(pod_labels["app.kubernetes.io/name"], name, "{values}");
        assert!(selects(
            &deployment["spec"]["selector"]["matchLabels"],
            pod_labels
        ));
        let service = find(&objects, "Service", "ops", &format!("{fullname}-metrics"));
        assert!(
            selects(&service["spec"]["selector"], pod_labels),
            "{values}"
        );
        find(&objects, "ServiceAccount", "ops", fullname);
        find(&objects, "ClusterRoleBinding", "", fullname);
        find(&objects, "Secret", "ops", &format!("{fullname}-token-key"));
        let test = find(&objects, "Pod", "ops", &format!("{fullname}-test"));
        assert_eq!(
            test["spec"]["containers"][0]["args"][1],
            format!("http://{fullname}-metrics.ops.svc:8080/readyz")
        );
        // The test pod is not one of the operator's pods.
        assert!(!selects(
            &service["spec"]["selector"],
            &test["metadata"]["labels"]
        ));
        let args = args(deployment);
        let lease = format!("--lease-name={fullname}-operator");
        assert!(args.contains(&lease), "{args:?}");
        let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
        assert_eq!(
            volumes[0]["secret"]["secretName"],
            format!("{fullname}-token-key")
        );
    }
}

/// With tokenKey.existingSecret the chart makes no key of its own (a
/// render without a cluster would make a new one each time) and mounts the
/// named Secret.
#[test]
fn an_existing_token_key_secret_replaces_the_charts() {
    let objects = render("ops", "tokenKey: {existingSecret: managed-key}\n").unwrap();
    assert!(
        !objects.iter().any(|object| object["kind"] == "Secret"),
        "{:?}",
        inventory(&objects)
    );
    let deployment = find(&objects, "Deployment", "ops", "sluice");
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["secret"]["secretName"], "managed-key");
}

#[test]
fn bad_values_are_refused_naming_the_value() {
    let cases = [
        (
            "replicaCount: -1",
            "at '/replicaCount': minimum: got -1, want 0",
        ),
        (
            "replicaCount: two",
            "at '/replicaCount': got string, want integer",
        ),
        (
            "replicas: 2",
            "additional properties 'replicas' not allowed",
        ),
        (
            "image: {pullPolicy: Sometimes}",
            "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
        (
            "image: {repository: ''}",
            "at '/image/repository': minLength",
        ),
        (
            "logFormat: xml",
            "at '/logFormat': value must be one of 'text', 'json'",
        ),
        (
            "rbac: {scope: both}",
            "at '/rbac/scope': value must be one of 'cluster', 'namespaces'",
        ),
        (
            "watchNamespaces: [Team_A]",
            "at '/watchNamespaces/0': 'Team_A' does not match pattern",
        ),
        (
            "leaderElection: {leaseDuration: 15}",
            "at '/leaderElection/leaseDuration': got number, want string",
        ),
        (
            "leaderElection: {leaseDuration: fifteen}",
            "at '/leaderElection/leaseDuration': 'fifteen' does not match pattern",
        ),
        (
            "adminPort: 70000",
            "at '/adminPort': maximum: got 70,000, want 65,535",
        ),
        (
            "extraEnv: [{value: x}]",
            "at '/extraEnv/0': missing property 'name'",
        ),
        (
            "metrics: {serviceMonitor: {enable: true}}",
            "additional properties 'enable' not allowed",
        ),
        // Each valid alone, wrong together: the templates say why.
        (
            "rbac: {scope: namespaces}",
            "watchNamespaces must name at least one namespace when rbac.scope is namespaces",
        ),
        (
            "replicaCount: 2\nleaderElection: {enabled: false}",
            "replicaCount above 1 needs leaderElection.enabled: true",
        ),
        (
            "networkPolicy: {enabled: true}",
            "networkPolicy.namespaces must name the namespaces of your IngestSources",
        ),
    ];
    for (values, message) in cases {
        let refused = render("ops", values).expect_err(values);
        assert!(
            refused.contains(message),
            "helm should refuse `{values}` saying {message:?}; it said:\n{refused}"
        );
    }
}

/// charts/sluice/README.md is what helm-docs makes of the chart and its
/// values.yaml comments now.
#[test]
fn the_chart_readme_is_generated_from_the_values() {
    let helm_docs = sluice_testenv::tools::binary("helm-docs").unwrap();
    let output = Command::new(helm_docs)
        .args([
            "--chart-search-root",
            "charts",
            "--sort-values-order",
            "file",
        ])
        .arg("--dry-run")
        .current_dir(repo())
        .output()
        .unwrap();
    let generated = succeed(output);
    let on_disk = std::fs::read_to_string(chart().join("README.md")).unwrap_or_default();
    assert!(
        on_disk == generated,
        "charts/sluice/README.md is not what helm-docs makes of values.yaml: \
         run `make chart-docs` and commit the result"
    );
    // Every value is described.
    for line in generated
        .lines()
        .filter(|line| line.starts_with("| ") && line.contains(" | `"))
    {
        assert!(
            !line.ends_with("|  |"),
            "a value without a description: {line}"
        );
    }
}

/// The chart's PrometheusRule: promtool accepts its rules, its unit tests
/// (`tests/corpus/alerts.test.yaml`) show each alert firing on the series
/// that should fire it, after its `for`, and not on the others, and every
/// alert's runbook section exists.
#[test]
fn the_alerting_rules_pass_promtool_and_have_runbooks() {
    let objects = render(
        "ops",
        "metrics: {prometheusRule: {enabled: true, labels: {release: prometheus}}}\n",
    )
    .unwrap();
    let rule = find(&objects, "PrometheusRule", "ops", "sluice");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.rules.yaml"),
        serde_yaml::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo().join("tests/corpus/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .unwrap();
    let promtool = sluice_testenv::tools::binary("promtool").unwrap();
    for args in [
        ["check", "rules", "sluice.rules.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let printed = succeed(output);
        eprintln!("promtool {}: {printed}", args.join(" "));
    }

    let runbook = std::fs::read_to_string(repo().join("docs/runbook.md")).unwrap();
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let alerts = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    assert_eq!(alerts.len(), 5);
    for alert in alerts {
        let name = alert["alert"].as_str().unwrap();
        let url = alert["annotations"]["runbook_url"].as_str().unwrap();
        assert_eq!(url, format!("docs/runbook.md#{}", name.to_lowercase()));
        assert!(
            anchors.contains(&name.to_lowercase()),
            "docs/runbook.md has no section {name}"
        );
    }
    // And one for every reason a source is Degraded.
    for reason in [
        "TasksFailed",
        "CoordinatorUnavailable",
        "CheckpointUnusable",
        "CredentialsSecretNotFound",
        "NameConflict",
        "InvalidSpec",
    ] {
        assert!(
            anchors.contains(&reason.to_lowercase()),
            "docs/runbook.md has no section {reason}"
        );
    }
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let shipped = std::fs::read_to_string(chart().join("crds/ingestsources.sluice.dev.yaml"))
        .unwrap_or_default();
    assert!(
        shipped == sluice::crd::crd_yaml(),
        "charts/sluice/crds/ingestsources.sluice.dev.yaml is not what `sluice crd` prints: run `make crds` and commit the result"
    );
}

#[test]
fn the_dockerfile_builds_the_image_the_chart_runs() {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let cargo_toml = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let rust_version = cargo_toml
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("Cargo.toml names a rust-version")
        .trim_matches('"');
    let builder = dockerfile
        .lines()
        .find_map(|line| line.strip_prefix("FROM docker.io/library/rust:"))
        .and_then(|rest| rest.split('-').next())
        .expect("a rust builder stage");
    let parts = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    assert!(
        parts(builder) >= parts(rust_version),
        "the builder's Rust {builder} is older than the crate's rust-version {rust_version}"
    );
    // The operator's pods pass only arguments: the image's entrypoint must be
    // the sluice binary; they run as 65532, which the image's user matches.
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/sluice\"]"));
    assert!(dockerfile.lines().any(|line| line == "USER 65532:65532"));
    let objects = render("ops", "").unwrap();
    let deployment = find(&objects, "Deployment", "ops", "sluice");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"],
        65532
    );
    assert!(container(deployment).get("command").is_none());
}

/// The example IngestSource as the API server hands it to the operator.
fn example_source(namespace: &str) -> IngestSource {
    let mut source: IngestSource = serde_json::from_value(orders("orders")).unwrap();
    source.metadata.namespace = Some(namespace.into());
    source.metadata.uid = Some("0b7c1a52-0000-4000-8000-000000000001".into());
    source
}

#[test]
fn monitoring_and_network_policy_select_the_operators_pods() {
    let objects = render("ops", OTHER_VALUES).unwrap();
    let source = example_source("team-a");
    let config = sluice::config::RuntimeConfig::from_source(&source).unwrap();
    let defaults = sluice::operator::children::PodDefaults::of_image(
        "registry.example/sluice:1.2.3".into(),
        None,
    );
    let children = sluice::operator::children::build(&source, &config, "token", &defaults, 2);
    let pod_labels = |deployment: &Deployment| {
        serde_json::to_value(
            &deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .labels,
        )
        .unwrap()
    };
    let (coordinator, worker) = (
        pod_labels(&children.coordinator),
        pod_labels(&children.workers),
    );
    let operator =
        find(&objects, "Deployment", "ops", "sluice")["spec"]["template"]["metadata"]["labels"]
            .clone();

    let policy = find(&objects, "NetworkPolicy", "team-a", "sluice-coordinators");
    let target = &policy["spec"]["podSelector"]["matchLabels"];
    assert!(
        selects(target, &coordinator),
        "the policy applies to coordinators"
    );
    assert!(!selects(target, &worker) && !selects(target, &operator));
    let ingress = &policy["spec"]["ingress"][0];
    assert_eq!(
        ingress["ports"],
        json!([{"port": "http", "protocol": "TCP"}])
    );
    let from = ingress["from"].as_array().unwrap();
    let same_namespace: Vec<&Value> = from
        .iter()
        .filter(|peer| peer.get("namespaceSelector").is_none() && peer.get("ipBlock").is_none())
        .collect();
    assert_eq!(same_namespace.len(), 1);
    let workers_peer = &same_namespace[0]["podSelector"]["matchLabels"];
    assert!(
        selects(workers_peer, &worker),
        "workers may reach their coordinator"
    );
    assert!(
        !selects(workers_peer, &coordinator),
        "coordinators may not reach each other"
    );
    let operator_peer = from
        .iter()
        .find(|peer| peer.get("namespaceSelector").is_some())
        .unwrap();
    assert_eq!(
        operator_peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ops"
    );
    assert!(selects(
        &operator_peer["podSelector"]["matchLabels"],
        &operator
    ));
    assert!(from.contains(&json!({"ipBlock": {"cidr": "10.0.0.10/32"}})));
    // The coordinators' port is named as the policy says.
    let coordinator_port = &children
        .coordinator
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(coordinator_port.name.as_deref(), Some("http"));

    let service_labels = serde_json::to_value(&children.service.metadata.labels).unwrap();
    let coordinators = find(&objects, "ServiceMonitor", "ops", "sluice-coordinators");
    assert!(selects(
        &coordinators["spec"]["selector"]["matchLabels"],
        &service_labels
    ));
    assert_eq!(coordinators["spec"]["endpoints"][0]["port"], "http");
    let workers = find(&objects, "PodMonitor", "ops", "sluice-workers");
    assert!(selects(
        &workers["spec"]["selector"]["matchLabels"],
        &worker
    ));
    assert!(!selects(
        &workers["spec"]["selector"]["matchLabels"],
        &coordinator
    ));
    let metrics = find(&objects, "Service", "ops", "sluice-metrics");
    assert!(selects(&metrics["spec"]["selector"], &operator));
    let monitor = find(&objects, "ServiceMonitor", "ops", "sluice");
    assert!(selects(
        &monitor["spec"]["selector"]["matchLabels"],
        &metrics["metadata"]["labels"]
    ));
}

#[tokio::test]
async fn the_api_server_accepts_the_optional_objects() {
    // ServiceMonitor and PodMonitor need the Prometheus Operator's CRDs,
    // which are not here; the built-in kinds are checked by a dry run.
    let namespace = kube().namespace("optional").unwrap();
    let values = OTHER_VALUES.replace("[team-a, team-b]", &format!("[{namespace}]"));
    let objects = render(&namespace, &values).unwrap();
    let builtin: Vec<Value> = objects
        .into_iter()
        .filter(|o| o["kind"] == "NetworkPolicy" || o["kind"] == "Service")
        .collect();
    assert_eq!(builtin.len(), 2);
    let created = succeed(kubectl(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&yaml_stream(&builtin)),
    ));
    assert!(
        created.contains(
            "networkpolicy.networking.k8s.io/sluice-coordinators created (server dry run)"
        ),
        "{created}"
    );
}

/// The release every test with an API server uses: `helm install` with
/// cluster-wide RBAC into a namespace that enforces Pod Security
/// "restricted", installing the CRD from the chart.
struct Release {
    namespace: String,
    notes: String,
}

fn release() -> &'static Release {
    static RELEASE_: OnceLock<Release> = OnceLock::new();
    RELEASE_.get_or_init(|| {
        let kube = kube();
        let namespace = kube.namespace("sluice-system").unwrap();
        enforce_restricted(&namespace);
        let output = helm(&[
            "install",
            RELEASE,
            chart().to_str().unwrap(),
            "--kubeconfig",
            kube.kubeconfig().to_str().unwrap(),
            "--namespace",
            &namespace,
            "--set",
            "image.repository=registry.example/sluice,image.tag=1.2.3",
            "--set",
            "leaderElection.leaseDuration=3s,leaderElection.renewInterval=1s",
        ]);
        let notes = succeed(output);
        succeed(kubectl(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/ingestsources.sluice.dev",
            ],
            None,
        ));
        Release { namespace, notes }
    })
}

fn enforce_restricted(namespace: &str) {
    succeed(kubectl(
        &[
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
        ],
        None,
    ));
}

#[tokio::test]
async fn install_creates_the_crd_the_operator_and_its_rbac() {
    let release = release();
    let ns = &release.namespace;
    for next_step in [
        "kubectl apply -f",
        "kubectl get isrc",
        "kubectl sluice tasks",
        "kubectl sluice history",
        "helm test sluice",
        "kubectl-sluice",
        "docker cp",
    ] {
        assert!(
            release.notes.contains(next_step),
            "NOTES lack {next_step}:\n{}",
            release.notes
        );
    }
    let listed = succeed(kubectl(
        &[
            "get",
            "serviceaccount,deployment,role,rolebinding",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/instance=sluice",
            "-o",
            "name",
        ],
        None,
    ));
    let mut listed: Vec<&str> = listed.lines().collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            "deployment.apps/sluice",
            "role.rbac.authorization.k8s.io/sluice-leader-election",
            "rolebinding.rbac.authorization.k8s.io/sluice-leader-election",
            "serviceaccount/sluice",
        ]
    );
    for cluster_wide in [
        "clusterrole/sluice",
        "clusterrolebinding/sluice",
        "crd/ingestsources.sluice.dev",
    ] {
        succeed(kubectl(&["get", cluster_wide], None));
    }
    let crd: Value = serde_json::from_str(&succeed(kubectl(
        &["get", "crd", "ingestsources.sluice.dev", "-o", "json"],
        None,
    )))
    .unwrap();
    assert_eq!(
        crd["status"]["acceptedNames"]["shortNames"],
        json!(["isrc"])
    );
    let status = succeed(helm(&[
        "status",
        RELEASE,
        "--kubeconfig",
        kube().kubeconfig().to_str().unwrap(),
        "--namespace",
        ns,
    ]));
    assert!(status.contains("STATUS: deployed"), "{status}");
}

/// Asserts that `user` may not read any Secret: not list or watch them in
/// all namespaces, nor list, watch or get one in each of `namespaces`, the
/// operator's own included (it reads its token key from a mounted file).
fn reads_no_secret(user: &str, namespaces: &[&str]) {
    let mut asked: Vec<Vec<&str>> = vec![
        vec!["list", "secrets", "--all-namespaces"],
        vec!["watch", "secrets", "--all-namespaces"],
    ];
    for namespace in namespaces {
        for verb in ["list", "watch", "get"] {
            asked.push(vec![verb, "secret/sluice-token-key", "-n", namespace]);
        }
    }
    for question in asked {
        let mut args = vec!["auth", "can-i", "--as", user];
        args.extend(&question);
        let answer = kubectl(&args, None);
        let said = String::from_utf8_lossy(&answer.stdout).trim().to_owned();
        assert_eq!(said, "no", "kubectl {}", args.join(" "));
    }
}

/// The chart's default, cluster-wide RBAC lets the operator read no Secret,
/// in any namespace.
#[tokio::test]
async fn the_operator_may_read_no_secret() {
    let release = release();
    let other = kube().namespace("bystander").unwrap();
    let user = format!("system:serviceaccount:{}:sluice", release.namespace);
    reads_no_secret(&user, &[&release.namespace, &other]);
    // What it does with Secrets: create (tokens; a dry run tells whether a
    // credentials Secret exists) and patch (a token, once tested as its own).
    for verb in ["create", "patch"] {
        let args = [
            "auth", "can-i", "--as", &user, verb, "secrets", "-n", &other,
        ];
        let said = succeed(kubectl(&args, None));
        assert_eq!(said.trim(), "yes", "kubectl {}", args.join(" "));
    }
}

/// Namespace users get IngestSources through Kubernetes' own roles, by
/// aggregation: `view` reads them; `edit` also changes and scales them and
/// may use `kubectl sluice tasks` (services/proxy and the token Secret),
/// which `view` may not (no Secret).
#[tokio::test]
async fn the_namespace_roles_include_ingestsources() {
    release();
    let ns = kube().namespace("team").unwrap();
    for (user, role) in [("alice", "view"), ("bob", "edit")] {
        let binding = format!("{user}-{role}");
        succeed(kubectl(
            &[
                "create",
                "rolebinding",
                &binding,
                "--clusterrole",
                role,
                "--user",
                user,
                "-n",
                &ns,
            ],
            None,
        ));
    }
    let can = |user: &str, what: &[&str]| {
        let mut args = vec!["auth", "can-i", "--as", user, "-n", &ns];
        args.extend(what);
        String::from_utf8_lossy(&kubectl(&args, None).stdout).trim() == "yes"
    };
    let isrc = "ingestsources.sluice.dev";
    eventually(
        "the rules aggregated into view and edit",
        Duration::from_secs(60),
        || async { (can("alice", &["list", isrc]) && can("bob", &["create", isrc])).then_some(()) },
    )
    .await;
    assert!(can("alice", &["watch", isrc]));
    assert!(can("alice", &["get", isrc, "--subresource=status"]));
    assert!(!can("alice", &["patch", isrc]));
    assert!(!can("alice", &["get", "secrets"]));
    for what in [
        &["patch", isrc][..],
        &["delete", isrc],
        &["patch", isrc, "--subresource=scale"],
        &["get", "services", "--subresource=proxy"],
        &["get", "secrets"],
    ] {
        assert!(can("bob", what), "edit may {what:?}");
    }
}

/// A token of ServiceAccount `name` from the TokenRequest API, as a pod
/// would have it mounted.
async fn token(client: &Client, namespace: &str, name: &str) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .and_then(|status| status.token)
        .expect("the TokenRequest API answers with a token")
}

/// Waits until the API server lets ServiceAccount `sluice` of
/// `account_namespace` do each `(namespace, group, resource, name, verb)`
/// (an empty name: any). Its
/// RBAC authorizer learns of new Roles and RoleBindings a moment after they
/// are written; an operator started before that would be refused through no
/// fault of the chart.
async fn wait_authorized(
    client: &Client,
    account_namespace: &str,
    checks: &[(&str, &str, &str, &str, &str)],
) {
    let user = format!("system:serviceaccount:{account_namespace}:sluice");
    for &(namespace, group, resource, name, verb) in checks {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let review: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {
                "user": user,
                "resourceAttributes": {
                    "namespace": namespace, "group": group, "resource": resource,
                    "subresource": subresource, "name": name, "verb": verb,
                },
            },
        }))
        .unwrap();
        eventually(
            &format!("{user} may {verb} {resource} in {namespace}"),
            SETTLE,
            || async {
                let answer = Api::<SubjectAccessReview>::all(client.clone())
                    .create(&PostParams::default(), &review)
                    .await
                    .ok()?;
                answer.status?.allowed.then_some(())
            },
        )
        .await;
    }
}

/// `sluice operator` run the way the chart's Deployment runs it (its
/// arguments and environment), as a local process whose only credential is
/// `token`. Only the admin address moves, to a free loopback port.
struct ChartOperator {
    /// Killed on drop.
    _daemon: Daemon,
    identity: String,
    admin_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ChartOperator {
    fn start(deployment: &Value, token: &str) -> Self {
        let kube = kube();
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("kubeconfig");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {
                "server": kube.server(),
                "certificate-authority": kube.ca_cert(),
            }}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator"}}],
            "current-context": "test",
        });
        std::fs::write(&kubeconfig, serde_yaml::to_string(&config).unwrap()).unwrap();

        let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let identity = format!("sluice-7d9f-{}", STARTED.fetch_add(1, Ordering::Relaxed));
        let admin_port = free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.env_clear().env("KUBECONFIG", &kubeconfig);
        let key = dir.path().join("token-key");
        std::fs::write(&key, TOKEN_KEY).unwrap();
        for arg in args(deployment) {
            if arg.starts_with("--admin-address=") {
                command.arg(format!("--admin-address=127.0.0.1:{admin_port}"));
            } else if arg.starts_with("--token-key-file=") {
                // The chart's key Secret, mounted there in a pod.
                command.arg(format!("--token-key-file={}", key.display()));
            } else {
                command.arg(arg);
            }
        }
        for var in container(deployment)["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            let value = match (&var["value"], &var["valueFrom"]["fieldRef"]["fieldPath"]) {
                (Value::String(value), _) => value.clone(),
                (_, Value::String(field)) if field == "metadata.name" => identity.clone(),
                (_, Value::String(field)) if field == "metadata.namespace" => namespace.into(),
                _ => panic!("no stand-in for the environment variable {var}"),
            };
            command.env(name, value);
        }
        let log = dir.path().join("operator.log");
        let daemon = Daemon::spawn("sluice operator", command, &log).unwrap();
        Self {
            _daemon: daemon,
            identity,
            admin_port,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChartOperator {
    /// A failing test shows what the operator said.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!(
                "--- the operator {}'s last log lines:\n{tail}",
                self.identity
            );
        }
    }
}

/// Everything the operator makes of `orders` and a second source `legacy`,
/// and that it says so, with the given `identity` holding the Lease in
/// `lease_namespace`.
async fn everything_done(
    client: &Client,
    namespace: &str,
    operator: &ChartOperator,
    lease_namespace: &str,
) -> Option<()> {
    for source in ["orders", "legacy"] {
        for name in [format!("{source}-coordinator"), format!("{source}-worker")] {
            get::<Deployment>(client, namespace, &name).await?;
            get::<ServiceAccount>(client, namespace, &name).await?;
        }
        let coordinator = format!("{source}-coordinator");
        get::<Service>(client, namespace, &coordinator).await?;
        get::<Role>(client, namespace, &coordinator).await?;
        get::<RoleBinding>(client, namespace, &coordinator).await?;
        get::<ConfigMap>(client, namespace, &format!("{source}-config")).await?;
        let secret = get::<Secret>(client, namespace, &format!("{source}-token")).await?;
        (secret.data?.get("token")?.0.len() == 64).then_some(())?;
        let applied = get::<IngestSource>(client, namespace, source).await?;
        let status = applied.status?;
        (status.observed_generation == applied.metadata.generation).then_some(())?;
    }
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&Default::default())
        .await
        .ok()?;
    // The same "Created" twice (the ConfigMap made again twice) is one event
    // whose series the operator patches.
    events.items.iter().find(|event| {
        event.reason.as_deref() == Some("Created")
            && event
                .series
                .as_ref()
                .is_some_and(|series| series.count >= 2)
    })?;
    let lease = get::<Lease>(client, lease_namespace, "sluice-operator").await?;
    (lease.spec?.holder_identity.as_deref() == Some(operator.identity.as_str())).then_some(())?;
    (http_get(operator.admin_port, "/readyz")?.0 == 200).then_some(())
}

/// Applies `orders` and `legacy` and the credentials they name.
async fn apply_sources(client: &Client, namespace: &str) {
    create_credentials(client, namespace).await;
    apply(client, namespace, &orders("orders")).await;
    apply(client, namespace, &orders("legacy")).await;
}

/// What a person does by hand to the operator's children while it works,
/// and how far they got.
#[derive(Default)]
struct Meddling {
    configs_deleted: AtomicU32,
}

impl Meddling {
    /// Deletes `orders-config` each time it exists, twice, so that the
    /// operator creates it again twice and repeats the same "Created" event
    /// (the first creation's event names every child). Returns once done.
    async fn step(&self, client: &Client, namespace: &str) -> Option<()> {
        let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
        if self.configs_deleted.load(Ordering::Relaxed) < 2
            && config_maps
                .get_opt("orders-config")
                .await
                .ok()
                .flatten()
                .is_some()
            && config_maps
                .delete("orders-config", &DeleteParams::default())
                .await
                .is_ok()
        {
            self.configs_deleted.fetch_add(1, Ordering::Relaxed);
        }
        (self.configs_deleted.load(Ordering::Relaxed) == 2).then_some(())
    }
}

#[tokio::test]
async fn the_operator_does_everything_with_the_token_of_the_charts_service_account() {
    let _alone = CLUSTER_WIDE.write().await;
    let release = release();
    let kube = kube();
    let client = kube.client().await;
    let namespace = kube.namespace("shop").unwrap();
    apply_sources(&client, &namespace).await;

    let deployment = serde_json::to_value(
        Api::<Deployment>::namespaced(client.clone(), &release.namespace)
            .get(RELEASE)
            .await
            .unwrap(),
    )
    .unwrap();
    let token = token(&client, &release.namespace, "sluice").await;
    let operator = ChartOperator::start(&deployment, &token);
    let meddling = Meddling::default();
    eventually(
        "every child, the status, a repeated event, the Lease and /readyz",
        SETTLE,
        || async {
            meddling.step(&client, &namespace).await?;
            everything_done(&client, &namespace, &operator, &release.namespace).await
        },
    )
    .await;
    let workers = get::<Deployment>(&client, &namespace, "orders-worker")
        .await
        .unwrap();
    let pod = workers.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/sluice:1.2.3"),
        "the operator passes the chart's image on"
    );
    let log = operator.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
}

#[tokio::test]
async fn watch_namespaces_mode_serves_only_the_listed_namespaces() {
    let _shared = CLUSTER_WIDE.read().await;
    release(); // the CRD
    let kube = kube();
    let client = kube.client().await;
    let (own, team_a, team_b, other) = (
        kube.namespace("teams-system").unwrap(),
        kube.namespace("team-a").unwrap(),
        kube.namespace("team-b").unwrap(),
        kube.namespace("not-watched").unwrap(),
    );
    succeed(helm(&[
        "install",
        RELEASE,
        chart().to_str().unwrap(),
        "--kubeconfig",
        kube.kubeconfig().to_str().unwrap(),
        "--namespace",
        &own,
        "--skip-crds",
        "--set",
        "rbac.scope=namespaces",
        "--set",
        &format!("watchNamespaces={{{team_a},{team_b}}}"),
    ]));
    for namespace in [&team_a, &team_b, &other] {
        create_credentials(&client, namespace).await;
        apply(&client, namespace, &orders("orders")).await;
    }
    let deployment = serde_json::to_value(
        Api::<Deployment>::namespaced(client.clone(), &own)
            .get(RELEASE)
            .await
            .unwrap(),
    )
    .unwrap();
    wait_authorized(
        &client,
        &own,
        &[
            (&team_a, "sluice.dev", "ingestsources", "", "list"),
            (&team_b, "sluice.dev", "ingestsources", "", "list"),
            (&own, "coordination.k8s.io", "leases", "", "create"),
        ],
    )
    .await;
    let token = token(&client, &own, "sluice").await;
    let operator = ChartOperator::start(&deployment, &token);
    for namespace in [&team_a, &team_b] {
        eventually(
            &format!("the status of {namespace}/orders"),
            SETTLE,
            || async {
                get::<Deployment>(&client, namespace, "orders-worker").await?;
                get::<IngestSource>(&client, namespace, "orders")
                    .await?
                    .status
            },
        )
        .await;
    }
    eventually("/readyz", SETTLE, || async {
        (http_get(operator.admin_port, "/readyz")?.0 == 200).then_some(())
    })
    .await;
    reads_no_secret(
        &format!("system:serviceaccount:{own}:sluice"),
        &[&own, &team_a, &other],
    );
    // Ready means every watch listed: had it watched beyond its namespaces,
    // the API server would have refused it (it holds Roles in these two only).
    assert!(
        get::<IngestSource>(&client, &other, "orders")
            .await
            .unwrap()
            .status
            .is_none()
    );
    assert!(
        get::<Deployment>(&client, &other, "orders-worker")
            .await
            .is_none()
    );
    let log = operator.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
}

/// One verb of the chart's RBAC for the operator.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Grant {
    /// The Role that holds it (the operator's, or the leader election one).
    role: String,
    group: String,
    resource: String,
    resource_names: Option<Vec<String>>,
    verb: String,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            &self.group
        };
        write!(f, "{} {} ({group})", self.verb, self.resource)
    }
}

/// Every verb of every rule of the Roles in `objects`, one by one.
fn grants(objects: &[Value]) -> Vec<Grant> {
    let mut grants = Vec::new();
    for role in objects.iter().filter(|o| o["kind"] == "Role") {
        let role: Role = serde_json::from_value(role.clone()).unwrap();
        for rule in role.rules.clone().unwrap_or_default() {
            for group in rule.api_groups.clone().unwrap_or_default() {
                for resource in rule.resources.clone().unwrap_or_default() {
                    for verb in &rule.verbs {
                        grants.push(Grant {
                            role: role.name_any(),
                            group: group.clone(),
                            resource: resource.clone(),
                            resource_names: rule.resource_names.clone(),
                            verb: verb.clone(),
                        });
                    }
                }
            }
        }
    }
    grants
}

/// The chart's RBAC objects for a namespaced operator watching its own
/// namespace, with the Roles' rules replaced by `grants`, one rule each
/// (the same permissions as the chart's rules when nothing is left out).
fn rbac_with(objects: &[Value], grants: Option<&[Grant]>) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| o["kind"] != "Deployment")
        .map(|object| {
            let mut object = object.clone();
            if let (Some(grants), "Role") = (grants, object["kind"].as_str().unwrap()) {
                let name = object["metadata"]["name"].as_str().unwrap().to_owned();
                object["rules"] = grants
                    .iter()
                    .filter(|grant| grant.role == name)
                    .map(|grant| {
                        let mut rule = json!({
                            "apiGroups": [grant.group],
                            "resources": [grant.resource],
                            "verbs": [grant.verb],
                        });
                        if let Some(names) = &grant.resource_names {
                            rule["resourceNames"] = json!(names);
                        }
                        rule
                    })
                    .collect();
            }
            object
        })
        .collect()
}

/// A namespace served by an operator that the chart's namespaced RBAC (or
/// that less `missing`) lets do its work: its leader Lease is there too.
struct Rig {
    namespace: String,
    operator: ChartOperator,
}

const RIG_VALUES: &str =
    "leaderElection: {leaseDuration: 3s, renewInterval: 1s}\nrbac: {scope: namespaces}\n";

impl Rig {
    async fn start(prefix: &'static str, missing: Option<Grant>, restricted: bool) -> Self {
        // kubectl and helm block; other rigs start meanwhile.
        let (namespace, objects, kept) = tokio::task::spawn_blocking(move || {
            let namespace = kube().namespace(prefix).unwrap();
            if restricted {
                enforce_restricted(&namespace);
            }
            let values = format!("{RIG_VALUES}watchNamespaces: [{namespace}]\n");
            let objects = render(&namespace, &values).unwrap();
            let kept: Vec<Grant> = grants(&objects)
                .into_iter()
                .filter(|grant| Some(grant) != missing.as_ref())
                .collect();
            let rbac = match missing {
                None => rbac_with(&objects, None),
                Some(_) => rbac_with(&objects, Some(&kept)),
            };
            succeed(kubectl(
                &["apply", "--server-side", "-f", "-"],
                Some(&yaml_stream(&rbac)),
            ));
            (namespace, objects, kept)
        })
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
        let client = kube().client().await;
        // One verb of each Role that is there.
        let mut roles = BTreeSet::new();
        let checks: Vec<(&str, &str, &str, &str, &str)> = kept
            .iter()
            .filter(|grant| roles.insert(grant.role.clone()))
            .map(|grant| {
                let name = grant
                    .resource_names
                    .as_ref()
                    .and_then(|names| names.first())
                    .map_or("", String::as_str);
                (
                    namespace.as_str(),
                    grant.group.as_str(),
                    grant.resource.as_str(),
                    name,
                    grant.verb.as_str(),
                )
            })
            .collect();
        wait_authorized(&client, &namespace, &checks).await;
        apply_sources(&client, &namespace).await;
        let token = token(&client, &namespace, "sluice").await;
        let deployment = find(&objects, "Deployment", &namespace, "sluice");
        let operator = ChartOperator::start(deployment, &token);
        Self {
            namespace,
            operator,
        }
    }
}

/// Whether the operator's `log` shows the API server refusing what `grant`
/// allows: the call itself, or granting it on in the coordinator's Role
/// (which RBAC allows only to who holds it).
fn refused<'a>(log: &'a str, grant: &Grant) -> Option<&'a str> {
    let call = format!(
        "cannot {} resource \"{}\" in API group \"{}\"",
        grant.verb, grant.resource, grant.group
    );
    let escalation = format!(
        "Resources:[\"{}\"], ResourceNames:[\"orders\"], Verbs:[\"{}\"]",
        grant.resource, grant.verb
    );
    log.lines().find(|line| {
        line.contains(&call)
            || (line.contains("attempting to grant RBAC permissions not currently held")
                && line.contains(&escalation))
    })
}

/// The API server's words in a log line: from the error to its details.
fn symptom(line: &str) -> String {
    let start = line
        .find("ApiError: ")
        .map_or(0, |at| at + "ApiError: ".len());
    let message = &line[start..];
    let end = message.find(" (Status {").unwrap_or(message.len());
    let message: String = message[..end].chars().take(400).collect();
    // An escalation's message spans two lines; the rule is on the second.
    if start == 0 && line.contains("attempting to grant RBAC permissions not currently held") {
        format!("attempting to grant RBAC permissions not currently held: {message}")
    } else {
        message
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_the_chart_grants_is_needed() {
    let _shared = CLUSTER_WIDE.read().await;
    release(); // the CRD
    let client = kube().client().await;

    // With all of them, everything works.
    let rig = Rig::start("rbac-all", None, false).await;
    let meddling = Meddling::default();
    let all = eventually("everything done with the chart's rules", SETTLE, || async {
        meddling.step(&client, &rig.namespace).await?;
        everything_done(&client, &rig.namespace, &rig.operator, &rig.namespace).await
    });
    all.await;
    let log = rig.operator.log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
    drop(rig);

    // Without any one of them, the call that needs it is refused.
    let sample = render(
        "sample",
        &format!("{RIG_VALUES}watchNamespaces: [sample]\n"),
    )
    .unwrap();
    let all_grants = grants(&sample);
    assert!(all_grants.len() > 30, "{all_grants:?}");
    let outcomes: Vec<(Grant, Result<String, String>)> = futures::stream::iter(all_grants)
        .map(|grant| {
            let client = client.clone();
            async move {
                let rig = Rig::start("rbac-less", Some(grant.clone()), false).await;
                let meddling = Meddling::default();
                let deadline = tokio::time::Instant::now() + SETTLE;
                let outcome = loop {
                    let log = rig.operator.log();
                    if let Some(line) = refused(&log, &grant) {
                        break Ok(symptom(line));
                    }
                    if tokio::time::Instant::now() > deadline {
                        break Err(format!(
                            "nothing was refused in {SETTLE:?}: the chart grants more than the operator uses\n{log}"
                        ));
                    }
                    meddling.step(&client, &rig.namespace).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                };
                (grant, outcome)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut failures = Vec::new();
    for (grant, outcome) in &outcomes {
        match outcome {
            Ok(line) => eprintln!("without {grant}: {line}"),
            Err(why) => failures.push(format!("without {grant}: {why}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A Pod made from a Deployment's pod template, as the ReplicaSet
/// controller would make it.
fn pod_of(template: &Value, name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("{name}-test"), "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
    .unwrap()
}

async fn dry_run(client: &Client, namespace: &str, pod: &Pod) -> Result<(), String> {
    let params = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&params, pod)
        .await
        .map(|_| ())
        .map_err(|err| err.to_string())
}

#[tokio::test]
async fn every_pod_meets_pod_security_restricted() {
    let _shared = CLUSTER_WIDE.read().await;
    let release = release();
    let client = kube().client().await;

    // The operator's, from the Deployment helm installed into a namespace
    // that enforces "restricted".
    let operator = Api::<Deployment>::namespaced(client.clone(), &release.namespace)
        .get(RELEASE)
        .await
        .unwrap();
    let template = serde_json::to_value(&operator.spec.unwrap().template).unwrap();
    dry_run(&client, &release.namespace, &pod_of(&template, "operator"))
        .await
        .unwrap_or_else(|err| panic!("the operator's pod: {err}"));
    // `helm test`'s.
    let rendered = render(&release.namespace, "").unwrap();
    let test = find(&rendered, "Pod", &release.namespace, "sluice-test");
    dry_run(
        &client,
        &release.namespace,
        &serde_json::from_value(test.clone()).unwrap(),
    )
    .await
    .unwrap_or_else(|err| panic!("the helm test pod: {err}"));

    // The coordinator's and the workers', from the Deployments the operator
    // wrote into another such namespace.
    let rig = Rig::start("restricted", None, true).await;
    let mut templates = Vec::new();
    for name in ["orders-coordinator", "orders-worker"] {
        let deployment = eventually(name, SETTLE, || async {
            get::<Deployment>(&client, &rig.namespace, name).await
        })
        .await;
        let template = serde_json::to_value(&deployment.spec.unwrap().template).unwrap();
        dry_run(&client, &rig.namespace, &pod_of(&template, name))
            .await
            .unwrap_or_else(|err| panic!("{name}'s pod: {err}"));
        templates.push(template);
    }

    // The namespace does enforce: the worker's pod without its container
    // security context is refused.
    let mut lax = templates[1].clone();
    lax["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    let refused = dry_run(&client, &rig.namespace, &pod_of(&lax, "lax"))
        .await
        .expect_err("a pod without a security context is refused");
    assert!(
        refused.contains("violates PodSecurity \"restricted:latest\""),
        "{refused}"
    );
}
