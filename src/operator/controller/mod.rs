//! The reconcile loop: for each IngestSource, render (pure) → apply what
//! differs (server-side apply, one field manager) → observe → write the
//! status if it changed → tell a person what happened (Events).
//!
//! This file wires the controller (its watches, caches and concurrency);
//! `reconcile.rs` is one reconcile, `apply.rs` the applying of children,
//! `token.rs` the coordinator's token Secret and `backoff.rs` the retry
//! delays.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use sluice_core::sync::lock;

use super::autoscale::History;
use super::children::{MANAGED_BY, PodDefaults, SOURCE_LABEL, TokenKey};
use super::events::Recorder;
use super::metrics::Metrics;
use super::status::{self, Limits};
use crate::crd::IngestSource;

mod apply;
mod backoff;
mod reconcile;
mod token;

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "sluice-operator";
/// At most this many reconciles run at once. Each has at most five requests
/// in flight (see [`Context::apply_children`]), so this bounds them all.
/// Unbounded, a start with 1,000 IngestSources put a request for every one
/// in flight at once, the leader Lease's renewal went unanswered behind them
/// for 10 s, and the operator lost its Lease and exited (`make bench
/// GROUP=operator`).
const CONCURRENT_RECONCILES: u16 = 32;

/// What the reconcile loop takes from the operator's flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub defaults: PodDefaults,
    /// How the coordinator's reports are judged.
    pub limits: Limits,
    /// An autoscaled pool shrinks only to the highest size the backlog
    /// asked for within this long.
    pub scale_down_stabilization: Duration,
    /// What the coordinators' tokens are derived from.
    pub token_key: TokenKey,
}

/// What the operator needs while it runs.
pub struct Context {
    client: Client,
    options: Options,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    stores: Stores,
    /// True once every store holds its first list: until then a missing
    /// child may only be missing from the cache, and applying it would be
    /// a needless write.
    synced: tokio::sync::watch::Receiver<bool>,
    /// True once the operator is stopping. The children's watches are
    /// then no longer driven, so a reconcile still waiting for `synced`
    /// would wait forever and keep the controller (and the leader Lease)
    /// from being released.
    stop: tokio::sync::watch::Receiver<bool>,
    /// Consecutive failures per IngestSource, for backoff.
    failures: Mutex<HashMap<ObjectRef<DeserializeGuard<IngestSource>>, u32>>,
    /// Generations of undeserializable IngestSources already reported.
    reported_invalid: Mutex<HashMap<String, i64>>,
    /// Recent autoscale recommendations per autoscaled IngestSource (by
    /// namespace, name and uid).
    scaling: Mutex<HashMap<String, History>>,
}

/// The operator's caches of its children, kept by the controller's watches.
#[derive(Clone)]
struct Stores {
    service_accounts: Store<ServiceAccount>,
    roles: Store<Role>,
    role_bindings: Store<RoleBinding>,
    config_maps: Store<ConfigMap>,
    services: Store<Service>,
    deployments: Store<Deployment>,
    /// The pods of the Deployments, for why they are not ready.
    pods: Store<Pod>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object of a child's name exists and is not the source's child.
    #[error("{kind} {name:?} exists and is not the IngestSource's")]
    NameConflict { kind: String, name: String },
    /// The API server refused a child as invalid: something in the spec
    /// (its template) that admission could not see.
    #[error("{kind} {name:?} was refused: {message}")]
    Rejected {
        kind: String,
        name: String,
        message: String,
    },
    /// A child the operator made a moment ago is not in its cache yet.
    #[error("{kind} {name:?} exists but is not in the operator's cache yet")]
    NotCached { kind: String, name: String },
}

impl Error {
    /// The metric label of this error's kind (bounded, never a message).
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::NameConflict { .. } => "name_conflict",
            Error::Rejected { .. } => "rejected",
            Error::NotCached { .. } => "not_cached",
        }
    }
}

/// Which IngestSources the operator serves.
#[derive(Clone, Debug)]
pub enum Scope {
    AllNamespaces,
    Namespace(String),
}

impl Scope {
    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        match self {
            Scope::AllNamespaces => Api::all(client.clone()),
            Scope::Namespace(namespace) => Api::namespaced(client.clone(), namespace),
        }
    }
}

