//! `cargo bench --bench coordinator`: the coordinator's bars — task leases
//! per second over HTTP, memory for 10 million finished keys, and the time
//! to write a checkpoint of them to S3 and to resume from it.
//!
//! Prints a Markdown section: what was measured and how, then one table
//! per bar. Progress goes to stderr.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::process::Command;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use sluice::config::{RuntimeConfig, SourceConfig, Store, TaskLimits, credential_env};
use sluice::coordinator::checkpoint::{Checkpoint, Manifest, SegmentRef};
use sluice::coordinator::finished::{Finished, FinishedKeys, Segment};
use sluice::coordinator::http::READS_PER_SECOND;
use sluice::coordinator::tasks::{Limits, Planned, Tasks, Totals};
use sluice_core::api::{self, Completion, LeaseRequest, LeaseResponse, ObjectRef, Summary};
use sluice_core::encoding::{Compression, Format};
use sluice_core::id::{SourceId, TaskId};
use sluice_core::layout;
use sluice_core::location::S3Location;
use sluice_testenv::{Daemon, MinioEnv, free_port, http};

mod support;
use support::{Random, Table, median, seconds, verdict};

/// Counts the bytes the benchmark's own heap holds, and its peak, so the
/// memory of the in-process structures is measured, not estimated.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(held, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                let held = HELD.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(held, Ordering::Relaxed);
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> usize {
    HELD.load(Ordering::Relaxed)
}

/// Starts measuring a new peak from what is held now.
fn reset_peak() {
    PEAK.store(held(), Ordering::Relaxed);
}

fn peak() -> usize {
    PEAK.load(Ordering::Relaxed)
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The bars (docs/PRODUCT.md).
const KEYS: usize = 10_000_000;
const MEMORY_BAR: usize = 200_000_000;

/// Keys finished per checkpoint while the memory is measured: a full window
/// of live objects (the coordinator's `--max-live-objects`) per commit.
const KEYS_PER_SEAL: usize = 100_000;

/// The namings measured.
const NAMINGS: [Naming; 1] = [Naming::Sequential];

/// How a source names its objects.
#[derive(Clone, Copy)]
enum Naming {
    /// `logs/2026/11/24/host-0042/part-000123.ndjson.gz`: 30 days of 334
    /// hosts writing 1,000 parts a day.
    Sequential,
}

impl Naming {
    fn describe(self) -> &'static str {
        match self {
            Naming::Sequential => "`logs/2026/11/24/host-0042/part-000123.ndjson.gz`",
        }
    }

    /// The `i`th key in listing (byte) order.
    fn key(self, i: usize) -> String {
        match self {
            Naming::Sequential => {
                let (day, rest) = (i / 334_000, i % 334_000);
                format!(
                    "logs/2026/11/{:02}/host-{:04}/part-{:06}.ndjson.gz",
                    day + 1,
                    rest / 1000,
                    rest % 1000
                )
            }
        }
    }
}

/// What holding [`KEYS`] finished keys costs.
struct Memory {
    naming: Naming,
    keys: FinishedKeys,
    /// Heap held by the finished keys, counted by the allocator.
    heap: usize,
    /// The most the heap held while keys were added, sealed and merged.
    peak: usize,
    /// The most it would have held merging in memory (`Compaction::run`,
    /// as before): what was held when a merge started plus the output
    /// buffer such a merge reserves (its inputs' size).
    peak_in_memory: usize,
    /// `FinishedKeys::memory_bytes`, the coordinator's own estimate.
    estimate: usize,
    /// The segments' bytes: what a checkpoint uploads.
    checkpoint: usize,
    build: Duration,
}

