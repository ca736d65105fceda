//! Reading the archive: listing only the partitions a query can match,
//! then fetching and scanning the objects in parallel.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use jiff::{SignedDuration, Timestamp};

use sluice_core::api::TaskState;
use sluice_core::archive::{self, ObjectKey};

use super::progress::Progress;
use super::query::{Collected, Matcher, Scanned, Stats};
use crate::s3;

/// Partition listings in flight at once.
const PARALLEL_LISTS: usize = 16;
/// The first bytes of an object read when only the frames of one state
/// are wanted: the index, and often the failed tasks' frame too.
const HEAD_BYTES: u64 = 64 << 10;
/// Object reads in flight at once: enough to keep the store busy while
/// earlier objects are scanned.
const PARALLEL_READS: usize = 16;

/// An archive location and a client that may read it.
pub struct Archive {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    pub prefix: Option<String>,
    /// The endpoint, for messages (AWS S3 when none).
    pub endpoint: Option<String>,
    /// Said with any error reading it, for example why the credentials of
    /// the environment were used.
    pub note: Option<String>,
    /// The environment's credentials, when the client uses them: checked
    /// first, so that their absence is said as such.
    pub environment: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
}

/// What went wrong reading an archive.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the archive {url} at {endpoint}: {reason}{note}")]
pub struct Unreachable {
    pub url: String,
    pub endpoint: String,
    pub reason: String,
    note: String,
}

/// One archive object to read.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Which of the archives.
    pub archive: usize,
    pub key: String,
    pub size: u64,
}

