//! The fault-injection driver and its ledger, shared by the chaos tests
//! of local processes (`tests/chaos.rs`) and of pods on the real node
//! (`tests/pods.rs`): a seeded schedule of faults, a data set whose every
//! record has its own id, put in waves, and the record-by-record and
//! task-by-task check of the sink and the archive afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use sluice_core::api::TaskState;
use sluice_core::id::TaskId;
use sluice_testenv::MinioEnv;

use super::dataplane::Ingest;
use super::eventually;

pub const DEFAULT_SEED: u64 = 20_261_124;
/// Faults per test in the short form (`cargo test`).
pub const SHORT_ROUNDS: usize = 8;
/// Objects per round of faults, and records per object.
pub const OBJECTS_PER_ROUND: usize = 25;
pub const RECORDS: usize = 20;
/// Objects per task: small tasks, so that faults land in many of them.
pub const TASK_OBJECTS: u32 = 3;
/// Lease duration: a killed worker's tasks go elsewhere after it.
pub const LEASE: Duration = Duration::from_secs(3);
/// The random pause before each fault.
pub const PAUSE: std::ops::Range<u64> = 200..1500;
pub const DONE: Duration = Duration::from_secs(300);

/// The driver's settings and its random source.
pub struct Chaos {
    pub seed: u64,
    pub rounds: usize,
    pub rng: SmallRng,
}

impl Chaos {
    pub fn new(test: &str) -> Self {
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
    pub fn schedule(&mut self, kinds: &[Fault]) -> Vec<Fault> {
        let mut faults = kinds.to_vec();
        faults.shuffle(&mut self.rng);
        while faults.len() < self.rounds {
            faults.push(kinds[self.rng.random_range(0..kinds.len())]);
        }
        faults
    }

    /// Sleeps a random moment: the driver's schedule, not a wait for a
    /// condition.
    pub async fn pause(&mut self) {
        let pause = Duration::from_millis(self.rng.random_range(PAUSE));
        tokio::time::sleep(pause).await;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillCoordinator,
    KillWorker,
    RestartMinio,
    RestartApiServer,
    /// A second coordinator of the same source starts while one runs.
    SecondCoordinator,
    /// `kubectl delete pod --grace-period=0 --force` of a worker pod.
    ForceDeleteWorkerPod,
    /// The coordinator's container killed through the container runtime.
    KillCoordinatorContainer,
    RestartContainerd,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::KillCoordinator => "kill -9 coordinator",
            Fault::KillWorker => "kill -9 worker",
            Fault::RestartMinio => "restart MinIO",
            Fault::RestartApiServer => "restart kube-apiserver",
            Fault::SecondCoordinator => "second coordinator",
            Fault::ForceDeleteWorkerPod => "force-delete a worker pod",
            Fault::KillCoordinatorContainer => "kill the coordinator's container",
            Fault::RestartContainerd => "restart containerd",
        })
    }
}

/// Object `index`: `RECORDS` records with ids `o{index}-r{n}`, as NDJSON
/// or CSV, plain or gzip.
pub fn object(index: usize) -> (String, Vec<u8>) {
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
pub struct DataSet {
    pub objects: usize,
    pub put: usize,
    pub waves: usize,
}

impl DataSet {
    pub fn new(rounds: usize) -> Self {
        Self {
            objects: rounds * OBJECTS_PER_ROUND,
            put: 0,
            waves: rounds.div_ceil(2),
        }
    }

    /// Puts the next wave, if any is left.
    pub async fn put_wave(&mut self, ingest: &Ingest) {
        let end = (self.put + self.objects.div_ceil(self.waves)).min(self.objects);
        ingest.put((self.put..end).map(object).collect()).await;
        self.put = end;
    }

    pub fn ids(&self) -> BTreeSet<String> {
        (0..self.objects)
            .flat_map(|index| (0..RECORDS).map(move |n| format!("o{index}-r{n}")))
            .collect()
    }
}

/// What was done and what was found.
#[derive(Default)]
pub struct Ledger {
    pub faults: BTreeMap<Fault, u32>,
    /// Coordinators that stopped because another one took over.
    pub fenced: u32,
    /// Processes that exited without being killed or fenced.
    pub unplanned_exits: Vec<String>,
    pub records: usize,
    pub lost: Vec<String>,
    pub duplicated: Vec<String>,
    pub unexpected: Vec<String>,
    pub tasks_archived: usize,
    pub archived_twice: Vec<String>,
    pub not_succeeded: Vec<String>,
    /// Objects in no succeeded task, or in more than one.
    pub objects_uncovered: usize,
    pub objects_twice: usize,
}

impl Ledger {
    pub fn fault(&mut self, fault: Fault) {
        *self.faults.entry(fault).or_default() += 1;
    }

    /// Compares the sink with `expected` record by record, and the
    /// archive with the `objects` objects task by task.
    pub async fn check(&mut self, ingest: &Ingest, expected: &BTreeSet<String>, objects: usize) {
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
        let mut tasks = BTreeMap::<TaskId, u32>::new();
        let mut objects_seen = BTreeMap::<&str, u32>::new();
        for (_, record) in &archived {
            *tasks.entry(record.id).or_default() += 1;
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

    pub fn print(&self, test: &str, chaos: &Chaos, took: Duration) {
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

    pub fn assert_clean(&self, kinds: &[Fault]) {
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
pub fn tail(log: &str) -> String {
    let lines: Vec<_> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A fresh source with a poll interval, so waves put later are found.
pub async fn ingest_on(minio: &MinioEnv, name: &str) -> Ingest {
    // The default attempts: an outage of S3 must not use them up.
    let mut ingest = Ingest::on(minio, name, TASK_OBJECTS, LEASE, 3).await;
    ingest.config.source.poll_interval =
        Some(sluice_core::duration::Duration(Duration::from_secs(1)));
    ingest.write_config();
    ingest
}
