//! The coordinator's HTTP API: the JSON bodies the coordinator, the workers
//! and the CLI exchange.
//!
//! Workers (token required, `Authorization: Bearer TOKEN`):
//! - `POST /v1/lease` [`LeaseRequest`] → [`LeaseResponse`]
//! - `POST /v1/heartbeat` [`HeartbeatRequest`] → [`HeartbeatResponse`]
//! - `POST /v1/tasks/{id}/complete` [`Completion`] → 204, or [`LeaseResponse`]
//!   when the completion asks for the worker's next tasks (`lease`)
//! - `POST /v1/tasks/{id}/fail` [`Failure`] → 204
//!
//! Readers (read token required, in the [`READ_TOKEN_HEADER`] header, which
//! the API server's service proxy passes on where it would consume an
//! `Authorization` header):
//! - `GET /v1/tasks?account=&collection=&source=&state=&worker=&limit=&cursor=` → [`TaskList`]
//! - `GET /v1/tasks/{id}` → [`TaskDetail`]
//! - `GET /v1/summary` → [`Summary`]
//!
//! Every error is a status code with an [`ErrorBody`].

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex::hex;
use crate::id::TaskId;

/// The header that carries the read token.
pub const READ_TOKEN_HEADER: &str = "sluice-read-token";

/// The read token of the coordinator whose workers present `token`: a
/// SHA-256 of it, hex-encoded. Whoever holds the workers' token can derive
/// it; whoever holds only the read token cannot act as a worker.
pub fn read_token(token: &str) -> String {
    hex(&Sha256::new()
        .chain_update(b"sluice read token\0")
        .chain_update(token.as_bytes())
        .finalize())
}

/// One source object of a task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRequest {
    /// The worker's name (its pod name).
    pub worker: String,
    /// How many tasks the worker takes at most.
    pub max: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseResponse {
    /// Possibly fewer than asked for, or none when there is no work.
    pub tasks: Vec<LeasedTask>,
    /// A lease not renewed by a heartbeat within this time expires.
    pub lease_duration_ms: u64,
}

/// A task as a worker executes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeasedTask {
    pub id: TaskId,
    /// 1 for the first lease of the task, raised by every new lease.
    pub attempt: u32,
    pub objects: Vec<ObjectRef>,
    /// The sink object the task's records go to. Every attempt writes the
    /// same one, so a retry overwrites instead of duplicating.
    pub output: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatRequest {
    pub worker: String,
    pub tasks: Vec<Progress>,
}

/// How far a worker is with one task.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub id: TaskId,
    pub attempt: u32,
    /// Records written so far.
    pub records: u64,
    /// Source bytes read so far.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatResponse {
    /// Tasks whose lease this worker no longer holds: it must stop them.
    pub lost: Vec<TaskId>,
}

/// A task done.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Completion {
    pub worker: String,
    pub attempt: u32,
    pub records: u64,
    /// Source bytes read (as stored, before decompression).
    pub bytes_read: u64,
    /// Sink bytes written.
    pub bytes_written: u64,
    /// The sink objects written (none when the task had no records).
    pub outputs: Vec<String>,
    /// The worker's next tasks, up to this many, leased in the same request
    /// as a `POST /v1/lease` would (the answer is then a [`LeaseResponse`]):
    /// the slot this task held is free, and one request per task is half
    /// the round trips of two. None asks for nothing (204 No Content).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u32>,
}

/// A task that could not be done.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    pub worker: String,
    pub attempt: u32,
    /// What went wrong, naming the object and the position where it can.
    pub error: String,
    /// The object at fault, when one is: the coordinator then retries it in
    /// a task of its own so the task's other objects go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The worker gave the task back unfinished (it is stopping): the
    /// attempt does not count.
    #[serde(default)]
    pub released: bool,
}

/// Where a task is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting for a worker.
    Pending,
    /// Leased to a worker.
    Running,
    Succeeded,
    /// Failed for good: every attempt failed (dead letter).
    Failed,
}

impl TaskState {
    pub const ALL: [TaskState; 4] = [
        TaskState::Pending,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
        }
    }
}

impl std::str::FromStr for TaskState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!("unknown state {text:?}: use pending, running, succeeded or failed")
            })
    }
}

/// A task as the live task API lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub id: TaskId,
    pub account: String,
    pub collection: String,
    /// The IngestSource, as `namespace/name`.
    pub source: String,
    pub state: TaskState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Leases so far (0 while it never ran).
    pub attempt: u32,
    pub objects: u32,
    /// Total size of the task's objects.
    pub size: u64,
    pub first_key: String,
    /// Progress of the current attempt, or the result of the last.
    pub records: u64,
    pub bytes: u64,
    pub created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One task with its objects.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: TaskView,
    pub keys: Vec<ObjectRef>,
    pub output: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    pub items: Vec<TaskView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<TaskId>,
}

/// The filters of `GET /v1/tasks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskQuery {
    pub account: Option<String>,
    pub collection: Option<String>,
    /// `namespace/name`.
    pub source: Option<String>,
    pub state: Option<TaskState>,
    pub worker: Option<String>,
    /// At most this many items (default 100, at most 1000).
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    pub cursor: Option<TaskId>,
}

/// The counts of one source, as the coordinator knows them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub account: String,
    pub collection: String,
    pub source: String,
    /// Raised by every coordinator start; the checkpoint is fenced by it.
    pub epoch: u64,
    pub tasks: TaskCounts,
    pub objects: ObjectCounts,
    pub records_ingested: u64,
    pub bytes_ingested: u64,
    /// Age in seconds of the oldest object not yet ingested.
    pub lag_seconds: u64,
    /// Finished listing passes over the source.
    pub listing_passes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_checkpoint: Option<Timestamp>,
}

/// Tasks by state.
///
/// One type from the task table to the IngestSource's status: the doc
/// comments are what `kubectl explain` shows.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskCounts {
    /// Tasks waiting for a worker.
    pub pending: u64,
    /// Tasks leased to a worker now.
    pub running: u64,
    /// Tasks finished successfully.
    pub succeeded: u64,
    /// Tasks failed for good after their last attempt.
    pub failed: u64,
}

/// Source objects by state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectCounts {
    /// Objects found by listing the source.
    pub discovered: u64,
    /// Objects whose records are all in the sink.
    pub ingested: u64,
    /// Objects in tasks that failed for good.
    pub failed: u64,
}

/// The body of every error response.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}
