//! The `IngestSource` custom resource (`sluice.dev/v1alpha1`).
//!
//! Doc comments here become the schema descriptions `kubectl explain` shows,
//! and the rules in [`rules`] are enforced by the API server at admission.
//! `sluice crd` prints the generated CustomResourceDefinition; `crds/` holds a
//! copy that a test keeps in sync.

mod names;
mod redrive;
mod rules;
mod status;
mod template;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sluice_core::duration::Duration;
use sluice_core::encoding::{Compression, Format};
use sluice_core::location::S3Location;

pub use names::Names;
pub use redrive::{REDRIVE_ANNOTATION, RedriveRequest, Redriven};
pub use status::{
    ActiveTask, IngestSourceStatus, MAX_ACTIVE_TASKS, MAX_RECENT_FAILURES, Phase, TaskFailure,
    WorkersStatus,
};
pub use template::{
    ComponentTemplate, ContainerTemplate, MetadataTemplate, PodTemplate, RESERVED_VOLUMES,
    ServiceAccountTemplate, TemplateSpec,
};

/// An S3 prefix to ingest into a collection, with the pool of workers that
/// does it and the archive that remembers every task.
// Printer columns repeat `type_ = ...`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sluice.dev",
    version = "v1alpha1",
    kind = "IngestSource",
    namespaced,
    status = "IngestSourceStatus",
    shortname = "isrc",
    category = "sluice",
    scale(
        spec_replicas_path = ".spec.workers.replicas",
        status_replicas_path = ".status.workers.replicas",
        label_selector_path = ".status.workers.selector"
    ),
    doc = "An IngestSource ingests the objects under an S3 prefix into a collection. \
           sluice runs a coordinator that splits the objects into small tasks and a pool \
           of workers that executes them, and archives every finished task to S3.",
    printcolumn(name = "Account", type_ = "string", json_path = ".spec.account"),
    printcolumn(name = "Collection", type_ = "string", json_path = ".spec.collection"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Workers",
        type_ = "string",
        json_path = ".status.workers.summary",
        description = "Ready and desired workers"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.tasks.pending"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.tasks.running"
    ),
    printcolumn(
        name = "Done",
        type_ = "integer",
        json_path = ".status.tasks.succeeded"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.tasks.failed"),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lagSeconds",
        description = "Age in seconds of the oldest object not yet ingested",
        priority = 1
    ),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.bytesIngested",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct IngestSourceSpec {
    /// The account (tenant) the ingested data belongs to. A lowercase DNS
    /// label; it labels every pod and task, so `kubectl sluice tasks
    /// --account` can find them. Immutable.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rules::dns_label("spec.account"))]
    #[x_kube(validation = rules::immutable("spec.account"))]
    pub account: String,

    /// The collection the objects are ingested into. A lowercase DNS label.
    /// Immutable: to ingest into another collection, create another
    /// IngestSource.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = rules::dns_label("spec.collection"))]
    #[x_kube(validation = rules::immutable("spec.collection"))]
    pub collection: String,

    /// Where the objects to ingest are, and how to read them.
    pub source: SourceSpec,

    /// Where the ingested records are written.
    pub sink: StoreSpec,

    /// Where the coordinator keeps its checkpoint and the record of every
    /// finished task, which `kubectl sluice history` reads. Its bucket and
    /// prefix are immutable (the checkpoint lives there); a bucket lifecycle
    /// rule there must spare `checkpoints/`.
    #[x_kube(validation = rules::archive_stays())]
    pub archive: StoreSpec,

    /// The coordinator, which lists the source and leases its tasks.
    #[serde(default)]
    pub coordinator: CoordinatorSpec,

    /// The pool of workers that executes tasks.
    #[serde(default)]
    pub workers: WorkersSpec,

    /// Additions to the coordinator's and the workers' pods and
    /// ServiceAccounts: placement, image pull secrets, identity
    /// annotations, environment, extra volumes. Their security settings
    /// (non-root, read-only root, no capabilities, seccomp) are not part of
    /// it and stay as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateSpec>,

    /// How objects are packed into tasks and how tasks are leased.
    #[serde(default)]
    pub tasks: TasksSpec,

    /// Stops the coordinator and the workers (both scale to zero) without
    /// losing progress; setting it back to false resumes from the checkpoint.
    #[serde(default)]
    pub suspend: bool,
}

