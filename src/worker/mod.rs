//! The worker: what `sluice worker` runs, a pool of them per IngestSource.
//!
//! It leases tasks from the coordinator, streams each object from the
//! source, decodes and readies its records ([`decode`]), writes them to the
//! task's sink object ([`output`]), heartbeats while it works, and reports
//! the outcome. It makes the output visible only after the coordinator
//! has confirmed that it still holds the task's attempt: a worker that
//! stalled past its lease writes nothing. On SIGTERM it stops leasing, finishes what it can within
//! the grace period, and gives the rest back.

pub mod decode;
pub mod output;

/// A task's objects fetched ahead of the one being decoded: at most this
/// many GETs at once ...
const FETCH_AHEAD: usize = 8;
/// ... and this many bytes of objects fetched and not yet decoded (an
/// object larger than this is fetched alone).
const FETCH_AHEAD_BYTES: u64 = 16 << 20;
/// An object of up to this size is read into memory as it arrives, and
/// decoded together with the others of its task that have arrived.
const WHOLE_OBJECT: u64 = 1 << 20;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backon::Retryable;
use jiff::Timestamp;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};

use sluice_core::api::{
    Completion, Failure, HeartbeatRequest, HeartbeatResponse, LeaseRequest, LeaseResponse,
    LeasedTask, ObjectRef, Progress,
};
use sluice_core::encoding::{Compression, Format};
use sluice_core::id::TaskId;
use sluice_core::sync::lock;

use crate::config::{PodArgs, RuntimeConfig, Store};
use crate::retry::{self, Waits};
use crate::s3;
use crate::telemetry::{self, FinishedTasks, Readiness};
use decode::{DecodeError, Limits, Origin};

/// `sluice worker`: execute one source's tasks.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub pod: PodArgs,

    /// The coordinator's URL.
    #[arg(long, env = "SLUICE_COORDINATOR")]
    pub coordinator: String,

    /// This worker's name in leases and records (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    pub name: Option<String>,

    /// Tasks executed at once.
    #[arg(long, env = "SLUICE_WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u32,

    /// On SIGTERM, how long running tasks may take to finish before they
    /// are given back.
    #[arg(long, env = "SLUICE_GRACE", default_value = "20s", value_parser = sluice_core::duration::parse_std)]
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot serve health and metrics: {0}")]
    Serve(#[from] std::io::Error),
}

/// The first and the longest wait between lease requests when there is no
/// work (each with jitter).
const MIN_IDLE: Duration = Duration::from_millis(50);
const MAX_IDLE: Duration = Duration::from_secs(2);
/// Requests to the coordinator give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After a task was given back because S3 was unavailable, the worker
/// leases nothing for this long, doubling while it stays unavailable (each
/// with jitter).
const MIN_UNAVAILABLE_PAUSE: Duration = Duration::from_millis(500);
const MAX_UNAVAILABLE_PAUSE: Duration = Duration::from_secs(15);
/// A report of a task's outcome is retried this many times while the
/// coordinator is away, 0.2 s after the first failure, doubling up to 5 s
/// (about 25 s in all, with jitter up to twice that): long enough for a
/// coordinator restart, and the lease expires anyway.
const REPORT_RETRIES: usize = 7;
const REPORT_BACKOFF: Duration = Duration::from_millis(200);
const MAX_REPORT_BACKOFF: Duration = Duration::from_secs(5);

/// A task being executed: its progress and how to stop it.
struct Active {
    attempt: u32,
    records: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    cancel: CancellationToken,
    /// Why it was cancelled: given back (SIGTERM) or lost (the
    /// coordinator leased it elsewhere).
    release: Arc<AtomicBool>,
}

struct Worker {
    name: String,
    config: RuntimeConfig,
    coordinator: String,
    token: String,
    http: reqwest::Client,
    source: aws_sdk_s3::Client,
    sink: aws_sdk_s3::Client,
    active: Mutex<HashMap<TaskId, Active>>,
    /// Learned from the coordinator's lease responses.
    lease_ms: AtomicU64,
    /// Set on SIGTERM: a task then completes without leasing the next.
    stopping: AtomicBool,
    metrics: Metrics,
}

struct Metrics {
    finished: FinishedTasks,
    records: Counter,
    read_bytes: Counter,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            finished: FinishedTasks::default(),
            records: Counter::default(),
            read_bytes: Counter::default(),
        };
        let registry = registry.sub_registry_with_prefix("sluice_worker");
        metrics.finished.register(
            registry,
            "Task attempts that ended, by state: succeeded or failed",
        );
        registry.register(
            "records",
            "Records written to the sink",
            metrics.records.clone(),
        );
        registry.register(
            "read_bytes",
            "Source bytes read",
            metrics.read_bytes.clone(),
        );
        metrics
    }
}

