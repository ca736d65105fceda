//! `cargo bench --bench workers`: end-to-end ingest throughput of the real
//! `sluice coordinator` and `sluice worker` processes against a real MinIO,
//! compared in the same run with what the machine reaches against the same
//! server without sluice: a plain concurrent S3 download of the same
//! objects (the bar: at least 80 % of it) and `rclone copy` of the same
//! objects between buckets (the bar: faster).
//!
//! Two workloads of NDJSON: many small objects (20,000 of 4 KiB) and a few
//! large ones (40 of 64 MiB). Each figure is the median of `RUNS` runs; the
//! three contenders take turns within a run, so drift on a busy machine
//! spreads over all of them.
//!
//! For experiments: `SLUICE_BENCH_WORKERS` and `SLUICE_BENCH_CONCURRENCY`
//! override the pool, `SLUICE_BENCH_RUNS` the runs, and
//! `SLUICE_BENCH_ONLY=small|large` runs one workload.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use futures::StreamExt;
use sluice::config::{RuntimeConfig, SourceConfig, TaskLimits};
use sluice_core::api::Summary;
use sluice_core::encoding::{Compression, Format};
use sluice_core::id::SourceId;
use sluice_testenv::{Daemon, MinioEnv, free_port, http};

mod support;
use support::{Random, Table, median, seconds, verdict};

const RUNS: usize = 3;
/// Worker processes, and tasks each executes at once: one process per core
/// would leave MinIO (on the same two cores) nothing; one process with four
/// tasks in flight keeps both cores busy while some tasks wait on S3.
const WORKERS: usize = 1;
const CONCURRENCY: usize = 4;
/// The plain download's GETs in flight: enough to hide per-request latency
/// for small objects; for large ones a few streams fill the cores.
const RAW_SMALL: usize = 32;
const RAW_LARGE: usize = 8;
/// rclone's `--transfers` (its default is 4) and `--checkers` (8).
const RCLONE_SMALL: usize = 32;
const RCLONE_LARGE: usize = 4;
const TOKEN: &str = "bench-token";

struct Workload {
    name: &'static str,
    objects: usize,
    size: usize,
    raw_concurrency: usize,
    rclone_transfers: usize,
    about: &'static str,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "small",
        objects: 20_000,
        size: 4 << 10,
        raw_concurrency: RAW_SMALL,
        rclone_transfers: RCLONE_SMALL,
        about: "20,000 × 4 KiB",
    },
    Workload {
        name: "large",
        objects: 40,
        size: 64 << 20,
        raw_concurrency: RAW_LARGE,
        rclone_transfers: RCLONE_LARGE,
        about: "40 × 64 MiB",
    },
];

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// An NDJSON object of about `size` bytes (whole records, at least one):
/// events of a shop, ids `o{index}-r{n}`. Returns the body and its records.
fn object(index: usize, size: usize, random: &mut Random) -> (Vec<u8>, u64) {
    let mut body = Vec::with_capacity(size + 512);
    let mut records = 0u64;
    while body.len() < size.saturating_sub(200) || records == 0 {
        use std::io::Write;
        let (a, b, c) = (
            WORDS[random.below(16) as usize],
            WORDS[random.below(16) as usize],
            WORDS[random.below(16) as usize],
        );
        writeln!(
            body,
            r#"{{"id":"o{index}-r{records}","ts":"2026-03-{:02}T{:02}:{:02}:{:02}.{:03}Z","user":"u{:07}","amount":{}.{:02},"currency":"EUR","items":[{{"sku":"{a}-{}","qty":{}}},{{"sku":"{b}-{}","qty":{}}}],"note":"{a} {b} {c}","paid":{}}}"#,
            1 + random.below(28),
            random.below(24),
            random.below(60),
            random.below(60),
            random.below(1000),
            random.below(10_000_000),
            random.below(1000),
            random.below(100),
            random.below(100_000),
            1 + random.below(5),
            random.below(100_000),
            1 + random.below(5),
            random.chance(90),
        )
        .unwrap();
        records += 1;
    }
    (body, records)
}