/// Finishes [`KEYS`] keys the way the coordinator does: inserted as tasks
/// end, sealed into a segment at every checkpoint, segments merged by the
/// compaction policy (here in line, between checkpoints).
fn finish_keys(naming: Naming) -> Memory {
    let before = held();
    reset_peak();
    let started = Instant::now();
    let mut random = Random(0x5eed_c00d_1234_5678);
    let mut keys = FinishedKeys::default();
    let mut peak_in_memory = 0;
    for i in 0..KEYS {
        let key = naming.key(i);
        keys.insert(
            &key,
            Finished {
                fingerprint: random.next() >> 1,
                failed: random.chance(1),
            },
        );
        if (i + 1) % KEYS_PER_SEAL == 0 || i + 1 == KEYS {
            keys.seal();
            while let Some(compaction) = keys.compaction() {
                let reserved: usize = compaction.inputs().iter().map(|s| s.bytes().len()).sum();
                peak_in_memory = peak_in_memory.max(held() - before + reserved);
                // As the coordinator merges: spilled to a file in /tmp.
                let merged = compaction
                    .spill(&std::env::temp_dir())
                    .expect("spill a merge to /tmp");
                drop(compaction);
                keys.apply(merged).expect("one compaction at a time");
            }
        }
        if (i + 1) % 1_000_000 == 0 {
            eprintln!(
                "  {} keys, {} segments, heap {}",
                i + 1,
                keys.segment_count(),
                mb(held() - before)
            );
        }
    }
    let build = started.elapsed();
    Memory {
        naming,
        heap: held() - before,
        peak: peak() - before,
        peak_in_memory,
        estimate: keys.memory_bytes(),
        checkpoint: keys.segments().map(|s| s.bytes().len()).sum(),
        keys,
        build,
    }
}

/// Drops the finished keys (the figures stay) to give the lease runs the
/// memory back.
fn memory_keys(memory: &mut [Memory]) -> Vec<FinishedKeys> {
    memory
        .iter_mut()
        .map(|m| std::mem::take(&mut m.keys))
        .collect()
}

/// Checkpoints written and resumed per figure (the median is reported).
const CHECKPOINT_RUNS: usize = 3;
const CHECKPOINT_BAR: Duration = Duration::from_secs(5);
/// Live objects a checkpoint also holds: a full window
/// (`--max-live-objects`) in tasks of the default 100 objects.
const LIVE_OBJECTS: usize = 100_000;
const OBJECTS_PER_TASK: usize = 100;

fn source_id(name: impl Into<String>) -> SourceId {
    SourceId {
        namespace: "bench".into(),
        name: name.into(),
        account: "acme".into(),
        collection: "logs".into(),
    }
}

/// The live tasks of a busy coordinator, as a manifest holds them.
fn live_tasks(random: &mut Random) -> Vec<Planned> {
    let now = Timestamp::now();
    (0..LIVE_OBJECTS / OBJECTS_PER_TASK)
        .map(|seq| Planned {
            id: TaskId {
                epoch: 1,
                seq: seq as u64 + 1,
            },
            created: now,
            attempt: u32::from(random.chance(50)),
            objects: (0..OBJECTS_PER_TASK)
                .map(|i| ObjectRef {
                    key: Naming::Sequential.key(KEYS + seq * OBJECTS_PER_TASK + i),
                    size: 1_000_000 + random.below(8_000_000),
                    etag: format!("\"{:016x}{:016x}\"", random.next(), random.next()),
                })
                .collect(),
            oldest: now,
            error: None,
        })
        .collect()
}

struct CheckpointTimes {
    write: Vec<Duration>,
    manifest_bytes: usize,
    /// The most heap a write added to what the keys already held.
    write_extra: usize,
    resume: Vec<Duration>,
    /// Heap the resumed coordinator state holds (finished keys and tasks).
    resumed_heap: usize,
    /// The most heap the resume held on the way.
    resume_peak: usize,
}

