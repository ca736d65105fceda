//! The objects an IngestSource is made of, built as pure functions of the
//! IngestSource and the rendered runtime configuration (no client here).
//!
//! For a source named `orders`:
//! - `orders-coordinator`: ServiceAccount, Role, RoleBinding, Service and a
//!   one-replica `Recreate` Deployment running `sluice coordinator`;
//! - `orders-worker`: ServiceAccount (no API access, no token mounted) and a
//!   Deployment of `spec.workers.replicas` pods running `sluice worker`;
//! - `orders-config`: the ConfigMap with the runtime configuration;
//! - `orders-token`: the Secret with the token workers present to the
//!   coordinator (built by [`token_secret`], the token derived by [`token`]).

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};
use sluice_core::hex::hex;

use crate::config::{self, CREDENTIAL_KEYS, RuntimeConfig, Store};
use crate::crd::{ComponentTemplate, IngestSource, MetadataTemplate, Names, RESERVED_VOLUMES};
use crate::telemetry::LogFormat;

/// The HTTP port of the coordinator (task API, health, metrics) and of the
/// workers (health, metrics).
pub const HTTP_PORT: i32 = 8080;
/// The key of the workers' token in the token Secret.
pub const TOKEN_KEY: &str = "token";
/// The key of the read token in the token Secret: what `kubectl sluice
/// tasks` presents ([`sluice_core::api::read_token`]).
pub const READ_TOKEN_KEY: &str = "read-token";
/// The pods' own volumes, by name and where they are mounted: the
/// configuration, the token and the scratch space.
const CONFIG: (&str, &str) = RESERVED_VOLUMES[0];
const TOKEN: (&str, &str) = RESERVED_VOLUMES[1];
const TMP: (&str, &str) = RESERVED_VOLUMES[2];
const CONFIG_DIR: &str = CONFIG.1;
const TOKEN_DIR: &str = TOKEN.1;
/// The pod annotation whose change restarts pods when what they read at
/// start (configuration or token) changes.
pub const CHECKSUM_ANNOTATION: &str = "sluice.dev/config-checksum";
/// The label every child carries, which the operator's watches select on.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "sluice-operator");
/// The label that names a child's (and a pod's) IngestSource.
pub const SOURCE_LABEL: &str = "sluice.dev/source";
/// An unprivileged uid/gid, the one distroless images use for `nonroot`.
const NON_ROOT_ID: i64 = 65532;
/// The token file: readable by the pod's user and group, nobody else.
const TOKEN_MODE: i32 = 0o440;

/// What the operator's own flags add to every pod.
#[derive(Clone, Debug)]
pub struct PodDefaults {
    /// The `sluice` image the coordinator and the workers run.
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The coordinator's requests and limits: it holds every finished key,
    /// so it must not be BestEffort, the first pod evicted.
    pub coordinator_resources: ResourceRequirements,
    /// How the pods log: the operator's own `--log-format` and `RUST_LOG`.
    pub log_format: LogFormat,
    pub log_filter: Option<String>,
    /// The size limit of the coordinator's `/tmp` emptyDir, where it spills
    /// merges of finished keys.
    pub coordinator_scratch: Quantity,
}

impl PodDefaults {
    /// Pods of `image`, with the coordinator's default resources and
    /// scratch space.
    pub fn of_image(image: String, image_pull_policy: Option<String>) -> Self {
        PodDefaults {
            image,
            image_pull_policy,
            coordinator_resources: serde_json::from_str(DEFAULT_COORDINATOR_RESOURCES)
                .expect("the default resources parse"),
            coordinator_scratch: Quantity(DEFAULT_COORDINATOR_SCRATCH.into()),
            log_format: LogFormat::default(),
            log_filter: None,
        }
    }
}

/// The coordinator's resources when the operator is not told otherwise:
/// about its memory for 10 million finished keys (240 MB resident), with
/// room to merge them.
pub const DEFAULT_COORDINATOR_RESOURCES: &str =
    r#"{"requests":{"cpu":"100m","memory":"256Mi"},"limits":{"memory":"1Gi"}}"#;
/// The size limit of the coordinator's `/tmp` when the operator is not told
/// otherwise: a merge of 10 million finished keys spills 143 MB.
pub const DEFAULT_COORDINATOR_SCRATCH: &str = "1Gi";

/// Every child except the token Secret, in the order they are applied.
#[derive(Clone, Debug)]
pub struct Children {
    pub coordinator_account: ServiceAccount,
    pub worker_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub config: ConfigMap,
    pub service: Service,
    pub coordinator: Deployment,
    pub workers: Deployment,
}

