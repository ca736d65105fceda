//! A stand-in for the Deployment controller and the kubelet, for `make
//! demo` and the end-to-end tests: it runs the pods of the Deployments the
//! operator wrote as local processes of this binary, exactly as their
//! templates say (args; env from values, pod fields and Secrets; ConfigMap,
//! Secret and emptyDir volumes as directories), and reports them in the
//! Deployments' status. A pod whose template mounts a service account token
//! gets a kubeconfig with a fresh token of its ServiceAccount, so it runs
//! with exactly the rights RBAC gives it.
//!
//! Simplifications, none of which the operator relies on: a pod listens on
//! `SLUICE_ADDRESS` or on its arguments' `0.0.0.0:<containerPort>`, both
//! turned into one loopback port; a Service
//! resolves to the pods of the Deployment of the same name (on a port fixed
//! per Deployment); a changed template replaces all pods at once
//! (Recreate); a pod is ready when `/readyz` answers 200.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Secret, ServiceAccount};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::process::{Daemon, free_port, http_ok};
use crate::operator::children::HTTP_PORT;

/// How often the Deployments are looked at.
const TICK: Duration = Duration::from_millis(300);
/// The longest wait before restarting a crashed pod.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a pod has to stop after SIGTERM.
const GRACE: Duration = Duration::from_secs(10);

/// Where the API server is, for the pods' kubeconfigs.
#[derive(Clone, Debug)]
pub struct ApiServer {
    pub server: String,
    pub ca_cert: PathBuf,
}

