//! The coordinator's API token, in a Secret the operator writes and never
//! reads: the token is derived from the operator's token key and the
//! IngestSource's uid ([`children::token`]), so the operator knows it
//! without a Secret, and holds no right to read any Secret.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::crd::{IngestSource, Names};
use crate::operator::children;

use super::{Context, Error};

impl Context {
    /// Makes sure the token Secret holds `token` and its read token, in one
    /// request when it does (a reconcile that changes nothing changes
    /// nothing stored): a JSON patch that first tests that the Secret is
    /// this source's (its controller owner's uid) and then sets the token;
    /// the Secret is created when there is none. A Secret of that name that
    /// another owner made fails the test and is left as it is:
    /// [`Error::NameConflict`]. For a `new` source (none of its children
    /// cached) the create comes first, as there is rarely a Secret yet, and
    /// the patch follows only when one is there.
    pub(super) async fn ensure_token(
        &self,
        source: &IngestSource,
        names: &Names,
        namespace: &str,
        token: &str,
        new: bool,
    ) -> Result<(), Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let create = || async {
            api.create(
                &PostParams::default(),
                &children::token_secret(source, token),
            )
            .await
            .map(|_| self.metrics.wrote("Secret"))
        };
        if new {
            match create().await {
                Err(kube::Error::Api(status)) if status.is_already_exists() => {}
                created => return Ok(created?),
            }
        }
        let ours_then_token: json_patch::Patch = serde_json::from_value(json!([
            {
                "op": "test",
                "path": "/metadata/ownerReferences/0/uid",
                "value": source.uid().unwrap_or_default(),
            },
            {
                "op": "add",
                "path": "/data",
                "value": children::token_data(token),
            },
        ]))
        .expect("a JSON patch");
        let patched = api
            .patch(
                &names.token,
                &PatchParams::default(),
                &Patch::Json::<()>(ours_then_token),
            )
            .await;
        match patched {
            Ok(_) => Ok(()),
            // None yet. One made in between fails the create (AlreadyExists),
            // and the reconcile's retry patches it.
            Err(kube::Error::Api(status)) if status.is_not_found() && !new => Ok(create().await?),
            // The test failed (or the path is not there: no owner at all).
            Err(kube::Error::Api(status)) if status.code == 422 => Err(Error::NameConflict {
                kind: "Secret".into(),
                name: names.token.clone(),
            }),
            Err(err) => Err(err.into()),
        }
    }
}
