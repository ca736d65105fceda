//! One reconcile of one IngestSource: render, apply, scale, observe, and
//! write the status and events.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::warn;

use sluice_core::sync::lock;

use crate::config::RuntimeConfig;
use crate::crd::{IngestSource, IngestSourceStatus, Names, Phase};
use crate::operator::autoscale::{self, History};
use crate::operator::children::{self, Component};
use crate::operator::events::EventType;
use crate::operator::status::{self, Observed, Problem, Rollout};

use super::{Context, Error, MANAGER};

/// Every reconcile is repeated this often even without a change, to repair
/// drift the watches could not see.
const RESYNC: Duration = Duration::from_secs(300);
/// A source held up by what the operator does not watch (an object of
/// another owner in the way of a child, a credentials Secret missing) is
/// looked at again this often: it would not see that change.
const UNWATCHED_RECHECK: Duration = Duration::from_secs(10);

pub(super) async fn reconcile_source(
    source: &IngestSource,
    context: &Context,
) -> Result<Action, Error> {
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
            let applied = context
                .apply_source(source, &config, &names, &namespace, now, &mut observed)
                .await;
            match applied {
                Ok((drop, running)) => {
                    next_drop = drop;
                    if !observed.coordinator.is_some_and(Rollout::settled) {
                        observed.coordinator_pods =
                            context.pod_trouble(source, Component::Coordinator);
                    }
                    if !observed.workers.is_some_and(Rollout::settled) {
                        observed.worker_pods = context.pod_trouble(source, Component::Worker);
                    }
                    // Pods that run found every Secret they need.
                    if !running {
                        observed.problem = context.missing_credentials(source, &namespace).await?;
                    }
                }
                Err(Error::NameConflict { kind, name }) => {
                    observed.problem = Some(Problem::NameConflict { kind, name });
                }
                Err(rejected @ Error::Rejected { .. }) => {
                    observed.problem = Some(Problem::InvalidSpec(format!(
                        "the API server refused what spec.template asks for: {rejected}"
                    )));
                }
                Err(err) => return Err(err),
            }
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
        _ if matches!(
            observed.problem,
            Some(Problem::NameConflict { .. } | Problem::CredentialsSecretNotFound { .. })
        ) =>
        {
            Action::requeue(UNWATCHED_RECHECK)
        }
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
pub(super) struct Scaling {
    replicas: i32,
    reason: String,
    /// When the pool shrinks next unless the backlog grows.
    next_drop: Option<jiff::Timestamp>,
}

impl Context {
    /// Why one of `source`'s pods of `component` is not ready, if one says
    /// (from the operator's cache of its pods; the first by name).
    fn pod_trouble(&self, source: &IngestSource, component: Component) -> Option<String> {
        let mut pods: Vec<_> = self
            .stores
            .pods
            .state()
            .into_iter()
            .filter(|pod| children::selects(source, component, &pod.metadata))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods.iter().find_map(|pod| status::pod_trouble(pod))
    }

    /// Renders the source's children and applies them, with the events
    /// that say what changed. Returns when autoscale shrinks the pool next,
    /// and whether the pods were already running as desired (see
    /// [`Context::running`]).
    async fn apply_source(
        &self,
        source: &IngestSource,
        config: &RuntimeConfig,
        names: &Names,
        namespace: &str,
        now: jiff::Timestamp,
        observed: &mut Observed,
    ) -> Result<(Option<jiff::Timestamp>, bool), Error> {
        let token = children::token(&self.options.token_key, source);
        let workers_before = self
            .stores
            .deployments
            .get(&ObjectRef::new(&names.worker).within(namespace))
            .and_then(|live| live.spec.as_ref()?.replicas);
        let scaling = self.autoscale(source, workers_before, now);
        observed.autoscaled = scaling.as_ref().map(|s| s.replicas);
        let next_drop = scaling.as_ref().and_then(|s| s.next_drop);
        let worker_replicas = observed.autoscaled.unwrap_or(source.spec.workers.replicas);
        let desired = children::build(
            source,
            config,
            &token,
            &self.options.defaults,
            worker_replicas,
        );
        let running = self.running(&desired, namespace);
        let token_secret = async {
            // The pods of running Deployments already found their token.
            if running {
                return Ok(());
            }
            let new = self
                .stores
                .deployments
                .get(&ObjectRef::new(&names.coordinator).within(namespace))
                .is_none();
            self.ensure_token(source, names, namespace, &token, new)
                .await
        };
        let created = self
            .apply_children(
                namespace,
                &source.name_any(),
                &desired,
                token_secret,
                observed,
            )
            .await?;
        if !created.is_empty() {
            self.notify(
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
            self.notify(
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
        Ok((next_drop, running))
    }

    /// Whether the coordinator and the workers run as `desired`: both
    /// Deployments cached with its pod template's checksum (configuration
    /// and token) and every replica available. Their pods then found the
    /// token Secret and the credentials; otherwise the operator makes sure
    /// of both, as it reads no Secret to know.
    fn running(&self, desired: &children::Children, namespace: &str) -> bool {
        [&desired.coordinator, &desired.workers]
            .into_iter()
            .all(|wanted| {
                let checksum = |deployment: &k8s_openapi::api::apps::v1::Deployment| {
                    deployment
                        .spec
                        .as_ref()?
                        .template
                        .metadata
                        .as_ref()?
                        .annotations
                        .as_ref()?
                        .get(children::CHECKSUM_ANNOTATION)
                        .cloned()
                };
                self.stores
                    .deployments
                    .get(&ObjectRef::new(&wanted.name_any()).within(namespace))
                    .is_some_and(|live| {
                        let replicas = live
                            .spec
                            .as_ref()
                            .and_then(|spec| spec.replicas)
                            .unwrap_or(1);
                        let status = live.status.clone().unwrap_or_default();
                        checksum(&live) == checksum(wanted)
                            && status.observed_generation == live.metadata.generation
                            && status.available_replicas.unwrap_or(0) >= replicas
                            && status.updated_replicas.unwrap_or(0) >= replicas
                    })
            })
    }
    /// The worker count for an autoscaled `source` (None when it is not
    /// autoscaled or is suspended), recording the recommendation in its
    /// history. `live` is the worker Deployment's replicas.
    pub(super) fn autoscale(
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

    /// The first credentials Secret `source` names that does not exist,
    /// learned without reading one: a dry-run create of a Secret of that
    /// name (nothing is written) fails with AlreadyExists exactly when it
    /// exists.
    pub(super) async fn missing_credentials(
        &self,
        source: &IngestSource,
        namespace: &str,
    ) -> Result<Option<Problem>, Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        for (store, secret) in children::credential_secrets(source) {
            let probe = Secret {
                metadata: ObjectMeta {
                    name: Some(secret.clone()),
                    ..ObjectMeta::default()
                },
                ..Secret::default()
            };
            match api.create(&dry_run, &probe).await {
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                Ok(_) => {
                    return Ok(Some(Problem::CredentialsSecretNotFound {
                        secret,
                        field: store.field(),
                    }));
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(None)
    }

    pub(super) async fn write_status(
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
    pub(super) async fn apply_status(
        &self,
        namespace: &str,
        name: &str,
        status: Value,
    ) -> Result<(), Error> {
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
    pub(super) async fn report_invalid(
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

    pub(super) async fn notify(
        &self,
        source: &IngestSource,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let published = self
            .recorder
            .publish(&source.object_ref(&()), type_, reason, "Reconcile", &note)
            .await;
        if let Err(err) = published {
            warn!(error = %err, reason, "cannot record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
