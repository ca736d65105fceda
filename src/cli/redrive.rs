//! `sluice redrive`: queue an IngestSource's dead letters again. It sets
//! the source's redrive annotation ([`crate::crd::RedriveRequest`]) and
//! waits for its coordinator to say, in `status.lastRedrive`, what it did.

use std::time::Duration;

use clap::Args;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::cluster::{ClusterArgs, ClusterError};
use crate::crd::{IngestSource, REDRIVE_ANNOTATION, RedriveRequest, Redriven};

/// How often the status is read while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Queue objects that failed for good again, with fresh attempts.
///
/// An object that failed every attempt stays failed until it changes. Once
/// what made it fail is fixed (a permission, the sink, a bug), redrive it:
/// the coordinator queues it again in a new task, once per redrive, and
/// says what it did in the IngestSource's status (lastRedrive) and in the
/// archive (redrives/NAMESPACE.NAME/ID.json). Objects that were ingested
/// are never ingested again this way.
///
/// It sets the annotation sluice.dev/redrive on the IngestSource, so it
/// needs `patch` on it (the namespace's edit and admin roles have it).
///
/// Examples:
///   kubectl sluice redrive orders --failed
///   kubectl sluice redrive orders --key in/2026/11/24/part-0977.ndjson
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct RedriveArgs {
    /// The IngestSource (in the namespace of -n).
    #[arg(value_name = "SOURCE")]
    pub source: String,

    /// The key of an object that failed for good; repeat for more.
    #[arg(long = "key", value_name = "KEY", required_unless_present = "failed")]
    pub keys: Vec<String>,

    /// Every object that failed for good.
    #[arg(long, conflicts_with = "keys")]
    pub failed: bool,

    /// How long to wait for the coordinator to do it, as a duration such as
    /// 30s; 0 does not wait.
    #[arg(long, default_value = "2m", value_parser = sluice_core::duration::parse_std)]
    pub timeout: Duration,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot ask for the redrive: {0}")]
    Refused(kube::Error),
    #[error(
        "the coordinator of IngestSource {shown} has not done redrive {id} within {waited}; \
         it will once it runs (see `kubectl describe isrc {name}`)"
    )]
    NotYet {
        shown: String,
        name: String,
        id: String,
        waited: sluice_core::duration::Duration,
    },
}

/// Asks for the redrive and waits for it to be done.
pub async fn run(args: RedriveArgs) -> Result<(), RedriveError> {
    let cluster = args.cluster.connect().await?;
    let source = cluster.sources(Some(&args.source)).await?.remove(0);
    let namespace = source.namespace().unwrap_or_default();
    let shown = format!("{namespace}/{}", source.name_any());
    let request = RedriveRequest {
        id: format!(
            "{}-{:08x}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ"),
            rand::random::<u32>()
        ),
        keys: args.keys.clone(),
        failed: args.failed,
    };
    let api: Api<IngestSource> = Api::namespaced(cluster.client.clone(), &namespace);
    let text = serde_json::to_string(&request).expect("a redrive request serializes");
    let patch = json!({"metadata": {"annotations": {REDRIVE_ANNOTATION: text}}});
    api.patch(&args.source, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(RedriveError::Refused)?;
    eprintln!(
        "asked the coordinator of IngestSource {shown} for redrive {}",
        request.id
    );
    if args.timeout.is_zero() {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    loop {
        let done = api
            .get_status(&args.source)
            .await
            .ok()
            .and_then(|source| source.status?.last_redrive)
            .filter(|done| done.id == request.id);
        if let Some(done) = done {
            println!("{}", summary(&done));
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RedriveError::NotYet {
                shown,
                name: args.source.clone(),
                id: request.id,
                waited: sluice_core::duration::Duration(args.timeout),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What a person reads once the redrive is done.
fn summary(done: &Redriven) -> String {
    let mut text = format!(
        "redrive {}: {} objects queued again with fresh attempts",
        done.id, done.objects
    );
    if done.skipped > 0 {
        text.push_str(&format!(
            "; {} not failed for good (ingested, queued or unknown), left as they were",
            done.skipped
        ));
    }
    if done.missing > 0 {
        text.push_str(&format!("; {} no longer in the source", done.missing));
    }
    text
}
