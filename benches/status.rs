//! `make bench GROUP=status`: how often a coordinator writes its
//! IngestSource's status during a busy ingest, and how large the status
//! gets, also with its bounded lists full (bars: at most once every few
//! seconds per source, under 64 KiB).
//!
//! A real kube-apiserver and etcd, a real MinIO, the `sluice operator`
//! process, and `sluice coordinator` and `sluice worker` processes started
//! as the operator's Deployments start them, all with their default
//! intervals (`--status-interval` 5 s, `--heartbeat-interval` 1 m).

#[path = "../tests/support/mod.rs"]
mod harness;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harness::dataplane::{Ingest, Part, TOKEN, wait_until_done};
use harness::{Operator, eventually, kube_with_crd, sources};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use sluice::crd::IngestSource;
use sluice_core::api::{LeaseRequest, LeaseResponse, Summary};
use support::{Table, apiserver_requests, verdict};

/// How long the busy ingest is measured for at most: the measurement ends
/// with the ingest.
const WINDOW: Duration = Duration::from_secs(60);
/// How long the busy source is watched once idle, a little over one
/// heartbeat interval.
const IDLE: Duration = Duration::from_secs(65);
const BAR_BYTES: usize = 64 * 1024;
/// At most one write per `--status-interval` (its default, 5 s).
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Tasks a stalled worker holds in the full-lists case, more than the 20
/// `activeTasks` the status lists.
const HELD: usize = 25;
/// Worker names as long as a Deployment's pod names get (63: generated
/// names are cut to 58 characters before the 5 random ones), as worker
/// names are pod names.
const LONG_WORKER: &str = "full-worker-7d9f8c6b5d-abcde-with-a-long-generated-suffix-01234";
const STALLED_WORKER: &str = "full-worker-7d9f8c6b5d-fghij-with-a-long-generated-suffix-56789";

/// What a watch of one IngestSource saw: every change of its status, and
/// the largest status and object.
#[derive(Default)]
struct Seen {
    status_changes: Vec<Instant>,
    last_status: Option<Value>,
    largest_status: usize,
    largest_object: usize,
    most_active: usize,
    most_failures: usize,
}

impl Seen {
    fn changes_between(&self, from: Instant, to: Instant) -> usize {
        self.status_changes
            .iter()
            .filter(|at| (from..=to).contains(*at))
            .count()
    }
}

/// Watches IngestSource `name` in `namespace`.
async fn watch(client: &kube::Client, namespace: &str, name: &str) -> Arc<Mutex<Seen>> {
    let resource = ApiResource::erase::<IngestSource>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (listed, listed_rx) = tokio::sync::oneshot::channel();
    let recorded = seen.clone();
    tokio::spawn(async move {
        let mut listed = Some(listed);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let object = match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => object,
                Ok(watcher::Event::InitDone) => {
                    if let Some(listed) = listed.take() {
                        let _ = listed.send(());
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(err) => {
                    eprintln!("bench watch: {err}");
                    continue;
                }
            };
            let status = object.data.get("status").cloned();
            let mut seen = lock(&recorded);
            if status.is_some() && status != seen.last_status {
                seen.status_changes.push(Instant::now());
            }
            let status = status.unwrap_or(Value::Null);
            let length = |field: &str| status[field].as_array().map_or(0, Vec::len);
            seen.largest_status = seen.largest_status.max(status.to_string().len());
            seen.largest_object = seen
                .largest_object
                .max(serde_json::to_vec(&object).map_or(0, |bytes| bytes.len()));
            seen.most_active = seen.most_active.max(length("activeTasks"));
            seen.most_failures = seen.most_failures.max(length("recentFailures"));
            seen.last_status = Some(status);
        }
    });
    let _ = listed_rx.await;
    seen
}