/// The desired children of `source`. `token` is the value in the token
/// Secret; a change of it, as of the configuration, restarts the pods.
/// `workers` is the size of the pool: spec.workers.replicas, or what
/// autoscale chose (suspension still scales it to zero).
pub fn build(
    source: &IngestSource,
    config: &RuntimeConfig,
    token: &str,
    defaults: &PodDefaults,
    workers: i32,
) -> Children {
    let names = Names::of(source);
    let config_json = serde_json::to_string_pretty(config).expect("a RuntimeConfig serializes");
    let checksum = digest(&[config_json.as_bytes(), token.as_bytes()]);
    let replicas = |wanted: i32| if source.spec.suspend { 0 } else { wanted };
    let template = source.spec.template.as_ref();
    let coordinator_pod = PodParts {
        component: Component::Coordinator,
        service_account: &names.coordinator,
        args: vec![
            "coordinator".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{}", config::FILE_NAME),
            "--token-file".into(),
            format!("{TOKEN_DIR}/{TOKEN_KEY}"),
        ],
        stores: &[Store::Source, Store::Archive],
        resources: Some(
            source
                .spec
                .coordinator
                .resources
                .clone()
                .unwrap_or_else(|| defaults.coordinator_resources.clone()),
        ),
        scratch: Some(defaults.coordinator_scratch.clone()),
        template: template.and_then(|t| t.coordinator.as_ref()),
    };
    let worker_pod = PodParts {
        component: Component::Worker,
        service_account: &names.worker,
        args: vec![
            "worker".into(),
            "--config".into(),
            format!("{CONFIG_DIR}/{}", config::FILE_NAME),
            "--coordinator".into(),
            format!("http://{}:{HTTP_PORT}", names.coordinator),
            "--token-file".into(),
            format!("{TOKEN_DIR}/{TOKEN_KEY}"),
        ],
        stores: &[Store::Source, Store::Sink],
        resources: source.spec.workers.resources.clone(),
        scratch: None,
        template: template.and_then(|t| t.workers.as_ref()),
    };

    Children {
        coordinator_account: ServiceAccount {
            metadata: service_account_meta(source, &coordinator_pod),
            ..ServiceAccount::default()
        },
        worker_account: ServiceAccount {
            metadata: service_account_meta(source, &worker_pod),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        role: Role {
            metadata: meta(source, &names.coordinator, Some(Component::Coordinator)),
            rules: Some(vec![
                PolicyRule {
                    api_groups: Some(vec![IngestSource::group(&()).into_owned()]),
                    resources: Some(vec![IngestSource::plural(&()).into_owned()]),
                    resource_names: Some(vec![source.name_any()]),
                    verbs: vec!["get".into()],
                    ..PolicyRule::default()
                },
                PolicyRule {
                    api_groups: Some(vec![IngestSource::group(&()).into_owned()]),
                    resources: Some(vec![format!("{}/status", IngestSource::plural(&()))]),
                    resource_names: Some(vec![source.name_any()]),
                    verbs: vec!["get".into(), "patch".into()],
                    ..PolicyRule::default()
                },
            ]),
        },
        role_binding: RoleBinding {
            metadata: meta(source, &names.coordinator, Some(Component::Coordinator)),
            role_ref: RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: names.coordinator.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: names.coordinator.clone(),
                namespace: source.namespace(),
                ..Subject::default()
            }]),
        },
        config: ConfigMap {
            metadata: meta(source, &names.config, None),
            data: Some(BTreeMap::from([(
                config::FILE_NAME.to_owned(),
                config_json,
            )])),
            ..ConfigMap::default()
        },
        service: Service {
            metadata: meta(source, &names.coordinator, Some(Component::Coordinator)),
            spec: Some(ServiceSpec {
                selector: Some(selector_labels(source, Component::Coordinator)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: HTTP_PORT,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        coordinator: deployment(
            source,
            &names.coordinator,
            replicas(1),
            // Two coordinators of one source must never run side by side.
            Some(DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..DeploymentStrategy::default()
            }),
            pod(source, &names, &coordinator_pod, &checksum, defaults),
            Component::Coordinator,
        ),
        workers: deployment(
            source,
            &names.worker,
            replicas(workers),
            None,
            pod(source, &names, &worker_pod, &checksum, defaults),
            Component::Worker,
        ),
    }
}

/// The token Secret, holding `token` and its read token.
pub fn token_secret(source: &IngestSource, token: &str) -> Secret {
    Secret {
        metadata: meta(source, &Names::of(source).token, None),
        data: Some(token_data(token)),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// The data of the token Secret: the workers' token and the read token.
pub fn token_data(token: &str) -> BTreeMap<String, ByteString> {
    BTreeMap::from([
        (TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec())),
        (
            READ_TOKEN_KEY.to_owned(),
            ByteString(sluice_core::api::read_token(token).into_bytes()),
        ),
    ])
}

/// The operator's secret key for the coordinators' tokens (`--token-key-file`).
#[derive(Clone)]
pub struct TokenKey(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// The token of `source`'s coordinator API: an HMAC-SHA256 of the
/// IngestSource's uid under the operator's token key, hex-encoded. The
/// operator derives it whenever it needs it, so it never reads a Secret
/// back; an IngestSource made again under the same name gets a new one,
/// and a new key gives every source a new one.
pub fn token(key: &TokenKey, source: &IngestSource) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.0).expect("HMAC takes keys of any length");
    mac.update(source.uid().unwrap_or_default().as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// The credentials Secrets `source` names, with the location that names
/// each, deduplicated.
pub fn credential_secrets(source: &IngestSource) -> Vec<(Store, String)> {
    let mut seen = Vec::<(Store, String)>::new();
    for store in Store::ALL {
        if let Some(secret) = &store.spec(source).credentials_secret_ref
            && !seen.iter().any(|(_, name)| *name == secret.name)
        {
            seen.push((store, secret.name.clone()));
        }
    }
    seen
}

/// The two kinds of pods an IngestSource runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Coordinator,
    Worker,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Component::Coordinator => "coordinator",
            Component::Worker => "worker",
        }
    }
}