/// The objects to ingest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceSpec {
    /// The S3 bucket and prefix to list.
    pub s3: S3Spec,

    /// How the objects are encoded: ndjson (one JSON document per line), json
    /// (an array or a single document), csv (with a header row), or auto (by
    /// file extension: .ndjson/.jsonl, .json, .csv, before any .gz or .zst).
    #[serde(default)]
    pub format: Format,

    /// How the objects are compressed: none, gzip, zstd, or auto (by file
    /// extension, then by magic bytes).
    #[serde(default)]
    pub compression: Compression,

    /// How often to list the source again for new or changed objects, as a
    /// duration such as 30s or 5m (at least 1s). Unset: ingest what is there,
    /// then stay idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::duration("spec.source.pollInterval"))]
    #[x_kube(validation = rules::duration_at_least("spec.source.pollInterval", "1s"))]
    pub poll_interval: Option<Duration>,
}

/// An S3 location for output: the sink or the archive.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreSpec {
    /// The S3 bucket and prefix to write under.
    pub s3: S3Spec,
}

/// A bucket and prefix in S3 or an S3-compatible store, and how to reach it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::credentials_chosen())]
pub struct S3Spec {
    /// The bucket name: 3 to 63 characters of a-z, 0-9, '.' and '-',
    /// starting and ending with a letter or digit.
    #[x_kube(validation = rules::bucket())]
    pub bucket: String,

    /// The key prefix, for example `events/2026/`. Empty means the whole
    /// bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub prefix: Option<String>,

    /// The region, for example `eu-west-1`. Unset: the SDK's default chain
    /// (AWS_REGION, then us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,

