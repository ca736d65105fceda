//! Applying the children: server-side apply of what differs from the cache,
//! and the digest that tells a changed child from an unchanged one.

use std::fmt::Debug;

use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::info;

use crate::operator::children::{self, Children};
use crate::operator::status::{Observed, Rollout};

use super::{Context, Error, MANAGER};

/// The annotation on each child that records the digest of what the operator
/// last applied, so a changed spec is applied even where it only removes
/// fields.
const APPLIED_ANNOTATION: &str = "sluice.dev/applied-digest";

/// A child as it is after [`Context::ensure`], and what to call it in the
/// "created" event when this reconcile created it.
pub(super) struct Ensured<K> {
    object: K,
    created: Option<String>,
}

impl Context {
    /// Applies each child that differs from what is cached, records the
    /// Deployments' rollouts in `observed`, and returns what was created.
    /// Two rounds of concurrent applies, so a new source costs two round
    /// trips rather than eight: first what has no prerequisite (accounts,
    /// Role, configuration, Service, and `token_secret`, the making of the
    /// token Secret), then the RoleBinding, which the API server checks
    /// against its existing Role (the operator may only grant what it
    /// holds), and both Deployments, whose pods mount the token.
    pub(super) async fn apply_children(
        &self,
        namespace: &str,
        source: &str,
        desired: &Children,
        token_secret: impl Future<Output = Result<(), Error>>,
        observed: &mut Observed,
    ) -> Result<Vec<String>, Error> {
        let stores = &self.stores;
        let ((), coordinator_account, worker_account, role, config, service) = tokio::try_join!(
            token_secret,
            self.ensure(
                &stores.service_accounts,
                namespace,
                source,
                &desired.coordinator_account
            ),
            self.ensure(
                &stores.service_accounts,
                namespace,
                source,
                &desired.worker_account
            ),
            self.ensure(&stores.roles, namespace, source, &desired.role),
            self.ensure(&stores.config_maps, namespace, source, &desired.config),
            self.ensure(&stores.services, namespace, source, &desired.service),
        )?;
        let (role_binding, coordinator, workers) = tokio::try_join!(
            self.ensure(
                &stores.role_bindings,
                namespace,
                source,
                &desired.role_binding
            ),
            self.ensure(&stores.deployments, namespace, source, &desired.coordinator),
            self.ensure(&stores.deployments, namespace, source, &desired.workers),
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

    /// Makes `desired`, a child of the IngestSource `source`, true of the
    /// cluster: nothing when the cached object already says it (so a no-op
    /// reconcile writes nothing), else server-side apply. Returns the object
    /// as it now is. An object of that name that is not the source's child
    /// is left alone: [`Error::NameConflict`].
    pub(super) async fn ensure<K>(
        &self,
        store: &Store<K>,
        namespace: &str,
        source: &str,
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
        let conflict = || Error::NameConflict {
            kind: K::kind(&()).into_owned(),
            name: name.clone(),
        };
        let api: Api<K> = Api::namespaced(self.client.clone(), namespace);
        let cached = store.get(&ObjectRef::new(&name).within(namespace));
        let why = match &cached {
            Some(live) if !children::is_child_of(live.meta(), source) => return Err(conflict()),
            None => {
                // The cache holds only objects labelled as the operator's:
                // one of this name may exist without the label.
                match existing(&api, &name).await? {
                    Some(other) if !children::is_child_of(&other, source) => {
                        return Err(conflict());
                    }
                    _ => "missing",
                }
            }
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
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&desired),
            )
            .await
            .map_err(|err| match err {
                // What spec.template adds can be what the API server
                // refuses (a label too long, an affinity without terms).
                kube::Error::Api(status) if status.code == 422 => Error::Rejected {
                    kind: K::kind(&()).into_owned(),
                    name: name.clone(),
                    message: status.message.clone(),
                },
                err => Error::Kube(err),
            })?;
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
}

/// The metadata of the object `name`, if it exists. A `get`, which the API
/// server answers from etcd at once; a `list` by name is answered from its
/// watch cache only once that has caught up with the latest write to any
/// kind, which takes up to a tenth of a second after each write.
pub(super) async fn existing<K>(api: &Api<K>, name: &str) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    Ok(api
        .get_metadata_opt(name)
        .await?
        .map(|object| object.metadata))
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
    use serde_json::json;

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
    fn digests_change_with_content() {
        assert_eq!(digest(&json!({"a": 1})), digest(&json!({"a": 1})));
        assert_ne!(digest(&json!({"a": 1})), digest(&json!({"a": 2})));
    }
}
