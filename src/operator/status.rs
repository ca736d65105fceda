//! The operator's part of an IngestSource's status, computed as a pure
//! function of the IngestSource (with what its coordinator published), what
//! its Deployments report, what is wrong and the time, and the Events worth
//! telling a person about.
//!
//! The operator owns `observedGeneration`, `phase`, `conditions` and
//! `workers`; the coordinator owns the rest, under its own field manager.
//! Before the coordinator's first report the phase follows the Deployments
//! (Pending until they are ready, then Running); after it, the phase follows
//! the coordinator's counts: Running while tasks are pending or running,
//! Idle when caught up, Degraded while a task failed for good recently
//! (TasksFailed), when the coordinator stopped reporting
//! (CoordinatorUnavailable) or reports that it cannot use its checkpoint
//! (CheckpointUnusable).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{IngestSource, IngestSourceStatus, Phase, TaskFailure, WorkersStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";

pub const TASKS_FAILED: &str = "TasksFailed";
pub const COORDINATOR_UNAVAILABLE: &str = "CoordinatorUnavailable";
pub const CHECKPOINT_UNUSABLE: &str = "CheckpointUnusable";

/// How the operator judges the coordinator's reports (its flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A coordinator that has not reported for this long is unavailable.
    pub coordinator_timeout: Duration,
    /// A task that failed for good keeps its source Degraded this long.
    pub failure_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            coordinator_timeout: Duration::from_secs(180),
            failure_window: Duration::from_secs(3600),
        }
    }
}

/// How far a Deployment has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rollout {
    /// Pods wanted.
    pub desired: i32,
    /// Pods that exist.
    pub current: i32,
    /// Pods ready.
    pub ready: i32,
    /// The Deployment controller has seen the latest spec and every pod runs
    /// the latest template.
    pub complete: bool,
}

impl Rollout {
    pub fn of(deployment: &Deployment) -> Self {
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        let seen =
            status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
        let current = status.replicas.unwrap_or(0);
        Self {
            desired,
            current,
            ready: status.ready_replicas.unwrap_or(0),
            complete: seen && status.updated_replicas.unwrap_or(0) >= desired && current == desired,
        }
    }

    /// Complete, with every wanted pod ready.
    pub fn settled(self) -> bool {
        self.complete && self.ready >= self.desired
    }
}

/// Something that keeps an IngestSource from running as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The schema let the spec through, but sluice cannot use it.
    InvalidSpec(String),
    /// A credentials Secret the spec names does not exist.
    CredentialsSecretNotFound { secret: String, field: &'static str },
    /// An object of one of the source's children's names exists and is not
    /// its child (someone else's): sluice leaves it alone.
    NameConflict { kind: String, name: String },
}

impl Problem {
    fn reason(&self) -> &'static str {
        match self {
            Problem::InvalidSpec(_) => "InvalidSpec",
            Problem::CredentialsSecretNotFound { .. } => "CredentialsSecretNotFound",
            Problem::NameConflict { .. } => "NameConflict",
        }
    }

    fn message(&self) -> String {
        match self {
            Problem::InvalidSpec(why) => format!("{why}; fix the IngestSource to continue"),
            Problem::CredentialsSecretNotFound { secret, field } => format!(
                "Secret {secret:?} named in {field}.credentialsSecretRef does not exist; \
                 create it with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            ),
            Problem::NameConflict { kind, name } => format!(
                "{kind} {name:?} already exists and was not made by this IngestSource; \
                 sluice does not take over objects it did not create: delete or rename \
                 that {kind}, or give the IngestSource another name"
            ),
        }
    }
}

/// What the operator observed of one IngestSource.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// None while the Deployment does not exist.
    pub coordinator: Option<Rollout>,
    pub workers: Option<Rollout>,
    /// Why the coordinator's and the workers' pods are not ready, as a
    /// pod of each says ([`pod_trouble`]), while their rollout is not
    /// settled.
    pub coordinator_pods: Option<String>,
    pub worker_pods: Option<String>,
    pub problem: Option<Problem>,
    /// The worker count spec.workers.autoscale chose, when it is set.
    pub autoscaled: Option<i32>,
}

/// The coordinator's report, as the operator judges it at some moment.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Report<'a> {
    /// It has not reported yet (no heartbeat).
    Missing,
    /// It has not reported for too long; `since` is its last heartbeat.
    Stale { since: &'a Time },
    /// It is alive but cannot use its checkpoint, and says why.
    Blocked { why: &'a str },
    Fresh {
        /// Tasks pending or running.
        work: u64,
        /// The latest task failed for good, while it is recent.
        failing: Option<&'a TaskFailure>,
        /// Tasks failed for good in all.
        failed: u64,
    },
}

/// Judges the coordinator's part of `status` at `now`. A coordinator gets
/// the timeout from its last heartbeat or from the last rollout change
/// (`rollout_changed`), whichever is later: one that was just resumed or
/// rolled out has had no chance to report yet. Also returns when the
/// judgement changes next, if nothing is written meanwhile.
fn judge<'a>(
    status: Option<&'a IngestSourceStatus>,
    rollout_changed: Timestamp,
    now: Timestamp,
    limits: &Limits,
) -> (Report<'a>, Option<Timestamp>) {
    let Some((status, heartbeat)) =
        status.and_then(|s| Some((s, s.coordinator_heartbeat_time.as_ref()?)))
    else {
        return (Report::Missing, None);
    };
    let stale_at = later(heartbeat.0.max(rollout_changed), limits.coordinator_timeout);
    if now >= stale_at {
        return (Report::Stale { since: heartbeat }, None);
    }
    if let Some(why) = status.startup_error.as_deref() {
        return (Report::Blocked { why }, Some(stale_at));
    }
    let failing = status
        .recent_failures
        .iter()
        .flatten()
        .max_by_key(|failure| failure.time.0)
        .map(|failure| (failure, later(failure.time.0, limits.failure_window)))
        .filter(|(_, until)| now < *until);
    let tasks = status.tasks.clone().unwrap_or_default();
    let recheck = failing.map_or(stale_at, |(_, until)| until.min(stale_at));
    let report = Report::Fresh {
        work: tasks.pending + tasks.running,
        failing: failing.map(|(failure, _)| failure),
        failed: tasks.failed,
    };
    (report, Some(recheck))
}