/// Runs the worker until SIGTERM.
pub async fn run(args: WorkerArgs) -> Result<(), Error> {
    let (config, token) = args.pod.start().map_err(Error::Config)?;
    if args.concurrency == 0 {
        return Err(Error::Config("--concurrency must be at least 1".into()));
    }
    let mut registry = Registry::default();
    let worker = Arc::new(Worker {
        name: args.name.unwrap_or_else(default_name),
        coordinator: args.coordinator.trim_end_matches('/').to_owned(),
        token,
        http: reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // Before the coordinator closes an idle connection.
            .pool_idle_timeout(telemetry::IDLE_TIMEOUT / 2)
            .build()
            .map_err(|err| Error::Config(format!("cannot create an HTTP client: {err}")))?,
        source: s3::client_for(Store::Source, &config.source.s3, args.pod.s3_timeout).await,
        sink: s3::client_for(Store::Sink, &config.sink, args.pod.s3_timeout).await,
        config,
        active: Mutex::new(HashMap::new()),
        lease_ms: AtomicU64::new(30_000),
        stopping: AtomicBool::new(false),
        metrics: Metrics::new(&mut registry),
    });
    let readiness = Readiness::default();
    readiness.set(true);
    let address =
        telemetry::serve_admin(args.pod.address, readiness, registry, axum::Router::new()).await?;
    info!(%address, worker = %worker.name, coordinator = %worker.coordinator, "working");
    tokio::spawn(worker.clone().heartbeats());
    worker.work(args.concurrency, args.grace).await;
    Ok(())
}

fn default_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("worker-{}", std::process::id()))
}

