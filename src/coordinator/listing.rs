//! Lists the source and plans tasks for what it finds: one pass, or a pass
//! every `pollInterval`. The listing waits while too many objects are in
//! tasks not yet archived, so memory stays bounded however large the
//! source; a later page or pass finds what it has not planned yet.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backon::Retryable;
use jiff::Timestamp;
use tracing::{info, warn};

use sluice_core::api::ObjectRef;

use super::Shared;
use super::tasks::Listed;
use crate::config::SourceConfig;
use crate::{retry, s3};

/// How long the listing waits before looking again for room.
const ROOM_POLL: Duration = Duration::from_millis(50);
/// The first and the longest pause between retries of a failing list
/// request.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Lists until the first pass ends (without `pollInterval`) or forever.
pub async fn run(
    shared: Arc<Shared>,
    client: aws_sdk_s3::Client,
    source: SourceConfig,
    max_live_objects: usize,
) {
    loop {
        pass(&shared, &client, &source, max_live_objects).await;
        let passes = shared.listing_passes.fetch_add(1, Ordering::Relaxed) + 1;
        info!(passes, "listed the source");
        match source.poll_interval {
            Some(interval) => tokio::time::sleep(interval.0).await,
            None => return,
        }
    }
}

async fn pass(
    shared: &Shared,
    client: &aws_sdk_s3::Client,
    source: &SourceConfig,
    max_live_objects: usize,
) {
    let mut continuation: Option<String> = None;
    loop {
        while shared.tasks().live_objects() >= max_live_objects {
            tokio::time::sleep(ROOM_POLL).await;
        }
        let (page, next) = list_page(shared, client, source, continuation).await;
        shared.metrics.listed_objects.inc_by(page.len() as u64);
        if shared.tasks().plan(page, Timestamp::now()) > 0 {
            shared.planned.notify_one();
        }
        match next {
            Some(next) => continuation = Some(next),
            None => return,
        }
    }
}

/// One page of objects and the continuation token of the next, retrying
/// until the request succeeds.
async fn list_page(
    shared: &Shared,
    client: &aws_sdk_s3::Client,
    source: &SourceConfig,
    continuation: Option<String>,
) -> (Vec<Listed>, Option<String>) {
    let request = || {
        client
            .list_objects_v2()
            .bucket(&source.s3.bucket)
            .set_prefix(source.s3.prefix.clone())
            .set_continuation_token(continuation.clone())
            .send()
    };
    let response = request
        .retry(retry::backoff(FIRST_BACKOFF, MAX_BACKOFF))
        .notify(|err, retry_in| {
            shared.metrics.list_errors.inc();
            warn!(
                bucket = %source.s3.bucket,
                error = %s3::describe(err),
                ?retry_in,
                "cannot list the source"
            );
        })
        .await
        .expect("an unlimited backoff ends only in success");
    let next = response
        .is_truncated()
        .unwrap_or(false)
        .then(|| response.next_continuation_token().map(str::to_owned))
        .flatten();
    let page = response.contents.unwrap_or_default().into_iter();
    (page.filter_map(listed).collect(), next)
}

/// An object to ingest, or `None` for a "directory" marker.
fn listed(object: aws_sdk_s3::types::Object) -> Option<Listed> {
    let key = object.key?;
    let size = object.size.unwrap_or(0).max(0) as u64;
    if key.ends_with('/') && size == 0 {
        return None;
    }
    let modified = object
        .last_modified
        .and_then(|time| Timestamp::new(time.secs(), time.subsec_nanos() as i32).ok())
        .unwrap_or_else(Timestamp::now);
    Some(Listed {
        object: ObjectRef {
            key,
            size,
            etag: object.e_tag.unwrap_or_default(),
        },
        modified,
    })
}
