//! The coordinator's HTTP API (see [`sluice_core::api`] for the routes and
//! bodies). Every refusal is a 4xx with a JSON [`ErrorBody`]; nothing a
//! client sends can panic the coordinator.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jiff::Timestamp;
use tower::ServiceExt;

use sluice_core::api::{
    Completion, ErrorBody, Failure, HeartbeatRequest, HeartbeatResponse, LeaseRequest,
    LeaseResponse, READ_TOKEN_HEADER, TaskDetail, TaskList, TaskQuery,
};
use sluice_core::id::TaskId;
use sluice_core::sync::lock;

use super::Shared;
use super::tasks::Refusal;

/// Request bodies larger than this are refused (413).
pub const MAX_BODY: usize = 1 << 20;
/// Tasks one lease request may take, and items one page may hold.
pub const MAX_BATCH: u32 = 1000;
const DEFAULT_PAGE: u32 = 100;

/// A refusal: a status and a message for the client.
#[derive(Debug)]
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError(rejection.status(), rejection.body_text())
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let status = match refusal {
            Refusal::NotFound(_) => StatusCode::NOT_FOUND,
            Refusal::Conflict(_) => StatusCode::CONFLICT,
        };
        ApiError(status, refusal.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

type Body<T> = Result<Json<T>, JsonRejection>;
/// A task id from the path; one that is not `EPOCH-SEQ` is refused with a
/// JSON error.
type PathId = Result<Path<TaskId>, PathRejection>;

/// The routes of the task API.
pub fn router(shared: Arc<Shared>) -> Router {
    let workers = Router::new()
        .route("/v1/lease", post(lease))
        .route("/v1/heartbeat", post(heartbeat))
        .route("/v1/tasks/{id}/complete", post(complete))
        .route("/v1/tasks/{id}/fail", post(fail))
        .route_layer(middleware::from_fn_with_state(shared.clone(), workers_only));
    let readers = Router::new()
        .route("/v1/tasks", get(list))
        .route("/v1/tasks/{id}", get(task))
        .route("/v1/summary", get(summary))
        .route_layer(middleware::from_fn_with_state(shared.clone(), readers_only));
    Router::new()
        .merge(readers)
        .merge(workers)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such route".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: workers POST to /v1/lease, /v1/heartbeat and \
                 /v1/tasks/{id}/complete|fail; readers GET /v1/tasks, /v1/tasks/{id} and /v1/summary"
                    .into(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(shared)
}

/// The task API of a coordinator that may not have claimed its checkpoint
/// yet: [`router`] once `api` is set; until then every request is a 503
/// that says why.
pub fn once_claimed(api: Arc<OnceLock<Router>>) -> Router {
    Router::new().fallback(move |request: Request| async move {
        match api.get() {
            Some(router) => router.clone().oneshot(request).await.into_response(),
            None => ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: the checkpoint is not claimed yet (the IngestSource's \
                 status.startupError says why, if it cannot be)"
                    .into(),
            )
            .into_response(),
        }
    })
}

/// Lets through requests that carry the workers' token.
async fn workers_only(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(
        &request,
        (header::AUTHORIZATION.as_str(), "Bearer "),
        &shared.token,
        "workers authenticate with `Authorization: Bearer TOKEN`, TOKEN the `token` of their IngestSource's token Secret",
    )?;
    Ok(next.run(request).await)
}

/// Lets through requests that carry the read token, one at a time and at
/// most [`READS_PER_SECOND`]: a reader waits up to [`READ_QUEUE`] for its
/// turn, then is told to come back (503). Reads build their answers under
/// the lock that leases and heartbeats take, so a flood of them must not
/// take the coordinator's cores from the workers.
async fn readers_only(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(
        &request,
        (READ_TOKEN_HEADER, ""),
        &shared.read_token,
        &format!(
            "readers send the `read-token` of the IngestSource's token Secret in the `{READ_TOKEN_HEADER}` \
             header (`kubectl sluice tasks` does, for whoever may read that Secret)"
        ),
    )?;
    let busy = || {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "busy: this coordinator answers {READS_PER_SECOND} reads a second, one at a time, \
                 and more are waiting; try again in a moment"
            ),
        )
    };
    let wait = shared.reads.reserve(Instant::now()).ok_or_else(busy)?;
    tokio::time::sleep(wait).await;
    let _turn = tokio::time::timeout(READ_QUEUE, shared.reading.lock())
        .await
        .map_err(|_| busy())?;
    Ok(next.run(request).await)
}

/// Reads answered per second at most.
pub const READS_PER_SECOND: u32 = 10;
/// How long a read may wait for its turn before it is refused (503).
const READ_QUEUE: Duration = Duration::from_secs(5);

/// Turns for reads, [`READS_PER_SECOND`] apart.
#[derive(Debug)]
pub struct Pace {
    next: std::sync::Mutex<Instant>,
}

impl Default for Pace {
    fn default() -> Self {
        Self {
            next: std::sync::Mutex::new(Instant::now()),
        }
    }
}