impl Worker {
    fn active(&self) -> MutexGuard<'_, HashMap<TaskId, Active>> {
        lock(&self.active)
    }

    /// Leases and executes tasks until SIGTERM, then drains.
    async fn work(self: &Arc<Self>, concurrency: u32, grace: Duration) {
        let mut running = JoinSet::new();
        // With jitter, so workers that found no work together (or could not
        // reach a restarting coordinator) do not ask again in lockstep.
        let mut idle = Waits::new(MIN_IDLE, MAX_IDLE);
        // While S3 is unavailable, leasing only hands tasks back and forth.
        let mut unavailable = Waits::new(MIN_UNAVAILABLE_PAUSE, MAX_UNAVAILABLE_PAUSE);
        let mut resume = tokio::time::Instant::now();
        let mut stop = std::pin::pin!(telemetry::terminated());
        loop {
            let free = concurrency.saturating_sub(running.len() as u32);
            let paused = tokio::time::Instant::now() < resume;
            if free > 0 && !paused {
                match self.lease(free).await {
                    Ok(tasks) if !tasks.is_empty() => {
                        idle.reset();
                        for task in tasks {
                            running.spawn(self.clone().execute(task));
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(err) => warn!(error = %err, "cannot lease tasks"),
                }
            }
            tokio::select! {
                Some(ended) = running.join_next(), if !running.is_empty() => match ended {
                    Ok(Ended::Unavailable) => {
                        resume = tokio::time::Instant::now() + unavailable.current();
                        unavailable.advance();
                    }
                    Ok(Ended::Finished(next)) => {
                        unavailable.reset();
                        if !next.is_empty() {
                            idle.reset();
                        }
                        for task in next {
                            running.spawn(self.clone().execute(task));
                        }
                    }
                    Err(_) => {}
                },
                () = tokio::time::sleep_until(resume), if free > 0 && paused => {}
                () = tokio::time::sleep(idle.current()), if free > 0 && !paused => idle.advance(),
                () = &mut stop => break,
            }
        }
        self.stopping.store(true, Ordering::Relaxed);
        info!(
            tasks = running.len(),
            ?grace,
            "stopping: finishing running tasks"
        );
        let drained = tokio::time::timeout(grace, self.drain(&mut running)).await;
        if drained.is_err() {
            for active in self.active().values() {
                active.release.store(true, Ordering::Relaxed);
                active.cancel.cancel();
            }
            self.drain(&mut running).await;
        }
    }

    /// Waits for the running tasks to end, and gives back the tasks a
    /// completion sent before SIGTERM leased in its answer.
    async fn drain(&self, running: &mut JoinSet<Ended>) {
        while let Some(ended) = running.join_next().await {
            let Ok(Ended::Finished(next)) = ended else {
                continue;
            };
            for task in next {
                self.give_back(
                    &task,
                    "the worker stopped before starting it; given back".into(),
                )
                .await;
            }
        }
    }

    /// Hands `task` back without using up an attempt.
    async fn give_back(&self, task: &LeasedTask, error: String) {
        let failure = Failure {
            worker: self.name.clone(),
            attempt: task.attempt,
            error,
            key: None,
            released: true,
        };
        self.report(&format!("/v1/tasks/{}/fail", task.id), &failure)
            .await;
    }

    async fn lease(&self, max: u32) -> Result<Vec<LeasedTask>, String> {
        let response: LeaseResponse = self
            .post(
                "/v1/lease",
                &LeaseRequest {
                    worker: self.name.clone(),
                    max,
                },
            )
            .await?;
        Ok(self.leased(response))
    }

    /// The tasks of a lease, noting how long the lease lasts.
    fn leased(&self, response: LeaseResponse) -> Vec<LeasedTask> {
        self.lease_ms
            .store(response.lease_duration_ms.max(1), Ordering::Relaxed);
        response.tasks
    }

    /// Renews the leases of the running tasks, three times per lease, and
    /// stops the tasks the coordinator says this worker lost.
    async fn heartbeats(self: Arc<Self>) {
        loop {
            let period = Duration::from_millis(self.lease_ms.load(Ordering::Relaxed) / 3);
            tokio::time::sleep(period).await;
            let tasks: Vec<Progress> = self
                .active()
                .iter()
                .map(|(id, active)| Progress {
                    id: *id,
                    attempt: active.attempt,
                    records: active.records.load(Ordering::Relaxed),
                    bytes: active.bytes.load(Ordering::Relaxed),
                })
                .collect();
            if tasks.is_empty() {
                continue;
            }
            let request = HeartbeatRequest {
                worker: self.name.clone(),
                tasks,
            };
            match self
                .post::<_, HeartbeatResponse>("/v1/heartbeat", &request)
                .await
            {
                Ok(response) => {
                    for id in response.lost {
                        if let Some(active) = self.active().get(&id) {
                            warn!(task = %id, "lost the lease; stopping the task");
                            active.cancel.cancel();
                        }
                    }
                }
                Err(err) => warn!(error = %err, "cannot send heartbeats"),
            }
        }
    }

    /// Executes one task and reports its outcome.
    async fn execute(self: Arc<Self>, task: LeasedTask) -> Ended {
        let active = Active {
            attempt: task.attempt,
            records: Arc::default(),
            bytes: Arc::default(),
            cancel: CancellationToken::new(),
            release: Arc::default(),
        };
        let (records, bytes, cancel, release) = (
            active.records.clone(),
            active.bytes.clone(),
            active.cancel.clone(),
            active.release.clone(),
        );
        self.active().insert(task.id, active);
        let outcome = self.ingest(&task, &records, &bytes, &cancel).await;
        self.active().remove(&task.id);
        let given_back = release.load(Ordering::Relaxed);
        let failure = match outcome {
            Ok(completion) => {
                self.metrics.finished.count("succeeded");
                self.metrics.records.inc_by(completion.records);
                self.metrics.read_bytes.inc_by(completion.bytes_read);
                return Ended::Finished(self.complete(&task, completion).await);
            }
            // Lost: the coordinator has given the task to another worker.
            Err(_) if cancel.is_cancelled() && !given_back => return Ended::Finished(Vec::new()),
            Err(Failed::Lost) => {
                warn!(task = %task.id, "lost the lease before writing the output; it was not written");
                return Ended::Finished(Vec::new());
            }
            Err(_) if given_back => {
                self.give_back(
                    &task,
                    "the worker stopped before finishing; given back".into(),
                )
                .await;
                return Ended::Finished(Vec::new());
            }
            // Not the task's fault: it must not use up its attempts and end
            // failed for good while S3 restarts or is overloaded.
            Err(Failed::Unavailable(error)) => {
                warn!(task = %task.id, %error, "S3 is unavailable; giving the task back");
                self.give_back(&task, error).await;
                return Ended::Unavailable;
            }
            Err(Failed::Object { key, error }) => self.failure(&task, error, Some(key)),
            Err(Failed::Attempt(error)) => self.failure(&task, error, None),
        };
        self.report(&format!("/v1/tasks/{}/fail", task.id), &failure)
            .await;
        Ended::Finished(Vec::new())
    }

    /// Reports `task` done and, unless the worker is stopping, leases the
    /// task that takes its slot in the same request: the next tasks.
    async fn complete(&self, task: &LeasedTask, mut completion: Completion) -> Vec<LeasedTask> {
        if !self.stopping.load(Ordering::Relaxed) {
            completion.lease = Some(1);
        }
        let path = format!("/v1/tasks/{}/complete", task.id);
        let Some(response) = self.report(&path, &completion).await else {
            return Vec::new();
        };
        if response.status() == reqwest::StatusCode::NO_CONTENT {
            return Vec::new();
        }
        match response.json::<LeaseResponse>().await {
            Ok(leased) => self.leased(leased),
            // The tasks it leased, if any, go back when their leases expire.
            Err(err) => {
                warn!(%path, error = %err, "cannot read the tasks leased with the completion");
                Vec::new()
            }
        }
    }

    /// Reads the task's objects and writes their records to its output.
    async fn ingest(
        self: &Arc<Self>,
        task: &LeasedTask,
        records: &Arc<AtomicU64>,
        bytes: &Arc<AtomicU64>,
        cancel: &CancellationToken,
    ) -> Result<Completion, Failed> {
        let (mut encoder, parts) = output::encoder(records.clone());
        let upload = {
            let sink = self.sink.clone();
            let bucket = self.config.sink.bucket.clone();
            let key = task.output.clone();
            let holds = {
                let (worker, records, bytes) = (self.clone(), records.clone(), bytes.clone());
                let (id, attempt) = (task.id, task.attempt);
                async move { worker.holds(id, attempt, &records, &bytes).await }
            };
            tokio::spawn(async move { output::upload(&sink, &bucket, &key, parts, holds).await })
        };
        let mut total_records = 0;
        let mut bytes_read = 0;
        // The GETs of the next objects run while one is decoded, at most
        // FETCH_AHEAD of them and FETCH_AHEAD_BYTES of objects (a larger
        // one alone); dropped (a failed task) they are aborted. Objects of
        // up to WHOLE_OBJECT arrive whole, and those that have arrived are
        // decoded together: a task of many small objects does not pay a
        // hand-off to a blocking thread per object.
        let mut fetches = VecDeque::new();
        let (mut started, mut done, mut bytes_ahead) = (0, 0, 0);
        let objects = Arc::new(Objects {
            task: task.id.to_string(),
            ingested: Timestamp::now().to_string(),
            format: self.config.source.format,
            compression: self.config.source.compression,
            bytes: bytes.clone(),
            cancel: cancel.clone(),
        });
        while done < task.objects.len() {
            while let Some(next) = task.objects.get(started)
                && fetches.len() < FETCH_AHEAD
                && (fetches.is_empty() || bytes_ahead + next.size <= FETCH_AHEAD_BYTES)
            {
                bytes_ahead += next.size;
                fetches.push_back(AbortOnDropHandle::new(tokio::spawn(
                    self.fetch(next.clone()),
                )));
                started += 1;
            }
            // The next object, waited for, and the small ones after it
            // that have already arrived.
            let mut batch = Vec::new();
            while let Some(fetch) = fetches.pop_front() {
                let object = &task.objects[done + batch.len()];
                let body = fetch.await.map_err(|err| {
                    Failed::Attempt(format!("reading s3 object {:?} stopped: {err}", object.key))
                })??;
                batch.push((object.clone(), body));
                match (fetches.front(), task.objects.get(done + batch.len())) {
                    (Some(next), Some(object))
                        if object.size <= WHOLE_OBJECT && next.is_finished() => {}
                    _ => break,
                }
            }
            let decoding = batch.len();
            let objects = objects.clone();
            let (returned, decoded) = tokio::task::spawn_blocking(move || {
                let decoded = objects.decode(batch, &mut encoder);
                (encoder, decoded)
            })
            .await
            .map_err(|err| {
                let key = &task.objects[done].key;
                Failed::Attempt(format!("decoding {key:?} stopped: {err}"))
            })?;
            encoder = returned;
            for object in &task.objects[done..done + decoding] {
                bytes_ahead -= object.size;
            }
            done += decoding;
            match decoded {
                Ok((records, bytes)) => {
                    total_records += records;
                    bytes_read += bytes;
                }
                Err(err) => {
                    drop(encoder);
                    let uploaded = upload.await;
                    // Writing failed because the upload did: it says why.
                    if let (DecodeError::Write(_), Ok(Err(upload))) = (&err, uploaded) {
                        return Err(Failed::from(upload));
                    }
                    return Err(Failed::from(err));
                }
            }
        }
        let bytes_written = if total_records == 0 {
            encoder
                .end_empty()
                .map_err(|err| Failed::Attempt(format!("finishing the output: {err}")))?;
            0
        } else {
            tokio::task::spawn_blocking(move || encoder.finish())
                .await
                .map_err(|err| Failed::Attempt(format!("finishing the output: {err}")))?
                .map_err(|err| Failed::Attempt(format!("finishing the output: {err}")))?
        };
        let wrote = upload
            .await
            .map_err(|err| Failed::Attempt(format!("the upload stopped: {err}")))?
            .map_err(Failed::from)?;
        Ok(Completion {
            worker: self.name.clone(),
            attempt: task.attempt,
            records: total_records,
            bytes_read,
            bytes_written,
            outputs: if wrote {
                vec![task.output.clone()]
            } else {
                Vec::new()
            },
            lease: None,
        })
    }

    /// The GET of `object`, on condition that it still has the ETag it was
    /// listed with; runs on its own once spawned.
    fn fetch(
        &self,
        object: ObjectRef,
    ) -> impl Future<Output = Result<Body, Failed>> + Send + 'static {
        let request = self
            .source
            .get_object()
            .bucket(&self.config.source.s3.bucket)
            .key(&object.key)
            .if_match(&object.etag);
        async move {
            let response = request.send().await.map_err(|err| {
                if matches!(s3::status(&err), Some(404 | 412)) {
                    return Failed::Object {
                        error: format!(
                            "s3 object {:?} was changed or deleted after it was listed",
                            object.key
                        ),
                        key: object.key.clone(),
                    };
                }
                let error = format!(
                    "cannot read s3 object {:?}: {}",
                    object.key,
                    s3::describe(&err)
                );
                if s3::unavailable(&err) {
                    Failed::Unavailable(error)
                } else {
                    Failed::Attempt(error)
                }
            })?;
            if object.size > WHOLE_OBJECT {
                let streamed = tokio_util::io::SyncIoBridge::new(response.body.into_async_read());
                return Ok(Box::new(streamed) as Body);
            }
            let whole = response.body.collect().await.map_err(|err| {
                Failed::from(DecodeError::Read {
                    key: object.key.clone(),
                    source: std::io::Error::other(err),
                })
            })?;
            Ok(Box::new(std::io::Cursor::new(whole.into_bytes())) as Body)
        }
    }

    /// Whether this worker still holds `attempt` of task `id`, asked right
    /// before its output is written: a heartbeat for that task alone,
    /// which also renews the lease. Retried while the coordinator is away;
    /// false when it cannot say.
    async fn holds(
        &self,
        id: TaskId,
        attempt: u32,
        records: &AtomicU64,
        bytes: &AtomicU64,
    ) -> bool {
        let request = HeartbeatRequest {
            worker: self.name.clone(),
            tasks: vec![Progress {
                id,
                attempt,
                records: records.load(Ordering::Relaxed),
                bytes: bytes.load(Ordering::Relaxed),
            }],
        };
        let ask = || self.post::<_, HeartbeatResponse>("/v1/heartbeat", &request);
        match ask.retry(report_backoff()).await {
            Ok(response) => !response.lost.contains(&id),
            Err(err) => {
                warn!(task = %id, error = %err, "cannot confirm the lease before writing the output");
                false
            }
        }
    }

    /// Sends a task's outcome, retrying while the coordinator is away. A
    /// refusal (4xx) is final: the lease went elsewhere. The answer, when
    /// the coordinator took the report.
    async fn report<B: Serialize>(&self, path: &str, body: &B) -> Option<reqwest::Response> {
        let send = || async {
            let response = self
                .post_raw(path, body)
                .await
                .map_err(|err| err.to_string())?;
            let status = response.status();
            if status.is_success() || status.is_client_error() {
                Ok(response)
            } else {
                Err(status.to_string())
            }
        };
        let sent = send
            .retry(report_backoff())
            .notify(
                |err, retry_in| warn!(%path, error = %err, ?retry_in, "cannot report; retrying"),
            )
            .await;
        match sent {
            Ok(response) if response.status().is_client_error() => {
                let text = response.text().await.unwrap_or_default();
                warn!(%path, status = %text, "the coordinator refused the report");
                None
            }
            Ok(response) => Some(response),
            Err(err) => {
                warn!(
                    %path,
                    error = %err,
                    "cannot report; giving up (the lease expires and the task is done again)"
                );
                None
            }
        }
    }

    /// A failed attempt of `task`, logged and counted, to report.
    fn failure(&self, task: &LeasedTask, error: String, key: Option<String>) -> Failure {
        self.metrics.finished.count("failed");
        warn!(task = %task.id, %error, "task failed");
        Failure {
            worker: self.name.clone(),
            attempt: task.attempt,
            error,
            key,
            released: false,
        }
    }

    async fn post_raw<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, reqwest::Error> {
        self.http
            .post(format!("{}{path}", self.coordinator))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
    }

    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, String> {
        let response = self
            .post_raw(path, body)
            .await
            .map_err(|err| format!("{}{path}: {err}", self.coordinator))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("{}{path}: {status}: {text}", self.coordinator));
        }
        response
            .json()
            .await
            .map_err(|err| format!("{}{path}: {err}", self.coordinator))
    }
}