/// Puts the workload's objects under `{name}/` in `bucket`; returns the
/// keys, their total bytes and records.
async fn put(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    workload: &Workload,
) -> (Vec<String>, u64, u64) {
    let uploads = if workload.size > 1 << 20 { 4 } else { 32 };
    let written: Vec<(String, u64, u64)> = futures::stream::iter(0..workload.objects)
        .map(|index| async move {
            let size = workload.size;
            let (body, records) = tokio::task::spawn_blocking(move || {
                object(index, size, &mut Random(0x5eed_0000 + index as u64 * 7919))
            })
            .await
            .unwrap();
            let key = format!("{}/{index:06}.ndjson", workload.name);
            let bytes = body.len() as u64;
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(body.into())
                .send()
                .await
                .unwrap_or_else(|err| panic!("put {key}: {err:?}"));
            (key, bytes, records)
        })
        .buffer_unordered(uploads)
        .collect()
        .await;
    let bytes = written.iter().map(|(_, b, _)| b).sum();
    let records = written.iter().map(|(_, _, r)| r).sum();
    (
        written.into_iter().map(|(k, _, _)| k).collect(),
        bytes,
        records,
    )
}

/// The plain download: every key GET, `concurrency` at once, the body read
/// and dropped. Returns the bytes read.
async fn download(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    keys: &[String],
    concurrency: usize,
) -> u64 {
    futures::stream::iter(keys)
        .map(|key| async move {
            let mut body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|err| panic!("get {key}: {err:?}"))
                .body;
            let mut read = 0u64;
            while let Some(chunk) = body.try_next().await.unwrap() {
                read += chunk.len() as u64;
            }
            read
        })
        .buffer_unordered(concurrency)
        .fold(0, |total, read| async move { total + read })
        .await
}