/// Runs until dropped; dropping stops every pod.
pub struct Kubelet {
    stop: Arc<AtomicBool>,
    /// Service name → local port.
    services: Arc<std::sync::Mutex<BTreeMap<String, u16>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kubelet {
    /// Runs the pods of the Deployments in `namespace` that carry the
    /// labels of `selector` (such as `app.kubernetes.io/part-of=sluice`)
    /// with `binary` (this crate's `sluice`), logging to `logs/<pod>.log`.
    pub fn start(
        client: kube::Client,
        api_server: ApiServer,
        namespace: &str,
        selector: &str,
        binary: PathBuf,
        logs: PathBuf,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let services = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        let node = Node {
            client,
            api_server,
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            binary,
            logs,
            workloads: HashMap::new(),
            services: services.clone(),
        };
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the kubelet");
            runtime.block_on(node.run(stopped));
        });
        Self {
            stop,
            services,
            thread: Some(thread),
        }
    }

    /// The local URL of the Service `name`, once its Deployment was seen.
    pub fn service_url(&self, name: &str) -> Option<String> {
        super::process::lock(&self.services)
            .get(name)
            .map(|port| format!("http://127.0.0.1:{port}"))
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Node {
    client: kube::Client,
    api_server: ApiServer,
    namespace: String,
    selector: String,
    binary: PathBuf,
    logs: PathBuf,
    /// By Deployment name.
    workloads: HashMap<String, Workload>,
    /// Shared with [`Kubelet::service_url`].
    services: Arc<std::sync::Mutex<BTreeMap<String, u16>>>,
}

/// The pods of one Deployment.
struct Workload {
    /// The port the Service of the same name reaches.
    service_port: u16,
    pods: Vec<Pod>,
    /// Pods that exited in a row, and when the next may start (a crash
    /// loop backs off like the kubelet's, 0.5 s doubling to 10 s).
    crashes: u32,
    not_before: std::time::Instant,
    /// The status last written.
    reported: Option<serde_json::Value>,
}

struct Pod {
    template: String,
    port: u16,
    daemon: Daemon,
    _files: tempfile::TempDir,
}

impl Node {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            if let Err(err) = self.tick().await {
                tracing::warn!("kubelet: {err}");
            }
            tokio::time::sleep(TICK).await;
        }
        for workload in self.workloads.values_mut() {
            for mut pod in workload.pods.drain(..) {
                pod.daemon.terminate(GRACE);
            }
        }
    }

    async fn tick(&mut self) -> Result<(), String> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let deployments = api
            .list(&ListParams::default().labels(&self.selector))
            .await
            .map_err(|err| format!("listing Deployments: {err}"))?
            .items;
        // Every Service name resolves before any pod starts, so a worker
        // started before its coordinator finds it once it is up.
        for deployment in &deployments {
            if let std::collections::hash_map::Entry::Vacant(entry) =
                self.workloads.entry(deployment.name_any())
            {
                entry.insert(Workload {
                    service_port: free_port().map_err(|err| err.to_string())?,
                    pods: Vec::new(),
                    crashes: 0,
                    not_before: std::time::Instant::now(),
                    reported: None,
                });
            }
        }
        let names: Vec<String> = deployments.iter().map(|d| d.name_any()).collect();
        for (name, workload) in self.workloads.iter_mut() {
            if !names.contains(name) {
                for mut pod in workload.pods.drain(..) {
                    pod.daemon.terminate(GRACE);
                }
            }
        }
        self.workloads.retain(|name, _| names.contains(name));
        *super::process::lock(&self.services) = self
            .workloads
            .iter()
            .map(|(name, w)| (name.clone(), w.service_port))
            .collect();
        for deployment in &deployments {
            if let Err(err) = self.reconcile(deployment).await {
                tracing::warn!("kubelet: Deployment {}: {err}", deployment.name_any());
            }
        }
        Ok(())
    }

    async fn reconcile(&mut self, deployment: &Deployment) -> Result<(), String> {
        let name = deployment.name_any();
        let spec = deployment.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0) as usize;
        let template = serde_json::to_string(&spec.template).expect("a template serializes");
        let services: BTreeMap<String, u16> = self
            .workloads
            .iter()
            .map(|(name, w)| (name.clone(), w.service_port))
            .collect();

        let workload = self.workloads.get_mut(&name).expect("added in tick");
        // Stop pods of an old template, pods that exited, and extra pods.
        let mut kept = Vec::new();
        for mut pod in workload.pods.drain(..) {
            if let Err(exited) = pod.daemon.check_running() {
                tracing::warn!("kubelet: {exited}");
                workload.crashes += 1;
                let backoff = Duration::from_millis(500) * 2u32.pow(workload.crashes.min(5));
                workload.not_before = std::time::Instant::now() + backoff.min(MAX_BACKOFF);
                continue;
            }
            if pod.template == template && kept.len() < desired {
                kept.push(pod);
            } else {
                pod.daemon.terminate(GRACE);
            }
        }
        workload.pods = kept;
        let service_port = workload.service_port;
        while workload.pods.len() < desired && std::time::Instant::now() >= workload.not_before {
            let port = if workload.pods.iter().any(|p| p.port == service_port) {
                free_port().map_err(|err| err.to_string())?
            } else {
                service_port
            };
            let pod_spec = spec.template.spec.clone().unwrap_or_default();
            let pod = start_pod(
                &self.client,
                &self.api_server,
                &self.namespace,
                &self.binary,
                &self.logs,
                PodPlan {
                    name: format!("{name}-{}", suffix()),
                    template: template.clone(),
                    port,
                    spec: pod_spec,
                    services: &services,
                },
            )
            .await?;
            workload.pods.push(pod);
        }

        let count = workload.pods.len() as i32;
        let ready = workload
            .pods
            .iter()
            .filter(|pod| http_ok(pod.port, "/readyz"))
            .count() as i32;
        if ready == desired as i32 {
            workload.crashes = 0;
        }
        let status = json!({
            "observedGeneration": deployment.metadata.generation,
            "replicas": count,
            "updatedReplicas": count,
            "readyReplicas": ready,
            "availableReplicas": ready,
        });
        if workload.reported.as_ref() != Some(&status) {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .map_err(|err| format!("writing the status: {err}"))?;
            workload.reported = Some(status);
        }
        Ok(())
    }
}

/// What one pod is to be.
struct PodPlan<'a> {
    name: String,
    template: String,
    port: u16,
    spec: PodSpec,
    /// Service name → local port.
    services: &'a BTreeMap<String, u16>,
}

/// A short random pod-name suffix, like a ReplicaSet's.
fn suffix() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| char::from(b"bcdfghjklmnpqrstvwxz2456789"[rng.random_range(0..27)]))
        .collect()
}