fn report_backoff() -> backon::ExponentialBuilder {
    retry::backoff(REPORT_BACKOFF, MAX_REPORT_BACKOFF).with_max_times(REPORT_RETRIES)
}

/// How a task execution ended, for the lease loop.
enum Ended {
    /// Done, failed or lost; with the tasks its completion leased.
    Finished(Vec<LeasedTask>),
    /// Given back because S3 was unavailable.
    Unavailable,
}

/// Why a task failed; the kind says what the coordinator is asked to do.
enum Failed {
    /// S3 was unavailable ([`s3::unavailable`]): the task is given back
    /// without using an attempt.
    Unavailable(String),
    /// This object is at fault: it is split off into a task of its own.
    Object { key: String, error: String },
    /// Anything else: the attempt is used.
    Attempt(String),
    /// The worker no longer holds the task: nothing to report.
    Lost,
}

impl From<output::UploadError> for Failed {
    fn from(err: output::UploadError) -> Self {
        match err {
            output::UploadError::Unavailable(error) => Failed::Unavailable(error),
            output::UploadError::Failed(error) => Failed::Attempt(error),
            output::UploadError::Lost => Failed::Lost,
        }
    }
}

impl From<DecodeError> for Failed {
    fn from(err: DecodeError) -> Self {
        match &err {
            DecodeError::Data { key, .. } => Failed::Object {
                key: key.clone(),
                error: err.to_string(),
            },
            // The source's connection broke mid-object.
            DecodeError::Read { .. } => Failed::Unavailable(err.to_string()),
            DecodeError::Write(_) => Failed::Attempt(err.to_string()),
        }
    }
}

