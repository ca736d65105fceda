//! Redriving dead letters: a person asks (`kubectl sluice redrive`) by
//! setting the annotation [`REDRIVE_ANNOTATION`] on the IngestSource; its
//! coordinator queues the objects again, once per request id, and says what
//! it did in `status.lastRedrive` (and in the archive).
//!
//! An annotation, not a subresource: a CustomResourceDefinition can have no
//! subresources but status and scale (another would need an aggregated API
//! server), and an annotation is how Kubernetes asks a controller for a
//! one-off action (`kubectl rollout restart` sets
//! `kubectl.kubernetes.io/restartedAt`; Strimzi and CloudNativePG do the
//! same). It needs the same right as editing the source (`patch`), shows in
//! the audit log and `managedFields`, and does not change the spec, so no
//! pod restarts for it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation that carries a [`RedriveRequest`] as JSON.
pub const REDRIVE_ANNOTATION: &str = "sluice.dev/redrive";

/// Which dead letters to queue again.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RedriveRequest {
    /// Unique per request: a request is carried out once, whatever happens
    /// to the coordinator.
    pub id: String,
    /// These keys, where they failed for good.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Every key that failed for good.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
}

/// What a redrive did.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Redriven {
    /// The request's id.
    pub id: String,
    /// When the coordinator queued the objects.
    pub time: Time,
    /// Objects queued again, in new tasks with fresh attempts.
    pub objects: u64,
    /// Keys asked for that were not failed for good (ingested, unknown, or
    /// queued already): left as they were.
    #[serde(default)]
    pub skipped: u64,
    /// Keys that failed for good but are no longer in the source.
    #[serde(default)]
    pub missing: u64,
}
