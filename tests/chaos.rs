//! Fault injection: a known data set, every record with its own id, is
//! ingested while a seeded driver kills and restarts the parts at random
//! moments; afterwards the sink is compared with the source record by
//! record and the archive task by task.
//!
//! `cargo test` runs a short form that still injects every kind of fault;
//! `make chaos` a long one. `SLUICE_CHAOS_SEED` replays a run,
//! `SLUICE_CHAOS_ROUNDS` sets how many faults each test injects (the data
//! set grows with it).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use sluice::api::TaskState;
use sluice::testenv::{MinioEnv, free_port};
use support::dataplane::{Ingest, Part, wait_until_done};
use support::{eventually, kube_with_crd, minio, sources};

const DEFAULT_SEED: u64 = 20_261_124;
/// Faults per test in the short form (`cargo test`).
const SHORT_ROUNDS: usize = 8;
/// Objects per round of faults, and records per object.
const OBJECTS_PER_ROUND: usize = 25;
const RECORDS: usize = 20;
/// Objects per task: small tasks, so that faults land in many of them.
const TASK_OBJECTS: u32 = 3;
/// Lease duration: a killed worker's tasks go elsewhere after it.
const LEASE: Duration = Duration::from_secs(3);
/// The random pause before each fault.
const PAUSE: std::ops::Range<u64> = 200..1500;
const DONE: Duration = Duration::from_secs(300);

/// The driver's settings and its random source.
struct Chaos {
    seed: u64,
    rounds: usize,
    rng: SmallRng,
}

impl Chaos {
    fn new(test: &str) -> Self {
        let number = |name: &str| {
            std::env::var(name).ok().map(|value| {
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name}={value}: not a number"))
            })
        };
        let seed = number("SLUICE_CHAOS_SEED").unwrap_or(DEFAULT_SEED);
        let rounds = number("SLUICE_CHAOS_ROUNDS").map_or(SHORT_ROUNDS, |n| n as usize);
        println!("{test}: seed {seed} (SLUICE_CHAOS_SEED replays it), {rounds} rounds");
        Self {
            seed,
            rounds,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// `rounds` faults of `kinds`: each kind once in a random order, then
    /// any.
    fn schedule(&mut self, kinds: &[Fault]) -> Vec<Fault> {
        let mut faults = kinds.to_vec();
        faults.shuffle(&mut self.rng);
        while faults.len() < self.rounds {
            faults.push(kinds[self.rng.random_range(0..kinds.len())]);
        }
        faults
    }

    /// Sleeps a random moment: the driver's schedule, not a wait for a
    /// condition.
    async fn pause(&mut self) {
        let pause = Duration::from_millis(self.rng.random_range(PAUSE));
        tokio::time::sleep(pause).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillCoordinator,
    KillWorker,
    RestartMinio,
    RestartApiServer,
    /// A second coordinator of the same source starts while one runs.
    SecondCoordinator,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillCoordinator => "kill -9 coordinator",
            Fault::KillWorker => "kill -9 worker",
            Fault::RestartMinio => "restart MinIO",
            Fault::RestartApiServer => "restart kube-apiserver",
            Fault::SecondCoordinator => "second coordinator",
        })
    }
}

/// Object `index`: `RECORDS` records with ids `o{index}-r{n}`, as NDJSON
/// or CSV, plain or gzip.
fn object(index: usize) -> (String, Vec<u8>) {
    let ids = (0..RECORDS).map(|n| format!("o{index}-r{n}"));
    let (extension, text): (_, String) = if index.is_multiple_of(2) {
        (
            "ndjson",
            ids.map(|id| format!("{{\"id\":\"{id}\",\"n\":{index}}}\n"))
                .collect(),
        )
    } else {
        (
            "csv",
            std::iter::once("id,n\n".to_owned())
                .chain(ids.map(|id| format!("{id},{index}\n")))
                .collect(),
        )
    };
    let key = format!("{index:06}.{extension}");
    if index.is_multiple_of(3) {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(text.as_bytes()).unwrap();
        (format!("{key}.gz"), gzip.finish().unwrap())
    } else {
        (key, text.into_bytes())
    }
}