/// How a task's objects are decoded.
struct Objects {
    task: String,
    /// RFC 3339, the same for every record of the task.
    ingested: String,
    format: Format,
    compression: Compression,
    /// Source bytes read so far, for heartbeats (the encoder counts the
    /// records).
    bytes: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl Objects {
    /// Decodes `batch`, in order, into `encoder`, on a blocking thread;
    /// returns the records written and the source bytes read.
    fn decode(
        &self,
        batch: Vec<(ObjectRef, Body)>,
        encoder: &mut output::Encoder,
    ) -> Result<(u64, u64), DecodeError> {
        let mut totals = (0, 0);
        for (object, body) in batch {
            let reader = Counted {
                inner: body,
                bytes: self.bytes.clone(),
                cancel: self.cancel.clone(),
            };
            let origin = Origin {
                key: &object.key,
                etag: &object.etag,
                task: &self.task,
                ingested: &self.ingested,
            };
            let decoded = decode::decode(
                reader,
                &origin,
                self.format,
                self.compression,
                &Limits::default(),
                &mut *encoder,
            )?;
            totals.0 += decoded.records;
            totals.1 += decoded.bytes_in;
        }
        Ok(totals)
    }
}

/// An object's body, as the decoder reads it: in memory (objects of up to
/// [`WHOLE_OBJECT`]) or from the connection while it is decoded. Either
/// way the decoder reads the bytes where they are, without a copy.
type Body = Box<dyn BufRead + Send>;

/// Counts the source bytes read, and stops reading once cancelled.
struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
    cancel: CancellationToken,
}

impl<R: BufRead> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        decode::read_buffered(self, buf)
    }
}

impl<R: BufRead> BufRead for Counted<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("the task was stopped"));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, read: usize) {
        self.bytes.fetch_add(read as u64, Ordering::Relaxed);
        self.inner.consume(read);
    }
}