fn later(time: Timestamp, by: Duration) -> Timestamp {
    time.checked_add(by).unwrap_or(Timestamp::MAX)
}

/// The operator's status fields, and when to look again if nothing changes
/// meanwhile (when the coordinator would go stale or a failure leaves the
/// window).
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    pub status: IngestSourceStatus,
    pub recheck_at: Option<Timestamp>,
}

/// The operator's status fields for `source`. Conditions keep their
/// `lastTransitionTime` while their status does not change.
pub fn compute(
    source: &IngestSource,
    observed: &Observed,
    now: &Time,
    limits: &Limits,
) -> Computed {
    let spec = &source.spec;
    let generation = source.metadata.generation;
    let old_conditions = source
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let last_transition_time = old_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };

    let desired_workers = if spec.suspend {
        0
    } else {
        observed.autoscaled.unwrap_or(spec.workers.replicas)
    };
    let coordinator = observed.coordinator.unwrap_or_default();
    let workers = observed.workers.unwrap_or_default();
    let names = crate::crd::Names::of(source);
    let namespace = source.namespace().unwrap_or_default();
    let settled = observed.coordinator.is_some_and(Rollout::settled)
        && observed.workers.is_some_and(Rollout::settled);

    let progressing = if settled {
        condition(
            PROGRESSING,
            false,
            "RolloutComplete",
            "the coordinator and the workers run the latest spec".to_owned(),
        )
    } else {
        let waiting: Vec<String> = [
            (
                &names.coordinator,
                observed.coordinator,
                &observed.coordinator_pods,
            ),
            (&names.worker, observed.workers, &observed.worker_pods),
        ]
        .into_iter()
        .filter(|(_, rollout, _)| !rollout.is_some_and(Rollout::settled))
        .map(|(name, rollout, pods)| match (rollout, pods) {
            (None, _) => format!("{name} (not created yet)"),
            (Some(r), None) => format!("{name} ({} of {} ready)", r.ready, r.desired),
            (Some(r), Some(why)) => format!("{name} ({} of {} ready: {why})", r.ready, r.desired),
        })
        .collect();
        condition(
            PROGRESSING,
            true,
            "RollingOut",
            format!("waiting for {}", waiting.join(" and ")),
        )
    };

    // A rollout that began now (say, a resume) counts from now; on the
    // first status there was none.
    let rollout_changed = if old_conditions.iter().any(|c| c.type_ == PROGRESSING) {
        progressing.last_transition_time.0
    } else {
        Timestamp::MIN
    };
    let (report, recheck_at) = if spec.suspend || observed.problem.is_some() {
        (Report::Missing, None)
    } else {
        judge(source.status.as_ref(), rollout_changed, now.0, limits)
    };
    // Why the source needs a person, if it does.
    let trouble: Option<(&str, String)> = match (&observed.problem, report) {
        (Some(problem), _) => Some((problem.reason(), problem.message())),
        (None, Report::Stale { since }) => Some((
            COORDINATOR_UNAVAILABLE,
            format!(
                "the coordinator has not reported since {} (for more than {}); \
                 see `kubectl logs deployment/{coordinator} -n {namespace}` \
                 and `kubectl describe deployment {coordinator} -n {namespace}`",
                since.0,
                sluice_core::duration::Duration(limits.coordinator_timeout),
                coordinator = names.coordinator,
            ),
        )),
        (None, Report::Blocked { why }) => Some((
            CHECKPOINT_UNUSABLE,
            format!(
                "the coordinator cannot start: {why}. It tries again within a minute; see \
                 `kubectl logs deployment/{coordinator} -n {namespace}`",
                coordinator = names.coordinator,
            ),
        )),
        (
            None,
            Report::Fresh {
                failing: Some(failure),
                failed,
                ..
            },
        ) => Some((
            TASKS_FAILED,
            tasks_failed_message(source, failure, failed, limits),
        )),
        _ => None,
    };

    let (ready, ready_reason, ready_message) = if let Some(problem) = &observed.problem {
        (false, problem.reason(), problem.message())
    } else if spec.suspend {
        (
            false,
            "Suspended",
            "spec.suspend is true: the coordinator and the workers are scaled to zero".to_owned(),
        )
    } else if let Some((reason, message)) = &trouble {
        (false, *reason, message.clone())
    } else if coordinator.ready < 1 {
        (
            false,
            "CoordinatorNotReady",
            format!(
                "Deployment {} has no ready pod yet{}",
                names.coordinator,
                because(&observed.coordinator_pods)
            ),
        )
    } else if workers.ready < desired_workers {
        (
            false,
            "WorkersNotReady",
            format!(
                "{} of {desired_workers} workers are ready (Deployment {}){}",
                workers.ready,
                names.worker,
                because(&observed.worker_pods)
            ),
        )
    } else {
        (
            true,
            "Ready",
            format!("the coordinator and {desired_workers} workers are ready"),
        )
    };

    let degraded = match trouble {
        Some((reason, message)) => condition(DEGRADED, true, reason, message),
        None => condition(
            DEGRADED,
            false,
            "AsExpected",
            "nothing needs attention".to_owned(),
        ),
    };

    let phase = match (&observed.problem, report) {
        (Some(Problem::InvalidSpec(_)), _) => Phase::Failed,
        (Some(_), _) => Phase::Degraded,
        (None, _) if spec.suspend => Phase::Suspended,
        (None, Report::Stale { .. } | Report::Blocked { .. }) => Phase::Degraded,
        (
            None,
            Report::Fresh {
                failing: Some(_), ..
            },
        ) => Phase::Degraded,
        (None, Report::Fresh { work: 0, .. }) => Phase::Idle,
        (None, Report::Fresh { .. }) => Phase::Running,
        (None, Report::Missing) if ready => Phase::Running,
        (None, Report::Missing) => Phase::Pending,
    };

    let status = IngestSourceStatus {
        observed_generation: generation,
        phase: Some(phase),
        conditions: vec![
            condition(READY, ready, ready_reason, ready_message),
            progressing,
            degraded,
        ],
        workers: Some(WorkersStatus {
            desired: desired_workers,
            replicas: workers.current,
            ready: workers.ready,
            summary: format!("{}/{desired_workers}", workers.ready),
            selector: super::children::worker_selector(source),
        }),
        ..IngestSourceStatus::default()
    };
    Computed { status, recheck_at }
}