/// The data set, put into the source in waves while the faults go on
/// (the coordinator polls the source), so there is work during every one.
struct DataSet {
    objects: usize,
    put: usize,
    waves: usize,
}

impl DataSet {
    fn new(rounds: usize) -> Self {
        Self {
            objects: rounds * OBJECTS_PER_ROUND,
            put: 0,
            waves: rounds.div_ceil(2),
        }
    }

    /// Puts the next wave, if any is left.
    async fn put_wave(&mut self, ingest: &Ingest) {
        let end = (self.put + self.objects.div_ceil(self.waves)).min(self.objects);
        ingest.put((self.put..end).map(object).collect()).await;
        self.put = end;
    }

    fn ids(&self) -> BTreeSet<String> {
        (0..self.objects)
            .flat_map(|index| (0..RECORDS).map(move |n| format!("o{index}-r{n}")))
            .collect()
    }
}

/// What was done and what was found.
#[derive(Default)]
struct Ledger {
    faults: BTreeMap<Fault, u32>,
    /// Coordinators that stopped because another one took over.
    fenced: u32,
    /// Processes that exited without being killed or fenced.
    unplanned_exits: Vec<String>,
    records: usize,
    lost: Vec<String>,
    duplicated: Vec<String>,
    unexpected: Vec<String>,
    tasks_archived: usize,
    archived_twice: Vec<String>,
    not_succeeded: Vec<String>,
    /// Objects in no succeeded task, or in more than one.
    objects_uncovered: usize,
    objects_twice: usize,
}

impl Ledger {
    fn fault(&mut self, fault: Fault) {
        *self.faults.entry(fault).or_default() += 1;
    }

    /// Compares the sink with `expected` record by record, and the
    /// archive with the `objects` objects task by task.
    async fn check(&mut self, ingest: &Ingest, expected: &BTreeSet<String>, objects: usize) {
        let ids = ingest.sink_ids().await;
        self.records = expected.len();
        self.duplicated = ids
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id} ×{n}"))
            .collect();
        self.lost = expected
            .iter()
            .filter(|id| !ids.contains_key(*id))
            .cloned()
            .collect();
        self.unexpected = ids
            .keys()
            .filter(|id| !expected.contains(*id))
            .cloned()
            .collect();