/// Runs the controller until `stop` turns true. `ready` is called once the
/// first list of IngestSources has been cached.
pub async fn run(
    client: Client,
    scope: Scope,
    options: Options,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
    ready: impl FnOnce() + Send + 'static,
) {
    let owned = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let (service_accounts, service_account_events) = watch_owned(scope.api(&client), owned.clone());
    let (roles, role_events) = watch_owned(scope.api(&client), owned.clone());
    let (role_bindings, role_binding_events) = watch_owned(scope.api(&client), owned.clone());
    let (config_maps, config_map_events) = watch_owned(scope.api(&client), owned.clone());
    let (services, service_events) = watch_owned(scope.api(&client), owned.clone());
    let (deployments, deployment_events) = watch_owned(scope.api(&client), owned.clone());
    // Pods belong to ReplicaSets, not to the IngestSource: they are mapped
    // to it by label, and wake it only when what they say about being ready
    // changes.
    let (pods, pod_events) = watch_owned(scope.api(&client), owned);
    let pod_events = pod_events.predicate_filter(pod_key, PredicateConfig::default());
    // No Secret is watched: the operator may not read Secrets (see
    // `token.rs` and `Context::missing_credentials`).

    // The coordinator writes the status every few seconds while it works;
    // only changes that can change what the operator does wake it (see
    // `trigger_key`).
    let sources: Api<DeserializeGuard<IngestSource>> = scope.api(&client);
    let (source_store, source_writer) = reflector::store();
    // Told here, not by waiting on the store: a store's readiness wakes
    // only its latest waiter, and the controller waits on it to start
    // reconciling.
    let (sources_listed, mut sources_listed_rx) = tokio::sync::watch::channel(false);
    let (listed, mut stopping) = (sources_listed_rx.clone(), stop.clone());
    let source_events = reflector::reflector(
        source_writer,
        watcher(sources, watcher::Config::default().any_semantic()),
    )
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            let _ = sources_listed.send(true);
        }
    })
    .applied_objects()
    .predicate_filter(trigger_key, PredicateConfig::default());
    metrics.export_sources(source_store.clone());
    let controller = Controller::for_stream(source_events, source_store.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENT_RECONCILES))
        .trigger_backoff(backoff::watch_backoff());
    let controller = controller
        .owns_stream(service_account_events)
        .owns_stream(role_events)
        .owns_stream(role_binding_events)
        .owns_stream(config_map_events)
        .owns_stream(service_events)
        .owns_stream(deployment_events)
        .watches_stream(pod_events, |pod: Pod| {
            let source = pod.labels().get(SOURCE_LABEL)?.clone();
            Some(ObjectRef::new(&source).within(&pod.namespace()?))
        })
        .graceful_shutdown_on({
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }
        });

    let stores = Stores {
        service_accounts,
        roles,
        role_bindings,
        config_maps,
        services,
        deployments,
        pods,
    };
    let (synced_sender, synced_receiver) = tokio::sync::watch::channel(false);
    let context = Arc::new(Context {
        client,
        options,
        recorder,
        metrics,
        stores: stores.clone(),
        synced: synced_receiver,
        stop,
        failures: Mutex::default(),
        reported_invalid: Mutex::default(),
        scaling: Mutex::default(),
    });
    tokio::spawn(async move {
        let _ = sources_listed_rx.wait_for(|listed| *listed).await;
        stores.synced().await;
        info!("IngestSources and their children listed; ready");
        let _ = synced_sender.send(true);
        ready();
    });
    let running = controller
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(kube::runtime::controller::Error::ReconcilerFailed(err, object)) => {
                    warn!(namespace = object.namespace, name = object.name, error = %err, "reconcile failed");
                }
                Err(err) => warn!(error = %err, "controller"),
            }
        });
    // The controller starts reconciling only once its IngestSource cache
    // holds the first list, and a graceful shutdown stops the watch that
    // fills it: stopped before that, it would wait forever. Nothing has
    // been reconciled then, so there is nothing to finish: drop it.
    let stopped_unlisted = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        if *listed.borrow() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = running => {}
        () = stopped_unlisted => info!("stopped before IngestSources were listed: nothing to finish"),
    }
}

impl Stores {
    async fn synced(&self) {
        futures::join!(
            synced(&self.service_accounts),
            synced(&self.roles),
            synced(&self.role_bindings),
            synced(&self.config_maps),
            synced(&self.services),
            synced(&self.deployments),
            synced(&self.pods),
        );
    }
}

/// Resolves once `store` holds its first list (or its watch has ended).
async fn synced<K>(store: &Store<K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // A store's readiness wakes only its latest waiter; look again now and
    // then in case another waits too.
    while tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready())
        .await
        .is_err()
    {}
}

/// A cache of the operator's children of kind `K`, and the stream of
/// changes to them that triggers reconciles (deletions included).
fn watch_owned<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let events = reflector::reflector(writer, watcher(api, config))
        .touched_objects()
        .backoff(backoff::watch_backoff())
        .filter_map(report_watch_error);
    (store, events)
}

