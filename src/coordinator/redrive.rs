//! Carries out redrives of dead letters ([`RedriveRequest`], set as the
//! IngestSource's annotation by `kubectl sluice redrive`): the objects that
//! failed for good are looked up again in the source (HEAD, for their
//! current ETag and size) and queued in new tasks with fresh attempts, once
//! per request id. The next checkpoint holds both the tasks and the id, so
//! a coordinator that restarts before it does the redrive again, and never
//! after. What was done goes into the status (`lastRedrive`) and the
//! archive (`redrives/<namespace>.<name>/<id>.json`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use futures::{StreamExt, stream};
use jiff::Timestamp;
use kube::api::Api;
use tracing::{info, warn};

use sluice_core::api::ObjectRef;
use sluice_core::id::SourceId;
use sluice_core::layout;
use sluice_core::location::S3Location;

use super::Shared;
use super::tasks::Listed;
use crate::crd::{IngestSource, REDRIVE_ANNOTATION, RedriveRequest, Redriven};
use crate::s3;

/// How often the IngestSource is read for a new request.
const POLL: Duration = Duration::from_secs(3);
/// Objects looked up at once.
const PARALLEL_LOOKUPS: usize = 16;

/// Where a redrive looks and writes.
pub struct Stores {
    pub source: aws_sdk_s3::Client,
    pub source_location: S3Location,
    pub archive: aws_sdk_s3::Client,
    pub archive_location: S3Location,
}

/// Reads the source's annotation every [`POLL`] and carries out each new
/// request, forever.
pub async fn run(shared: Arc<Shared>, client: kube::Client, id: SourceId, stores: Stores) {
    let api: Api<IngestSource> = Api::namespaced(client, &id.namespace);
    let mut refused: Option<String> = None;
    loop {
        tokio::time::sleep(POLL).await;
        let source = match api.get(&id.name).await {
            Ok(source) => source,
            Err(err) => {
                warn!(error = %err, "cannot read the IngestSource for redrive requests");
                continue;
            }
        };
        let annotations = source.metadata.annotations.unwrap_or_default();
        let Some(text) = annotations.get(REDRIVE_ANNOTATION) else {
            continue;
        };
        let request: RedriveRequest = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(err) => {
                if refused.as_deref() != Some(text) {
                    warn!(annotation = REDRIVE_ANNOTATION, error = %err, "not a redrive request; ignored");
                    refused = Some(text.clone());
                }
                continue;
            }
        };
        if shared.tasks().redriven(&request.id) {
            continue;
        }
        match redrive(&shared, &request, &stores).await {
            Ok(done) => record(&id, &done, &stores).await,
            Err(err) => warn!(id = request.id, error = %err, "cannot redrive yet; retrying"),
        }
    }
}

/// Looks the request's dead letters up in the source and queues them;
/// returns what it did.
async fn redrive(
    shared: &Shared,
    request: &RedriveRequest,
    stores: &Stores,
) -> Result<Redriven, String> {
    let (keys, skipped) = {
        let tasks = shared.tasks();
        let finished = tasks.finished_keys();
        if request.failed {
            (finished.failed_keys(), 0)
        } else {
            let asked: BTreeSet<&String> = request.keys.iter().collect();
            let failed: Vec<String> = asked
                .iter()
                .filter(|key| finished.get(key).is_some_and(|f| f.failed))
                .map(|key| (*key).clone())
                .collect();
            let skipped = (asked.len() - failed.len()) as u64;
            (failed, skipped)
        }
    };
    let looked_up: Vec<Result<Option<Listed>, String>> = stream::iter(keys)
        .map(|key| look_up(&stores.source, &stores.source_location.bucket, key))
        .buffer_unordered(PARALLEL_LOOKUPS)
        .collect()
        .await;
    let mut found = Vec::new();
    let mut missing = 0;
    for result in looked_up {
        match result? {
            Some(listed) => found.push(listed),
            None => missing += 1,
        }
    }
    let done = shared
        .tasks()
        .requeue(&request.id, found, skipped, missing, Timestamp::now());
    shared.planned.notify_one();
    info!(
        id = done.id,
        objects = done.objects,
        skipped = done.skipped,
        missing = done.missing,
        "redrove dead letters"
    );
    Ok(done)
}

/// The object `key` as it is now, None when it is gone.
async fn look_up(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: String,
) -> Result<Option<Listed>, String> {
    match client.head_object().bucket(bucket).key(&key).send().await {
        Ok(head) => {
            let modified = head
                .last_modified
                .and_then(|time| Timestamp::new(time.secs(), time.subsec_nanos() as i32).ok())
                .unwrap_or_else(Timestamp::now);
            Ok(Some(Listed {
                object: ObjectRef {
                    size: head.content_length.unwrap_or(0).max(0) as u64,
                    etag: head.e_tag.unwrap_or_default(),
                    key,
                },
                modified,
            }))
        }
        Err(err) if s3::status(&err) == Some(404) => Ok(None),
        Err(err) => Err(format!(
            "s3 object {key:?} in bucket {bucket}: {}",
            s3::describe(&err)
        )),
    }
}

/// Writes what a redrive did (`done`) to the archive, for auditors and
/// readers of the archive; a failure is logged, the redrive stands.
async fn record(source: &SourceId, done: &Redriven, stores: &Stores) {
    let key = layout::redrive_record(
        stores.archive_location.prefix.as_deref(),
        &source.namespace,
        &source.name,
        &done.id,
    );
    let body = serde_json::to_vec(done).expect("a redrive serializes");
    let written = stores
        .archive
        .put_object()
        .bucket(&stores.archive_location.bucket)
        .key(&key)
        .content_type("application/json")
        .body(ByteStream::from(body))
        .send()
        .await;
    if let Err(err) = written {
        warn!(key, error = %s3::describe(&err), "cannot record the redrive in the archive");
    }
}