        // A finished task is archived within seconds of its end.
        let archived = eventually("every object in an archived task", DONE, || async {
            let records = ingest.archive_records().await;
            // Failed tasks count here too: they are reported below.
            let keys: BTreeSet<_> = records
                .iter()
                .flat_map(|(_, r)| r.objects.iter().map(|o| o.key.clone()))
                .collect();
            (keys.len() >= objects).then_some(records)
        })
        .await;
        self.tasks_archived = archived.len();
        let mut tasks = BTreeMap::<&str, u32>::new();
        let mut objects_seen = BTreeMap::<&str, u32>::new();
        for (_, record) in &archived {
            *tasks.entry(&record.id).or_default() += 1;
            if record.state == TaskState::Succeeded {
                for object in &record.objects {
                    *objects_seen.entry(&object.key).or_default() += 1;
                }
            } else {
                self.not_succeeded.push(format!(
                    "{} {:?}: {:?}",
                    record.id, record.state, record.error
                ));
            }
        }
        self.archived_twice = tasks
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id} ×{n}"))
            .collect();
        self.objects_twice = objects_seen.values().filter(|n| **n > 1).count();
        self.objects_uncovered = objects.saturating_sub(objects_seen.len());
    }

    fn print(&self, test: &str, chaos: &Chaos, took: Duration) {
        let faults: Vec<_> = self
            .faults
            .iter()
            .map(|(fault, n)| format!("{fault} {n}"))
            .collect();
        println!(
            "chaos ledger of {test} (seed {}, {} rounds, {:.0}s):\n\
             \x20 faults injected:   {} ({} coordinators fenced out, {} unplanned exits)\n\
             \x20 records checked:   {}\n\
             \x20 lost:              {}\n\
             \x20 duplicated:        {}\n\
             \x20 unexpected:        {}\n\
             \x20 tasks archived:    {} ({} not succeeded)\n\
             \x20 archived twice:    {}\n\
             \x20 objects in no / two succeeded tasks: {} / {}",
            chaos.seed,
            chaos.rounds,
            took.as_secs_f64(),
            faults.join(", "),
            self.fenced,
            self.unplanned_exits.len(),
            self.records,
            self.lost.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.tasks_archived,
            self.not_succeeded.len(),
            self.archived_twice.len(),
            self.objects_uncovered,
            self.objects_twice,
        );
    }

    fn assert_clean(&self, kinds: &[Fault]) {
        for kind in kinds {
            assert!(self.faults.contains_key(kind), "no {kind} was injected");
        }
        let few = |list: &[String]| list.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        assert!(self.lost.is_empty(), "lost records: {}", few(&self.lost));
        assert!(
            self.duplicated.is_empty(),
            "duplicated records: {}",
            few(&self.duplicated)
        );
        assert!(
            self.unexpected.is_empty(),
            "records not in the source: {}",
            few(&self.unexpected)
        );
        assert!(
            self.archived_twice.is_empty(),
            "tasks archived twice: {}",
            few(&self.archived_twice)
        );
        assert!(
            self.not_succeeded.is_empty(),
            "tasks that did not succeed: {}",
            few(&self.not_succeeded)
        );
        assert_eq!(
            (self.objects_uncovered, self.objects_twice),
            (0, 0),
            "every object is in exactly one succeeded task"
        );
        assert!(
            self.unplanned_exits.is_empty(),
            "processes exited without being killed:\n{}",
            self.unplanned_exits.join("\n\n")
        );
    }
}

/// The last lines of a log, for messages.
fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A fresh source with a poll interval, so waves put later are found.
async fn ingest_on(minio: &MinioEnv, name: &str) -> Ingest {
    // The default attempts: an outage of S3 must not use them up.
    let mut ingest = Ingest::on(minio, name, TASK_OBJECTS, LEASE, 3).await;
    ingest.config.source.poll_interval = Some(sluice::duration::Duration(Duration::from_secs(1)));
    ingest.write_config();
    ingest
}

/// The worker named `name`, for the coordinator on `port`.
fn worker(ingest: &Ingest, port: u16, name: &str) -> Part {
    ingest.worker_with(port, name, &["--grace=0s"])
}

/// Restarts, as the kubelet would, any part that exited by itself, noting
/// it as unplanned.
fn restart_exited(
    ingest: &Ingest,
    ledger: &mut Ledger,
    coordinator: &mut Part,
    workers: &mut [Part],
    args: &[&str],
) {
    if !coordinator.running() {
        ledger
            .unplanned_exits
            .push(format!("coordinator:\n{}", tail(&coordinator.log())));
        *coordinator = ingest.coordinator(Some(coordinator.port), args);
    }
    for (n, worker) in workers.iter_mut().enumerate() {
        if !worker.running() {
            ledger
                .unplanned_exits
                .push(format!("worker {n}:\n{}", tail(&worker.log())));
            *worker = self::worker(ingest, coordinator.port, &format!("w{n}-again"));
        }
    }
}