async fn start_pod(
    client: &kube::Client,
    api_server: &ApiServer,
    namespace: &str,
    binary: &Path,
    logs: &Path,
    plan: PodPlan<'_>,
) -> Result<Pod, String> {
    let container: &Container = plan
        .spec
        .containers
        .first()
        .ok_or("the pod template has no container")?;
    let files = tempfile::Builder::new()
        .prefix(&format!("sluice-pod-{}-", plan.name))
        .tempdir()
        .map_err(|err| format!("creating the pod's directory: {err}"))?;

    // Volumes become directories; mount paths are rewritten to them.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = plan
            .spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| format!("volume {} is mounted but not defined", mount.name))?;
        let dir = files.path().join(&volume.name);
        std::fs::create_dir_all(&dir).map_err(|err| err.to_string())?;
        let data: BTreeMap<String, Vec<u8>> = if let Some(source) = &volume.config_map {
            let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
                .get(&source.name)
                .await
                .map_err(|err| format!("ConfigMap {}: {err}", source.name))?;
            map.data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                .get(&name)
                .await
                .map_err(|err| format!("Secret {name}: {err}"))?;
            secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect()
        } else {
            BTreeMap::new()
        };
        for (key, bytes) in data {
            std::fs::write(dir.join(key), bytes).map_err(|err| err.to_string())?;
        }
        mounts.push((mount.mount_path.clone(), dir));
    }
    let local = |value: &str| -> String {
        let mut value = value.to_owned();
        for (mount_path, dir) in &mounts {
            if let Some(rest) = value.strip_prefix(mount_path.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                value = format!("{}{rest}", dir.display());
                break;
            }
        }
        // What the pod listens on (all addresses of its own IP) becomes
        // its loopback port.
        for container_port in container.ports.iter().flatten() {
            value = value.replace(
                &format!("0.0.0.0:{}", container_port.container_port),
                &format!("127.0.0.1:{}", plan.port),
            );
        }
        for (service, port) in plan.services {
            value = value.replace(
                &format!("//{service}:{HTTP_PORT}"),
                &format!("//127.0.0.1:{port}"),
            );
        }
        value
    };

    let mut command = Command::new(binary);
    command
        .args(container.args.iter().flatten().map(|arg| local(arg)))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("SLUICE_ADDRESS", format!("127.0.0.1:{}", plan.port))
        .env("RUST_LOG", "info");
    if let Some((_, tmp)) = mounts.iter().find(|(path, _)| path == "/tmp") {
        command.env("TMPDIR", tmp);
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => Some(local(value)),
            (None, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    match field.field_path.as_str() {
                        "metadata.name" => Some(plan.name.clone()),
                        "metadata.namespace" => Some(namespace.to_owned()),
                        other => {
                            return Err(format!(
                                "env {}: field {other} is not supported",
                                var.name
                            ));
                        }
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
                        .get_opt(&key.name)
                        .await
                        .map_err(|err| format!("Secret {}: {err}", key.name))?;
                    let value = secret
                        .and_then(|s| s.data)
                        .and_then(|data| data.get(&key.key).cloned())
                        .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned());
                    if value.is_none() && !key.optional.unwrap_or(false) {
                        return Err(format!(
                            "env {}: Secret {} has no key {}",
                            var.name, key.name, key.key
                        ));
                    }
                    value
                } else {
                    return Err(format!(
                        "env {}: this kind of valueFrom is not supported",
                        var.name
                    ));
                }
            }
            (None, None) => Some(String::new()),
        };
        if let Some(value) = value {
            command.env(&var.name, value);
        }
    }
    if plan.spec.automount_service_account_token != Some(false) {
        let account = plan
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into());
        let kubeconfig = files.path().join("kubeconfig");
        service_account_kubeconfig(client, api_server, namespace, &account, &kubeconfig).await?;
        command.env("KUBECONFIG", kubeconfig);
    }
    let log = logs.join(format!("{}.log", plan.name));
    let daemon = Daemon::spawn(&plan.name, command, &log).map_err(|err| err.to_string())?;
    Ok(Pod {
        template: plan.template,
        port: plan.port,
        daemon,
        _files: files,
    })
}

/// Writes to `path` a kubeconfig that authenticates as ServiceAccount
/// `namespace/account` with a fresh one-hour token (TokenRequest).
pub async fn service_account_kubeconfig(
    client: &kube::Client,
    api_server: &ApiServer,
    namespace: &str,
    account: &str,
    path: &Path,
) -> Result<(), String> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let token: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource("token", account, &PostParams::default(), &request)
        .await
        .map_err(|err| format!("a token for ServiceAccount {namespace}/{account}: {err}"))?;
    let token = token.status.map(|s| s.token).unwrap_or_default();
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": api_server.server,
            "certificate-authority": api_server.ca_cert,
        }}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {
            "cluster": "local", "user": account, "namespace": namespace,
        }}],
        "current-context": account,
    });
    std::fs::write(
        path,
        serde_yaml::to_string(&kubeconfig).expect("a kubeconfig serializes"),
    )
    .map_err(|err| format!("writing {}: {err}", path.display()))
}