/// Logs a watch error of a secondary stream and keeps it from the
/// controller: the stream has already backed off on its own, and the
/// controller's backoff, which pauses every watch, is for its own.
async fn report_watch_error<K>(
    event: Result<K, watcher::Error>,
) -> Option<Result<K, watcher::Error>>
where
    K: Resource<DynamicType = ()>,
{
    match event {
        Ok(object) => Some(Ok(object)),
        Err(err) => {
            warn!(kind = %K::kind(&()), error = %err, "watch failed; retrying");
            None
        }
    }
}

async fn reconcile(
    guarded: Arc<DeserializeGuard<IngestSource>>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let object = ObjectRef::from_obj(&*guarded);
    let span = info_span!(
        "reconcile",
        namespace = object.namespace,
        name = object.name
    );
    let result = match &guarded.0 {
        Ok(source) => {
            reconcile::reconcile_source(source, &context)
                .instrument(span)
                .await
        }
        Err(invalid) => context.report_invalid(invalid).instrument(span).await,
    };
    context
        .metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::kind));
    if result.is_ok() {
        lock(&context.failures).remove(&object);
    }
    result
}

fn error_policy(
    guarded: Arc<DeserializeGuard<IngestSource>>,
    error: &Error,
    context: Arc<Context>,
) -> Action {
    let mut failures = lock(&context.failures);
    let count = failures.entry(ObjectRef::from_obj(&*guarded)).or_insert(0);
    *count += 1;
    let delay = backoff::reconcile_delay(*count);
    warn!(error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The hash of what, in an IngestSource, can change what the operator does
/// with it: its metadata and spec (by generation), the operator's own status
/// fields (so a hand edit is repaired), and what the coordinator publishes
/// as far as the phase and autoscale depend on it. The coordinator's count
/// updates during an ingest change none of that, so they do not wake the
/// operator.
fn trigger_key(guarded: &DeserializeGuard<IngestSource>) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    match &guarded.0 {
        Ok(source) => {
            let meta = &source.metadata;
            meta.generation.hash(&mut hasher);
            meta.labels.hash(&mut hasher);
            meta.annotations.hash(&mut hasher);
            meta.deletion_timestamp
                .as_ref()
                .map(|t| t.0.as_second())
                .hash(&mut hasher);
            if let Some(status) = &source.status {
                json!([
                    status.observed_generation,
                    status.phase,
                    status.conditions,
                    status.workers
                ])
                .to_string()
                .hash(&mut hasher);
            }
            status::coordinator_inputs(source).hash(&mut hasher);
        }
        Err(_) => guarded.meta().resource_version.hash(&mut hasher),
    }
    Some(hasher.finish())
}

/// What in a pod can change the IngestSource's status: whether it is
/// ready, and what is wrong with it.
fn pod_key(pod: &Pod) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    let ready = pod
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten());
    ready
        .filter(|condition| condition.type_ == "Ready")
        .for_each(|condition| condition.status.hash(&mut hasher));
    status::pod_trouble(pod).hash(&mut hasher);
    pod.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::ResourceExt;
    use serde_json::json;

    use super::*;
    use crate::crd::{IngestSourceStatus, Phase};

    #[test]
    fn coordinator_count_updates_do_not_trigger_reconciles() {
        let mut source: IngestSource =
            serde_yaml::from_str(include_str!("../../../examples/orders.yaml")).unwrap();
        source.metadata.generation = Some(1);
        let key = |source: &IngestSource| trigger_key(&DeserializeGuard(Ok(source.clone())));
        let mut status: IngestSourceStatus = serde_json::from_value(json!({
            "coordinatorHeartbeatTime": "2026-11-24T13:00:00Z",
            "tasks": {"pending": 40, "running": 4, "succeeded": 10, "failed": 0},
            "bytesIngested": 100,
        }))
        .unwrap();
        source.status = Some(status.clone());
        let busy = key(&source);
        status.coordinator_heartbeat_time = Some(Time("2026-11-24T13:00:05Z".parse().unwrap()));
        status.tasks.as_mut().unwrap().pending = 30;
        status.tasks.as_mut().unwrap().succeeded = 20;
        status.bytes_ingested = Some(200);
        source.status = Some(status.clone());
        assert_eq!(key(&source), busy);
        // What the operator writes, a spec change and metadata do.
        status.phase = Some(Phase::Running);
        source.status = Some(status);
        let running = key(&source);
        assert_ne!(running, busy);
        source.metadata.generation = Some(2);
        assert_ne!(key(&source), running);
        source.annotations_mut().insert("touch".into(), "1".into());
        assert_ne!(key(&source), running);
    }
}
