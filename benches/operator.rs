//! `make bench GROUP=operator`: the reconcile bars, against a real
//! kube-apiserver and etcd with the `sluice operator` process (release
//! build, `RUST_LOG=info`, leader election on, all namespaces: what the
//! chart runs).
//!
//! - apply-to-children latency of one new IngestSource (bar: p99 < 1 s);
//! - 1,000 IngestSources settling from a cold start (bar: < 30 s);
//! - API writes of a resync that changes nothing (bar: 0).
//!
//! Times are taken from the bench's own watches of IngestSources,
//! Deployments and Services, stamped when each event arrives; writes are
//! counted by the API server (`apiserver_request_total`).

#[path = "../tests/support/mod.rs"]
mod harness;
mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use harness::{Operator, kube_with_crd, sources};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;
use sluice::crd::IngestSource;
use sluice_testenv::KubeEnv;
use support::{Requests, Table, apiserver_requests, cpu_seconds, percentile, verdict};

/// Sequential new sources for the latency figures.
const LATENCY_SOURCES: usize = 100;
/// Sources for the cold start and the resync.
const COLD_SOURCES: usize = 1000;
/// Longest wait for anything before it counts as missed.
const GIVE_UP: Duration = Duration::from_secs(180);
/// No reconcile for this long: the operator is done with what it was given.
const QUIET: Duration = Duration::from_secs(3);

/// What the bench's watches have seen in one namespace, with when each
/// thing was first seen.
#[derive(Default)]
struct Seen {
    /// Deployment and Service names.
    deployments: HashMap<String, Instant>,
    services: HashMap<String, Instant>,
    /// IngestSource name → when its status first said the observed
    /// generation is its generation.
    observed: HashMap<String, Instant>,
}

impl Seen {
    /// When source `name` first had its coordinator and worker Deployments
    /// and its Service (the worker Deployment is the last child applied).
    fn children(&self, name: &str) -> Option<Instant> {
        let coordinator = format!("{name}-coordinator");
        [
            self.deployments.get(&coordinator)?,
            self.deployments.get(&format!("{name}-worker"))?,
            self.services.get(&coordinator)?,
        ]
        .into_iter()
        .max()
        .copied()
    }

    /// When source `name` was settled: its children exist and its status
    /// has observed its generation.
    fn settled(&self, name: &str) -> Option<Instant> {
        self.children(name)?.max(*self.observed.get(name)?).into()
    }
}

/// Watches one namespace, so waits end the moment the event arrives.
struct Watches {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<tokio::sync::Notify>,
}

impl Watches {
    /// Starts the watches and returns once each has listed.
    async fn start(client: &Client, namespace: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let (listed, mut listed_rx) = tokio::sync::mpsc::channel(3);
        spawn_watch(
            Api::<Deployment>::namespaced(client.clone(), namespace),
            listed.clone(),
            {
                let (seen, changed) = (seen.clone(), changed.clone());
                move |deployment: Deployment| {
                    lock(&seen)
                        .deployments
                        .entry(deployment.name_any())
                        .or_insert_with(Instant::now);
                    changed.notify_waiters();
                }
            },
        );
        spawn_watch(
            Api::<Service>::namespaced(client.clone(), namespace),
            listed.clone(),
            {
                let (seen, changed) = (seen.clone(), changed.clone());
                move |service: Service| {
                    lock(&seen)
                        .services
                        .entry(service.name_any())
                        .or_insert_with(Instant::now);
                    changed.notify_waiters();
                }
            },
        );
        spawn_watch(
            Api::<IngestSource>::namespaced(client.clone(), namespace),
            listed,
            {
                let (seen, changed) = (seen.clone(), changed.clone());
                move |source: IngestSource| {
                    let observed = source.status.as_ref().and_then(|s| s.observed_generation);
                    if observed.is_some() && observed == source.metadata.generation {
                        lock(&seen)
                            .observed
                            .entry(source.name_any())
                            .or_insert_with(Instant::now);
                        changed.notify_waiters();
                    }
                }
            },
        );
        for _ in 0..3 {
            listed_rx.recv().await;
        }
        Self { seen, changed }
    }

