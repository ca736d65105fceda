//! The observed state of an IngestSource.
//!
//! Two writers share it through server-side apply, each with its own field
//! manager: the operator owns `observedGeneration`, `phase`, `conditions` and
//! `workers`; the coordinator owns the task, object and byte counts, the
//! bounded task lists and its heartbeat. Every field is optional so that each
//! writer applies only its own.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use sluice_core::api::{ObjectCounts, TaskCounts};

/// The most entries `status.activeTasks` holds; `kubectl sluice tasks` lists
/// them all.
pub const MAX_ACTIVE_TASKS: usize = 20;
/// The most entries `status.recentFailures` holds; `kubectl sluice history
/// --state failed` lists them all.
pub const MAX_RECENT_FAILURES: usize = 10;

/// What sluice observed of an IngestSource, its workers and its tasks.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngestSourceStatus {
    /// The generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// A one-word summary: Pending, Running, Idle, Degraded, Suspended or
    /// Failed (see the conditions for why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, Progressing and Degraded, each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The worker pool's desired and ready pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersStatus>,

    /// When the coordinator last wrote its part of this status. It writes
    /// whenever its counts change and at least once a minute (its
    /// `--heartbeat-interval`) when nothing changes; the operator reports
    /// CoordinatorUnavailable when this is too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_heartbeat_time: Option<Time>,

    /// Why the coordinator cannot start: it cannot use its checkpoint (an
    /// object of it damaged or deleted, say by a lifecycle rule; a store
    /// that ignores conditional writes; S3 refusing it). It stays up but
    /// not ready, tries again within a minute, and serves once it can; the
    /// operator reports CheckpointUnusable meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub startup_error: Option<String>,

    /// Tasks by state, as the coordinator counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskCounts>,

    /// Source objects by state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectCounts>,

    /// Bytes of source objects ingested so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_ingested: Option<u64>,

    /// Records written to the sink so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_ingested: Option<u64>,

    /// Age in seconds of the oldest object not yet ingested; 0 when caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<u64>,

    /// When the coordinator last wrote its checkpoint to the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint_time: Option<Time>,

    /// The latest redrive of dead letters (`kubectl sluice redrive`): its
    /// id, when, and how many objects were queued again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_redrive: Option<super::Redriven>,

    /// Tasks running now (at most 20; `kubectl sluice tasks` lists all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_ACTIVE_TASKS))]
    pub active_tasks: Option<Vec<ActiveTask>>,

    /// The latest tasks that failed for good (at most 10; `kubectl sluice
    /// history --state failed` lists all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_RECENT_FAILURES))]
    pub recent_failures: Option<Vec<TaskFailure>>,
}

/// A one-word summary of an IngestSource: Pending (accepted, starting),
/// Running (tasks pending or running), Idle (caught up, waiting for new
/// objects), Degraded (running, but see the conditions), Suspended
/// (`spec.suspend` is true) or Failed (cannot run until the spec or its
/// environment changes; see the conditions).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Idle,
    Degraded,
    Suspended,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Idle,
        Phase::Degraded,
        Phase::Suspended,
        Phase::Failed,
    ];

    /// The phase as the status spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Idle => "Idle",
            Phase::Degraded => "Degraded",
            Phase::Suspended => "Suspended",
            Phase::Failed => "Failed",
        }
    }
}

/// The worker pool's pods.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WorkersStatus {
    /// Worker pods wanted: spec.workers.replicas, or the number
    /// spec.workers.autoscale chose, or 0 when suspended.
    pub desired: i32,
    /// Worker pods that exist (the worker Deployment's status.replicas); the
    /// scale subresource reports it as its status.replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Worker pods ready.
    pub ready: i32,
    /// `ready/desired`, for `kubectl get`.
    pub summary: String,
    /// The label selector of the worker pods, for the scale subresource (a
    /// HorizontalPodAutoscaler or KEDA reads it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
}

/// A task leased to a worker. (Field names sort with `id` first, the order
/// `kubectl describe` prints them in.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveTask {
    /// The task's id (`kubectl sluice tasks` shows it in full).
    pub id: String,
    /// The worker (pod name) holding the lease.
    pub worker: String,
    /// How many objects the task covers.
    pub objects: u32,
    /// Which try this is: 1 for the first lease, more after retries.
    pub tries: u32,
    /// When this try began (the task was leased).
    pub started: Time,
    /// Records written so far in this try.
    pub records: u64,
    /// Source bytes read so far in this try.
    pub read_bytes: u64,
}

/// A task that failed for good. (Field names sort with `id` first, the
/// order `kubectl describe` prints them in.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskFailure {
    /// The task's id.
    pub id: String,
    /// The task's first object key; often its only one, since an object a
    /// worker names as the fault is retried in a task of its own.
    pub key: String,
    /// The last try's error, cut to 512 characters.
    #[schemars(length(max = 512))]
    pub last_error: String,
    /// How many times the task was tried.
    pub tries: u32,
    /// When the last try failed.
    pub time: Time,
}