    /// The endpoint URL of an S3-compatible store, for example
    /// `http://minio.storage:9000`. Unset: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::endpoint())]
    pub endpoint: Option<String>,

    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`;
    /// most S3-compatible stores (MinIO among them) need this.
    #[serde(default)]
    pub force_path_style: bool,

    /// A Secret in the IngestSource's namespace with the keys
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and optionally
    /// `AWS_SESSION_TOKEN`); the pods use exactly these. Set this or
    /// ambientCredentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,

    /// true: use the pods' own identity instead of a Secret (IRSA, EKS Pod
    /// Identity, or whatever the node offers, its instance metadata service
    /// included). Set this or credentialsSecretRef: no source uses the
    /// node's identity by leaving both out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ambient_credentials: bool,
}

impl S3Spec {
    /// Where the store is, without which Secret holds its credentials.
    pub fn location(&self) -> S3Location {
        S3Location {
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            region: self.region.clone(),
            endpoint: self.endpoint.clone(),
            force_path_style: self.force_path_style,
        }
    }
}

/// A reference to a Secret in the same namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The coordinator.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSpec {
    /// CPU and memory requests and limits of the coordinator container.
    /// Unset: the operator's --coordinator-resources (by default 100m CPU
    /// and 256Mi requested, 1Gi memory limit: enough for about 10 million
    /// finished keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The pool of workers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// How many worker pods run, from 0 to 1000. The scale subresource
    /// sets it too (`kubectl scale isrc NAME --replicas=N`, a
    /// HorizontalPodAutoscaler, KEDA). Ignored while autoscale is set.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Let the operator size the pool from the coordinator's backlog: it
    /// runs ceil((pending + running tasks) / tasksPerWorker) workers, at
    /// least minReplicas and at most maxReplicas, and minReplicas when there
    /// is no work (and until the coordinator first counts its tasks). It
    /// grows at once and shrinks only after the backlog has stayed lower for
    /// the operator's --scale-down-stabilization (5m by default), with a
    /// Scaled event that names the backlog. While this is set, replicas (and
    /// so `kubectl scale` and the scale subresource) is ignored;
    /// status.workers.desired shows the chosen number. Unset: replicas
    /// workers run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,

    /// CPU and memory requests and limits of each worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for WorkersSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            autoscale: None,
            resources: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// Bounds and target of an autoscaled worker pool (see
/// spec.workers.autoscale).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::min_at_most_max("spec.workers.autoscale"))]
pub struct AutoscaleSpec {
    /// The fewest workers, from 0 to 1000: how many run when there is no
    /// work (0 stops them all until tasks are pending again).
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_replicas: i32,

    /// The most workers, from 1 to 1000.
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,

    /// Tasks (pending or running) one worker is sized for, from 1 to 10000;
    /// a worker runs 4 tasks at once.
    #[serde(default = "default_tasks_per_worker")]
    #[schemars(range(min = 1, max = 10000))]
    pub tasks_per_worker: u32,
}

fn default_tasks_per_worker() -> u32 {
    4
}

/// How objects are packed into tasks and how tasks are leased to workers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TasksSpec {
    /// The most objects in one task, from 1 to 10000.
    #[serde(default = "default_max_objects")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_objects: u32,

    /// The most bytes in one task, as a quantity such as 64Mi. An object
    /// larger than this is a task of its own.
    #[serde(default = "default_max_bytes")]
    #[x_kube(validation = rules::positive_quantity("spec.tasks.maxBytes"))]
    pub max_bytes: Quantity,

    /// How long a worker holds a task without a heartbeat before the task is
    /// leased to another worker, as a duration of at least 5s.
    #[serde(default = "default_lease_duration")]
    #[x_kube(validation = rules::duration("spec.tasks.leaseDuration"))]
    #[x_kube(validation = rules::duration_at_least("spec.tasks.leaseDuration", "5s"))]
    pub lease_duration: Duration,

    /// How many times a task is tried before it is failed for good (dead
    /// letter), from 1 to 100.
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1, max = 100))]
    pub max_attempts: u32,
}

impl Default for TasksSpec {
    fn default() -> Self {
        Self {
            max_objects: default_max_objects(),
            max_bytes: default_max_bytes(),
            lease_duration: default_lease_duration(),
            max_attempts: default_max_attempts(),
        }
    }
}

fn default_max_objects() -> u32 {
    100
}

fn default_max_bytes() -> Quantity {
    Quantity("64Mi".into())
}

fn default_lease_duration() -> Duration {
    Duration::from_secs(60)
}

fn default_max_attempts() -> u32 {
    3
}

/// The CustomResourceDefinition, as installed by `crds/` and the chart.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(IngestSource::crd())
        .expect("a CustomResourceDefinition always serializes");
    tidy_schema(&mut value);
    let spec = &mut value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for component in ["coordinator", "workers"] {
        let template = &mut spec["properties"]["template"]["properties"][component]["properties"];
        for part in ["pod", "container"] {
            if let Some(fields) = template[part]["properties"].as_object_mut() {
                // pod.metadata is sluice's own type.
                let kubernetes_types = fields.iter_mut().filter(|(name, _)| *name != "metadata");
                for (name, field) in kubernetes_types {
                    // Volume names are DNS labels; saying so bounds the
                    // cost of the rule that matches mounts to volumes.
                    if matches!(name.as_str(), "volumes" | "volumeMounts") {
                        field["items"]["properties"]["name"]["maxLength"] = 63.into();
                    }
                    let own = field.get("description").cloned();
                    without_descriptions(field);
                    if let Some(own) = own {
                        field["description"] = own;
                    }
                }
            }
        }
    }
    // A rule on metadata belongs on the root schema, which the derive does
    // not let us annotate.
    value["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"] =
        serde_json::json!([rules::source_name()]);
    serde_json::from_value(value).expect("tidying keeps a CustomResourceDefinition valid")
}

/// The CustomResourceDefinition as YAML, exactly what `crds/` holds.
pub fn crd_yaml() -> String {
    let yaml = serde_yaml::to_string(&crd()).expect("a CustomResourceDefinition always serializes");
    format!("# Generated by `sluice crd` (make crds). Do not edit.\n---\n{yaml}")
}

/// Removes the descriptions of every schema in `schema`, its own
/// included. The template's fields are Kubernetes' own types (affinity,
/// volumes, ...): with every description they repeat, the CRD grows tenfold,
/// past what a client-side `kubectl apply` can store, and `kubectl explain
/// pod.spec` describes them anyway.
fn without_descriptions(schema: &mut serde_json::Value) {
    use serde_json::Value;
    match schema {
        Value::Object(map) => {
            map.remove("description");
            for (key, value) in map.iter_mut() {
                match (key.as_str(), value) {
                    // Field names, one of which may be `description`.
                    ("properties", Value::Object(fields)) => {
                        fields.values_mut().for_each(without_descriptions)
                    }
                    (_, value) => without_descriptions(value),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(without_descriptions),
        _ => {}
    }
}

/// Three fixes to the derived schema, applied everywhere in it:
/// - doc comments are wrapped at 80 columns, but `kubectl explain` wraps
///   descriptions itself, so single line breaks become spaces (paragraph
///   breaks stay);
/// - a field with a default is never null: without `nullable`, the API
///   server prunes an explicit null and applies the default, instead of
///   storing a null the operator would have to reject;
/// - unsigned integers are given the signed format of their width
///   (`minimum: 0` keeps them unsigned): the API server knows no
///   `uint64`/`uint32` and warns about them on every apply.
fn tidy_schema(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            if let Some(Value::String(description)) = map.get_mut("description") {
                *description = unwrap_lines(description);
            }
            if map.contains_key("default") {
                map.remove("nullable");
            }
            if let Some(Value::String(format)) = map.get_mut("format") {
                match format.as_str() {
                    "uint64" | "uint" => *format = "int64".into(),
                    "uint32" | "uint16" | "uint8" => *format = "int32".into(),
                    _ => {}
                }
            }
            map.values_mut().for_each(tidy_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy_schema),
        _ => {}
    }
}

fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_in_the_schema_is_one_kubernetes_knows() {
        fn formats(value: &serde_json::Value, out: &mut Vec<String>) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(format)) = map.get("format") {
                        out.push(format.clone());
                    }
                    map.values().for_each(|v| formats(v, out));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| formats(v, out)),
                _ => {}
            }
        }
        let crd = serde_json::to_value(crd()).unwrap();
        let mut found = Vec::new();
        formats(&crd["spec"]["versions"][0]["schema"], &mut found);
        let known = [
            "int32",
            "int64",
            "float",
            "double",
            "byte",
            "date",
            "date-time",
        ];
        assert!(found.iter().any(|f| f == "int64"), "{found:?}");
        for format in found {
            assert!(
                known.contains(&format.as_str()),
                "unknown format {format:?}"
            );
        }
    }

    #[test]
    fn unwraps_single_line_breaks_and_keeps_paragraphs() {
        assert_eq!(
            unwrap_lines("one\ntwo\n\nthree\nfour"),
            "one two\n\nthree four"
        );
        assert_eq!(unwrap_lines("single"), "single");
    }

    /// Every field of the spec and status with its description, by path.
    fn descriptions() -> Vec<(String, Option<String>)> {
        fn walk(path: &str, schema: &serde_json::Value, out: &mut Vec<(String, Option<String>)>) {
            let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) else {
                return;
            };
            for (name, field) in properties {
                let path = format!("{path}.{name}");
                let description = field.get("description").and_then(|d| d.as_str());
                out.push((path.clone(), description.map(str::to_owned)));
                // Kubernetes' own types in the template, described by
                // `kubectl explain pod.spec` (see `without_descriptions`).
                let depth = path.matches('.').count();
                if path.starts_with("spec.template.") && depth == 4 && name != "metadata" {
                    continue;
                }
                walk(&path, field, out);
                if let Some(items) = field.get("items") {
                    walk(&path, items, out);
                }
            }
        }
        let schema = serde_json::to_value(&crd().spec.versions[0].schema).unwrap();
        let root = &schema["openAPIV3Schema"]["properties"];
        let mut out = Vec::new();
        walk("spec", &root["spec"], &mut out);
        walk("status", &root["status"], &mut out);
        out
    }

    #[test]
    fn every_spec_and_status_field_has_a_description() {
        let missing: Vec<_> = descriptions()
            .into_iter()
            .filter_map(|(path, description)| description.is_none().then_some(path))
            .collect();
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }

    #[test]
    fn descriptions_have_no_hard_wraps() {
        for (path, description) in descriptions() {
            let description = description.unwrap_or_default();
            assert!(
                !description.replace("\n\n", "").contains('\n'),
                "{path} has a hard-wrapped description: {description:?}"
            );
        }
    }

    #[test]
    fn defaulted_fields_are_not_nullable() {
        let schema = serde_json::to_value(&crd().spec.versions[0].schema).unwrap();
        let max_bytes = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["tasks"]["properties"]
            ["maxBytes"];
        assert_eq!(max_bytes["default"], "64Mi");
        assert!(max_bytes.get("nullable").is_none(), "{max_bytes}");
    }
}