impl Archive {
    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        format!(
            "s3://{}/{}",
            self.bucket,
            self.prefix.as_deref().unwrap_or("").trim_end_matches('/')
        )
        .trim_end_matches('/')
        .to_owned()
    }

    fn unreachable(&self, reason: String) -> Unreachable {
        Unreachable {
            url: self.url(),
            endpoint: self
                .endpoint
                .clone()
                .unwrap_or_else(|| "AWS S3 (no endpoint set)".into()),
            reason,
            note: self
                .note
                .as_deref()
                .map(|note| format!(" ({note})"))
                .unwrap_or_default(),
        }
    }

    /// Fails when no credentials can be found, saying where they are
    /// looked for (the request itself would only say it could not sign).
    pub async fn check_credentials(&self) -> Result<(), Unreachable> {
        use aws_sdk_s3::config::ProvideCredentials;
        let Some(provider) = &self.environment else {
            return Ok(());
        };
        provider
            .provide_credentials()
            .await
            .map(|_| ())
            .map_err(|err| {
                self.unreachable(format!(
                    "no AWS credentials ({}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY \
                     or AWS_PROFILE, or SLUICE_ARCHIVE_AWS_ACCESS_KEY_ID and \
                     SLUICE_ARCHIVE_AWS_SECRET_ACCESS_KEY",
                    chain(&err)
                ))
            })
    }

    fn tasks_prefix(&self) -> String {
        archive::tasks_prefix(self.prefix.as_deref())
    }

    /// The objects that can hold a match of `matcher` at `now`: the day
    /// partitions in the window are found with one listing, then each hour
    /// partition in the window is listed (below the account, collection and
    /// source the filter fixes), and the keys are tested.
    pub async fn list(
        &self,
        index: usize,
        matcher: &Matcher,
        now: Timestamp,
    ) -> Result<Vec<Listed>, Unreachable> {
        let filter = matcher.filter();
        let (first, last) = filter.hours(now);
        let tasks = self.tasks_prefix();
        let days = self.days(&tasks, first, last).await?;
        let below = filter.key_prefix();
        let mut prefixes = Vec::new();
        for day in days {
            let mut hour = day.max(first);
            while hour <= last && hour < day + SignedDuration::from_hours(24) {
                prefixes.push(format!("{tasks}{}/{below}", archive::partition(hour)));
                hour += SignedDuration::from_hours(1);
            }
        }
        let pages: Vec<Vec<(String, u64)>> = futures::stream::iter(prefixes)
            .map(|prefix| self.keys(prefix))
            .buffer_unordered(PARALLEL_LISTS)
            .try_collect()
            .await?;
        let mut listed: Vec<Listed> = pages
            .into_iter()
            .flatten()
            .filter(|(key, _)| {
                key.strip_prefix(&tasks)
                    .and_then(ObjectKey::parse)
                    .is_some_and(|parsed| filter.may_hold(&parsed, now))
            })
            .map(|(key, size)| Listed {
                archive: index,
                key,
                size,
            })
            .collect();
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// The starts of the days from `first`'s to `last`'s that have a
    /// partition.
    async fn days(
        &self,
        tasks: &str,
        first: Timestamp,
        last: Timestamp,
    ) -> Result<Vec<Timestamp>, Unreachable> {
        let day_of = |at: Timestamp| {
            let second = at.as_second();
            Timestamp::from_second(second - second.rem_euclid(86_400))
                .expect("a day start is in range")
        };
        let (first_day, last_day) = (day_of(first), day_of(last));
        // Keys sort by date: start right before the first day's partition.
        let start_after = format!("{tasks}{}", archive::day_partition(first_day));
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(tasks)
            .delimiter("/")
            .start_after(start_after)
            .into_paginator()
            .send();
        let mut days = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| self.unreachable(reason(&err)))?;
            for common in page.common_prefixes() {
                let Some(day) = common
                    .prefix()
                    .and_then(|p| p.strip_prefix(tasks))
                    .and_then(archive::day_of_partition)
                else {
                    continue;
                };
                if day > last_day {
                    return Ok(days);
                }
                if day >= first_day {
                    days.push(day);
                }
            }
        }
        Ok(days)
    }

    /// Every key under `prefix`, with its size.
    async fn keys(&self, prefix: String) -> Result<Vec<(String, u64)>, Unreachable> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .into_paginator()
            .send();
        let mut keys = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|err| self.unreachable(reason(&err)))?;
            keys.extend(page.contents().iter().filter_map(|object| {
                Some((
                    object.key()?.to_owned(),
                    object.size().unwrap_or(0).max(0) as u64,
                ))
            }));
        }
        Ok(keys)
    }

    /// The bytes of one object, or of the inclusive byte range of it, and
    /// the index in its metadata (None when it has none).
    async fn get(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(bytes::Bytes, Option<String>), String> {
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_range(range.map(|(first, last)| format!("bytes={first}-{last}")))
            .send()
            .await
            .map_err(|err| reason(&err))?;
        let index = response
            .metadata()
            .and_then(|metadata| metadata.get(archive::INDEX_METADATA))
            .cloned();
        let body = response
            .body
            .collect()
            .await
            .map_err(|err| format!("the download broke off: {err}"))?;
        Ok((body.into_bytes(), index))
    }

    /// The zstd bytes of `object` that can hold records in `state`: with
    /// a state, the first bytes are read, and the object's index (in the
    /// metadata that comes with them, or at their start in the legacy
    /// layout) says which frames hold it; only those are fetched.
    async fn fetch(
        &self,
        object: &Listed,
        state: Option<TaskState>,
    ) -> Result<bytes::Bytes, String> {
        let whole = || async { Ok(self.get(&object.key, None).await?.0) };
        let Some(state) = state else {
            return whole().await;
        };
        let (head, metadata) = self
            .get(
                &object.key,
                (object.size > HEAD_BYTES).then_some((0, HEAD_BYTES - 1)),
            )
            .await?;
        let index = match metadata {
            Some(text) => text.parse().ok().map(|index| (index, 0)),
            None => archive::legacy_index(&head),
        };
        let Some((index, start)) = index else {
            return match head.len() as u64 >= object.size {
                true => Ok(head),
                false => whole().await,
            };
        };
        match index.range_of(state, start as u64, object.size) {
            Ok(None) => Ok(bytes::Bytes::new()),
            Ok(Some(range)) if range.end <= head.len() as u64 => {
                Ok(head.slice(range.start as usize..range.end as usize))
            }
            Ok(Some(range)) => Ok(self
                .get(&object.key, Some((range.start, range.end - 1)))
                .await?
                .0),
            // The index does not fit the object: read it whole, which
            // reads or names what is in it.
            Err(_) => whole().await,
        }
    }
}