/// Waits for the coordinator's first report: writes are counted from there
/// on, since the first comes at once and the next one interval later.
async fn first_report(seen: &Mutex<Seen>) {
    eventually("the coordinator's first report", WINDOW, || async {
        let seen = lock(seen);
        let status = seen.last_status.as_ref()?;
        status.get("coordinatorHeartbeatTime").map(drop)
    })
    .await;
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Status writes by the API server's count: successful server-side applies
/// of `ingestsources/status` (the operator's and the coordinators').
async fn status_applies(client: &kube::Client) -> f64 {
    apiserver_requests(client)
        .await
        .into_iter()
        .filter(|((verb, resource, subresource, outcome), _)| {
            verb == "APPLY"
                && resource == "ingestsources"
                && subresource == "status"
                && outcome.is_empty()
        })
        .map(|(_, count)| count)
        .sum()
}

/// The operator's own count of its status writes.
fn operator_status_writes(operator: &Operator) -> f64 {
    let (_, body) = operator
        .get("/metrics")
        .expect("the operator serves /metrics");
    body.lines()
        .find_map(|line| {
            line.strip_prefix("sluice_operator_api_writes_total{kind=\"IngestSource/status\"} ")
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or(0.0)
}

fn coordinator_writes(coordinator: &Part) -> f64 {
    coordinator.metric("sluice_coordinator_status_writes_total")
}

/// A source in `namespace` over `ingest`'s buckets, known to the operator.
async fn source(client: &kube::Client, namespace: &str, ingest: &mut Ingest, name: &str) {
    ingest.config.id.namespace = namespace.to_owned();
    ingest.write_config();
    ingest.use_kubeconfig(harness::kube().kubeconfig());
    sources::create_credentials(client, namespace).await;
    let mut manifest = sources::orders(name);
    manifest["spec"]["source"]["s3"]["bucket"] = json!(ingest.config.source.s3.bucket);
    sources::apply(client, namespace, &manifest).await;
}

fn per_minute(count: f64, over: Duration) -> f64 {
    count * 60.0 / over.as_secs_f64()
}

/// The most writes a coordinator at the bar (one write per [`STATUS_INTERVAL`])
/// can make in `window`: one at each end of every interval in it. A rate per
/// minute over a short window is no bar: 4 writes 5 s apart fit in 19.9 s, 12.1
/// a minute.
fn most_writes(window: Duration) -> f64 {
    (window.as_secs_f64() / STATUS_INTERVAL.as_secs_f64()).floor() + 1.0
}

/// The bar column and verdict of `writes` in `window`.
fn writes_bar(writes: f64, window: Duration) -> [String; 2] {
    let most = most_writes(window);
    [
        format!("one per {} s: ≤ {most}", STATUS_INTERVAL.as_secs()),
        verdict(writes <= most).into(),
    ]
}

#[tokio::main]
async fn main() {
    let kube = tokio::task::spawn_blocking(kube_with_crd).await.unwrap();
    tokio::task::spawn_blocking(harness::minio).await.unwrap();
    let client = kube.client().await;
    let busy_ns = kube.namespace("busy").unwrap();
    let full_ns = kube.namespace("full").unwrap();
    let operator = Operator::start_logging(
        kube,
        "bench-status",
        &[&format!("--watch-namespace={busy_ns},{full_ns}")],
        "info",
    );

    // (a) A busy ingest: small objects, two workers.
    let objects = 20_000;
    let mut busy = Ingest::new("busy", 2, Duration::from_secs(30), 3).await;
    source(&client, &busy_ns, &mut busy, "busy").await;
    eprintln!("putting {objects} small objects...");
    busy.put(
        (0..objects)
            .map(|i| {
                (
                    format!("{i:06}.ndjson"),
                    format!("{{\"id\":\"o{i}\",\"n\":{i}}}\n").into_bytes(),
                )
            })
            .collect(),
    )
    .await;
    let busy_seen = watch(&client, &busy_ns, "busy").await;
    let coordinator = busy.coordinator(None, &["--checkpoint-interval=5s"]);
    let _workers: Vec<Part> = ["busy-w1", "busy-w2"]
        .iter()
        .map(|name| busy.worker(coordinator.port, name))
        .collect();
    first_report(&busy_seen).await;
    eprintln!("measuring the busy ingest for {WINDOW:?}...");
    let start = (
        Instant::now(),
        coordinator_writes(&coordinator),
        status_applies(&client).await,
        operator_status_writes(&operator),
        coordinator.summary(),
    );
    let deadline = start.0 + WINDOW;
    while Instant::now() < deadline {
        let summary: Summary = coordinator.summary();
        if summary.tasks.pending + summary.tasks.running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let end = (
        Instant::now(),
        coordinator_writes(&coordinator),
        status_applies(&client).await,
        operator_status_writes(&operator),
        coordinator.summary(),
    );
    let window = end.0 - start.0;
    let busy_writes = end.1 - start.1;
    let busy_operator = end.3 - start.3;
    let busy_by_apiserver = end.2 - start.2 - busy_operator;
    let busy_changes = lock(&busy_seen).changes_between(start.0, end.0);
    let busy_tasks = end.4.tasks.succeeded - start.4.tasks.succeeded;
    let still_busy = end.4.tasks.pending + end.4.tasks.running > 0;
    eprintln!(
        "busy: {busy_writes} coordinator writes in {window:?} ({busy_tasks} tasks done), \
         {busy_by_apiserver} by the API server's count, {busy_changes} status changes watched"
    );

    // (b) Full lists: more tasks running than activeTasks holds (a stalled
    // worker holds some), more failed for good than recentFailures holds,
    // with keys near S3's 1,024-byte limit, errors that quote them, and a
    // worker name as long as a pod's. Meanwhile (a) finishes.
    let mut full = Ingest::new("full", 1, Duration::from_secs(300), 1).await;
    source(&client, &full_ns, &mut full, "full").await;
    let deep = "deep-prefix/".repeat(80);
    full.put(
        (0..200)
            .map(|i| {
                let body = if i % 5 == 0 {
                    format!("{{\"id\":\"f{i}\",\"broken\": }}\n")
                } else {
                    format!("{{\"id\":\"f{i}\"}}\n")
                };
                (format!("{deep}{i:04}.ndjson"), body.into_bytes())
            })
            .collect(),
    )
    .await;
    let full_seen = watch(&client, &full_ns, "full").await;
    let full_coordinator = full.coordinator(None, &["--checkpoint-interval=5s"]);
    first_report(&full_seen).await;
    let full_start = (Instant::now(), coordinator_writes(&full_coordinator));
    let mut held = 0;
    while held < HELD {
        let request = serde_json::to_string(&LeaseRequest {
            worker: STALLED_WORKER.into(),
            max: (HELD - held) as u32,
        })
        .unwrap();
        let (status, body) = full_coordinator.request("POST", "/v1/lease", Some(TOKEN), &request);
        assert_eq!(status, 200, "{body}");
        held += serde_json::from_str::<LeaseResponse>(&body)
            .unwrap()
            .tasks
            .len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _worker = full.worker_with(full_coordinator.port, LONG_WORKER, &["--concurrency=8"]);
    // Everything but the held tasks finishes; then two more status
    // intervals so the last counts are published.
    eventually(
        "the full-lists ingest",
        Duration::from_secs(120),
        || async {
            let summary = full_coordinator.summary();
            (summary.tasks.pending == 0 && summary.tasks.running as usize == HELD).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    let full_window = full_start.0.elapsed();
    let full_writes = coordinator_writes(&full_coordinator) - full_start.1;

    // (a) once its ingest is done: the last counts, then heartbeats.
    wait_until_done(&coordinator, objects, Duration::from_secs(300)).await;
    eprintln!("watching the idle source for {IDLE:?}...");
    let idle_from = Instant::now();
    let idle_writes_from = coordinator_writes(&coordinator);
    tokio::time::sleep(IDLE).await;
    let idle_window = idle_from.elapsed();
    let idle_writes = coordinator_writes(&coordinator) - idle_writes_from;
    drop(operator);

    let busy = lock(&busy_seen);
    let full = lock(&full_seen);
    println!(
        "A `sluice coordinator` and `sluice worker` processes (release build, default \
         `--status-interval` 5 s and `--heartbeat-interval` 1 m, checkpoints every 5 s) \
         against a real MinIO and a real kube-apiserver, with the `sluice operator` process \
         serving the namespaces. Writes are the coordinator's successful status applies (its \
         `sluice_coordinator_status_writes_total`), checked against the API server's count of \
         `APPLY ingestsources/status` less the operator's own status writes, and against the \
         status changes the benchmark's watch of the IngestSource saw (any writer). Sizes are \
         the largest `status` (compact JSON) and the largest whole object (with its \
         `managedFields`) the watch saw.\n"
    );
    println!(
        "**(a) busy**: {objects} small NDJSON objects, 2 objects a task, two workers; measured \
         over {:.0} s from the coordinator's first report, {busy_tasks} tasks done in it{}. \
         Then, once every object is ingested, idle for {:.0} s. **(b) full \
         lists**: 200 objects whose keys are {} bytes long, every fifth malformed (one try, so \
         it fails for good, its error quoting the key); {HELD} tasks leased and held by a \
         stalled worker through the coordinator's lease API, the rest run by a worker; both \
         workers' names are {} bytes long, the longest a Deployment's pod name gets; measured from the coordinator's first report until {:.0} s \
         later, when all but the held tasks had finished.\n",
        window.as_secs_f64(),
        if still_busy {
            ", work still pending at the end"
        } else {
            ", the ingest ending inside it"
        },
        idle_window.as_secs_f64(),
        deep.len() + "in/0000.ndjson".len(),
        LONG_WORKER.len(),
        full_window.as_secs_f64(),
    );
    let [busy_bar, busy_verdict] = writes_bar(busy_writes, window);
    let [full_bar, full_verdict] = writes_bar(full_writes, full_window);
    let mut table = Table::new(&["measure", "result", "bar", ""]);
    table.row(&[
        "(a) busy: coordinator status writes a minute (in the window)".into(),
        format!(
            "{:.1} ({busy_writes} in {:.1} s; API server: {busy_by_apiserver}, watch: {busy_changes} changes incl. {busy_operator} by the operator)",
            per_minute(busy_writes, window),
            window.as_secs_f64()
        ),
        busy_bar,
        busy_verdict,
    ]);
    table.row(&[
        "(a) idle: coordinator status writes per minute (heartbeat)".into(),
        format!(
            "{:.1} ({idle_writes} in {:.0} s)",
            per_minute(idle_writes, idle_window),
            idle_window.as_secs_f64()
        ),
        "1 + the last counts".into(),
        String::new(),
    ]);
    table.row(&[
        "(a) largest status / whole object".into(),
        format!("{} B / {} B", busy.largest_status, busy.largest_object),
        "64 KiB".into(),
        verdict(busy.largest_status < BAR_BYTES).into(),
    ]);
    table.row(&[
        "(b) full lists: coordinator status writes a minute (in the window)".into(),
        format!(
            "{:.1} ({full_writes} in {:.1} s)",
            per_minute(full_writes, full_window),
            full_window.as_secs_f64()
        ),
        full_bar,
        full_verdict,
    ]);
    table.row(&[
        "(b) largest activeTasks / recentFailures".into(),
        format!("{} / {}", full.most_active, full.most_failures),
        "20 / 10".into(),
        String::new(),
    ]);
    table.row(&[
        "(b) largest status / whole object".into(),
        format!("{} B / {} B", full.largest_status, full.largest_object),
        "64 KiB".into(),
        verdict(full.largest_status < BAR_BYTES).into(),
    ]);
    table.print();
}
