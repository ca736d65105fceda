//! The reconcile loop: for each IngestSource, render (pure) → apply what
//! differs (server-side apply, one field manager) → observe → write the
//! status if it changed → tell a person what happened (Events).

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use sluice_core::sync::lock;

use super::autoscale::{self, History};
use super::children::{self, Children, MANAGED_BY, PodDefaults, TOKEN_KEY};
use super::events::{EventType, Recorder};
use super::metrics::Metrics;
use super::status::{self, Limits, Observed, Problem, Rollout};
use crate::config::RuntimeConfig;
use crate::crd::{IngestSource, IngestSourceStatus, Names, Phase};

/// The field manager of everything the operator writes.
pub const MANAGER: &str = "sluice-operator";
/// The annotation on each child that records the digest of what the operator
/// last applied, so a changed spec is applied even where it only removes
/// fields.
const APPLIED_ANNOTATION: &str = "sluice.dev/applied-digest";
/// Every reconcile is repeated this often even without a change, to repair
/// drift the watches could not see.
const RESYNC: Duration = Duration::from_secs(300);
/// At most this many reconciles run at once. Each has at most five requests
/// in flight (see [`Context::apply_children`]), so this bounds them all. Unbounded, a start
/// with 1,000 IngestSources put a request for every one in flight at once,
/// the leader Lease's renewal went unanswered behind them for 10 s, and the
/// operator lost its Lease and exited (`make bench GROUP=operator`).
const CONCURRENT_RECONCILES: u16 = 32;

/// A child as it is after [`Context::ensure`], and what to call it in the
/// "created" event when this reconcile created it.
struct Ensured<K> {
    object: K,
    created: Option<String>,
}

