//! Publishes the coordinator's counts and bounded task lists into its
//! IngestSource's status, so `kubectl get` and `kubectl describe` show them.
//!
//! Server-side apply on the status subresource with the coordinator's own
//! field manager: it owns the counts, `activeTasks`, `recentFailures` and
//! `coordinatorHeartbeatTime`, and never touches the operator's fields. At
//! most once per interval, and only when something changed or the last
//! write is a heartbeat interval old: the heartbeat tells the operator the
//! coordinator is alive even when an idle source has nothing new to say.
//! The lists are bounded, so the status stays small however many tasks
//! there are.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tracing::{info, warn};

use sluice_core::api::{Summary, TaskView};
use sluice_core::id::SourceId;

use super::Shared;
use crate::crd::{ActiveTask, IngestSource, IngestSourceStatus, TaskFailure};
use crate::crd::{MAX_ACTIVE_TASKS, MAX_RECENT_FAILURES};

/// The coordinator's field manager.
pub const MANAGER: &str = "sluice-coordinator";
/// Errors in the status are cut to this many bytes (the schema's limit).
const MAX_ERROR: usize = 512;
/// `startupError` is cut to this many bytes (the schema's limit).
const MAX_STARTUP_ERROR: usize = 1024;

/// The coordinator's part of the status.
pub fn status(summary: &Summary, running: &[TaskView], failed: &[TaskView]) -> IngestSourceStatus {
    IngestSourceStatus {
        tasks: Some(summary.tasks.clone()),
        objects: Some(summary.objects.clone()),
        bytes_ingested: Some(summary.bytes_ingested),
        records_ingested: Some(summary.records_ingested),
        lag_seconds: Some(summary.lag_seconds),
        last_checkpoint_time: summary.last_checkpoint.map(Time),
        active_tasks: Some(
            running
                .iter()
                .take(MAX_ACTIVE_TASKS)
                .map(|task| ActiveTask {
                    id: task.id.to_string(),
                    worker: task.worker.clone().unwrap_or_default(),
                    objects: task.objects,
                    tries: task.attempt,
                    started: Time(task.started.unwrap_or(task.created)),
                    records: task.records,
                    read_bytes: task.bytes,
                })
                .collect(),
        ),
        recent_failures: Some(
            failed
                .iter()
                .take(MAX_RECENT_FAILURES)
                .map(|task| TaskFailure {
                    id: task.id.to_string(),
                    key: task.first_key.clone(),
                    last_error: cut(task.error.as_deref().unwrap_or_default(), MAX_ERROR),
                    tries: task.attempt,
                    time: Time(task.finished.unwrap_or(task.created)),
                })
                .collect(),
        ),
        ..IngestSourceStatus::default()
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked with
/// an ellipsis when cut.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Whether to write now: something changed, or the last write is
/// `heartbeat` old.
fn due(
    last: Option<&(IngestSourceStatus, Instant)>,
    current: &IngestSourceStatus,
    now: Instant,
    heartbeat: Duration,
) -> bool {
    last.is_none_or(|(written, at)| written != current || now.duration_since(*at) >= heartbeat)
}

/// Applies the status every `interval` while it changes, and at least every
/// `heartbeat`, forever.
pub async fn run(
    shared: Arc<Shared>,
    client: kube::Client,
    namespace: String,
    name: String,
    interval: Duration,
    heartbeat: Duration,
) {
    let api: Api<IngestSource> = Api::namespaced(client, &namespace);
    let mut last: Option<(IngestSourceStatus, Instant)> = None;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let current = {
            let summary = shared.summary();
            let tasks = shared.tasks();
            IngestSourceStatus {
                last_redrive: tasks.last_redrive().cloned(),
                ..status(
                    &summary,
                    &tasks.running(MAX_ACTIVE_TASKS),
                    &tasks.recent_failures(MAX_RECENT_FAILURES),
                )
            }
        };
        let now = Instant::now();
        if !due(last.as_ref(), &current, now, heartbeat) {
            continue;
        }
        match apply(&api, &name, current.clone()).await {
            Ok(_) => {
                shared.metrics.status_writes.inc();
                if last.is_none() {
                    info!(source = %format!("{namespace}/{name}"), "publishing task status");
                }
                last = Some((current, now));
            }
            Err(err) => warn!(error = %err, "cannot publish the status; retrying"),
        }
    }
}

/// Applies `status`, stamped with the heartbeat time, as the coordinator's
/// whole part of the status: what it leaves out, it no longer claims.
async fn apply(
    api: &Api<IngestSource>,
    name: &str,
    status: IngestSourceStatus,
) -> Result<IngestSource, kube::Error> {
    let stamped = IngestSourceStatus {
        coordinator_heartbeat_time: Some(Time(jiff::Timestamp::now())),
        ..status
    };
    let patch = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "IngestSource",
        "status": stamped,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
}

/// Says in the status of `source` that the coordinator cannot start and
/// why (and, by the heartbeat, that it is alive); its counts and lists are
/// gone until it serves again.
pub async fn startup_error(client: &kube::Client, source: &SourceId, why: &str) {
    let api: Api<IngestSource> = Api::namespaced(client.clone(), &source.namespace);
    let status = IngestSourceStatus {
        startup_error: Some(cut(why, MAX_STARTUP_ERROR)),
        ..IngestSourceStatus::default()
    };
    if let Err(err) = apply(&api, &source.name, status).await {
        warn!(error = %err, "cannot publish why the coordinator cannot start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::api::TaskState;
    use sluice_core::id::TaskId;

    fn view(id: u32, state: TaskState, error: Option<String>) -> TaskView {
        TaskView {
            id: TaskId {
                epoch: 1,
                seq: id.into(),
            },
            account: "acme".into(),
            collection: "orders".into(),
            source: "shop/orders".into(),
            state,
            worker: Some(format!("w{id}")),
            attempt: 2,
            objects: 3,
            size: 30,
            first_key: format!("in/{id}.ndjson"),
            records: 7,
            bytes: 70,
            created: "2026-11-24T13:00:00Z".parse().unwrap(),
            started: Some("2026-11-24T13:00:01Z".parse().unwrap()),
            finished: None,
            error,
        }
    }

    #[test]
    fn the_status_stays_small_however_many_tasks_there_are() {
        let summary = Summary {
            tasks: sluice_core::api::TaskCounts {
                pending: 100_000,
                running: 100_000,
                succeeded: 5,
                failed: 100_000,
            },
            ..Summary::default()
        };
        let long_error = "x".repeat(100_000);
        let running: Vec<_> = (0..100_000)
            .map(|i| view(i, TaskState::Running, None))
            .collect();
        let failed: Vec<_> = (0..100_000)
            .map(|i| {
                let error = (i < 100).then(|| long_error.clone());
                view(i, TaskState::Failed, error)
            })
            .collect();
        let status = status(&summary, &running, &failed);
        assert_eq!(
            status.active_tasks.as_ref().unwrap().len(),
            MAX_ACTIVE_TASKS
        );
        assert_eq!(
            status.recent_failures.as_ref().unwrap().len(),
            MAX_RECENT_FAILURES
        );
        let size = serde_json::to_vec(&status).unwrap().len();
        assert!(size < 64 * 1024, "{size} bytes");
        assert_eq!(status.tasks.unwrap().pending, 100_000);
        // The operator's fields are left to the operator.
        assert!(status.phase.is_none() && status.conditions.is_empty() && status.workers.is_none());
    }

    #[test]
    fn writes_on_change_and_on_the_heartbeat_only() {
        let start = Instant::now();
        let heartbeat = Duration::from_secs(60);
        let idle = status(&Summary::default(), &[], &[]);
        assert!(due(None, &idle, start, heartbeat), "the first write");
        let last = (idle.clone(), start);
        let later = |secs| start + Duration::from_secs(secs);
        assert!(!due(Some(&last), &idle, later(59), heartbeat));
        assert!(due(Some(&last), &idle, later(60), heartbeat), "heartbeat");
        let mut busy = idle.clone();
        busy.tasks.as_mut().unwrap().pending = 1;
        assert!(due(Some(&last), &busy, later(1), heartbeat), "a change");
        // The heartbeat's time is stamped on the write, not compared.
        assert!(idle.coordinator_heartbeat_time.is_none());
    }

    #[test]
    fn errors_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short", 512), "short");
        let cut_text = cut(&"é".repeat(400), 512);
        assert!(
            cut_text.len() <= 512 && cut_text.ends_with('…'),
            "{}",
            cut_text.len()
        );
    }
}
