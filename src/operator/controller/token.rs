//! The coordinator's API token: a Secret the operator creates once.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::ObjectRef;

use crate::crd::{IngestSource, Names};
use crate::operator::children::{self, TOKEN_KEY};

use super::apply::existing;
use super::{Context, Error, MANAGER};

impl Context {
    /// The token from the token Secret, creating the Secret the first time
    /// and a new token when someone removed it. The token comes from the
    /// cache or from the operator's own write: it never gets a Secret.
    pub(super) async fn token(
        &self,
        source: &IngestSource,
        names: &Names,
        namespace: &str,
    ) -> Result<String, Error> {
        let cached = self
            .stores
            .tokens
            .get(&ObjectRef::new(&names.token).within(namespace));
        let source_name = source.name_any();
        let conflict = || Error::NameConflict {
            kind: "Secret".into(),
            name: names.token.clone(),
        };
        if let Some(cached) = cached.as_deref() {
            if !children::is_child_of(&cached.metadata, &source_name) {
                return Err(conflict());
            }
            if let Some(token) = token_of(cached) {
                return Ok(token);
            }
        }
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let fresh = children::token_secret(source, &children::new_token());
        if cached.is_some() {
            // Ours, and its token removed by hand: a new one.
            let repaired = api
                .patch(
                    &names.token,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&fresh),
                )
                .await?;
            self.metrics.wrote("Secret");
            return Ok(token_of(&repaired).unwrap_or_default());
        }
        match api.create(&PostParams::default(), &fresh).await {
            Ok(created) => {
                self.metrics.wrote("Secret");
                Ok(token_of(&created).unwrap_or_default())
            }
            // Ours, created a moment ago and not cached yet (the next
            // reconcile finds it there), or someone else's, left alone.
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                let ours = existing(&api, &names.token)
                    .await?
                    .is_some_and(|meta| children::is_child_of(&meta, &source_name));
                Err(if ours {
                    Error::NotCached {
                        kind: "Secret".into(),
                        name: names.token.clone(),
                    }
                } else {
                    conflict()
                })
            }
            Err(err) => Err(err.into()),
        }
    }
}

fn token_of(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(TOKEN_KEY)?;
    String::from_utf8(bytes.0.clone())
        .ok()
        .filter(|token| !token.is_empty())
}