/// What differs between the coordinator's pods and the workers'.
struct PodParts<'a> {
    component: Component,
    service_account: &'a str,
    args: Vec<String>,
    /// The locations whose credentials the pods need.
    stores: &'a [Store],
    resources: Option<ResourceRequirements>,
    /// The size limit of its `/tmp` emptyDir.
    scratch: Option<Quantity>,
    /// What spec.template adds.
    template: Option<&'a ComponentTemplate>,
}

/// None for an empty list, as the API server would store it.
fn none_if_empty<T>(list: Vec<T>) -> Option<Vec<T>> {
    Some(list).filter(|list| !list.is_empty())
}

/// `extra` with `ours` over it: sluice's own labels and annotations win.
fn merged(
    ours: BTreeMap<String, String>,
    extra: Option<&MetadataTemplate>,
    field: fn(&MetadataTemplate) -> &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all = extra.map(field).cloned().unwrap_or_default();
    all.extend(ours);
    all
}

/// The metadata of a component's ServiceAccount, with what its template
/// adds.
fn service_account_meta(source: &IngestSource, parts: &PodParts) -> ObjectMeta {
    let mut metadata = meta(source, parts.service_account, Some(parts.component));
    let extra = parts
        .template
        .and_then(|t| t.service_account.as_ref())
        .and_then(|a| a.metadata.as_ref());
    if let Some(extra) = extra {
        metadata.labels = Some(merged(
            metadata.labels.unwrap_or_default(),
            Some(extra),
            |m| &m.labels,
        ));
        metadata.annotations = Some(extra.annotations.clone()).filter(|a| !a.is_empty());
    }
    metadata
}

/// The labels by which a Deployment selects its pods and a Service its
/// endpoints (immutable in a Deployment, so kept minimal).
fn selector_labels(source: &IngestSource, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice".into()),
        ("app.kubernetes.io/instance".into(), source.name_any()),
        (
            "app.kubernetes.io/component".into(),
            component.as_str().into(),
        ),
    ])
}

/// Whether a pod with `metadata` is one of `source`'s pods of `component`,
/// as its Deployment selects them.
pub fn selects(source: &IngestSource, component: Component, metadata: &ObjectMeta) -> bool {
    metadata.namespace == source.namespace()
        && metadata.labels.as_ref().is_some_and(|labels| {
            selector_labels(source, component)
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
        })
}

/// The label selector of the worker pods as a string, as the scale
/// subresource reports it (`key=value,...`).
pub fn worker_selector(source: &IngestSource) -> String {
    selector_labels(source, Component::Worker)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The labels of every child and pod.
fn labels(source: &IngestSource, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".into(), "sluice".into()),
        ("app.kubernetes.io/instance".into(), source.name_any()),
        ("app.kubernetes.io/part-of".into(), "sluice".into()),
        (MANAGED_BY.0.into(), MANAGED_BY.1.into()),
        (SOURCE_LABEL.into(), source.name_any()),
        ("sluice.dev/account".into(), source.spec.account.clone()),
        (
            "sluice.dev/collection".into(),
            source.spec.collection.clone(),
        ),
    ]);
    if let Some(component) = component {
        labels.insert(
            "app.kubernetes.io/component".into(),
            component.as_str().into(),
        );
    }
    labels
}