/// Writes the keys' checkpoint to fresh checkpoint locations, then claims
/// it again and again as a restarted coordinator does, rebuilding its task
/// table from what it read.
async fn checkpoint(
    client: &aws_sdk_s3::Client,
    archive: &S3Location,
    keys: &FinishedKeys,
) -> CheckpointTimes {
    let mut random = Random(0xc4ec_4901_2345_6789);
    let tasks = live_tasks(&mut random);
    let segments: Vec<&Segment> = keys.segments().collect();
    let mut times = CheckpointTimes {
        write: Vec::new(),
        manifest_bytes: 0,
        write_extra: 0,
        resume: Vec::new(),
        resumed_heap: 0,
        resume_peak: 0,
    };
    for run in 0..CHECKPOINT_RUNS {
        let name = format!("keys-{run}");
        let (mut checkpoint, _) = Checkpoint::claim(client.clone(), archive, "bench", &name)
            .await
            .expect("claim a fresh checkpoint");
        let before = held();
        reset_peak();
        let started = Instant::now();
        let manifest = Manifest {
            epoch: checkpoint.epoch(),
            lineage: None,
            written: Some(Timestamp::now()),
            segments: segments
                .iter()
                .map(|segment| SegmentRef {
                    name: segment.name().to_owned(),
                    keys: segment.len() as u64,
                })
                .collect(),
            tasks: tasks.clone(),
            outbox: Vec::new(),
            totals: Totals::default(),
            redrives: Vec::new(),
        };
        checkpoint
            .write(&manifest, &segments)
            .await
            .expect("write the checkpoint");
        times.write.push(started.elapsed());
        times.write_extra = times.write_extra.max(peak() - before);
        eprintln!("  written in {:?}", started.elapsed());
    }
    times.manifest_bytes = manifest_size(client, archive, "keys-0").await;
    for _ in 0..CHECKPOINT_RUNS {
        let before = held();
        reset_peak();
        let started = Instant::now();
        let (checkpoint, resumed) = Checkpoint::claim(client.clone(), archive, "bench", "keys-0")
            .await
            .expect("resume from the checkpoint");
        let table = Tasks::new(
            source_id("keys"),
            layout::Sink::default(),
            Limits {
                max_objects: OBJECTS_PER_TASK as u32,
                max_bytes: 64 << 20,
                lease: Duration::from_secs(60),
                max_attempts: 3,
            },
            checkpoint.epoch(),
            FinishedKeys::from_segments(resumed.segments),
            resumed.manifest.tasks,
            resumed.manifest.totals,
        );
        times.resume.push(started.elapsed());
        assert_eq!(table.finished_keys().len(), KEYS);
        assert_eq!(table.live_objects(), LIVE_OBJECTS);
        times.resumed_heap = held() - before;
        times.resume_peak = times.resume_peak.max(peak() - before);
        eprintln!(
            "  resumed in {:?}, holding {}",
            started.elapsed(),
            mb(times.resumed_heap)
        );
    }
    times
}

async fn manifest_size(client: &aws_sdk_s3::Client, archive: &S3Location, name: &str) -> usize {
    let key = layout::checkpoint_manifest(&layout::checkpoint_dir(
        archive.prefix.as_deref(),
        "bench",
        name,
    ));
    let head = client
        .head_object()
        .bucket(&archive.bucket)
        .key(key)
        .send()
        .await
        .expect("the manifest exists");
    head.content_length().unwrap_or(0) as usize
}