/// ": WHY", or nothing.
fn because(why: &Option<String>) -> String {
    why.as_deref()
        .map(|why| format!(": {why}"))
        .unwrap_or_default()
}

/// Why `pod` does not run as it should, as its status says: it cannot be
/// scheduled, or its container cannot start (image not pulled, a missing
/// Secret or ConfigMap, crash looping). None while it is fine or on its
/// way (being created, pulling, starting).
pub fn pod_trouble(pod: &Pod) -> Option<String> {
    const STUCK: [&str; 7] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    ];
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let status = pod.status.as_ref()?;
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == "PodScheduled" && condition.status == "False");
    if let Some(condition) = unscheduled {
        let reason = condition.reason.as_deref().unwrap_or("Unschedulable");
        let message = condition.message.as_deref().unwrap_or_default();
        return Some(format!("pod {name} is {reason}: {message}"));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .chain(&status.container_statuses);
    containers.flatten().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| STUCK.contains(r))?;
        let message = waiting.message.as_deref().unwrap_or_default();
        Some(format!("pod {name}: {reason}: {message}"))
    })
}

/// What a person reads when tasks failed for good: the latest failure, and
/// where to find the others.
fn tasks_failed_message(
    source: &IngestSource,
    failure: &TaskFailure,
    failed: u64,
    limits: &Limits,
) -> String {
    let failed = failed.max(1);
    let tasks = if failed == 1 { "task" } else { "tasks" };
    format!(
        "{failed} {tasks} failed for good; the latest, {id}, at {time} after {tries} tries \
         (key {key:?}): {error}. status.recentFailures lists the latest; \
         `kubectl sluice history --account {account} --collection {collection} --state failed --since {window}` \
         lists every one",
        id = failure.id,
        time = failure.time.0,
        tries = failure.tries,
        key = failure.key,
        error = failure.last_error,
        account = source.spec.account,
        collection = source.spec.collection,
        window = sluice_core::duration::Duration(limits.failure_window),
    )
}

/// Whether the operator's fields of `current` already say what `new` says.
pub fn unchanged(current: Option<&IngestSourceStatus>, new: &IngestSourceStatus) -> bool {
    current.is_some_and(|current| {
        current.observed_generation == new.observed_generation
            && current.phase == new.phase
            && current.conditions == new.conditions
            && current.workers == new.workers
    })
}

/// An Event to record on the IngestSource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// The Events a status change is worth: a problem appearing or clearing,
/// suspending and resuming.
pub fn notices(source: &IngestSource, new: &IngestSourceStatus) -> Vec<Notice> {
    let old = source.status.as_ref();
    let old_phase = old.and_then(|s| s.phase);
    let degraded = |status: Option<&IngestSourceStatus>| {
        status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == DEGRADED))
            .filter(|c| c.status == "True")
            .map(|c| (c.reason.clone(), c.message.clone()))
    };
    let mut notices = Vec::new();
    match (degraded(old), degraded(Some(new))) {
        (old, Some((reason, message))) if old.as_ref().map(|o| &o.0) != Some(&reason) => {
            notices.push(Notice {
                warning: true,
                reason,
                note: message,
            });
        }
        (Some((reason, _)), None) => notices.push(Notice {
            warning: false,
            reason: "Recovered".into(),
            note: format!("recovered: {reason} no longer applies"),
        }),
        _ => {}
    }
    match (old_phase, new.phase) {
        // Also from no phase: the first status may already be Suspended when
        // the operator sees the edit before its own first status write.
        (old, Some(Phase::Suspended)) if old != Some(Phase::Suspended) => notices.push(Notice {
            warning: false,
            reason: "Suspended".into(),
            note: format!(
                "{} is suspended: coordinator and workers scaled to zero",
                source.name_any()
            ),
        }),
        (Some(Phase::Suspended), Some(new)) if new != Phase::Suspended => notices.push(Notice {
            warning: false,
            reason: "Resumed".into(),
            note: "resuming from the last checkpoint".into(),
        }),
        _ => {}
    }
    notices
}