    /// The time `when` says, waiting for it at most until `deadline`.
    async fn until(
        &self,
        deadline: Instant,
        when: impl Fn(&Seen) -> Option<Instant>,
    ) -> Option<Instant> {
        loop {
            let changed = self.changed.notified();
            if let Some(at) = when(&lock(&self.seen)) {
                return Some(at);
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return None;
            }
        }
    }
}

/// Calls `seen` with every object `api` lists or watches; sends on
/// `listed` once the first list is in.
fn spawn_watch<K>(
    api: Api<K>,
    listed: tokio::sync::mpsc::Sender<()>,
    mut seen: impl FnMut(K) + Send + 'static,
) where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    seen(object)
                }
                Ok(watcher::Event::InitDone) => {
                    let _ = listed.send(()).await;
                }
                Ok(_) => {}
                Err(err) => eprintln!("bench watch: {err}"),
            }
        }
    });
}

/// The latest of `times` once every one is known.
fn latest(times: impl Iterator<Item = Option<Instant>>) -> Option<Instant> {
    times.collect::<Option<Vec<_>>>()?.into_iter().max()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The verbs that write.
const WRITE_VERBS: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// What the operator writes: its children, the token Secret, the status
/// and Events.
const OPERATOR_WRITES: [&str; 9] = [
    "serviceaccounts",
    "roles",
    "rolebindings",
    "configmaps",
    "services",
    "deployments",
    "secrets",
    "ingestsources",
    "events",
];

/// The requests served between two readings of the API server's count,
/// each kind with how many.
fn served<'a>(
    before: &'a Requests,
    after: &'a Requests,
) -> impl Iterator<Item = (&'a (String, String, String, String), f64)> {
    after
        .iter()
        .map(|(key, count)| (key, count - before.get(key).unwrap_or(&0.0)))
        .filter(|(_, count)| *count > 0.0)
}

/// The write requests between two readings of the API server's count.
struct NewWrites {
    /// Of the kinds the operator writes: `VERB resource[/subresource]`,
    /// with why it stored nothing when it did not, → count.
    operator: BTreeMap<String, f64>,
    /// Of the others: Leases (the API server renews its own every 10 s,
    /// leader election the operator's) and Endpoints (kube-controller-
    /// manager's endpoints controller writes them for the Services).
    others: BTreeMap<String, f64>,
    /// Of the operator's kinds, those that may have stored something.
    may_store: f64,
    /// Of those, the PATCHes of Secrets: the operator cannot read a Secret,
    /// so it patches its token Secret on every reconcile, and the API
    /// server stores nothing when that changes nothing.
    secret_patches: f64,
}

impl NewWrites {
    fn between(before: &Requests, after: &Requests) -> Self {
        let mut new = NewWrites {
            operator: BTreeMap::new(),
            others: BTreeMap::new(),
            may_store: 0.0,
            secret_patches: 0.0,
        };
        for ((verb, resource, subresource, outcome), count) in served(before, after) {
            if !WRITE_VERBS.contains(&verb.as_str()) {
                continue;
            }
            let mut what = format!("{verb} {resource}");
            if !subresource.is_empty() {
                what = format!("{what}/{subresource}");
            }
            if !outcome.is_empty() {
                what = format!("{what} ({outcome})");
            }
            if !OPERATOR_WRITES.contains(&resource.as_str()) {
                new.others.insert(what, count);
                continue;
            }
            new.operator.insert(what, count);
            if outcome.is_empty() {
                new.may_store += count;
                if verb == "PATCH" && resource == "secrets" && subresource.is_empty() {
                    new.secret_patches += count;
                }
            }
        }
        new
    }

    /// The writes that stored something, `changed_secrets` being how many
    /// Secrets have a new resourceVersion: each Secret PATCH counts only
    /// when its Secret changed.
    fn stored(&self, changed_secrets: usize) -> i64 {
        let unchanged = (self.secret_patches - changed_secrets as f64).max(0.0);
        // As an integer: a sum of no f64s is -0.
        (self.may_store - unchanged) as i64
    }
}

/// The resourceVersion of every Secret in `namespace`.
async fn secret_versions(client: &Client, namespace: &str) -> BTreeMap<String, String> {
    Api::<Secret>::namespaced(client.clone(), namespace)
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|secret| {
            (
                secret.name_any(),
                secret.resource_version().unwrap_or_default(),
            )
        })
        .collect()
}