fn meta(source: &IngestSource, name: &str, component: Option<Component>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: source.namespace(),
        labels: Some(labels(source, component)),
        owner_references: Some(vec![owner_reference(source)]),
        ..ObjectMeta::default()
    }
}

/// Whether `object` is a child of the IngestSource named `source`: its
/// controller is that IngestSource (this one, or an earlier one of the same
/// name whose children the garbage collector has not removed yet). The
/// operator applies only over its own children, never over an object
/// someone else made under one of their names.
pub fn is_child_of(object: &ObjectMeta, source: &str) -> bool {
    object.owner_references.iter().flatten().any(|owner| {
        owner.controller == Some(true)
            && owner.kind == IngestSource::kind(&())
            && owner.api_version == IngestSource::api_version(&())
            && owner.name == source
    })
}

fn owner_reference(source: &IngestSource) -> OwnerReference {
    OwnerReference {
        api_version: IngestSource::api_version(&()).into_owned(),
        kind: IngestSource::kind(&()).into_owned(),
        name: source.name_any(),
        uid: source.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn deployment(
    source: &IngestSource,
    name: &str,
    replicas: i32,
    strategy: Option<DeploymentStrategy>,
    template: PodTemplateSpec,
    component: Component,
) -> Deployment {
    Deployment {
        metadata: meta(source, name, Some(component)),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(source, component)),
                ..LabelSelector::default()
            },
            strategy,
            template,
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn pod(
    source: &IngestSource,
    names: &Names,
    parts: &PodParts,
    checksum: &str,
    defaults: &PodDefaults,
) -> PodTemplateSpec {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    };
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let value_env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    };
    let log_format = clap::ValueEnum::to_possible_value(&defaults.log_format)
        .expect("every log format has a name");
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        value_env("SLUICE_LOG_FORMAT", log_format.get_name()),
    ];
    env.extend(
        defaults
            .log_filter
            .as_deref()
            .map(|filter| value_env("RUST_LOG", filter)),
    );
    for store in parts.stores {
        let Some(secret) = &store.spec(source).credentials_secret_ref else {
            continue;
        };
        for (key, required) in CREDENTIAL_KEYS {
            env.push(EnvVar {
                name: config::credential_env(*store, key),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.name.clone(),
                        key: key.into(),
                        optional: (!required).then_some(true),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    let pod_template = parts
        .template
        .and_then(|t| t.pod.clone())
        .unwrap_or_default();
    let container_template = parts
        .template
        .and_then(|t| t.container.clone())
        .unwrap_or_default();
    // Admission lets a template set only RUST_LOG of what sluice sets.
    env.retain(|ours| !container_template.env.iter().any(|e| e.name == ours.name));
    env.extend(container_template.env);
    let mut volume_mounts = vec![
        VolumeMount {
            name: CONFIG.0.into(),
            mount_path: CONFIG_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TOKEN.0.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: TMP.0.into(),
            mount_path: TMP.1.into(),
            ..VolumeMount::default()
        },
    ];
    volume_mounts.extend(container_template.volume_mounts);
    let mut volumes = vec![
        Volume {
            name: CONFIG.0.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TOKEN.0.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.token.clone()),
                default_mode: Some(TOKEN_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: TMP.0.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: parts.scratch.clone(),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(pod_template.volumes);
    let extra = pod_template.metadata.as_ref();

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(merged(labels(source, Some(parts.component)), extra, |m| {
                &m.labels
            })),
            annotations: Some(merged(
                BTreeMap::from([(CHECKSUM_ANNOTATION.to_owned(), checksum.to_owned())]),
                extra,
                |m| &m.annotations,
            )),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            image_pull_secrets: none_if_empty(pod_template.image_pull_secrets),
            node_selector: Some(pod_template.node_selector).filter(|s| !s.is_empty()),
            tolerations: none_if_empty(pod_template.tolerations),
            affinity: pod_template.affinity,
            topology_spread_constraints: none_if_empty(pod_template.topology_spread_constraints),
            priority_class_name: pod_template.priority_class_name,
            service_account_name: Some(parts.service_account.to_owned()),
            automount_service_account_token: Some(parts.component == Component::Coordinator),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NON_ROOT_ID),
                run_as_group: Some(NON_ROOT_ID),
                // The token file's group, so that it can be 0440.
                fs_group: Some(NON_ROOT_ID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..SeccompProfile::default()
                }),
                ..PodSecurityContext::default()
            }),
            containers: vec![Container {
                name: parts.component.as_str().into(),
                image: Some(defaults.image.clone()),
                image_pull_policy: defaults.image_pull_policy.clone(),
                args: Some(parts.args.clone()),
                env: Some(env),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: HTTP_PORT,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                }]),
                liveness_probe: Some(probe("/healthz", 10)),
                readiness_probe: Some(probe("/readyz", 5)),
                resources: parts.resources.clone(),
                security_context: Some(SecurityContext {
                    allow_privilege_escalation: Some(false),
                    read_only_root_filesystem: Some(true),
                    run_as_non_root: Some(true),
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Capabilities::default()
                    }),
                    seccomp_profile: Some(SeccompProfile {
                        type_: "RuntimeDefault".into(),
                        ..SeccompProfile::default()
                    }),
                    ..SecurityContext::default()
                }),
                volume_mounts: Some(volume_mounts),
                ..Container::default()
            }],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
    }
}