/// Kills the coordinator and workers and restarts MinIO and the API
/// server at random moments of an ingest.
#[tokio::test]
async fn random_crashes_and_restarts_lose_and_duplicate_nothing() {
    const TEST: &str = "crashes and restarts";
    let kinds = [
        Fault::KillCoordinator,
        Fault::KillWorker,
        Fault::RestartMinio,
        Fault::RestartApiServer,
    ];
    let mut chaos = Chaos::new(TEST);
    let started = Instant::now();
    let kube = kube_with_crd();
    let client = kube.client().await;
    let namespace = kube.namespace("chaos").unwrap();
    let minio = minio();
    let mut ingest = ingest_on(minio, "orders").await;
    ingest.config.namespace = namespace.clone();
    ingest.write_config();
    // The coordinator publishes its status: restarts of the API server
    // must not stop it.
    ingest.use_kubeconfig(kube.kubeconfig());
    let mut source = sources::orders("orders");
    source["spec"]["source"]["s3"]["bucket"] = json!(ingest.config.source.s3.bucket);
    sources::apply(&client, &namespace, &source).await;

    let mut data = DataSet::new(chaos.rounds);
    data.put_wave(&ingest).await;
    let args = ["--status-interval=300ms"];
    let mut coordinator = ingest.coordinator(None, &args);
    let port = coordinator.port;
    let mut workers: Vec<Part> = (0..3)
        .map(|n| worker(&ingest, port, &format!("w{n}")))
        .collect();
    let mut ledger = Ledger::default();
    let mut killed_workers = 0;
    for fault in chaos.schedule(&kinds) {
        data.put_wave(&ingest).await;
        chaos.pause().await;
        restart_exited(&ingest, &mut ledger, &mut coordinator, &mut workers, &args);
        println!("{TEST} {:>6.1}s: {fault}", started.elapsed().as_secs_f64());
        match fault {
            Fault::KillCoordinator => {
                coordinator.kill();
                coordinator = ingest.coordinator(Some(port), &args);
            }
            Fault::KillWorker => {
                let n = chaos.rng.random_range(0..workers.len());
                workers[n].kill();
                killed_workers += 1;
                workers[n] = worker(&ingest, port, &format!("w{n}-{killed_workers}"));
            }
            Fault::RestartMinio => {
                let downtime = Duration::from_millis(chaos.rng.random_range(0..2000));
                minio.restart(downtime).unwrap();
            }
            Fault::RestartApiServer => kube.restart_apiserver().unwrap(),
            Fault::SecondCoordinator => unreachable!("not scheduled here"),
        }
        ledger.fault(fault);
    }
    while data.put < data.objects {
        data.put_wave(&ingest).await;
    }
    let deadline = Instant::now() + DONE;
    let summary = loop {
        restart_exited(&ingest, &mut ledger, &mut coordinator, &mut workers, &args);
        let summary = coordinator.summary();
        if summary.objects.ingested + summary.objects.failed >= data.objects as u64
            && summary.tasks.pending == 0
            && summary.tasks.running == 0
        {
            break summary;
        }
        assert!(
            Instant::now() < deadline,
            "not done after {DONE:?}: {summary:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The published status caught up after the API server's restarts.
    eventually("the status to show every object ingested", DONE, || async {
        let status = sources::source(&client, &namespace, "orders")
            .await
            .status?;
        (status.objects?.ingested == summary.objects.ingested).then_some(())
    })
    .await;
    ledger.check(&ingest, &data.ids(), data.objects).await;
    ledger.print(TEST, &chaos, started.elapsed());
    ledger.assert_clean(&kinds);
}

/// Two coordinators of one source at once, again and again: a second one
/// starts while the first runs (each has its own workers), and either is
/// killed at random. The checkpoint fences the older one out, every
/// newcomer resumes from it, and the output stays exactly once.
#[tokio::test]
async fn two_coordinators_at_once_never_corrupt_the_checkpoint() {
    const TEST: &str = "split brain";
    let kinds = [
        Fault::SecondCoordinator,
        Fault::KillCoordinator,
        Fault::KillWorker,
    ];
    let mut chaos = Chaos::new(TEST);
    let started = Instant::now();
    // Its own MinIO: the other test restarts the shared one.
    let minio = MinioEnv::start().unwrap_or_else(|err| panic!("{err}"));
    let ingest = ingest_on(&minio, "split").await;
    let mut data = DataSet::new(chaos.rounds);
    data.put_wave(&ingest).await;

    let ports = [free_port().unwrap(), free_port().unwrap()];
    let mut coordinators: [Option<Part>; 2] = [Some(ingest.coordinator(Some(ports[0]), &[])), None];
    let mut epoch = coordinators[0].as_ref().unwrap().summary().epoch;
    // Two workers per coordinator port, as if the Service sent each
    // worker to one of the two.
    let mut workers: Vec<Part> = (0..4)
        .map(|n| worker(&ingest, ports[n % 2], &format!("w{n}")))
        .collect();
    let mut ledger = Ledger::default();
    let mut killed_workers = 0;

    /// Notes coordinators that stopped: fenced out, or unplanned.
    fn reap(coordinators: &mut [Option<Part>; 2], ledger: &mut Ledger) {
        for slot in coordinators.iter_mut() {
            if let Some(part) = slot.as_mut()
                && !part.running()
            {
                let log = part.log();
                if log.contains("was taken over by another coordinator") {
                    ledger.fenced += 1;
                } else {
                    ledger
                        .unplanned_exits
                        .push(format!("coordinator:\n{}", tail(&log)));
                }
                *slot = None;
            }
        }
    }
    // Starts a coordinator on `slot`'s port and checks it resumed from
    // the checkpoint with a newer epoch.
    let mut start = |coordinators: &mut [Option<Part>; 2], slot: usize| {
        let part = ingest.coordinator(Some(ports[slot]), &[]);
        let resumed = part.summary().epoch;
        assert!(resumed > epoch, "epoch {resumed} after {epoch}");
        epoch = resumed;
        coordinators[slot] = Some(part);
    };

    for fault in chaos.schedule(&kinds) {
        data.put_wave(&ingest).await;
        chaos.pause().await;
        reap(&mut coordinators, &mut ledger);
        println!("{TEST} {:>6.1}s: {fault}", started.elapsed().as_secs_f64());
        match fault {
            Fault::SecondCoordinator => {
                // Into the free slot; with none free, one is killed first.
                let slot = match coordinators.iter().position(Option::is_none) {
                    Some(slot) => slot,
                    None => {
                        let slot = chaos.rng.random_range(0..2);
                        coordinators[slot].as_mut().unwrap().kill();
                        ledger.fault(Fault::KillCoordinator);
                        slot
                    }
                };
                start(&mut coordinators, slot);
            }
            Fault::KillCoordinator => {
                let running: Vec<usize> = (0..2).filter(|&s| coordinators[s].is_some()).collect();
                let slot = running[chaos.rng.random_range(0..running.len())];
                coordinators[slot].as_mut().unwrap().kill();
                coordinators[slot] = None;
                if running.len() == 1 {
                    start(&mut coordinators, chaos.rng.random_range(0..2));
                }
            }
            Fault::KillWorker => {
                let n = chaos.rng.random_range(0..workers.len());
                workers[n].kill();
                killed_workers += 1;
                workers[n] = worker(&ingest, ports[n % 2], &format!("w{n}-{killed_workers}"));
            }
            _ => unreachable!("not scheduled here"),
        }
        ledger.fault(fault);
    }
    while data.put < data.objects {
        data.put_wave(&ingest).await;
    }
    // The newest coordinator survives; the other is fenced out at its next
    // checkpoint (or check of it, when idle).
    let deadline = Instant::now() + DONE;
    while {
        reap(&mut coordinators, &mut ledger);
        coordinators.iter().flatten().count() > 1
    } {
        assert!(
            Instant::now() < deadline,
            "both coordinators still run after {DONE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let survivor = coordinators.iter().flatten().next().unwrap();
    assert_eq!(
        survivor.summary().epoch,
        epoch,
        "the newest coordinator survives"
    );
    wait_until_done(survivor, data.objects as u64, DONE).await;
    ledger.check(&ingest, &data.ids(), data.objects).await;
    ledger.print(TEST, &chaos, started.elapsed());
    ledger.assert_clean(&kinds);
}