#[tokio::main]
async fn main() {
    let mut memory = Vec::new();
    for naming in NAMINGS {
        eprintln!("== finishing {KEYS} keys named like {}", naming.describe());
        let measured = finish_keys(naming);
        eprintln!(
            "  heap {}, peak {}, estimate {}, segments {} in {:?}",
            mb(measured.heap),
            mb(measured.peak),
            mb(measured.estimate),
            mb(measured.checkpoint),
            measured.build
        );
        memory.push(measured);
    }

    let minio = MinioEnv::start().expect("start MinIO");
    let client = minio.client().await;
    let mut archive = minio.location(&minio.bucket("archive").await.expect("a bucket"));
    archive.prefix = Some("sluice/".into());
    let (mut checkpoints, mut locations) = (Vec::new(), Vec::new());
    for m in &memory {
        eprintln!(
            "== checkpoint of 10 M keys named like {}",
            m.naming.describe()
        );
        let mut location = archive.clone();
        location.bucket = minio.bucket("archive").await.expect("a bucket");
        checkpoints.push(checkpoint(&client, &location, &m.keys).await);
        locations.push(location);
    }

    // The whole process resuming: `sluice coordinator` started on the
    // first checkpoint of each naming, timed until it serves.
    let empty = minio.location(&minio.bucket("empty").await.expect("a bucket"));
    let mut processes = Vec::new();
    for location in locations {
        let config = RuntimeConfig {
            id: source_id("keys-0"),
            source: SourceConfig {
                s3: empty.clone(),
                format: Format::Auto,
                compression: Compression::Auto,
                poll_interval: None,
            },
            sink: location.clone(),
            archive: location,
            tasks: TaskLimits {
                max_objects: OBJECTS_PER_TASK as u32,
                max_bytes: 64 << 20,
                lease_duration: sluice_core::duration::Duration(Duration::from_secs(60)),
                max_attempts: 3,
            },
        };
        let started = Instant::now();
        let coordinator = Coordinator::start(&minio, &config);
        let ready = started.elapsed();
        let summary = coordinator.summary();
        assert!(
            summary.epoch > CHECKPOINT_RUNS as u64,
            "resumed the written checkpoint"
        );
        let rss = coordinator.rss();
        eprintln!("  the process resumed in {ready:?}, RSS {}", mb(rss));
        processes.push((ready, rss));
    }
    drop(memory_keys(&mut memory));

    eprintln!("== leasing: a source of {LEASE_OBJECTS} objects");
    let source = lease_source(&minio, LEASE_OBJECTS).await;
    let mut leases = Vec::new();
    for (run, mix) in LEASE_RUNS.into_iter().enumerate() {
        let (clients, batch, readers, leasing) = mix;
        eprintln!(
            "== leasing: {clients} clients, {batch} tasks per lease, {readers} readers, {leasing:?}"
        );
        let measured = lease_run(&minio, &source, &archive, run, mix).await;
        eprintln!(
            "  {} leased and completed in {:?}: {:.0}/s",
            measured.leased,
            measured.elapsed,
            measured.leased as f64 / measured.elapsed.as_secs_f64()
        );
        leases.push(measured);
    }

    println!("### Task leases over HTTP");
    println!();
    println!(
        "The `sluice coordinator` process (no Kubernetes API server needed; it runs as its \
         Deployment runs it: config file, token file, credentials in the environment) over a \
         MinIO source of {LEASE_OBJECTS} objects (keys like \
         `logs/2026/11/24/host-0042/part-000123.ndjson.gz`) in tasks of 1 object, so every \
         object is a task. Once every task is planned and committed, N concurrent clients in \
         the benchmark process (reqwest, keep-alive, on the same 2 cores as the coordinator \
         and MinIO) each do what a worker does: `POST /v1/lease` with `max` tasks, then \
         `POST /v1/tasks/{{id}}/complete` for each task leased, each completion asking for the \
         task that takes its slot (`\"lease\": 1`, answered with it), and `POST /v1/lease` \
         again only when it got none, until no task is left: one request per task. The last \
         row leases apart from completing, as workers did before 2026-12-05 (a \
         `POST /v1/lease` for the next tasks after completing those leased): two requests \
         per task. Every task is leased once and completed once, so leases/s and \
         completes/s are the same figure: tasks through the coordinator per second, from the \
         first lease to the last completion, while it checkpoints and archives as usual \
         (every 5 s).\n\n\
         Under a read flood: the same run while {FLOOD_READERS} more clients, each in a \
         loop without pause, read `GET /v1/tasks?limit=1000` (the largest page, built from \
         the live table of {LEASE_OBJECTS} tasks) and `GET /v1/summary` by turns, with the \
         read token. The coordinator answers them one at a time, {READS_PER_SECOND} a second at \
         most, and lets the others wait (up to 5 s, then 503), so leases and heartbeats keep the \
         lock and the cores; the bar is the lease rate under the flood against the mean of the \
         same run just before and just after it."
    );
    println!();
    let mut table = Table::new(&[
        "clients × tasks per lease",
        "tasks",
        "time",
        "leases/s = completes/s",
        "HTTP requests/s",
        "coordinator RSS",
        "bar (20,000/s; under a flood, 0.8× the same run without)",
    ]);
    let rate = |run: &LeaseRun| run.leased as f64 / run.elapsed.as_secs_f64();
    let quiet = (rate(&leases[0]) + rate(&leases[2])) / 2.0;
    for run in &leases {
        let rate = rate(run);
        let (what, met) = if run.leasing == Leasing::Apart {
            (
                format!(
                    "{} × {}, leasing apart from completing: {:.2}× the rate of the first and third runs",
                    run.clients,
                    run.batch,
                    rate / quiet
                ),
                None,
            )
        } else if run.readers == 0 {
            (
                format!("{} × {}", run.clients, run.batch),
                Some(rate >= LEASE_BAR),
            )
        } else {
            let reads = run.reads as f64 / run.elapsed.as_secs_f64();
            (
                format!(
                    "{} × {} under {} readers ({reads:.0} reads/s answered, {} refused busy): {:.2}× the runs before and after",
                    run.clients,
                    run.batch,
                    run.readers,
                    run.busy,
                    rate / quiet
                ),
                Some(rate >= FLOOD_BAR * quiet),
            )
        };
        table.row(&[
            what,
            run.leased.to_string(),
            seconds(run.elapsed),
            format!("{rate:.0}"),
            format!("{:.0}", run.requests as f64 / run.elapsed.as_secs_f64()),
            mb(run.rss),
            met.map_or("-", verdict).to_owned(),
        ]);
    }
    table.print();

    println!("### Memory for 10 million finished keys");
    println!();
    println!(
        "The coordinator's finished keys (`FinishedKeys`: FST segments plus an in-memory delta) \
         holding {KEYS} keys, added as the coordinator adds them: {KEYS_PER_SEAL} per checkpoint \
         (a full window of live objects), sealed into a segment at each, segments merged by the \
         size-tiered compaction policy, each merge spilled to a file in /tmp as the coordinator \
         does (`Compaction::spill`). Heap measured by a counting global allocator in the \
         benchmark process (exact, not RSS); the peak includes the merges. Each key has a \
         fingerprint of 63 random bits and 1 in 100 is marked failed.\n\n\
         Optimized here: merges used to build their output in memory (`Compaction::run`) while \
         their inputs stayed in use, so the biggest merge held the keys twice; the column \
         \"before\" is that peak, from the same run (heap at each merge plus the output buffer \
         it reserved, the inputs' size). A merge now streams its output to an unnamed file in \
         /tmp (the pod's emptyDir) and `FinishedKeys::apply` reads it back after dropping its \
         inputs. The checkpoint also no longer copies a segment to upload it or to read it \
         back (`Bytes::from_owner`, one buffer filled from the body), which had held a merged \
         segment twice during every upload and resume."
    );
    println!();
    let mut table = Table::new(&[
        "10 M finished keys named like",
        "heap held",
        "peak while adding (merges spilled)",
        "peak merging in memory (before)",
        "`memory_bytes()`",
        "checkpoint segments",
        "bytes per key",
        "bar (200 MB)",
    ]);
    for m in &memory {
        table.row(&[
            m.naming.describe().to_owned(),
            mb(m.heap),
            mb(m.peak),
            mb(m.peak_in_memory),
            mb(m.estimate),
            mb(m.checkpoint),
            format!("{:.1}", m.heap as f64 / KEYS as f64),
            verdict(m.heap.max(m.peak) <= MEMORY_BAR).to_owned(),
        ]);
    }
    table.print();

    println!("### Checkpoint write and resume, 10 million keys");
    println!();
    println!(
        "`Checkpoint::write` of the keys above (their segments and a manifest that also holds \
         {LIVE_OBJECTS} live objects in tasks of {OBJECTS_PER_TASK}) to a fresh location in \
         MinIO, then `Checkpoint::claim` of it by a new coordinator, as a restart does: read \
         the manifest, download and verify every segment, fence it with the next epoch, and \
         rebuild the task table (`Tasks::new`). Median of {CHECKPOINT_RUNS} runs each. Then the \
         `sluice coordinator` process started on that checkpoint, timed from its start until it \
         serves `/readyz` (after the claim), and its resident memory then."
    );
    println!();
    let mut table = Table::new(&[
        "10 M keys named like",
        "segments",
        "manifest",
        "write",
        "heap added by the write (peak)",
        "resume",
        "heap after resume (peak)",
        "`sluice coordinator` ready",
        "its RSS",
        "bar (5 s each)",
    ]);
    for ((m, times), (ready, rss)) in memory.iter().zip(&checkpoints).zip(&processes) {
        let (write, resume) = (median(times.write.clone()), median(times.resume.clone()));
        table.row(&[
            m.naming.describe().to_owned(),
            mb(m.checkpoint),
            mb(times.manifest_bytes),
            seconds(write),
            mb(times.write_extra),
            seconds(resume),
            format!("{} ({})", mb(times.resumed_heap), mb(times.resume_peak)),
            seconds(*ready),
            mb(*rss),
            verdict(write < CHECKPOINT_BAR && resume.max(*ready) < CHECKPOINT_BAR).to_owned(),
        ]);
    }
    table.print();
}