/// What the reconcile loop takes from the operator's flags.
#[derive(Clone, Debug)]
pub struct Options {
    pub defaults: PodDefaults,
    /// How the coordinator's reports are judged.
    pub limits: Limits,
    /// An autoscaled pool shrinks only to the highest size the backlog
    /// asked for within this long.
    pub scale_down_stabilization: Duration,
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
    /// Token Secrets (labelled as the operator's).
    tokens: Store<Secret>,
    /// Metadata of every Secret, to know whether credentials exist.
    secrets: Store<PartialObjectMeta<Secret>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// The metric label of this error's kind (bounded, never a message).
    fn kind(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(status)) if status.is_conflict() => "conflict",
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
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
    let (tokens, token_events) = watch_owned(scope.api(&client), owned);
    let (secrets, secret_writer) = reflector::store();
    let secret_events = reflector::reflector(
        secret_writer,
        watcher(
            scope.api::<PartialObjectMeta<Secret>>(&client),
            watcher::Config::default(),
        ),
    )
    .touched_objects()
    .backoff(WatchBackoff::default())
    .filter_map(report_watch_error);

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
    let controller = Controller::for_stream(source_events, source_store.clone())
        .with_config(controller::Config::default().concurrency(CONCURRENT_RECONCILES))
        .trigger_backoff(WatchBackoff::default());
    let credentials_users = source_store.clone();
    let controller = controller
        .owns_stream(service_account_events)
        .owns_stream(role_events)
        .owns_stream(role_binding_events)
        .owns_stream(config_map_events)
        .owns_stream(service_events)
        .owns_stream(deployment_events)
        .owns_stream(token_events)
        // A credentials Secret appearing (or vanishing) concerns the
        // IngestSources in its namespace that name it.
        .watches_stream(secret_events, move |secret: PartialObjectMeta<Secret>| {
            let (namespace, name) = (secret.namespace(), secret.name_any());
            credentials_users
                .state()
                .into_iter()
                .filter(|guarded| {
                    guarded.0.as_ref().is_ok_and(|source| {
                        source.namespace() == namespace
                            && children::credential_secrets(source)
                                .iter()
                                .any(|(_, s)| *s == name)
                    })
                })
                .map(|guarded| ObjectRef::from_obj(&*guarded))
                .collect::<Vec<_>>()
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
        tokens,
        secrets,
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
            synced(&self.tokens),
            synced(&self.secrets),
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
        .backoff(WatchBackoff::default())
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
        Ok(source) => reconcile_source(source, &context).instrument(span).await,
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
    let delay = backoff(*count);
    warn!(error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// A failed reconcile is retried 0.5 s after the first failure, doubling up
/// to 5 minutes.
fn backoff(failures: u32) -> Duration {
    exponential(
        failures,
        Duration::from_millis(500),
        Duration::from_secs(300),
    )
}

/// `first` after the first failure, doubling up to `max`.
fn exponential(failures: u32, first: Duration, max: Duration) -> Duration {
    first
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(max)
}

/// Watches are restarted 250 ms after the first error, doubling up to 4 s,
/// and from the start again once events flow. With client-go's cap of 30 s,
/// an API server back from a restart would go unwatched for half a minute.
#[derive(Debug, Default)]
struct WatchBackoff {
    failures: u32,
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.failures += 1;
        Some(exponential(
            self.failures,
            Duration::from_millis(250),
            Duration::from_secs(4),
        ))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

async fn reconcile_source(source: &IngestSource, context: &Context) -> Result<Action, Error> {
    let (mut synced, mut stop) = (context.synced.clone(), context.stop.clone());
    tokio::select! {
        _ = synced.wait_for(|synced| *synced) => {}
        _ = stop.wait_for(|stop| *stop) => return Ok(Action::await_change()),
    }
    let names = Names::of(source);
    let namespace = source.namespace().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let mut observed = Observed::default();
    let mut next_drop = None;

    match RuntimeConfig::from_source(source) {
        Err(invalid) => observed.problem = Some(Problem::InvalidSpec(invalid.to_string())),
        Ok(config) => {
            let token = context.token(source, &names, &namespace).await?;
            let workers_before = context
                .stores
                .deployments
                .get(&ObjectRef::new(&names.worker).within(&namespace))
                .and_then(|live| live.spec.as_ref()?.replicas);
            let scaling = context.autoscale(source, workers_before, now);
            observed.autoscaled = scaling.as_ref().map(|s| s.replicas);
            next_drop = scaling.as_ref().and_then(|s| s.next_drop);
            let worker_replicas = observed.autoscaled.unwrap_or(source.spec.workers.replicas);
            let desired = children::build(
                source,
                &config,
                &token,
                &context.options.defaults,
                worker_replicas,
            );
            let created = context
                .apply_children(&namespace, &desired, &mut observed)
                .await?;
            if !created.is_empty() {
                context
                    .notify(
                        source,
                        EventType::Normal,
                        "Created",
                        format!("created {}", created.join(", ")),
                    )
                    .await;
            }
            let workers_now = desired.workers.spec.as_ref().and_then(|spec| spec.replicas);
            // Not when suspending or resuming (Suspended and Resumed say so);
            // an autoscaled pool may grow from zero on its own.
            let resuming = source.status.as_ref().and_then(|s| s.phase) == Some(Phase::Suspended)
                || (workers_before == Some(0) && scaling.is_none());
            if let (Some(before), Some(now)) = (workers_before, workers_now)
                && before != now
                && !source.spec.suspend
                && !resuming
            {
                let why = scaling
                    .as_ref()
                    .map(|s| format!(": {}", s.reason))
                    .unwrap_or_default();
                context
                    .notify(
                        source,
                        EventType::Normal,
                        "Scaled",
                        format!(
                            "scaled {} from {before} to {now} workers{why}",
                            names.worker
                        ),
                    )
                    .await;
            }
            observed.problem = context.missing_credentials(source, &namespace);
        }
    }

    let computed = status::compute(source, &observed, &Time(now), &context.options.limits);
    let new = computed.status;
    if !status::unchanged(source.status.as_ref(), &new) {
        context.write_status(source, &new).await?;
        for notice in status::notices(source, &new) {
            let kind = if notice.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            context
                .notify(source, kind, &notice.reason, notice.note)
                .await;
        }
    }
    Ok(match new.phase {
        Some(Phase::Failed) => Action::await_change(),
        _ => Action::requeue(requeue_after(
            [computed.recheck_at, next_drop].into_iter().flatten().min(),
            now,
        )),
    })
}

/// When to reconcile again without a change: at `recheck_at` (a little
/// after, so the clock has surely passed it), and at least every
/// [`RESYNC`].
fn requeue_after(recheck_at: Option<jiff::Timestamp>, now: jiff::Timestamp) -> Duration {
    const MARGIN: Duration = Duration::from_millis(100);
    recheck_at
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default())
        .map_or(RESYNC, |until| (until + MARGIN).min(RESYNC))
        .max(MARGIN)
}

/// What autoscale chose for one reconcile.
struct Scaling {
    replicas: i32,
    reason: String,
    /// When the pool shrinks next unless the backlog grows.
    next_drop: Option<jiff::Timestamp>,
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

impl Context {
    /// The token from the token Secret, creating the Secret the first time.
    async fn token(
        &self,
        source: &IngestSource,
        names: &Names,
        namespace: &str,
    ) -> Result<String, Error> {
        let cached = self
            .stores
            .tokens
            .get(&ObjectRef::new(&names.token).within(namespace));
        if let Some(token) = cached.as_deref().and_then(token_of) {
            return Ok(token);
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let fresh = children::token_secret(source, &children::new_token());
        match api.create(&PostParams::default(), &fresh).await {
            Ok(created) => {
                self.metrics.wrote("Secret");
                Ok(token_of(&created).unwrap_or_default())
            }
            // Created a moment ago and not cached yet, or made by hand:
            // keep what is there.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let existing = api.get(&names.token).await?;
                match token_of(&existing) {
                    Some(token) => Ok(token),
                    None => {
                        let repaired = api
                            .patch(
                                &names.token,
                                &PatchParams::apply(MANAGER).force(),
                                &Patch::Apply(&fresh),
                            )
                            .await?;
                        self.metrics.wrote("Secret");
                        Ok(token_of(&repaired).unwrap_or_default())
                    }
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Applies each child that differs from what is cached, records the
    /// Deployments' rollouts in `observed`, and returns what was created.
    /// Two rounds of concurrent applies, so a new source costs two round
    /// trips rather than eight: first what has no prerequisite (accounts,
    /// Role, configuration, Service), then the RoleBinding, which the API
    /// server checks against its existing Role (the operator may only grant
    /// what it holds), and both Deployments.
    async fn apply_children(
        &self,
        namespace: &str,
        desired: &Children,
        observed: &mut Observed,
    ) -> Result<Vec<String>, Error> {
        let stores = &self.stores;
        let (coordinator_account, worker_account, role, config, service) = tokio::try_join!(
            self.ensure(
                &stores.service_accounts,
                namespace,
                &desired.coordinator_account
            ),
            self.ensure(&stores.service_accounts, namespace, &desired.worker_account),
            self.ensure(&stores.roles, namespace, &desired.role),
            self.ensure(&stores.config_maps, namespace, &desired.config),
            self.ensure(&stores.services, namespace, &desired.service),
        )?;
        let (role_binding, coordinator, workers) = tokio::try_join!(
            self.ensure(&stores.role_bindings, namespace, &desired.role_binding),
            self.ensure(&stores.deployments, namespace, &desired.coordinator),
            self.ensure(&stores.deployments, namespace, &desired.workers),
        )?;
        observed.coordinator = Some(Rollout::of(&coordinator.object));
        observed.workers = Some(Rollout::of(&workers.object));
        Ok([
            coordinator_account.created,
            worker_account.created,
            role.created,
            role_binding.created,
            config.created,
            service.created,
            coordinator.created,
            workers.created,
        ]
        .into_iter()
        .flatten()
        .collect())
    }

    /// Makes `desired` true of the cluster: nothing when the cached object
    /// already says it (so a no-op reconcile writes nothing), else
    /// server-side apply. Returns the object as it now is.
    async fn ensure<K>(
        &self,
        store: &Store<K>,
        namespace: &str,
        desired: &K,
    ) -> Result<Ensured<K>, Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + Debug,
    {
        let name = desired.meta().name.clone().unwrap_or_default();
        let mut desired = desired.clone();
        let digest = digest(&desired);
        desired
            .meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_ANNOTATION.into(), digest.clone());
        let cached = store.get(&ObjectRef::new(&name).within(namespace));
        let why = match &cached {
            None => "missing",
            Some(live) if live.annotations().get(APPLIED_ANNOTATION) != Some(&digest) => {
                "spec changed"
            }
            Some(live) if !contains(&to_value(&**live), &to_value(&desired)) => "drifted",
            Some(live) => {
                return Ok(Ensured {
                    object: (**live).clone(),
                    created: None,
                });
            }
        };
        tracing::debug!(kind = %K::kind(&()), name, why, cached = store.state().len(), "applying");
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await?;
        self.metrics.wrote(&K::kind(&()));
        let created = match cached {
            None => Some(format!("{} {name}", K::kind(&()))),
            Some(_) => {
                info!(kind = %K::kind(&()), name, "updated");
                None
            }
        };
        Ok(Ensured {
            object: applied,
            created,
        })
    }

    /// The worker count for an autoscaled `source` (None when it is not
    /// autoscaled or is suspended), recording the recommendation in its
    /// history. `live` is the worker Deployment's replicas.
    fn autoscale(
        &self,
        source: &IngestSource,
        live: Option<i32>,
        now: jiff::Timestamp,
    ) -> Option<Scaling> {
        let window = self.options.scale_down_stabilization;
        let key = format!(
            "{}/{}/{}",
            source.namespace().unwrap_or_default(),
            source.name_any(),
            source.uid().unwrap_or_default()
        );
        let mut histories = lock(&self.scaling);
        // Forget sources no longer autoscaled, suspended or deleted: every
        // autoscaled source is recorded at least every RESYNC.
        let forget_before = now
            .checked_sub(window + 2 * RESYNC)
            .unwrap_or(jiff::Timestamp::MIN);
        histories.retain(|_, history| {
            history
                .last_recorded()
                .is_some_and(|last| last > forget_before)
        });
        let Some(spec) = source
            .spec
            .workers
            .autoscale
            .as_ref()
            .filter(|_| !source.spec.suspend)
        else {
            histories.remove(&key);
            return None;
        };
        let recommendation =
            autoscale::recommend(spec, source.status.as_ref().and_then(|s| s.tasks.as_ref()));
        let history = histories.entry(key).or_insert_with(|| {
            live.map_or_else(History::default, |live| History::starting_at(now, live))
        });
        let stabilized = history.record(now, recommendation.replicas, window);
        // min and max may have changed since the history began.
        let max = spec.max_replicas.max(0);
        let replicas = stabilized.clamp(spec.min_replicas.clamp(0, max), max);
        Some(Scaling {
            replicas,
            reason: autoscale::reason(spec, recommendation, replicas),
            next_drop: history.next_drop(window),
        })
    }

    /// The first credentials Secret `source` names that does not exist.
    fn missing_credentials(&self, source: &IngestSource, namespace: &str) -> Option<Problem> {
        children::credential_secrets(source)
            .into_iter()
            .find(|(_, secret)| {
                self.stores
                    .secrets
                    .get(&ObjectRef::new(secret).within(namespace))
                    .is_none()
            })
            .map(|(store, secret)| Problem::CredentialsSecretNotFound {
                secret,
                field: store.field(),
            })
    }

    async fn write_status(
        &self,
        source: &IngestSource,
        status: &IngestSourceStatus,
    ) -> Result<(), Error> {
        let namespace = source.namespace().unwrap_or_default();
        self.apply_status(&namespace, &source.name_any(), json!(status))
            .await
    }

    /// Server-side applies the operator's `status` fields. Through the
    /// dynamic API, so that it also works on objects the typed API cannot
    /// read back.
    async fn apply_status(&self, namespace: &str, name: &str, status: Value) -> Result<(), Error> {
        let resource = ApiResource::erase::<IngestSource>(&());
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let patch = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.metrics.wrote("IngestSource/status");
        Ok(())
    }

    /// An IngestSource the operator cannot even read: say why in its status,
    /// once per generation, and wait for a change.
    async fn report_invalid(
        &self,
        invalid: &kube::core::error_boundary::InvalidObject,
    ) -> Result<Action, Error> {
        let meta = &invalid.metadata;
        let (uid, generation) = (
            meta.uid.clone().unwrap_or_default(),
            meta.generation.unwrap_or(0),
        );
        if lock(&self.reported_invalid).get(&uid) == Some(&generation) {
            return Ok(Action::await_change());
        }
        warn!(error = %invalid.error, "cannot read IngestSource");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let message = format!(
            "sluice cannot read this IngestSource: {}; fix it to continue",
            invalid.error
        );
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason, "message": message,
                   "observedGeneration": generation, "lastTransitionTime": now})
        };
        let status = json!({
            "observedGeneration": generation,
            "phase": Phase::Failed,
            "conditions": [
                condition(status::READY, "False", "InvalidSpec"),
                condition(status::DEGRADED, "True", "InvalidSpec"),
            ],
        });
        self.apply_status(
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
            status,
        )
        .await?;
        lock(&self.reported_invalid).insert(uid, generation);
        Ok(Action::await_change())
    }

    async fn notify(&self, source: &IngestSource, type_: EventType, reason: &str, note: String) {
        let published = self
            .recorder
            .publish(&source.object_ref(&()), type_, reason, "Reconcile", &note)
            .await;
        if let Err(err) = published {
            warn!(error = %err, reason, "cannot record event");
        }
    }
}

fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(TOKEN_KEY)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|token| !token.is_empty())
}

fn to_value(object: &impl Serialize) -> Value {
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// A digest of what the operator applies for one object.
fn digest(object: &impl Serialize) -> String {
    children::digest(&[to_value(object).to_string().as_bytes()])
}

/// Whether `live` says everything `desired` says. The API server adds
/// defaults and status, so `live` may hold more; lists must match item by
/// item.
fn contains(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(live), Value::Object(desired)) => desired.iter().all(|(key, want)| {
            want.is_null() || live.get(key).is_some_and(|have| contains(have, want))
        }),
        (Value::Array(live), Value::Array(desired)) => {
            live.len() == desired.len()
                && live
                    .iter()
                    .zip(desired)
                    .all(|(have, want)| contains(have, want))
        }
        (live, desired) => live == desired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_objects_with_defaults_contain_what_was_applied() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "w"}]}}});
        let live = json!({"spec": {"replicas": 2, "revisionHistoryLimit": 10,
            "template": {"containers": [{"name": "w", "imagePullPolicy": "IfNotPresent"}]}},
            "status": {"readyReplicas": 1}});
        assert!(contains(&live, &desired));
    }

    #[test]
    fn drift_is_seen() {
        let desired = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "w"}]}}});
        let scaled = json!({"spec": {"replicas": 7, "template": {"containers": [{"name": "w"}]}}});
        let extra_container = json!({"spec": {"replicas": 2, "template": {"containers": [{"name": "w"}, {"name": "x"}]}}});
        let missing = json!({"spec": {"template": {"containers": [{"name": "w"}]}}});
        assert!(!contains(&scaled, &desired));
        assert!(!contains(&extra_container, &desired));
        assert!(!contains(&missing, &desired));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn watches_retry_within_seconds_and_start_over_after_success() {
        use kube::runtime::utils::Backoff;
        let mut watch = WatchBackoff::default();
        let delays: Vec<Duration> = (&mut watch).take(7).collect();
        assert_eq!(delays[0], Duration::from_millis(250));
        assert_eq!(delays[6], Duration::from_secs(4));
        watch.reset();
        assert_eq!(watch.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn requeues_just_after_the_recheck_and_at_least_every_resync() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let in_secs = |secs: i64| Some(jiff::Timestamp::from_second(1000 + secs).unwrap());
        assert_eq!(requeue_after(None, now), RESYNC);
        assert_eq!(
            requeue_after(in_secs(30), now),
            Duration::from_millis(30_100)
        );
        assert_eq!(requeue_after(in_secs(3600), now), RESYNC);
        // Already due: soon, but not in a busy loop.
        assert_eq!(requeue_after(in_secs(-5), now), Duration::from_millis(100));
    }

    #[test]
    fn coordinator_count_updates_do_not_trigger_reconciles() {
        let mut source: IngestSource =
            serde_yaml::from_str(include_str!("../../examples/orders.yaml")).unwrap();
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

    #[test]
    fn digests_change_with_content() {
        assert_eq!(digest(&json!({"a": 1})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
    }
}