/// The part of what the coordinator publishes that the operator acts on:
/// whether it has reported, whether there is work, the latest failure, and
/// its heartbeat only while it is judged unavailable. Count updates that
/// change none of this (an ingest moving along) need not wake the operator;
/// time-driven changes (a heartbeat going stale, a failure leaving the
/// window) are rechecked at [`Computed::recheck_at`].
pub fn coordinator_inputs(source: &IngestSource) -> String {
    let Some(status) = &source.status else {
        return String::new();
    };
    let unavailable = status
        .conditions
        .iter()
        .any(|c| c.type_ == DEGRADED && c.status == "True" && c.reason == COORDINATOR_UNAVAILABLE);
    let tasks = status.tasks.clone().unwrap_or_default();
    let latest_failure = status
        .recent_failures
        .iter()
        .flatten()
        .max_by_key(|failure| failure.time.0);
    serde_json::json!({
        "reported": status.coordinator_heartbeat_time.is_some(),
        "heartbeat": unavailable.then_some(&status.coordinator_heartbeat_time),
        "work": tasks.pending + tasks.running > 0,
        "failed": tasks.failed,
        "latestFailure": latest_failure,
        "workers": source.spec.workers.autoscale.as_ref().map(|autoscale| {
            super::autoscale::recommend(autoscale, status.tasks.as_ref()).replicas
        }),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AutoscaleSpec;
    use sluice_core::api::TaskCounts;

    const LIMITS: Limits = Limits {
        coordinator_timeout: Duration::from_secs(180),
        failure_window: Duration::from_secs(3600),
    };

    fn source() -> IngestSource {
        let mut source: IngestSource =
            serde_yaml::from_str(include_str!("../../examples/orders.yaml")).unwrap();
        source.metadata.generation = Some(3);
        source.metadata.namespace = Some("shop".into());
        source
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn settled(desired: i32) -> Option<Rollout> {
        Some(Rollout {
            desired,
            current: desired,
            ready: desired,
            complete: true,
        })
    }

    fn all_ready() -> Observed {
        Observed {
            coordinator: settled(1),
            workers: settled(2),
            ..Observed::default()
        }
    }

    fn status_at(source: &IngestSource, observed: &Observed, seconds: i64) -> IngestSourceStatus {
        compute(source, observed, &at(seconds), &LIMITS).status
    }

    /// `source` after the operator wrote what it computed at `seconds`.
    fn settle(source: &mut IngestSource, observed: &Observed, seconds: i64) -> IngestSourceStatus {
        let status = status_at(source, observed, seconds);
        keep(source, &status);
        status
    }

    /// Writes the operator's fields of `status` into `source`, keeping the
    /// coordinator's, as server-side apply does.
    fn keep(source: &mut IngestSource, status: &IngestSourceStatus) {
        let mut merged = source.status.clone().unwrap_or_default();
        merged.observed_generation = status.observed_generation;
        merged.phase = status.phase;
        merged.conditions = status.conditions.clone();
        merged.workers = status.workers.clone();
        source.status = Some(merged);
    }

    /// The coordinator's report at `heartbeat`, as it writes it.
    fn report(source: &mut IngestSource, heartbeat: i64, pending: u64, running: u64) {
        let status = source.status.get_or_insert_with(Default::default);
        status.coordinator_heartbeat_time = Some(at(heartbeat));
        let tasks = status.tasks.get_or_insert_with(Default::default);
        tasks.pending = pending;
        tasks.running = running;
    }

    fn fail(source: &mut IngestSource, id: &str, time: i64) {
        let status = source.status.get_or_insert_with(Default::default);
        status.tasks.get_or_insert_with(Default::default).failed += 1;
        status
            .recent_failures
            .get_or_insert_with(Vec::new)
            .insert(0, failure(id, time));
    }

    fn failure(id: &str, time: i64) -> TaskFailure {
        TaskFailure {
            id: id.into(),
            key: format!("orders/{id}.ndjson"),
            last_error: "s3 object \"orders/bad.ndjson\": line 3: expected value at column 8"
                .into(),
            tries: 3,
            time: at(time),
        }
    }

    fn find<'a>(status: &'a IngestSourceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn reason<'a>(status: &'a IngestSourceStatus, type_: &str) -> (&'a str, &'a str) {
        let condition = find(status, type_);
        (condition.status.as_str(), condition.reason.as_str())
    }

    #[test]
    fn all_ready_is_running_and_ready() {
        let status = status_at(&source(), &all_ready(), 100);
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(find(&status, READY).status, "True");
        assert_eq!(find(&status, PROGRESSING).status, "False");
        assert_eq!(find(&status, DEGRADED).status, "False");
        assert_eq!(status.workers.unwrap().summary, "2/2");
    }

    #[test]
    fn waiting_for_workers_is_pending_and_progressing_with_counts() {
        let observed = Observed {
            workers: Some(Rollout {
                desired: 2,
                current: 2,
                ready: 1,
                complete: true,
            }),
            ..all_ready()
        };
        let status = status_at(&source(), &observed, 100);
        assert_eq!(status.phase, Some(Phase::Pending));
        assert_eq!(reason(&status, READY), ("False", "WorkersNotReady"));
        assert_eq!(
            find(&status, READY).message,
            "1 of 2 workers are ready (Deployment orders-worker)"
        );
        let progressing = find(&status, PROGRESSING);
        assert_eq!(progressing.status, "True");
        assert_eq!(
            progressing.message,
            "waiting for orders-worker (1 of 2 ready)"
        );
        assert_eq!(status.workers.unwrap().summary, "1/2");
    }

    #[test]
    fn what_a_stuck_pod_says_is_in_the_conditions() {
        let observed = Observed {
            workers: Some(Rollout {
                desired: 1,
                current: 1,
                ready: 0,
                complete: true,
            }),
            worker_pods: Some(
                "pod orders-worker-x is Unschedulable: 0/1 nodes are available".into(),
            ),
            ..all_ready()
        };
        let status = status_at(&source(), &observed, 100);
        assert_eq!(
            find(&status, READY).message,
            "0 of 2 workers are ready (Deployment orders-worker): \
             pod orders-worker-x is Unschedulable: 0/1 nodes are available"
        );
        assert_eq!(
            find(&status, PROGRESSING).message,
            "waiting for orders-worker (0 of 1 ready: \
             pod orders-worker-x is Unschedulable: 0/1 nodes are available)"
        );
    }

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker-x"},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn pods_tell_what_keeps_them_from_running() {
        let unschedulable = pod(serde_json::json!({"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
             "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}
        ]}));
        assert_eq!(
            pod_trouble(&unschedulable).unwrap(),
            "pod orders-worker-x is Unschedulable: 0/1 nodes are available: \
             1 node(s) didn't match Pod's node affinity/selector."
        );
        let waiting = |reason: &str| {
            pod(
                serde_json::json!({"phase": "Pending", "containerStatuses": [{
                    "name": "worker", "image": "sluice", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": "details"}},
                }]}),
            )
        };
        assert_eq!(
            pod_trouble(&waiting("ImagePullBackOff")).unwrap(),
            "pod orders-worker-x: ImagePullBackOff: details"
        );
        assert_eq!(
            pod_trouble(&waiting("CrashLoopBackOff")).unwrap(),
            "pod orders-worker-x: CrashLoopBackOff: details"
        );
        // On its way: nothing to tell.
        assert_eq!(pod_trouble(&waiting("ContainerCreating")), None);
        assert_eq!(
            pod_trouble(&pod(serde_json::json!({"phase": "Running"}))),
            None
        );
    }

    #[test]
    fn a_missing_secret_is_degraded_and_names_it() {
        let observed = Observed {
            problem: Some(Problem::CredentialsSecretNotFound {
                secret: "acme-s3".into(),
                field: "spec.source.s3",
            }),
            ..all_ready()
        };
        let status = status_at(&source(), &observed, 100);
        assert_eq!(status.phase, Some(Phase::Degraded));
        let degraded = find(&status, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "CredentialsSecretNotFound");
        assert!(
            degraded.message.contains("\"acme-s3\""),
            "{}",
            degraded.message
        );
        assert!(
            degraded
                .message
                .contains("spec.source.s3.credentialsSecretRef")
        );
        assert_eq!(find(&status, READY).reason, "CredentialsSecretNotFound");
    }

    #[test]
    fn a_name_conflict_is_degraded_and_names_the_object_and_the_way_out() {
        let observed = Observed {
            problem: Some(Problem::NameConflict {
                kind: "ConfigMap".into(),
                name: "orders-config".into(),
            }),
            ..Observed::default()
        };
        let status = status_at(&source(), &observed, 100);
        assert_eq!(status.phase, Some(Phase::Degraded));
        let degraded = find(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "NameConflict")
        );
        assert!(
            degraded
                .message
                .starts_with("ConfigMap \"orders-config\" already exists and was not made by")
                && degraded.message.contains("delete or rename that ConfigMap"),
            "{}",
            degraded.message
        );
        assert_eq!(find(&status, READY).reason, "NameConflict");
    }

    #[test]
    fn an_unusable_spec_fails_and_says_what_to_fix() {
        let observed = Observed {
            problem: Some(Problem::InvalidSpec(
                "spec.tasks.maxBytes: \"100m\" is not a whole number of bytes".into(),
            )),
            ..Observed::default()
        };
        let status = status_at(&source(), &observed, 100);
        assert_eq!(status.phase, Some(Phase::Failed));
        assert!(
            find(&status, DEGRADED)
                .message
                .starts_with("spec.tasks.maxBytes")
        );
    }

    #[test]
    fn suspended_sources_want_no_workers() {
        let mut source = source();
        source.spec.suspend = true;
        let observed = Observed {
            coordinator: settled(0),
            workers: settled(0),
            ..Observed::default()
        };
        let status = status_at(&source, &observed, 100);
        assert_eq!(status.phase, Some(Phase::Suspended));
        assert_eq!(find(&status, READY).reason, "Suspended");
        assert_eq!(status.workers.as_ref().unwrap().summary, "0/0");
        // Suspended before the operator wrote any status: still told.
        assert_eq!(notices(&source, &status)[0].reason, "Suspended");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let mut source = source();
        let ready = all_ready();
        let first = settle(&mut source, &ready, 100);
        // Same state later: nothing moves, nothing to write.
        let again = status_at(&source, &ready, 200);
        assert_eq!(find(&again, READY).last_transition_time, at(100));
        assert!(unchanged(source.status.as_ref(), &again));
        // Ready flips: only Ready's time moves.
        let scaled = Observed {
            workers: Some(Rollout {
                desired: 2,
                current: 2,
                ready: 1,
                complete: true,
            }),
            ..ready
        };
        let flipped = status_at(&source, &scaled, 300);
        assert_eq!(find(&flipped, READY).last_transition_time, at(300));
        assert_eq!(find(&flipped, DEGRADED).last_transition_time, at(100));
        assert!(!unchanged(Some(&first), &flipped));
    }

    #[test]
    fn problems_and_suspension_are_told_once() {
        let mut source = source();
        let degraded = Observed {
            problem: Some(Problem::CredentialsSecretNotFound {
                secret: "acme-s3".into(),
                field: "spec.source.s3",
            }),
            ..Observed::default()
        };
        let status = status_at(&source, &degraded, 100);
        let told = notices(&source, &status);
        assert_eq!(told.len(), 1);
        assert!(told[0].warning);
        assert_eq!(told[0].reason, "CredentialsSecretNotFound");
        source.status = Some(status.clone());
        assert!(notices(&source, &status_at(&source, &degraded, 200)).is_empty());

        let recovered = status_at(&source, &Observed::default(), 300);
        let told = notices(&source, &recovered);
        assert_eq!(told[0].reason, "Recovered");
        assert_eq!(
            told[0].note,
            "recovered: CredentialsSecretNotFound no longer applies"
        );

        source.status = Some(recovered);
        source.spec.suspend = true;
        let suspended = status_at(&source, &Observed::default(), 400);
        assert_eq!(notices(&source, &suspended)[0].reason, "Suspended");
        source.status = Some(suspended);
        source.spec.suspend = false;
        let resumed = status_at(&source, &Observed::default(), 500);
        assert_eq!(notices(&source, &resumed)[0].reason, "Resumed");
    }

    #[test]
    fn rollouts_read_deployment_status() {
        let deployment: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "generation": 4},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2}
        }))
        .unwrap();
        assert_eq!(
            Rollout::of(&deployment),
            Rollout {
                desired: 3,
                current: 3,
                ready: 2,
                complete: true
            }
        );
        let stale: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "orders-worker", "generation": 5},
            "spec": {"replicas": 3, "selector": {}, "template": {}},
            "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3}
        }))
        .unwrap();
        assert!(!Rollout::of(&stale).complete);
    }

    #[test]
    fn work_pending_or_running_is_running_and_none_is_idle() {
        let mut source = source();
        report(&mut source, 100, 3, 0);
        let status = status_at(&source, &all_ready(), 101);
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(reason(&status, READY), ("True", "Ready"));
        report(&mut source, 110, 0, 2);
        assert_eq!(
            status_at(&source, &all_ready(), 111).phase,
            Some(Phase::Running)
        );
        report(&mut source, 120, 0, 0);
        let status = status_at(&source, &all_ready(), 121);
        assert_eq!(status.phase, Some(Phase::Idle));
        assert_eq!(reason(&status, READY), ("True", "Ready"));
        assert_eq!(reason(&status, DEGRADED), ("False", "AsExpected"));
    }

    #[test]
    fn after_the_first_report_the_counts_decide_the_phase_even_while_pods_start() {
        let mut source = source();
        report(&mut source, 100, 7, 0);
        let starting = Observed {
            workers: Some(Rollout {
                desired: 2,
                current: 2,
                ready: 0,
                complete: false,
            }),
            ..all_ready()
        };
        let status = status_at(&source, &starting, 101);
        assert_eq!(status.phase, Some(Phase::Running));
        assert_eq!(reason(&status, READY), ("False", "WorkersNotReady"));
        assert_eq!(reason(&status, DEGRADED), ("False", "AsExpected"));
    }

    #[test]
    fn before_the_first_report_the_deployments_decide() {
        // Counts without a heartbeat are not a report.
        let mut source = source();
        source.status = Some(IngestSourceStatus {
            tasks: Some(TaskCounts::default()),
            ..IngestSourceStatus::default()
        });
        let waiting = Observed {
            coordinator: Some(Rollout {
                desired: 1,
                current: 1,
                ready: 0,
                complete: false,
            }),
            ..all_ready()
        };
        let computed = compute(&source, &waiting, &at(100_000), &LIMITS);
        assert_eq!(computed.status.phase, Some(Phase::Pending));
        assert_eq!(
            reason(&computed.status, READY),
            ("False", "CoordinatorNotReady")
        );
        assert_eq!(reason(&computed.status, DEGRADED).0, "False");
        assert_eq!(computed.recheck_at, None, "nothing to wait for");
    }

    #[test]
    fn a_task_failed_for_good_degrades_with_what_to_do() {
        let mut source = source();
        report(&mut source, 100, 0, 0);
        fail(&mut source, "1-42", 100);
        let computed = compute(&source, &all_ready(), &at(160), &LIMITS);
        let status = &computed.status;
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(reason(status, READY), ("False", TASKS_FAILED));
        assert_eq!(reason(status, DEGRADED), ("True", TASKS_FAILED));
        let message = &find(status, DEGRADED).message;
        for expected in [
            "1 task failed for good",
            "1-42",
            "after 3 tries",
            "\"orders/1-42.ndjson\"",
            "line 3: expected value at column 8",
            "1970-01-01T00:01:40Z",
            "kubectl sluice history --account acme --collection orders --state failed --since 1h",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
        assert_eq!(find(status, READY).message, *message);
        assert_eq!(computed.recheck_at, Some(at(280).0), "it would go stale");
        let told = notices(&source, status);
        assert_eq!(told.len(), 1);
        assert!(told[0].warning);
        assert_eq!(told[0].reason, TASKS_FAILED);
    }

    #[test]
    fn failures_clear_themselves_after_the_window() {
        let mut source = source();
        report(&mut source, 100, 0, 0);
        fail(&mut source, "1-42", 100);
        settle(&mut source, &all_ready(), 160);
        // The heartbeat keeps coming; the failure stays in the list and in
        // the cumulative count, but it gets old.
        report(&mut source, 3650, 0, 0);
        let still = compute(&source, &all_ready(), &at(3699), &LIMITS);
        assert_eq!(still.status.phase, Some(Phase::Degraded));
        assert_eq!(still.recheck_at, Some(at(3700).0), "the window ends");
        let computed = compute(&source, &all_ready(), &at(3700), &LIMITS);
        assert_eq!(computed.status.phase, Some(Phase::Idle));
        assert_eq!(reason(&computed.status, DEGRADED), ("False", "AsExpected"));
        assert_eq!(reason(&computed.status, READY), ("True", "Ready"));
        assert_eq!(
            source
                .status
                .as_ref()
                .unwrap()
                .tasks
                .as_ref()
                .unwrap()
                .failed,
            1
        );
        let told = notices(&source, &computed.status);
        assert_eq!(told[0].reason, "Recovered");
        assert_eq!(told[0].note, "recovered: TasksFailed no longer applies");
        // Next: when the heartbeat would go stale.
        assert_eq!(computed.recheck_at, Some(at(3650 + 180).0));
    }

    #[test]
    fn the_newest_failure_counts_whatever_the_order() {
        let mut source = source();
        report(&mut source, 5000, 0, 0);
        source.status.as_mut().unwrap().recent_failures = Some(vec![
            failure("1-1", 100),
            failure("1-9", 4000),
            failure("1-5", 200),
        ]);
        let computed = compute(&source, &all_ready(), &at(5000), &LIMITS);
        assert!(find(&computed.status, DEGRADED).message.contains("1-9"));
        assert_eq!(computed.recheck_at, Some(at(5180).0));
    }

    #[test]
    fn another_failure_while_degraded_updates_the_message_but_tells_no_more() {
        let mut source = source();
        report(&mut source, 100, 1, 0);
        fail(&mut source, "1-1", 100);
        settle(&mut source, &all_ready(), 101);
        fail(&mut source, "1-2", 130);
        let status = status_at(&source, &all_ready(), 131);
        let message = &find(&status, DEGRADED).message;
        assert!(
            message.starts_with("2 tasks failed for good; the latest, 1-2"),
            "{message}"
        );
        assert!(!unchanged(source.status.as_ref(), &status));
        assert!(notices(&source, &status).is_empty());
        assert_eq!(find(&status, DEGRADED).last_transition_time, at(101));
    }

    #[test]
    fn a_silent_coordinator_becomes_unavailable_and_recovers() {
        let mut source = source();
        settle(&mut source, &all_ready(), 50);
        report(&mut source, 100, 0, 0);
        let fresh = compute(&source, &all_ready(), &at(150), &LIMITS);
        assert_eq!(fresh.status.phase, Some(Phase::Idle));
        assert_eq!(fresh.recheck_at, Some(at(280).0), "when it would go stale");
        keep(&mut source, &fresh.status);
        assert!(unchanged(
            source.status.as_ref(),
            &status_at(&source, &all_ready(), 279)
        ));

        let stale = compute(&source, &all_ready(), &at(280), &LIMITS);
        let status = &stale.status;
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(reason(status, READY), ("False", COORDINATOR_UNAVAILABLE));
        assert_eq!(reason(status, DEGRADED), ("True", COORDINATOR_UNAVAILABLE));
        let message = &find(status, DEGRADED).message;
        for expected in [
            "has not reported since 1970-01-01T00:01:40Z",
            "more than 3m",
            "kubectl logs deployment/orders-coordinator -n shop",
        ] {
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
        assert_eq!(stale.recheck_at, None, "only a report changes it now");
        assert_eq!(notices(&source, status)[0].reason, COORDINATOR_UNAVAILABLE);
        keep(&mut source, status);
        // Still silent later: the same status, nothing to write.
        assert!(unchanged(
            source.status.as_ref(),
            &status_at(&source, &all_ready(), 5000)
        ));

        report(&mut source, 5001, 2, 0);
        let back = status_at(&source, &all_ready(), 5002);
        assert_eq!(back.phase, Some(Phase::Running));
        assert_eq!(notices(&source, &back)[0].reason, "Recovered");
    }

    #[test]
    fn a_coordinator_that_cannot_use_its_checkpoint_says_why_until_it_serves() {
        let mut source = source();
        settle(&mut source, &all_ready(), 50);
        let why = "checkpoint s3://archive/c/segments/7 cannot be read: the manifest names it \
                   but it does not exist";
        let status = source.status.get_or_insert_with(Default::default);
        status.coordinator_heartbeat_time = Some(at(100));
        status.startup_error = Some(why.into());
        let blocked = compute(&source, &all_ready(), &at(120), &LIMITS);
        let status = &blocked.status;
        assert_eq!(status.phase, Some(Phase::Degraded));
        assert_eq!(reason(status, READY), ("False", CHECKPOINT_UNUSABLE));
        assert_eq!(reason(status, DEGRADED), ("True", CHECKPOINT_UNUSABLE));
        let message = &find(status, DEGRADED).message;
        assert!(
            message.contains(why)
                && message.contains("kubectl logs deployment/orders-coordinator -n shop"),
            "{message}"
        );
        assert_eq!(
            blocked.recheck_at,
            Some(at(280).0),
            "when it would go stale"
        );
        assert_eq!(notices(&source, status)[0].reason, CHECKPOINT_UNUSABLE);
        keep(&mut source, status);

        // It stopped trying (its pod gone): unavailable, as any silent one.
        let stale = status_at(&source, &all_ready(), 280);
        assert_eq!(reason(&stale, DEGRADED), ("True", COORDINATOR_UNAVAILABLE));

        // It serves: its report has no startupError any more.
        let status = source.status.as_mut().unwrap();
        status.startup_error = None;
        report(&mut source, 130, 2, 0);
        let serving = status_at(&source, &all_ready(), 131);
        assert_eq!(serving.phase, Some(Phase::Running));
        assert_eq!(notices(&source, &serving)[0].reason, "Recovered");
    }

    #[test]
    fn a_rollout_gives_the_coordinator_time_to_report() {
        let mut source = source();
        report(&mut source, 100, 0, 0);
        source.spec.suspend = true;
        let scaled_to_zero = Observed {
            coordinator: settled(0),
            workers: settled(0),
            ..Observed::default()
        };
        settle(&mut source, &scaled_to_zero, 200);
        // Resumed long after the last heartbeat: the new coordinator pod is
        // starting.
        source.spec.suspend = false;
        let starting = Observed {
            coordinator: Some(Rollout {
                desired: 1,
                current: 1,
                ready: 0,
                complete: false,
            }),
            ..all_ready()
        };
        let resumed = compute(&source, &starting, &at(10_000), &LIMITS);
        assert_eq!(reason(&resumed.status, DEGRADED).0, "False");
        assert_eq!(
            reason(&resumed.status, READY),
            ("False", "CoordinatorNotReady")
        );
        assert_eq!(resumed.recheck_at, Some(at(10_180).0));
        keep(&mut source, &resumed.status);
        // It never reports: unavailable a timeout after the rollout began.
        let silent = status_at(&source, &starting, 10_180);
        assert_eq!(reason(&silent, DEGRADED), ("True", COORDINATOR_UNAVAILABLE));
    }

    #[test]
    fn problems_and_suspension_come_before_the_coordinator_s_report() {
        let mut source = source();
        report(&mut source, 100, 0, 0);
        fail(&mut source, "1-1", 100);
        let missing = Observed {
            problem: Some(Problem::CredentialsSecretNotFound {
                secret: "acme-s3".into(),
                field: "spec.source.s3",
            }),
            ..all_ready()
        };
        // Stale and failing, but the missing Secret is what to fix first.
        let status = status_at(&source, &missing, 1000);
        assert_eq!(
            reason(&status, DEGRADED),
            ("True", "CredentialsSecretNotFound")
        );
        let invalid = Observed {
            problem: Some(Problem::InvalidSpec("bad".into())),
            ..Observed::default()
        };
        assert_eq!(
            status_at(&source, &invalid, 1000).phase,
            Some(Phase::Failed)
        );
        source.spec.suspend = true;
        let suspended = compute(&source, &all_ready(), &at(1000), &LIMITS);
        assert_eq!(suspended.status.phase, Some(Phase::Suspended));
        assert_eq!(reason(&suspended.status, DEGRADED).0, "False");
        assert_eq!(suspended.recheck_at, None);
    }

    #[test]
    fn an_unavailable_coordinator_comes_before_its_old_failures() {
        let mut source = source();
        report(&mut source, 100, 0, 0);
        fail(&mut source, "1-1", 100);
        let status = status_at(&source, &all_ready(), 281);
        assert_eq!(reason(&status, DEGRADED), ("True", COORDINATOR_UNAVAILABLE));
    }

    #[test]
    fn the_pool_shows_what_autoscale_chose_and_how_to_select_it() {
        let mut source = source();
        let observed = Observed {
            autoscaled: Some(4),
            workers: Some(Rollout {
                desired: 4,
                current: 3,
                ready: 1,
                complete: false,
            }),
            ..all_ready()
        };
        let workers = status_at(&source, &observed, 100).workers.unwrap();
        assert_eq!(
            workers,
            WorkersStatus {
                desired: 4,
                replicas: 3,
                ready: 1,
                summary: "1/4".into(),
                selector: "app.kubernetes.io/component=worker,app.kubernetes.io/instance=orders,app.kubernetes.io/name=sluice".into(),
            }
        );
        source.spec.suspend = true;
        assert_eq!(
            status_at(&source, &observed, 100).workers.unwrap().desired,
            0
        );
    }

    #[test]
    fn the_operator_wakes_only_for_reports_that_matter() {
        let mut source = source();
        let inputs = |source: &IngestSource| coordinator_inputs(source);
        let none = inputs(&source);
        report(&mut source, 100, 50, 4);
        let first = inputs(&source);
        assert_ne!(none, first, "the first report");
        // An ingest moving along: counts and heartbeat change, nothing else.
        report(&mut source, 105, 40, 4);
        source.status.as_mut().unwrap().bytes_ingested = Some(12345);
        source.status.as_mut().unwrap().lag_seconds = Some(7);
        assert_eq!(inputs(&source), first);
        report(&mut source, 110, 0, 0);
        let idle = inputs(&source);
        assert_ne!(idle, first, "caught up");
        fail(&mut source, "1-1", 110);
        let failed = inputs(&source);
        assert_ne!(failed, idle, "a failure");
        // While unavailable, any heartbeat matters.
        let stale = status_at(&source, &all_ready(), 1000);
        keep(&mut source, &stale);
        let unavailable = inputs(&source);
        report(&mut source, 1001, 0, 0);
        assert_ne!(inputs(&source), unavailable, "a heartbeat after silence");
        // Autoscaled: the backlog matters as far as it changes the pool.
        let mut source = self::source();
        source.spec.workers.autoscale = Some(AutoscaleSpec {
            min_replicas: 0,
            max_replicas: 10,
            tasks_per_worker: 10,
        });
        report(&mut source, 100, 15, 0);
        let two = inputs(&source);
        report(&mut source, 101, 19, 1);
        assert_eq!(inputs(&source), two, "still 2 workers");
        report(&mut source, 102, 21, 0);
        assert_ne!(inputs(&source), two, "3 workers");
    }
}