/// Deletes everything under `prefix` in `bucket`, so a run leaves no
/// copies on a small disk.
async fn delete_all(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) {
    let keys = support::list(client, bucket, prefix).await;
    for chunk in keys.chunks(1000) {
        let objects: Vec<ObjectIdentifier> = chunk
            .iter()
            .map(|key| ObjectIdentifier::builder().key(key).build().unwrap())
            .collect();
        client
            .delete_objects()
            .bucket(bucket)
            .delete(
                Delete::builder()
                    .set_objects(Some(objects))
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
}

/// The records (lines) in the zstd NDJSON objects under `prefix`.
async fn count_records(client: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> u64 {
    let keys = support::list(client, bucket, prefix).await;
    futures::stream::iter(keys)
        .map(|key| async move {
            let body = client
                .get_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let mut decoder = zstd::stream::read::Decoder::new(&body[..]).unwrap();
                let mut buffer = vec![0u8; 1 << 20];
                let mut lines = 0u64;
                loop {
                    let read = decoder.read(&mut buffer).unwrap();
                    if read == 0 {
                        break lines;
                    }
                    lines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64;
                }
            })
            .await
            .unwrap()
        })
        .buffer_unordered(2)
        .fold(0, |total, lines| async move { total + lines })
        .await
}

/// `rclone copy` from `src:{bucket}/{from}` to `dst:{to_bucket}/{to}`, two
/// remotes on the same MinIO (two names, so rclone streams the data
/// through itself instead of asking the server to copy).
fn rclone(
    minio: &MinioEnv,
    dir: &Path,
    (bucket, from): (&str, &str),
    (to_bucket, to): (&str, &str),
    transfers: usize,
) {
    let rclone = std::env::var("SLUICE_BENCH_RCLONE").unwrap_or_else(|_| "rclone".into());
    let credentials = minio.credentials();
    let mut command = Command::new(rclone);
    command
        .args([
            "copy",
            "--config",
            dir.join("rclone.conf").to_str().unwrap(),
        ])
        .arg(format!("src:{bucket}/{from}"))
        .arg(format!("dst:{to_bucket}/{to}"))
        .arg(format!("--transfers={transfers}"))
        .arg(format!("--checkers={}", transfers.max(8)))
        // rclone's S3 client cannot take a custom CA bundle, and loopback
        // MinIO is plain HTTP anyway.
        .env_remove("AWS_CA_BUNDLE");
    for remote in ["SRC", "DST"] {
        let var = |name: &str| format!("RCLONE_CONFIG_{remote}_{name}");
        command
            .env(var("TYPE"), "s3")
            .env(var("PROVIDER"), "Minio")
            .env(var("ENDPOINT"), minio.endpoint())
            .env(var("REGION"), "us-east-1")
            .env(var("ACCESS_KEY_ID"), &credentials.access_key_id)
            .env(var("SECRET_ACCESS_KEY"), &credentials.secret_access_key);
    }
    let output = command.output().unwrap_or_else(|err| {
        panic!("cannot run rclone ({err}); `make bench GROUP=workers` installs it")
    });
    assert!(
        output.status.success(),
        "rclone copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One ingest by real processes: a coordinator and the worker pool,
/// started as the operator's Deployments start them (config file, token
/// file, credentials in the environment).
struct Ingest<'a> {
    minio: &'a MinioEnv,
    dir: PathBuf,
    workers: usize,
    concurrency: usize,
}

impl Ingest<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(args)
            .arg("--config")
            .arg(self.dir.join("config.json"))
            .arg("--token-file")
            .arg(self.dir.join("token"))
            .env_remove("KUBECONFIG");
        command.envs(self.minio.pod_credentials_env());
        command
    }

    fn start(&self, name: &str, command: Command, port: u16) -> Daemon {
        let log = self.dir.join(format!("{name}.log"));
        let mut daemon = Daemon::spawn(name, command, &log).unwrap();
        daemon
            .wait_ready(Duration::from_secs(30), || {
                http(port, "GET", "/readyz", &[], b"").is_some_and(|(s, _)| s == 200)
            })
            .unwrap_or_else(|err| panic!("{err}"));
        daemon
    }

    /// Runs the ingest of `config` from the processes' start until the
    /// coordinator reports all `objects` finished; returns the time and
    /// the coordinator's summary. The processes are stopped on return.
    fn run(&self, config: &RuntimeConfig, objects: u64) -> (Duration, Summary) {
        std::fs::write(
            self.dir.join("config.json"),
            serde_json::to_vec(config).unwrap(),
        )
        .unwrap();
        std::fs::write(self.dir.join("token"), TOKEN).unwrap();
        let started = Instant::now();
        let port = free_port().unwrap();
        let mut coordinator = self.command(&["coordinator"]);
        coordinator.arg(format!("--address=127.0.0.1:{port}"));
        let mut processes = vec![self.start("coordinator", coordinator, port)];
        for n in 0..self.workers {
            let own = free_port().unwrap();
            let mut worker = self.command(&["worker"]);
            worker
                .arg(format!("--coordinator=http://127.0.0.1:{port}"))
                .arg(format!("--address=127.0.0.1:{own}"))
                .arg(format!("--concurrency={}", self.concurrency))
                .env("POD_NAME", format!("worker-{n}"));
            processes.push(self.start(&format!("worker-{n}"), worker, own));
        }
        let deadline = started + Duration::from_secs(1800);
        let read_token = sluice_core::api::read_token(TOKEN);
        let read = [(sluice_core::api::READ_TOKEN_HEADER, read_token.as_str())];
        let summary = loop {
            if let Some((200, body)) = http(port, "GET", "/v1/summary", &read, b"") {
                let summary: Summary = serde_json::from_str(&body).unwrap();
                let finished = summary.objects.ingested + summary.objects.failed;
                if finished >= objects && summary.tasks.pending == 0 && summary.tasks.running == 0 {
                    break summary;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the ingest did not finish; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let elapsed = started.elapsed();
        for process in processes.iter_mut().rev() {
            process.terminate(Duration::from_secs(10));
        }
        (elapsed, summary)
    }
}

struct Figures {
    bytes: u64,
    objects: usize,
    sluice: Duration,
    raw: Duration,
    rclone: Duration,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let workers = env_usize("SLUICE_BENCH_WORKERS", WORKERS);
    let concurrency = env_usize("SLUICE_BENCH_CONCURRENCY", CONCURRENCY);
    let only = std::env::var("SLUICE_BENCH_ONLY").ok();
    let runs = env_usize("SLUICE_BENCH_RUNS", RUNS);
    let minio = tokio::task::spawn_blocking(MinioEnv::start)
        .await
        .unwrap()
        .unwrap_or_else(|err| panic!("{err}"));
    let client = minio.client().await;
    let source = minio.bucket("source").await.unwrap();
    let sink = minio.bucket("sink").await.unwrap();
    let archive = minio.bucket("archive").await.unwrap();
    let copy = minio.bucket("copy").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ingest = Ingest {
        minio: &minio,
        dir: dir.path().to_owned(),
        workers,
        concurrency,
    };
    let location = |bucket: &str, prefix: String| {
        let mut location = minio.location(bucket);
        location.prefix = Some(prefix);
        location
    };

    let mut results = Vec::new();
    for workload in &WORKLOADS {
        if only.as_deref().is_some_and(|only| only != workload.name) {
            continue;
        }
        eprintln!("putting {} objects ({})...", workload.about, workload.name);
        let started = Instant::now();
        let (keys, bytes, records) = put(&client, &source, workload).await;
        eprintln!(
            "put in {:.1}s: {} bytes, {records} records",
            started.elapsed().as_secs_f64(),
            bytes
        );
        let (mut sluice_runs, mut raw_runs, mut rclone_runs) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            // The sink and archive of every run are new, so each ingest
            // starts from nothing (no checkpoint, no outputs).
            let config = RuntimeConfig {
                id: SourceId {
                    namespace: "bench".into(),
                    name: format!("{}-{run}", workload.name),
                    account: "acme".into(),
                    collection: "orders".into(),
                },
                source: SourceConfig {
                    s3: location(&source, format!("{}/", workload.name)),
                    format: Format::Auto,
                    compression: Compression::Auto,
                    poll_interval: None,
                },
                sink: location(&sink, format!("{}-{run}", workload.name)),
                archive: location(&archive, format!("{}-{run}/", workload.name)),
                tasks: TaskLimits {
                    max_objects: 100,
                    max_bytes: 64 << 20,
                    lease_duration: sluice_core::duration::Duration(Duration::from_secs(60)),
                    max_attempts: 3,
                },
            };
            let (time, summary) =
                tokio::task::block_in_place(|| ingest.run(&config, workload.objects as u64));
            assert_eq!(summary.objects.failed, 0, "{summary:?}");
            assert_eq!(summary.records_ingested, records, "{summary:?}");
            let prefix = format!("{}-{run}/", workload.name);
            let in_sink = count_records(&client, &sink, &prefix).await;
            assert_eq!(in_sink, records, "the sink holds every record, once");
            delete_all(&client, &sink, &prefix).await;
            eprintln!("run {run}: sluice {:.2}s", time.as_secs_f64());
            sluice_runs.push(time);

            let started = Instant::now();
            let read = download(&client, &source, &keys, workload.raw_concurrency).await;
            raw_runs.push(started.elapsed());
            assert_eq!(read, bytes);
            eprintln!("run {run}: raw GET {:.2}s", started.elapsed().as_secs_f64());

            let to = format!("{}-{run}", workload.name);
            let started = Instant::now();
            tokio::task::block_in_place(|| {
                rclone(
                    &minio,
                    dir.path(),
                    (&source, workload.name),
                    (&copy, &to),
                    workload.rclone_transfers,
                )
            });
            rclone_runs.push(started.elapsed());
            eprintln!("run {run}: rclone {:.2}s", started.elapsed().as_secs_f64());
            assert_eq!(
                support::list(&client, &copy, &to).await.len(),
                workload.objects
            );
            delete_all(&client, &copy, &to).await;
        }
        delete_all(&client, &source, &format!("{}/", workload.name)).await;
        results.push((
            workload,
            Figures {
                bytes,
                objects: workload.objects,
                sluice: median(sluice_runs),
                raw: median(raw_runs),
                rclone: median(rclone_runs),
            },
        ));
    }

    println!(
        "\nEnd-to-end ingest of NDJSON objects by the real `sluice coordinator` and \
         {workers} `sluice worker` process{} ({concurrency} tasks at once; tasks of up to 100 \
         objects or 64 MiB), timed from the processes' start until the coordinator reports \
         every object ingested; each run then checks that the sink holds every record once. \
         Compared in the same run with a plain concurrent download of the same objects \
         (aws-sdk-s3, bodies read and dropped; {RAW_SMALL} GETs in flight for small objects, \
         {RAW_LARGE} for large) and with `rclone copy` of the same objects to another bucket \
         (`--transfers` {RCLONE_SMALL} for small objects, {RCLONE_LARGE}, its default, for \
         large), all against one MinIO on loopback sharing the machine's cores. \
         One sluice worker process: on 2 cores that MinIO shares, more processes only add \
         runtimes competing for the same cores. MB/s are source bytes (10^6) per second; \
         median of {runs} runs.\n",
        if workers == 1 { "" } else { "es" }
    );
    let mut table = Table::new(&[
        "objects",
        "who",
        "time",
        "MB/s",
        "objects/s",
        "ratio",
        "bar",
    ]);
    let mut missed = false;
    for (workload, figures) in &results {
        let rate = |time: Duration| {
            (
                figures.bytes as f64 / 1e6 / time.as_secs_f64(),
                figures.objects as f64 / time.as_secs_f64(),
            )
        };
        let (sluice_mb, sluice_objects) = rate(figures.sluice);
        let vs_raw = figures.raw.as_secs_f64() / figures.sluice.as_secs_f64();
        let vs_rclone = figures.rclone.as_secs_f64() / figures.sluice.as_secs_f64();
        missed |= vs_raw < 0.8 || vs_rclone <= 1.0;
        table.row(&[
            workload.about.into(),
            "sluice (coordinator + workers)".into(),
            seconds(figures.sluice),
            format!("{sluice_mb:.0}"),
            format!("{sluice_objects:.0}"),
            "-".into(),
            "-".into(),
        ]);
        let (raw_mb, raw_objects) = rate(figures.raw);
        table.row(&[
            workload.about.into(),
            "plain concurrent GET".into(),
            seconds(figures.raw),
            format!("{raw_mb:.0}"),
            format!("{raw_objects:.0}"),
            format!("sluice {vs_raw:.2}×"),
            format!("≥ 0.8×: {}", verdict(vs_raw >= 0.8)),
        ]);
        let (rclone_mb, rclone_objects) = rate(figures.rclone);
        table.row(&[
            workload.about.into(),
            "`rclone copy`".into(),
            seconds(figures.rclone),
            format!("{rclone_mb:.0}"),
            format!("{rclone_objects:.0}"),
            format!("sluice {vs_rclone:.2}×"),
            format!("> 1×: {}", verdict(vs_rclone > 1.0)),
        ]);
    }
    table.print();
    println!(
        "Optimization, from a profile of the worker on the 64 MiB objects (`perf record -g`): \
         65 % of its CPU was zstd compressing the output at level 3 \
         (`ZSTD_compressBlock_doubleFast*`), JSON validation about 10 %. The sink is now \
         written at zstd level 1, which compresses these records about twice as fast for an \
         output 1.5 % larger. Before, on 2026-11-24 (one run, a busy machine): 40 × 64 MiB \
         in 27.37 s, 98 MB/s, against 1,010 MB/s for the plain GET (0.10×) and 224 MB/s for \
         rclone (0.44×). Small objects: a worker fetches a task's next objects while it \
         decodes one (at most 8 GETs and 16 MiB ahead), so 4 tasks keep up to 32 GETs in \
         flight, as the plain download does. That took sluice from 0.60× of the plain GET \
         (2026-11-24, GETs one after another) to 0.73× (2026-12-03), each ratio measured \
         within its own run; what remains between it and the plain GET is not profiled \
         yet.\n\n\
         Why large objects stay far from the plain GET: the plain download only moves \
         bytes, while a worker decompresses, validates every record, adds its `_sluice` \
         metadata (about 1.7× the bytes), compresses and uploads it, on the same 2 cores \
         that MinIO serves from. rclone also moves bytes only (download, MD5, upload).\n"
    );
    if missed {
        println!("OVER A BAR");
    }
}