/// Objects in the source of the lease benchmark, one task each.
const LEASE_OBJECTS: usize = 50_000;
const LEASE_BAR: f64 = 20_000.0;
/// (concurrent clients, tasks per lease request, readers flooding the
/// task API) of each lease run. The flood's baseline is the mean of the
/// same run just before and just after it, so that whatever drifts over
/// the benchmark (MinIO's background work, say) weighs on both alike.
const LEASE_RUNS: [(usize, u32, usize, Leasing); 5] = [
    (16, 1, 0, Leasing::WithCompletion),
    (16, 1, FLOOD_READERS, Leasing::WithCompletion),
    (16, 1, 0, Leasing::WithCompletion),
    (32, 16, 0, Leasing::WithCompletion),
    (16, 1, 0, Leasing::Apart),
];

/// How a lease client gets its next tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leasing {
    /// As workers do: each completion leases the task that takes its slot.
    WithCompletion,
    /// A `POST /v1/lease` after completing what was leased.
    Apart,
}
/// Readers of the read flood.
const FLOOD_READERS: usize = 32;
/// Leases/s under the read flood, as a share of the same run without it.
const FLOOD_BAR: f64 = 0.8;
const TOKEN: &str = "bench-token";

/// One IngestSource's coordinator as a process, started as its Deployment
/// starts it (config file, token file, credentials in the environment).
struct Coordinator {
    daemon: Daemon,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Coordinator {
    fn start(minio: &MinioEnv, config: &RuntimeConfig) -> Coordinator {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(config).unwrap(),
        )
        .expect("write the config");
        std::fs::write(dir.path().join("token"), TOKEN).expect("write the token");
        let port = free_port().expect("a free port");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .arg("coordinator")
            .arg("--config")
            .arg(dir.path().join("config.json"))
            .arg("--token-file")
            .arg(dir.path().join("token"))
            .arg(format!("--address=127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .env_remove("KUBECONFIG");
        let credentials = minio.credentials();
        for store in Store::ALL {
            command.env(
                credential_env(store, "AWS_ACCESS_KEY_ID"),
                &credentials.access_key_id,
            );
            command.env(
                credential_env(store, "AWS_SECRET_ACCESS_KEY"),
                &credentials.secret_access_key,
            );
        }
        let mut daemon = Daemon::spawn("coordinator", command, &dir.path().join("log"))
            .expect("start the coordinator");
        daemon
            .wait_ready(Duration::from_secs(120), || {
                http(port, "GET", "/readyz", &[], b"").is_some_and(|(status, _)| status == 200)
            })
            .unwrap_or_else(|err| panic!("{err}"));
        Coordinator {
            daemon,
            port,
            _dir: dir,
        }
    }

    fn summary(&self) -> Summary {
        let read_token = api::read_token(TOKEN);
        let (status, body) = http(
            self.port,
            "GET",
            "/v1/summary",
            &[(api::READ_TOKEN_HEADER, &read_token)],
            b"",
        )
        .expect("the coordinator answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("a summary")
    }

    /// Resident memory of the process.
    fn rss(&self) -> usize {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.daemon.pid()))
            .expect("the coordinator runs");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| {
                kb.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .expect("VmRSS in /proc/PID/status")
            * 1024
    }
}

/// A source of `objects` one-byte objects named like a day of logs.
async fn lease_source(minio: &MinioEnv, objects: usize) -> S3Location {
    let bucket = minio.bucket("source").await.expect("a bucket");
    let client = minio.client().await;
    let started = Instant::now();
    futures::stream::iter(0..objects)
        .map(|i| {
            let (client, bucket) = (&client, &bucket);
            async move {
                let key = format!(
                    "in/logs/2026/11/24/host-{:04}/part-{:06}.ndjson.gz",
                    i / 1000,
                    i % 1000
                );
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(b"x".to_vec().into())
                    .send()
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<()>()
        .await
        .expect("put the source objects");
    eprintln!("  put {objects} objects in {:?}", started.elapsed());
    let mut location = minio.location(&bucket);
    location.prefix = Some("in/".into());
    location
}

struct LeaseRun {
    clients: usize,
    batch: u32,
    leasing: Leasing,
    leased: usize,
    elapsed: Duration,
    requests: usize,
    /// Resident memory of the coordinator with every task planned.
    rss: usize,
    readers: usize,
    /// Reads answered (200) and refused as busy (503) during the run.
    reads: usize,
    busy: usize,
}

/// Starts a coordinator of a new IngestSource over `source` and lets
/// `clients` workers lease (`batch` at a time) and complete every task.
async fn lease_run(
    minio: &MinioEnv,
    source: &S3Location,
    archive: &S3Location,
    run: usize,
    (clients, batch, readers, leasing): (usize, u32, usize, Leasing),
) -> LeaseRun {
    let config = RuntimeConfig {
        id: source_id(format!("lease-{run}")),
        source: SourceConfig {
            s3: source.clone(),
            format: Format::Auto,
            compression: Compression::Auto,
            poll_interval: None,
        },
        sink: archive.clone(),
        archive: archive.clone(),
        tasks: TaskLimits {
            max_objects: 1,
            max_bytes: 64 << 20,
            lease_duration: sluice_core::duration::Duration(Duration::from_secs(60)),
            max_attempts: 3,
        },
    };
    let coordinator = Coordinator::start(minio, &config);
    // Every task planned and committed (leasable) before the clock starts.
    let planned = Instant::now();
    loop {
        let summary = coordinator.summary();
        if summary.objects.discovered as usize >= LEASE_OBJECTS && summary.listing_passes > 0 {
            break;
        }
        assert!(
            planned.elapsed() < Duration::from_secs(300),
            "the coordinator never listed the source"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The last page's tasks are committed within 100 ms (then leasable).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = coordinator.rss();
    eprintln!(
        "  planned in {:?}; coordinator pid {}, RSS {}",
        planned.elapsed(),
        coordinator.daemon.pid(),
        mb(rss)
    );

    let base = format!("http://127.0.0.1:{}", coordinator.port);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("an HTTP client");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    // The readers are other clients: tasks of their own, so they neither
    // share the lease clients' task nor keep the clock running while their
    // last read waits for its turn.
    let reader_http = reqwest::Client::builder()
        .pool_max_idle_per_host(readers)
        .build()
        .expect("an HTTP client");
    let flood: Vec<_> = (0..readers)
        .map(|i| tokio::spawn(reader(reader_http.clone(), base.clone(), i, done.clone())))
        .collect();
    let counts = futures::future::join_all((0..clients).map(|i| {
        let (http, base, done) = (http.clone(), base.clone(), &done);
        let name = format!("bench-worker-{i}");
        async move { worker(&http, &base, &name, batch, leasing, done).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let (mut reads, mut busy) = (0, 0);
    for reader in flood {
        let (answered, refused) = reader.await.expect("a reader");
        reads += answered;
        busy += refused;
    }
    let leased: usize = counts.iter().map(|(leased, _)| leased).sum();
    let requests: usize = counts.iter().map(|(_, requests)| requests).sum();
    assert_eq!(leased, LEASE_OBJECTS, "every task leased once");
    let summary = coordinator.summary();
    assert_eq!(summary.tasks.pending + summary.tasks.running, 0);
    LeaseRun {
        clients,
        batch,
        leasing,
        leased,
        elapsed,
        requests,
        rss,
        readers,
        reads,
        busy,
    }
}

/// Reads the task API in a loop, a page of 1000 tasks and the summary by
/// turns, until every task is done. Returns the reads answered and those
/// refused as busy before then.
async fn reader(
    http: reqwest::Client,
    base: String,
    n: usize,
    done: Arc<AtomicUsize>,
) -> (usize, usize) {
    let read_token = api::read_token(TOKEN);
    let (mut reads, mut busy) = (0, 0);
    let paths = ["/v1/tasks?limit=1000", "/v1/summary"];
    while done.load(Ordering::Relaxed) < LEASE_OBJECTS {
        let response = http
            .get(format!("{base}{}", paths[(n + reads + busy) % 2]))
            .header(api::READ_TOKEN_HEADER, &read_token)
            .send()
            .await
            .expect("a read");
        let status = response.status().as_u16();
        response.bytes().await.expect("a read's body");
        // Only what was answered while the clock ran counts.
        let timed = done.load(Ordering::Relaxed) < LEASE_OBJECTS;
        match status {
            200 => reads += usize::from(timed),
            503 => busy += usize::from(timed),
            status => panic!("a read answered {status}"),
        }
    }
    (reads, busy)
}

/// Leases `batch` tasks at a time and completes each, `leasing` the next
/// tasks with each completion or apart, until no task is left. Returns the
/// tasks leased and the requests made.
async fn worker(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    batch: u32,
    leasing: Leasing,
    done: &AtomicUsize,
) -> (usize, usize) {
    let (mut leased, mut requests) = (0, 0);
    let mut held = Vec::new();
    loop {
        if held.is_empty() {
            let response: LeaseResponse = http
                .post(format!("{base}/v1/lease"))
                .bearer_auth(TOKEN)
                .json(&LeaseRequest {
                    worker: name.to_owned(),
                    max: batch,
                })
                .send()
                .await
                .and_then(|response| response.error_for_status())
                .expect("lease")
                .json()
                .await
                .expect("a lease response");
            requests += 1;
            if response.tasks.is_empty() {
                if done.load(Ordering::Relaxed) >= LEASE_OBJECTS {
                    return (leased, requests);
                }
                // Not committed yet, or held by the other clients.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            held = response.tasks;
        }
        while let Some(task) = held.pop() {
            leased += 1;
            requests += 1;
            let response = http
                .post(format!("{base}/v1/tasks/{}/complete", task.id))
                .bearer_auth(TOKEN)
                .json(&Completion {
                    worker: name.to_owned(),
                    attempt: task.attempt,
                    records: 1,
                    bytes_read: 1,
                    bytes_written: 1,
                    outputs: vec![task.output],
                    lease: (leasing == Leasing::WithCompletion).then_some(1),
                })
                .send()
                .await
                .and_then(|response| response.error_for_status())
                .expect("complete");
            done.fetch_add(1, Ordering::Relaxed);
            if leasing == Leasing::WithCompletion {
                let next: LeaseResponse = response.json().await.expect("the next task");
                held.extend(next.tasks);
            }
        }
    }
}