/// How many Secrets in `after` are new or have another resourceVersion.
fn changed(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> usize {
    after
        .iter()
        .filter(|(name, version)| before.get(*name) != Some(*version))
        .count()
}

fn describe(writes: &BTreeMap<String, f64>) -> String {
    if writes.is_empty() {
        return "none".into();
    }
    writes
        .iter()
        .map(|(what, count)| format!("{count} {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The requests on the kinds the operator writes (reads too) between two
/// readings, by verb and outcome, most first.
fn by_verb(before: &Requests, after: &Requests) -> String {
    let mut verbs: BTreeMap<String, f64> = BTreeMap::new();
    for ((verb, resource, _, outcome), count) in served(before, after) {
        if !OPERATOR_WRITES.contains(&resource.as_str()) {
            continue;
        }
        let what = match outcome.as_str() {
            "" => verb.clone(),
            outcome => format!("{verb} ({outcome})"),
        };
        *verbs.entry(what).or_default() += count;
    }
    let total: f64 = verbs.values().sum();
    let mut verbs: Vec<_> = verbs.into_iter().collect();
    verbs.sort_by(|a, b| b.1.total_cmp(&a.1));
    let verbs: Vec<String> = verbs
        .iter()
        .map(|(what, count)| format!("{count} {what}"))
        .collect();
    format!(
        "{total} ({:.1} per source): {}",
        total / COLD_SOURCES as f64,
        verbs.join(", ")
    )
}

/// The CPU time the control plane's processes have used, to tell what a
/// stretch of the run was bound by.
struct Cpu {
    /// Each process's name, pid and CPU seconds so far.
    control_plane: Vec<(String, u32, f64)>,
    benchmark: f64,
}

impl Cpu {
    /// Etcd's, kube-apiserver's, kube-controller-manager's and this
    /// benchmark's CPU time so far.
    fn of(kube: &KubeEnv) -> Self {
        let name = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| pid.to_string())
        };
        Cpu {
            control_plane: kube
                .pids()
                .into_iter()
                .map(|pid| (name(pid), pid, cpu_seconds(pid)))
                .collect(),
            benchmark: cpu_seconds(std::process::id()),
        }
    }

    /// What each used since `self`, and the operator since it started.
    fn since(&self, operator: &Operator) -> String {
        let mut used: Vec<String> = self
            .control_plane
            .iter()
            .map(|(name, pid, before)| format!("{name} {:.1} s", cpu_seconds(*pid) - before))
            .collect();
        used.push(format!("the operator {:.1} s", cpu_seconds(operator.pid())));
        used.push(format!(
            "the benchmark (its watches) {:.1} s",
            cpu_seconds(std::process::id()) - self.benchmark
        ));
        used.join(", ")
    }
}

/// Starts the operator as users run it (off the runtime's threads, which
/// keep stamping watch events meanwhile).
async fn start_operator(kube: &'static KubeEnv, identity: &'static str) -> Operator {
    tokio::task::spawn_blocking(move || Operator::start_logging(kube, identity, &[], "info"))
        .await
        .unwrap()
}

/// Waits until the operator has reconciled at least `at_least` times and
/// then not at all for [`QUIET`]; returns its reconcile count.
async fn quiet(operator: &Operator, at_least: f64) -> f64 {
    let deadline = Instant::now() + GIVE_UP;
    let mut last = (-1.0, Instant::now());
    loop {
        // A busy operator may answer late; ask again.
        let Some((_, metrics)) = operator.get("/metrics") else {
            continue;
        };
        let reconciles = harness::metric(&metrics, "sluice_operator_reconciles_total");
        if reconciles != last.0 {
            last = (reconciles, Instant::now());
        } else if reconciles >= at_least && last.1.elapsed() >= QUIET {
            return reconciles;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not settle: {reconciles} reconciles\n{}",
            tail(&operator.log())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Applies `count` sources named `source-N` into `namespace`, 8 at a time.
async fn create_sources(client: &Client, namespace: &str, count: usize) {
    futures::stream::iter(0..count)
        .map(|i| async move {
            sources::apply(client, namespace, &sources::orders(&format!("source-{i}"))).await;
            Ok::<_, ()>(())
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .unwrap();
}

/// The end of a log, for a message.
fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(8000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

fn seconds_or_missed(took: Option<Duration>) -> String {
    took.map_or_else(|| format!("over {} s", GIVE_UP.as_secs()), support::seconds)
}

#[tokio::main]
async fn main() {
    let load_at_start = load_average();
    let kube = tokio::task::spawn_blocking(kube_with_crd).await.unwrap();
    let client = kube.client().await;

    // Cold start: the sources exist before the operator starts.
    let cold = kube.namespace("cold").unwrap();
    sources::create_credentials(&client, &cold).await;
    eprintln!("creating {COLD_SOURCES} IngestSources with no operator running...");
    create_sources(&client, &cold, COLD_SOURCES).await;
    let watches = Watches::start(&client, &cold).await;
    eprintln!("starting the operator...");
    let cold_requests = apiserver_requests(&client).await;
    let cold_cpu = Cpu::of(kube);
    let started = Instant::now();
    let operator = start_operator(kube, "bench-1").await;
    let names: Vec<String> = (0..COLD_SOURCES).map(|i| format!("source-{i}")).collect();
    let settled_at = watches
        .until(started + GIVE_UP, |seen| {
            latest(names.iter().map(|name| seen.settled(name)))
        })
        .await;
    let children_at = watches
        .until(Instant::now(), |seen| {
            latest(names.iter().map(|name| seen.children(name)))
        })
        .await;
    let cold_settled = settled_at.map(|at| at - started);
    let cold_children = children_at.map(|at| at - started);
    eprintln!("cold start: children {cold_children:?}, settled {cold_settled:?}");
    if cold_settled.is_none() {
        let settled = names
            .iter()
            .filter(|name| lock(&watches.seen).settled(name).is_some());
        eprintln!(
            "only {} settled; the operator's log:\n{}",
            settled.count(),
            tail(&operator.log())
        );
    }

    // A resync that changes nothing: the operator restarted (as on an
    // upgrade or a new leader) reconciles every source again.
    let reconciled = quiet(&operator, COLD_SOURCES as f64).await;
    let cold_quiet = started.elapsed();
    let cold_requests = by_verb(&cold_requests, &apiserver_requests(&client).await);
    let cold_cpu = cold_cpu.since(&operator);
    eprintln!(
        "{reconciled} reconciles until quiet after {cold_quiet:?}: {cold_requests}; CPU: {cold_cpu}; restarting the operator..."
    );
    drop(operator);
    let before = apiserver_requests(&client).await;
    let secrets = secret_versions(&client, &cold).await;
    let operator = start_operator(kube, "bench-2").await;
    let restart_reconciles = quiet(&operator, COLD_SOURCES as f64).await;
    let after = apiserver_requests(&client).await;
    let restart = NewWrites::between(&before, &after);
    let restart_changed = changed(&secrets, &secret_versions(&client, &cold).await);
    let restart_own = operator.metric("sluice_operator_api_writes_total");
    eprintln!(
        "restart: {restart_reconciles} reconciles, writes: {}; Secrets changed: {restart_changed}; others: {}",
        describe(&restart.operator),
        describe(&restart.others)
    );

    // And one woken by a watch event: an annotation the operator does not
    // act on, on every source. The bench's own PATCHes are left out.
    let api: Api<IngestSource> = Api::namespaced(client.clone(), &cold);
    let before = apiserver_requests(&client).await;
    let secrets = secret_versions(&client, &cold).await;
    let own_before = operator.metric("sluice_operator_api_writes_total");
    futures::stream::iter(&names)
        .map(|name| {
            let api = api.clone();
            async move {
                api.patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {"bench.sluice.dev/touched": "1"}}}),
                    ),
                )
                .await
                .map(drop)
            }
        })
        .buffer_unordered(8)
        .try_collect::<()>()
        .await
        .unwrap();
    let touch_reconciles =
        quiet(&operator, restart_reconciles + COLD_SOURCES as f64).await - restart_reconciles;
    let after = apiserver_requests(&client).await;
    let mut touch = NewWrites::between(&before, &after);
    let touch_changed = changed(&secrets, &secret_versions(&client, &cold).await);
    let bench_patches = touch.operator.remove("PATCH ingestsources").unwrap_or(0.0);
    assert_eq!(bench_patches, COLD_SOURCES as f64, "the bench's own writes");
    touch.may_store -= bench_patches;
    let touch_own = operator.metric("sluice_operator_api_writes_total") - own_before;
    eprintln!(
        "touch: {touch_reconciles} reconciles, writes: {}; Secrets changed: {touch_changed}; others: {}",
        describe(&touch.operator),
        describe(&touch.others)
    );

    // Apply-to-children latency, one new source at a time, with the 1,000
    // others in the operator's caches.
    let fresh = kube.namespace("latency").unwrap();
    sources::create_credentials(&client, &fresh).await;
    let watches = Watches::start(&client, &fresh).await;
    let (mut to_children, mut to_status) = (Vec::new(), Vec::new());
    eprintln!("{LATENCY_SOURCES} new IngestSources, one at a time...");
    for i in 0..LATENCY_SOURCES {
        let name = format!("source-{i}");
        let applied = Instant::now();
        sources::apply(&client, &fresh, &sources::orders(&name)).await;
        let deadline = applied + Duration::from_secs(30);
        let children = watches.until(deadline, |seen| seen.children(&name)).await;
        let settled = watches.until(deadline, |seen| seen.settled(&name)).await;
        to_children.push(children.map_or(Duration::from_secs(30), |at| at - applied));
        to_status.push(settled.map_or(Duration::from_secs(30), |at| at - applied));
    }
    drop(operator);

    let (p50, p99) = (
        percentile(to_children.clone(), 50),
        percentile(to_children, 99),
    );
    let (status_p50, status_p99) = (percentile(to_status.clone(), 50), percentile(to_status, 99));
    let restart_total = restart.stored(restart_changed);
    let touch_total = touch.stored(touch_changed);

    println!(
        "The `sluice operator` process (release build, `RUST_LOG=info`, leader election on, \
         every namespace, as the chart runs it) against a real kube-apiserver and etcd on \
         loopback, with the garbage collector of kube-controller-manager running. Times come \
         from the benchmark's own watches of IngestSources, Deployments and Services, taken \
         when each event arrives. A source has its **children** once its coordinator \
         Deployment, its coordinator Service and its worker Deployment exist (the \
         Deployments come in the operator's second and last round of applies); it is \
         **settled** once it also has a status whose `observedGeneration` is its \
         `metadata.generation`. No kubelet runs, so the Deployments never become ready and \
         every source stays `Pending`; that is the operator's whole work for a new source.\n"
    );
    println!(
        "A new source's children come in four requests one after another: in each of two \
         rounds, every child of the round is read by name (`get`, to leave alone an object of \
         that name that is not the source's) and then applied, all at once; the token Secret \
         is created during the first round. On 2026-12-04 on an AMD machine, apply → children \
         took 90.7 ms (p50) and 120.7 ms (p99) before two changes, 37.0 ms and 77.8 ms after \
         them, in the same hour: each child was read with a `list` by name, which the API \
         server answers from its watch cache only once that cache has caught up with etcd's \
         latest revision (after any write to any kind it waits for etcd's next progress \
         report, asked for every 100 ms), and the token Secret was made before the first \
         round, by a patch that found none and then a create.\n"
    );
    println!(
        "The cold start is bound by the API server's CPU: the table gives the CPU time each \
         process used from the operator's start until it was quiet, and the requests on the \
         kinds the operator writes (reads too). Both cores are busy throughout, \
         kube-apiserver with about two thirds of them and the operator with an eighth. Two \
         experiments on 2026-12-04 on an AMD machine, where the cold start took 36-40 s: \
         leaving out the requests that store nothing on every reconcile after a source's \
         first (the token Secret's PATCH and the credentials' dry run, 2,500 fewer requests) \
         took 40.7 s, and leaving out the `get` of each new child (8,000 fewer requests, \
         which would take over objects of other owners) 38.8 s: neither is the cost. What \
         remains is the API server's work per applied child (server-side apply of 9.5 objects \
         per source, the Service's cluster IP, the Events); a Xeon machine took 26.4 s for \
         the same code earlier that day. A CPU profile of kube-apiserver over 40 s of a cold \
         start (its `/debug/pprof/profile`, later that day on the AMD machine; that run took \
         32.9 s): server-side apply 35 % (the field manager and structured-merge-diff 11 %, \
         decoding each apply body as YAML 7 %, creating new objects by apply 9 %, the \
         IngestSources' status applies 6 %), Go's garbage collector 13 %, authorizing 11 % \
         and authenticating the client certificate 6 % of every request, POSTs 6 %. The \
         operator already applies each child once; a cheaper first write would be a POST, \
         which leaves the child's fields owned by an `Update` entry that later applies \
         cannot remove fields from (not done).\n"
    );
    println!(
        "Writes are counted by the API server: its `apiserver_request_total` (verbs POST, PUT, \
         PATCH, APPLY, DELETE) read from `/metrics` before and after, with the benchmark writing \
         nothing meanwhile (but for its annotation PATCHes, which are left out). The metric \
         has no label for the client, so the writes to the kinds the operator writes \
         (its children, Secrets, IngestSources and their status, Events) are counted against \
         the bar and the rest are listed beside them: Leases (the API server renews its own \
         every 10 s, leader election the operator's) and Endpoints (which kube-controller-manager's \
         endpoints controller writes for the Services). A write request stores nothing when \
         it is a dry run or refused (the metric's `dry_run` and `code` labels): the operator \
         learns whether a credentials Secret exists by a dry-run create, as it may not read \
         Secrets. For the same reason it patches its token Secret on every reconcile (one \
         JSON patch that tests the owner, then sets the token), which the API server stores \
         only when it changes the Secret: a Secret PATCH counts against the bar only as \
         often as Secrets got a new `resourceVersion` (listed before and after). Every \
         request is listed. The operator's own `sluice_operator_api_writes_total` is given \
         too.\n"
    );
    let mut table = Table::new(&["measure", "sources", "result", "bar", ""]);
    table.row(&[
        "new source: apply → children, p50".into(),
        format!("{LATENCY_SOURCES}, one at a time"),
        support::ms(p50),
        "-".into(),
        String::new(),
    ]);
    table.row(&[
        "new source: apply → children, p99".into(),
        format!("{LATENCY_SOURCES}, one at a time"),
        support::ms(p99),
        "1 s".into(),
        verdict(p99 < Duration::from_secs(1)).into(),
    ]);
    table.row(&[
        "new source: apply → settled, p50 / p99".into(),
        format!("{LATENCY_SOURCES}, one at a time"),
        format!("{} / {}", support::ms(status_p50), support::ms(status_p99)),
        "-".into(),
        String::new(),
    ]);
    table.row(&[
        "cold start: operator start → every source has its children".into(),
        COLD_SOURCES.to_string(),
        seconds_or_missed(cold_children),
        "-".into(),
        String::new(),
    ]);
    table.row(&[
        "cold start: operator start → every source settled".into(),
        COLD_SOURCES.to_string(),
        seconds_or_missed(cold_settled),
        "30 s".into(),
        verdict(cold_settled.is_some_and(|took| took < Duration::from_secs(30))).into(),
    ]);
    table.row(&[
        format!("cold start: API requests until quiet ({reconciled} reconciles)"),
        COLD_SOURCES.to_string(),
        cold_requests,
        "-".into(),
        String::new(),
    ]);
    table.row(&[
        format!(
            "cold start: CPU time until quiet ({:.1} s on {} cores)",
            cold_quiet.as_secs_f64(),
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        COLD_SOURCES.to_string(),
        cold_cpu,
        "-".into(),
        String::new(),
    ]);
    table.row(&[
        format!("no-op resync, operator restarted ({restart_reconciles} reconciles): API writes"),
        COLD_SOURCES.to_string(),
        format!(
            "{restart_total} (requests: {}; Secrets with a new resourceVersion: {restart_changed}); operator's own count {}; not the operator's: {}",
            describe(&restart.operator),
            restart_own as i64,
            describe(&restart.others)
        ),
        "0".into(),
        verdict(restart_total == 0).into(),
    ]);
    table.row(&[
            format!(
                "no-op resync, an ignored annotation touched ({touch_reconciles} reconciles): API writes"
            ),
            COLD_SOURCES.to_string(),
            format!(
                "{touch_total} (requests: {}; Secrets with a new resourceVersion: {touch_changed}); operator's own count {}; not the operator's: {}",
                describe(&touch.operator),
                touch_own as i64,
                describe(&touch.others)
            ),
            "0".into(),
            verdict(touch_total == 0).into(),
        ]);
    table.print();
    println!(
        "Load average (1, 5, 15 min) when the run began: {load_at_start}; when it ended: {}.",
        load_average()
    );
}

/// The machine's load average, which says how far to trust the figures.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
