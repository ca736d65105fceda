//! `spec.template`: what a platform adds to the coordinator's and the
//! workers' pods (placement, pull secrets, identity, proxies, a CA bundle),
//! in the shape of Strimzi's `template`. The operator merges it into the
//! pods it builds; it cannot loosen their security settings, which are not
//! part of it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint, Volume,
    VolumeMount,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::rules;

/// The volumes every sluice pod mounts, by name and path; a template may
/// use neither the names nor the paths (or paths under them).
pub const RESERVED_VOLUMES: [(&str, &str); 3] = [
    ("config", "/etc/sluice"),
    ("token", "/var/run/secrets/sluice"),
    ("tmp", "/tmp"),
];
/// Environment variables the operator sets and a template may not: the
/// pod's own name and namespace, and every `SLUICE_` variable.
pub const RESERVED_ENV: [&str; 2] = ["POD_NAME", "POD_NAMESPACE"];
pub const RESERVED_ENV_PREFIX: &str = "SLUICE_";

/// Additions to the coordinator's and the workers' pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// Additions to the coordinator's pod and ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<ComponentTemplate>,

    /// Additions to every worker's pod and to the workers' ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<ComponentTemplate>,
}

/// Additions to one component's pods, container and ServiceAccount.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::mounts_name_volumes())]
pub struct ComponentTemplate {
    /// The pod: its labels and annotations, where it runs, what it pulls
    /// with, and extra volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodTemplate>,

    /// The sluice container: extra environment variables and mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerTemplate>,

    /// The component's ServiceAccount: its labels and annotations, such as
    /// `eks.amazonaws.com/role-arn` for IRSA or
    /// `iam.gke.io/gcp-service-account` for GKE workload identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountTemplate>,
}

/// Labels and annotations added to an object. sluice's own labels (which
/// select the pods) and annotations win over these.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct MetadataTemplate {
    /// Labels added to the object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the object.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Pod settings; each is the field of the same name in a Pod's spec.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels and annotations added to the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataTemplate>,

    /// Secrets in the IngestSource's namespace to pull the sluice image
    /// with, from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Only nodes with all these labels run the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity and anti-affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the pods spread across zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// The PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,

    /// Extra volumes for container.volumeMounts to mount, such as a
    /// ConfigMap with a CA bundle. The names config, token and tmp are
    /// sluice's own; hostPath volumes are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::volumes_allowed())]
    pub volumes: Vec<Volume>,
}

/// Settings of the sluice container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContainerTemplate {
    /// Extra environment variables, such as HTTPS_PROXY and NO_PROXY, or
    /// SSL_CERT_FILE naming a mounted CA bundle for a private S3 endpoint.
    /// POD_NAME, POD_NAMESPACE and SLUICE_* are sluice's own; RUST_LOG set
    /// here replaces the operator's log filter for these pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = rules::env_allowed())]
    pub env: Vec<EnvVar>,

    /// Mounts of pod.volumes into the container. /etc/sluice,
    /// /var/run/secrets/sluice and /tmp (and paths under them) are sluice's
    /// own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = rules::mounts_allowed())]
    pub volume_mounts: Vec<VolumeMount>,
}

/// Additions to a ServiceAccount.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountTemplate {
    /// Labels and annotations added to the ServiceAccount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<MetadataTemplate>,
}