/// A short, stable digest of `parts` (length-prefixed, so no two lists of
/// parts collide by concatenation).
pub(super) fn digest(parts: &[&[u8]]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hex(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::IngestSourceSpec;

    /// The example manifests, as the API server would hand them over.
    fn example(yaml: &str) -> IngestSource {
        let mut source: IngestSource = serde_yaml::from_str(yaml).unwrap();
        source.metadata.namespace = Some("shop".into());
        source.metadata.uid = Some("0b7c1a52-0000-4000-8000-000000000001".into());
        source
    }

    fn orders() -> IngestSource {
        example(include_str!("../../examples/orders.yaml"))
    }

    fn defaults() -> PodDefaults {
        PodDefaults::of_image(
            "registry.example/sluice:1.2.3".into(),
            Some("IfNotPresent".into()),
        )
    }

    fn build_for(source: &IngestSource) -> Children {
        let config = RuntimeConfig::from_source(source).unwrap();
        build(
            source,
            &config,
            "secret-token",
            &defaults(),
            source.spec.workers.replicas,
        )
    }

    fn pod_spec(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    #[test]
    fn the_coordinator_is_not_best_effort_and_the_token_is_not_world_readable() {
        let children = build_for(&orders());
        let coordinator = pod_spec(&children.coordinator);
        let resources = coordinator.containers[0].resources.as_ref().unwrap();
        let requests = resources.requests.as_ref().unwrap();
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(requests["memory"].0, "256Mi");
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "1Gi");
        let scratch = |spec: &PodSpec| {
            let volumes = spec.volumes.as_ref().unwrap();
            let tmp = volumes.iter().find(|v| v.name == "tmp").unwrap();
            tmp.empty_dir.as_ref().unwrap().size_limit.clone()
        };
        assert_eq!(scratch(coordinator), Some(Quantity("1Gi".into())));
        for spec in [coordinator, pod_spec(&children.workers)] {
            let volumes = spec.volumes.as_ref().unwrap();
            let token = volumes.iter().find(|v| v.name == "token").unwrap();
            assert_eq!(token.secret.as_ref().unwrap().default_mode, Some(0o440));
            let security = spec.security_context.as_ref().unwrap();
            assert_eq!(security.fs_group, Some(65532));
        }
    }

    /// examples/full.yaml's template (for the workers), here for the
    /// coordinator too.
    fn templated() -> IngestSource {
        let mut source = example(include_str!("../../examples/full.yaml"));
        let template = source.spec.template.as_mut().unwrap();
        template.coordinator = template.workers.clone();
        source
    }

    fn workers_template(source: &mut IngestSource) -> &mut ComponentTemplate {
        let template = source.spec.template.as_mut().unwrap();
        template.workers.as_mut().unwrap()
    }

    #[test]
    fn the_template_reaches_the_pods_and_service_accounts() {
        let source = templated();
        let children = build_for(&source);
        for (deployment, account) in [
            (&children.coordinator, &children.coordinator_account),
            (&children.workers, &children.worker_account),
        ] {
            let spec = pod_spec(deployment);
            let pulls: Vec<_> = spec.image_pull_secrets.iter().flatten().collect();
            assert_eq!(pulls.len(), 1);
            assert_eq!(pulls[0].name, "registry-credentials");
            assert_eq!(
                spec.node_selector.as_ref().unwrap()["kubernetes.io/os"],
                "linux"
            );
            assert_eq!(
                spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
                Some("dedicated")
            );
            assert_eq!(spec.priority_class_name.as_deref(), Some("ingest"));
            let volumes: Vec<&str> = spec
                .volumes
                .iter()
                .flatten()
                .map(|v| v.name.as_str())
                .collect();
            assert_eq!(volumes, ["config", "token", "tmp", "private-ca"]);
            let container = &spec.containers[0];
            let mounts: Vec<(&str, &str)> = container
                .volume_mounts
                .iter()
                .flatten()
                .map(|m| (m.name.as_str(), m.mount_path.as_str()))
                .collect();
            assert_eq!(mounts[3], ("private-ca", "/etc/ssl/private-ca"));
            let env: Vec<&str> = container
                .env
                .iter()
                .flatten()
                .map(|e| e.name.as_str())
                .collect();
            assert!(
                env.contains(&"SSL_CERT_FILE") && env.contains(&"POD_NAME"),
                "{env:?}"
            );
            let template = deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap();
            assert_eq!(template.labels.as_ref().unwrap()["team"], "data-platform");
            let annotations = template.annotations.as_ref().unwrap();
            assert!(annotations.contains_key(CHECKSUM_ANNOTATION));
            assert_eq!(
                annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"],
                "true"
            );
            assert_eq!(
                account.metadata.annotations.as_ref().unwrap()["eks.amazonaws.com/role-arn"],
                "arn:aws:iam::123456789012:role/globex-ingest"
            );
            assert_eq!(
                account.metadata.labels.as_ref().unwrap()[MANAGED_BY.0],
                MANAGED_BY.1
            );
        }
        // The template's own coordinator resources replace the operator's.
        let coordinator = &pod_spec(&children.coordinator).containers[0];
        let resources = coordinator.resources.as_ref().unwrap();
        assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "2Gi");
    }

    #[test]
    fn the_template_cannot_loosen_security_or_move_the_pods_selector() {
        let mut source = templated();
        let workers = workers_template(&mut source);
        let metadata = workers.pod.as_mut().unwrap().metadata.as_mut().unwrap();
        metadata
            .labels
            .insert("app.kubernetes.io/component".into(), "coordinator".into());
        metadata
            .annotations
            .insert(CHECKSUM_ANNOTATION.into(), "forged".into());
        let plain = build_for(&IngestSource {
            spec: IngestSourceSpec {
                template: None,
                ..source.spec.clone()
            },
            ..source.clone()
        });
        let children = build_for(&source);
        let security = |d: &Deployment| {
            let spec = pod_spec(d);
            (
                spec.security_context.clone(),
                spec.containers[0].security_context.clone(),
                spec.automount_service_account_token,
                spec.service_account_name.clone(),
            )
        };
        assert_eq!(security(&children.workers), security(&plain.workers));
        assert_eq!(
            security(&children.coordinator),
            security(&plain.coordinator)
        );
        let template = children
            .workers
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .clone()
            .unwrap();
        assert_eq!(
            template.labels.unwrap()["app.kubernetes.io/component"],
            "worker"
        );
        assert_ne!(template.annotations.unwrap()[CHECKSUM_ANNOTATION], "forged");
    }

    #[test]
    fn a_templates_rust_log_replaces_the_operators_and_nothing_else_doubles() {
        let mut source = templated();
        let container = workers_template(&mut source).container.as_mut().unwrap();
        container.env.push(EnvVar {
            name: "RUST_LOG".into(),
            value: Some("debug".into()),
            ..EnvVar::default()
        });
        let config = RuntimeConfig::from_source(&source).unwrap();
        let told = PodDefaults {
            log_filter: Some("info".into()),
            ..defaults()
        };
        let children = build(&source, &config, "t", &told, 1);
        let env = pod_spec(&children.workers).containers[0]
            .env
            .clone()
            .unwrap();
        let rust_log: Vec<_> = env.iter().filter(|e| e.name == "RUST_LOG").collect();
        assert_eq!(rust_log.len(), 1);
        assert_eq!(rust_log[0].value.as_deref(), Some("debug"));
        let mut names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all, "{names:?}");
    }

    #[test]
    fn the_pods_log_as_the_operator_was_told_to() {
        let source = orders();
        let config = RuntimeConfig::from_source(&source).unwrap();
        let env_of = |defaults: &PodDefaults| {
            let children = build(&source, &config, "t", defaults, 2);
            [&children.coordinator, &children.workers].map(|deployment| {
                pod_spec(deployment).containers[0]
                    .env
                    .iter()
                    .flatten()
                    .filter_map(|var| Some((var.name.clone(), var.value.clone()?)))
                    .collect::<BTreeMap<_, _>>()
            })
        };
        for env in env_of(&defaults()) {
            assert_eq!(env["SLUICE_LOG_FORMAT"], "text");
            assert!(!env.contains_key("RUST_LOG"), "{env:?}");
        }
        let told = PodDefaults {
            log_format: LogFormat::Json,
            log_filter: Some("debug,kube=info".into()),
            ..defaults()
        };
        for env in env_of(&told) {
            assert_eq!(env["SLUICE_LOG_FORMAT"], "json");
            assert_eq!(env["RUST_LOG"], "debug,kube=info");
        }
    }

    #[test]
    fn only_the_sources_own_children_count_as_its_children() {
        let source = orders();
        let ours = build_for(&source).config.metadata;
        assert!(is_child_of(&ours, "orders"));
        assert!(!is_child_of(&ours, "refunds"));
        // Someone else's object of the same name: no owner, another kind of
        // owner, or an owner that is not its controller.
        let mut theirs = ours.clone();
        theirs.owner_references = None;
        assert!(!is_child_of(&theirs, "orders"));
        let mut owned_by_a_deployment = ours.clone();
        owned_by_a_deployment.owner_references.as_mut().unwrap()[0].kind = "Deployment".into();
        assert!(!is_child_of(&owned_by_a_deployment, "orders"));
        let mut not_controlled = ours.clone();
        not_controlled.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(!is_child_of(&not_controlled, "orders"));
        // A child of an earlier IngestSource of the same name (another uid)
        // is still the source's: the garbage collector has not got to it.
        let mut earlier = ours;
        earlier.owner_references.as_mut().unwrap()[0].uid = "an-earlier-uid".into();
        assert!(is_child_of(&earlier, "orders"));
    }

    #[test]
    fn every_child_is_owned_by_its_source_and_labelled() {
        let source = orders();
        let children = build_for(&source);
        let metas = [
            &children.coordinator_account.metadata,
            &children.worker_account.metadata,
            &children.role.metadata,
            &children.role_binding.metadata,
            &children.config.metadata,
            &children.service.metadata,
            &children.coordinator.metadata,
            &children.workers.metadata,
            &token_secret(&source, "t").metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(owner.kind, "IngestSource");
            assert_eq!(owner.api_version, "sluice.dev/v1alpha1");
            assert_eq!(owner.name, "orders");
            assert_eq!(owner.uid, "0b7c1a52-0000-4000-8000-000000000001");
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("shop"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/name"], "sluice");
            assert_eq!(labels["app.kubernetes.io/instance"], "orders");
            assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice-operator");
            assert_eq!(labels["sluice.dev/source"], "orders");
            assert_eq!(labels["sluice.dev/account"], "acme");
            assert_eq!(labels["sluice.dev/collection"], "orders");
        }
    }

    #[test]
    fn coordinator_is_a_single_recreated_pod_and_workers_follow_the_spec() {
        let children = build_for(&orders());
        let coordinator = children.coordinator.spec.as_ref().unwrap();
        assert_eq!(coordinator.replicas, Some(1));
        assert_eq!(
            coordinator.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        let workers = children.workers.spec.as_ref().unwrap();
        assert_eq!(workers.replicas, Some(2));
        let args = pod_spec(&children.workers).containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(args[0], "worker");
        assert!(
            args.windows(2)
                .any(|w| w == ["--coordinator", "http://orders-coordinator:8080"])
        );
        assert_eq!(
            pod_spec(&children.coordinator).containers[0]
                .args
                .as_ref()
                .unwrap()[0],
            "coordinator"
        );
    }

    #[test]
    fn suspending_scales_both_deployments_to_zero() {
        let mut source = orders();
        source.spec.suspend = true;
        let children = build_for(&source);
        assert_eq!(children.coordinator.spec.unwrap().replicas, Some(0));
        assert_eq!(children.workers.spec.unwrap().replicas, Some(0));
    }

    #[test]
    fn pods_meet_the_restricted_pod_security_standard() {
        let children = build_for(&orders());
        for deployment in [&children.coordinator, &children.workers] {
            let pod = pod_spec(deployment);
            let pod_security = pod.security_context.as_ref().unwrap();
            assert_eq!(pod_security.run_as_non_root, Some(true));
            assert_eq!(
                pod_security.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
            for container in &pod.containers {
                let security = container.security_context.as_ref().unwrap();
                assert_eq!(security.allow_privilege_escalation, Some(false));
                assert_eq!(security.read_only_root_filesystem, Some(true));
                assert_eq!(
                    security.capabilities.as_ref().unwrap().drop,
                    Some(vec!["ALL".to_owned()])
                );
                assert_eq!(
                    container.image.as_deref(),
                    Some("registry.example/sluice:1.2.3")
                );
                let liveness = container.liveness_probe.as_ref().unwrap();
                let readiness = container.readiness_probe.as_ref().unwrap();
                assert_eq!(
                    liveness.http_get.as_ref().unwrap().path.as_deref(),
                    Some("/healthz")
                );
                assert_eq!(
                    readiness.http_get.as_ref().unwrap().path.as_deref(),
                    Some("/readyz")
                );
            }
        }
    }

    #[test]
    fn only_the_coordinator_may_use_the_api_and_only_for_its_own_source() {
        let children = build_for(&orders());
        assert_eq!(
            pod_spec(&children.workers).automount_service_account_token,
            Some(false)
        );
        assert_eq!(
            children.worker_account.automount_service_account_token,
            Some(false)
        );
        let rules = children.role.rules.unwrap();
        for rule in &rules {
            assert_eq!(rule.resource_names, Some(vec!["orders".to_owned()]));
            assert_eq!(rule.api_groups, Some(vec!["sluice.dev".to_owned()]));
        }
        let verbs: Vec<(String, String)> = rules
            .iter()
            .flat_map(|r| {
                r.verbs
                    .iter()
                    .map(|v| (r.resources.as_ref().unwrap()[0].clone(), v.clone()))
            })
            .collect();
        assert_eq!(
            verbs,
            [
                ("ingestsources".into(), "get".into()),
                ("ingestsources/status".into(), "get".into()),
                ("ingestsources/status".into(), "patch".into())
            ]
        );
        let subject = &children.role_binding.subjects.unwrap()[0];
        assert_eq!(subject.name, "orders-coordinator");
        assert_eq!(subject.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn credentials_come_from_the_named_secrets_only_where_needed() {
        let children = build_for(&orders());
        let env_names = |deployment: &Deployment| -> Vec<String> {
            pod_spec(deployment).containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .map(|e| e.name.clone())
                .collect()
        };
        let coordinator = env_names(&children.coordinator);
        assert!(coordinator.contains(&"SLUICE_SOURCE_AWS_ACCESS_KEY_ID".to_owned()));
        assert!(coordinator.contains(&"SLUICE_ARCHIVE_AWS_SECRET_ACCESS_KEY".to_owned()));
        assert!(
            !coordinator
                .iter()
                .any(|name| name.starts_with("SLUICE_SINK_"))
        );
        let workers = env_names(&children.workers);
        assert!(workers.contains(&"SLUICE_SINK_AWS_ACCESS_KEY_ID".to_owned()));
        assert!(
            !workers
                .iter()
                .any(|name| name.starts_with("SLUICE_ARCHIVE_"))
        );
        let session = pod_spec(&children.workers).containers[0]
            .env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == "SLUICE_SINK_AWS_SESSION_TOKEN")
            .unwrap();
        let selector = session
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(selector.name, "acme-s3");
        assert_eq!(selector.optional, Some(true));
        assert_eq!(
            credential_secrets(&orders()),
            vec![(Store::Source, "acme-s3".to_owned())]
        );
    }

    #[test]
    fn a_config_or_token_change_changes_the_pod_checksum() {
        let source = orders();
        let config = RuntimeConfig::from_source(&source).unwrap();
        let checksum = |children: &Children| {
            children
                .workers
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CHECKSUM_ANNOTATION]
                .clone()
        };
        let base = checksum(&build(&source, &config, "a", &defaults(), 2));
        assert_eq!(
            base,
            checksum(&build(&source, &config, "a", &defaults(), 2))
        );
        assert_ne!(
            base,
            checksum(&build(&source, &config, "b", &defaults(), 2))
        );
        let mut bigger = config.clone();
        bigger.tasks.max_objects += 1;
        assert_ne!(
            base,
            checksum(&build(&source, &bigger, "a", &defaults(), 2))
        );
    }

    #[test]
    fn the_config_map_holds_the_rendered_configuration() {
        let source = example(include_str!("../../examples/full.yaml"));
        let children = build_for(&source);
        let json = &children.config.data.unwrap()[config::FILE_NAME];
        let config: RuntimeConfig = serde_json::from_str(json).unwrap();
        assert_eq!(config.tasks.max_bytes, 128 << 20);
        assert_eq!(config.tasks.max_objects, 200);
        assert_eq!(config.tasks.lease_duration.0.as_secs(), 120);
        assert_eq!(config.source.s3.prefix.as_deref(), Some("clicks/2026/"));
        assert_eq!(config.id.name, "clickstream");
        assert_eq!(config.id.namespace, "shop");
    }

    #[test]
    fn a_token_is_its_sources_own_and_changes_with_the_key() {
        let with_uid = |uid: &str| {
            let mut source = orders();
            source.metadata.uid = Some(uid.into());
            source
        };
        let (first, again) = (with_uid("0a1b"), with_uid("0a1b"));
        let key = |text: &str| TokenKey(text.as_bytes().into());
        let token = token(&key("key one"), &first);
        assert_eq!(token.len(), 64);
        assert_eq!(token, super::token(&key("key one"), &again));
        assert_ne!(token, super::token(&key("key one"), &with_uid("0a1c")));
        assert_ne!(token, super::token(&key("key two"), &first));
        assert!(!format!("{:?}", key("key one")).contains("one"));
    }
}