/// What a query collects.
pub enum Mode {
    /// The matches, the latest `limit` of them when set.
    List(Option<usize>),
    /// Counts.
    Stats,
}

/// The result of reading the archives.
pub struct Outcome {
    pub matches: Collected,
    pub stats: Stats,
    /// Objects read, and their bytes.
    pub objects: usize,
    pub bytes: u64,
    /// Objects or lines that could not be read, each with its object and why.
    pub problems: Vec<String>,
}

/// What one object gave.
enum Found {
    Matches(Collected),
    Stats(Stats),
}

/// Reads `objects` (from `archives`) in parallel, each scanned on the
/// blocking pool as soon as it arrived.
pub async fn read(
    archives: &[Archive],
    objects: Vec<Listed>,
    matcher: Arc<Matcher>,
    mode: Mode,
    mut progress: Progress,
) -> Outcome {
    let total_bytes = objects.iter().map(|object| object.size).sum();
    progress.start(objects.len(), total_bytes);
    let limit = match mode {
        Mode::List(limit) => Some(limit),
        Mode::Stats => None,
    };
    let mut outcome = Outcome {
        matches: Collected::new(limit.flatten()),
        stats: Stats::default(),
        objects: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    let mut results = futures::stream::iter(objects)
        .map(|object| {
            let matcher = matcher.clone();
            let archive = &archives[object.archive];
            async move {
                let url = format!("s3://{}/{}", archive.bucket, object.key);
                let bytes = archive
                    .fetch(&object, matcher.filter().state)
                    .await
                    .map_err(|reason| format!("{url}: {reason}"))?;
                let size = bytes.len() as u64;
                let scanned = tokio::task::spawn_blocking(move || {
                    let lines = archive::decompress(&bytes)?;
                    Ok::<_, String>(match limit {
                        Some(limit) => {
                            let mut found = Collected::new(limit);
                            let scanned = matcher.scan(&lines, &mut found);
                            (Found::Matches(found), scanned)
                        }
                        None => {
                            let mut found = Stats::default();
                            let scanned = matcher.scan(&lines, &mut found);
                            (Found::Stats(found), scanned)
                        }
                    })
                })
                .await
                .map_err(|err| format!("{url}: scanning failed: {err}"))?
                .map_err(|reason| format!("{url}: {reason}"))?;
                Ok::<_, String>((url, size, scanned))
            }
        })
        .buffer_unordered(PARALLEL_READS);
    while let Some(result) = results.next().await {
        match result {
            Ok((url, size, (found, Scanned { damaged }))) => {
                outcome.objects += 1;
                outcome.bytes += size;
                outcome
                    .problems
                    .extend(damaged.into_iter().map(|why| format!("{url}: {why}")));
                match found {
                    Found::Matches(found) => outcome.matches.merge(found),
                    Found::Stats(found) => outcome.stats.merge(found),
                }
            }
            Err(problem) => outcome.problems.push(problem),
        }
        progress.advance(
            outcome.objects + outcome.problems.len(),
            outcome.bytes,
            outcome.matches.seen + outcome.stats.tasks,
        );
    }
    progress.finish();
    outcome
}

/// An S3 error as a person reads it: the server's code and message, or
/// what failed on the way, cause by cause.
fn reason<E, R>(err: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match err {
        aws_sdk_s3::error::SdkError::ServiceError(_) => s3::describe(err),
        _ => chain(err),
    }
}

/// An error and its causes, joined, without repeating a cause that its
/// effect already says.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}