impl Pace {
    /// Takes the next free turn and says how long to wait for it, or None
    /// when it is more than [`READ_QUEUE`] away.
    pub fn reserve(&self, now: Instant) -> Option<Duration> {
        let mut next = lock(&self.next);
        let turn = (*next).max(now);
        let wait = turn - now;
        if wait > READ_QUEUE {
            return None;
        }
        *next = turn + Duration::from_secs(1) / READS_PER_SECOND;
        Some(wait)
    }
}

/// Refuses (401) a request that presents no token or another than
/// `expected` in `header` (after its scheme, such as `Bearer `).
fn check(
    request: &Request,
    (header, scheme): (&str, &str),
    expected: &str,
    how: &str,
) -> Result<(), ApiError> {
    let presented = request
        .headers()
        .get(header)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix(scheme));
    match presented {
        Some(token) if same(token.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("wrong token: {how}"),
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            format!("missing token: {how}"),
        )),
    }
}

/// Compares in time independent of where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn worker_name(worker: &str) -> Result<(), ApiError> {
    if worker.is_empty() || worker.len() > 253 {
        return Err(bad_request(
            "worker: must be the worker's name, 1 to 253 characters",
        ));
    }
    Ok(())
}

async fn lease(
    State(shared): State<Arc<Shared>>,
    body: Body<LeaseRequest>,
) -> Result<Json<LeaseResponse>, ApiError> {
    let Json(request) = body?;
    worker_name(&request.worker)?;
    let max = batch("max", request.max)?;
    let tasks = shared.tasks().lease(&request.worker, max, Timestamp::now());
    Ok(Json(shared.leased(tasks)))
}

/// `value` of the field `name`, a number of tasks, if it is one a request may ask for
/// (1 to [`MAX_BATCH`]).
fn batch(name: &str, value: u32) -> Result<u32, ApiError> {
    if !(1..=MAX_BATCH).contains(&value) {
        return Err(bad_request(format!(
            "{name}: must be between 1 and {MAX_BATCH}"
        )));
    }
    Ok(value)
}

async fn heartbeat(
    State(shared): State<Arc<Shared>>,
    body: Body<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let Json(request) = body?;
    worker_name(&request.worker)?;
    if request.tasks.len() > MAX_BATCH as usize {
        return Err(bad_request(format!("tasks: at most {MAX_BATCH}")));
    }
    let lost = shared
        .tasks()
        .heartbeat(&request.worker, &request.tasks, Timestamp::now());
    Ok(Json(HeartbeatResponse { lost }))
}

async fn complete(
    State(shared): State<Arc<Shared>>,
    id: PathId,
    body: Body<Completion>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let Json(completion) = body?;
    worker_name(&completion.worker)?;
    let next = completion
        .lease
        .map(|max| batch("lease", max))
        .transpose()?;
    let worker = completion.worker.clone();
    let now = Timestamp::now();
    let mut tasks = shared.tasks();
    tasks.complete(id, completion, now)?;
    let Some(max) = next else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let leased = tasks.lease(&worker, max, now);
    drop(tasks);
    Ok(Json(shared.leased(leased)).into_response())
}

async fn fail(
    State(shared): State<Arc<Shared>>,
    id: PathId,
    body: Body<Failure>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id?;
    let Json(failure) = body?;
    worker_name(&failure.worker)?;
    if failure.error.len() > MAX_BODY / 2 {
        return Err(bad_request("error: too long"));
    }
    shared.tasks().fail(id, failure, Timestamp::now())?;
    shared.metrics.failed_attempts.inc();
    Ok(StatusCode::NO_CONTENT)
}

async fn list(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(query) = query?;
    let limit = batch("limit", query.limit.unwrap_or(DEFAULT_PAGE))?;
    let (items, more) = shared.tasks().list(&query, limit as usize);
    let next = more.then(|| items.last().map(|item| item.id)).flatten();
    Ok(Json(TaskList { items, next }))
}

async fn task(State(shared): State<Arc<Shared>>, id: PathId) -> Result<Json<TaskDetail>, ApiError> {
    let Path(id) = id?;
    shared
        .tasks()
        .get(id)
        .map(Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no task {id}")))
}

async fn summary(State(shared): State<Arc<Shared>>) -> Json<sluice_core::api::Summary> {
    Json(shared.summary())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_take_turns_a_pace_apart_and_are_refused_past_the_queue() {
        let pace = Pace::default();
        let start = Instant::now();
        let spacing = Duration::from_secs(1) / READS_PER_SECOND;
        assert_eq!(pace.reserve(start), Some(Duration::ZERO));
        assert_eq!(pace.reserve(start), Some(spacing));
        assert_eq!(pace.reserve(start), Some(2 * spacing));
        // A burst fills the queue; past it, readers are turned away.
        let queued = (READ_QUEUE.as_millis() / spacing.as_millis()) as u32;
        for n in 3..=queued {
            assert_eq!(pace.reserve(start), Some(n * spacing));
        }
        assert_eq!(pace.reserve(start), None);
        // Time passes: turns are free again, and an idle pace saves none up.
        let later = start + 10 * READ_QUEUE;
        assert_eq!(pace.reserve(later), Some(Duration::ZERO));
        assert_eq!(pace.reserve(later), Some(spacing));
    }
}
