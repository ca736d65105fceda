//! `sluice history` as a process, against archives in a real MinIO written
//! by the coordinator's own archive writer, and against a real API server
//! where the archive is found through an IngestSource.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sluice::coordinator::archiver;
use sluice_core::api::{ObjectRef, TaskState};
use sluice_core::archive::{Appender, TaskRecord};
use sluice_core::id::{SourceId, TaskId};
use support::{fail, kube_with_crd, minio, sources, succeed};
use tokio::sync::OnceCell;

/// The prefix every test archive lives under in its bucket.
const PREFIX: &str = "sluice";

/// An archive written the way a coordinator writes it.
struct Archive {
    bucket: String,
    records: Vec<TaskRecord>,
    /// The time the records are placed before.
    t0: Timestamp,
}

/// One IngestSource's place in the archive: account, collection,
/// namespace, name.
type Of<'a> = (&'a str, &'a str, &'a str, &'a str);

/// `per_source` task records for each source, 10 minutes apart going back
/// from `t0` (5 minutes before it, then 15, ...), so a window ending on a
/// whole hour before now is 5 minutes away from any record. Every 7th
/// failed, with one of two kinds of error; three workers and one task
/// without any; the first source's older half planned by epoch 1, the rest
/// by epoch 2. Written by [`write`].
async fn generate(of: &[Of<'_>], per_source: usize) -> Archive {
    let minio = minio();
    let bucket = minio.bucket("history").await.unwrap();
    let client = minio.client().await;
    let t0 = Timestamp::now();
    let mut all = Vec::new();
    for (j, &(account, collection, namespace, name)) in of.iter().enumerate() {
        let mut records = Vec::new();
        let mut seqs = HashMap::new();
        for i in (0..per_source).rev() {
            let epoch = if j == 0 && i < per_source / 2 { 2 } else { 1 };
            let seq = seqs.entry(epoch).or_insert(0u64);
            *seq += 1;
            let id = TaskId { epoch, seq: *seq };
            let finished = t0
                - SignedDuration::from_mins(i as i64 * 10 + 5)
                - SignedDuration::from_secs(j as i64);
            let failed = i % 7 == 3;
            let worker = (i != 10).then(|| format!("{name}-worker-{}", i % 3));
            let error = failed.then(|| match i % 2 {
                0 => format!(
                    "s3 object \"in/{namespace}/{name}/{i}-0.ndjson\": line {}: expected value at column 8",
                    i % 50 + 1
                ),
                _ => format!("worker {name}-worker-{} lost its lease after 60s", i % 3),
            });
            records.push(TaskRecord {
                id,
                account: account.into(),
                collection: collection.into(),
                source: format!("{namespace}/{name}"),
                state: if failed {
                    TaskState::Failed
                } else {
                    TaskState::Succeeded
                },
                worker,
                attempt: if failed { 3 } else { 1 },
                objects: (0..1 + i % 3)
                    .map(|k| ObjectRef {
                        key: format!("in/{namespace}/{name}/{i}-{k}.ndjson"),
                        size: 1000 + i as u64,
                        etag: format!("\"{i:032x}\""),
                    })
                    .collect(),
                records: if failed { 0 } else { 100 + i as u64 },
                bytes_read: 1000 + i as u64,
                bytes_written: if failed { 0 } else { 300 },
                outputs: if failed {
                    Vec::new()
                } else {
                    vec![format!(
                        "out/{collection}/{namespace}.{name}-{id}.ndjson.zst"
                    )]
                },
                created: finished - SignedDuration::from_secs(90),
                started: Some(finished - SignedDuration::from_secs(60)),
                finished,
                duration_ms: 60_000,
                error,
            });
        }
        let source = SourceId {
            account: account.into(),
            collection: collection.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        write(&client, &bucket, &source, &records, 1).await;
        all.extend(records);
    }
    all.sort_by_key(|record| record.finished);
    Archive {
        bucket,
        records: all,
        t0,
    }
}

/// Writes `records` (oldest first, their epoch in their ids) as
/// coordinators do: `per_flush` at a time, through the appender and the
/// archive writer.
async fn write(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    source: &SourceId,
    records: &[TaskRecord],
    per_flush: usize,
) {
    let mut appender: Option<(u64, Appender)> = None;
    let mut written = HashMap::new();
    for flush in records.chunks(per_flush) {
        let epoch = flush[0].id.epoch;
        if appender
            .as_ref()
            .is_none_or(|(current, _)| *current != epoch)
        {
            appender = Some((epoch, Appender::new(Some(PREFIX), source, epoch)));
        }
        let (_, appender) = appender.as_mut().unwrap();
        let now = flush[flush.len() - 1].finished + SignedDuration::from_secs(5);
        for batch in appender.append(flush.to_vec(), now) {
            let known = written.remove(&batch.key);
            let object = archiver::append(client, bucket, &batch, known)
                .await
                .unwrap_or_else(|unwritten| panic!("{}", unwritten.reason));
            if appender.is_open(&batch.key) {
                written.insert(batch.key.clone(), object);
            }
        }
    }
}

/// The archive most tests read: three sources of two accounts.
async fn shared() -> &'static Archive {
    static ARCHIVE: OnceCell<Archive> = OnceCell::const_new();
    ARCHIVE
        .get_or_init(|| {
            generate(
                &[
                    ("acme", "orders", "shop", "orders"),
                    ("acme", "refunds", "shop", "refunds"),
                    ("globex", "clicks", "lab", "clicks"),
                ],
                200,
            )
        })
        .await
}

/// An empty HOME, so no kubeconfig or AWS profile of the machine is read.
fn home() -> &'static Path {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    HOME.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

/// `sluice history ARGS` with MinIO's credentials in the environment (the
/// standard AWS variables) and no kubeconfig.
fn command(args: &[&str]) -> Command {
    let credentials = minio().credentials();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .arg("history")
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("SLUICE_ARCHIVE")
        .env("HOME", home())
        .env("AWS_ACCESS_KEY_ID", credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", credentials.secret_access_key)
        // Never ask a cloud's metadata service for credentials.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    command
}

fn sluice(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// The `--archive` and `--endpoint` flags of `archive`.
fn at(archive: &Archive) -> Vec<String> {
    vec![
        format!("--archive=s3://{}/{PREFIX}", archive.bucket),
        format!("--endpoint={}", minio().endpoint()),
    ]
}

/// Runs history on `archive` with `args` and `-o ndjson`; the records
/// printed, after checking that nothing else was said.
fn query(archive: &Archive, args: &[&str]) -> Vec<TaskRecord> {
    let mut all = at(archive);
    all.extend(args.iter().map(|arg| arg.to_string()));
    all.extend(["-o".into(), "ndjson".into()]);
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    let output = sluice(&all);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = succeed(output);
    assert_eq!(stderr, "", "nothing but results when piped ({args:?})");
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

/// `source:id` of records, in the order given.
fn names<'a>(records: impl IntoIterator<Item = &'a TaskRecord>) -> Vec<String> {
    records
        .into_iter()
        .map(|record| format!("{}:{}", record.source, record.id))
        .collect()
}

/// The records of `archive` for which `wanted` holds, oldest first.
fn expected(archive: &Archive, wanted: impl Fn(&TaskRecord) -> bool) -> Vec<String> {
    names(archive.records.iter().filter(|record| wanted(record)))
}

fn ago(archive: &Archive, hours: i64) -> Timestamp {
    archive.t0 - SignedDuration::from_hours(hours)
}

#[tokio::test]
async fn each_filter_returns_exactly_the_matching_tasks() {
    let archive = shared().await;
    let day = |r: &TaskRecord| r.finished >= ago(archive, 24);
    let first_failed = archive
        .records
        .iter()
        .find(|r| r.state == TaskState::Failed && r.source == "shop/refunds")
        .unwrap();
    let some_key = &archive.records[150].objects[0].key;
    let failed_by_worker = "clicks-worker-1";
    let (from, to) = (
        first_failed.finished.to_string(),
        (first_failed.finished + SignedDuration::from_secs(1)).to_string(),
    );
    let cases: Vec<(Vec<&str>, Vec<String>)> = vec![
        (vec![], expected(archive, day)),
        (vec!["--since=40h"], expected(archive, |_| true)),
        (
            vec!["--account=acme"],
            expected(archive, |r| day(r) && r.account == "acme"),
        ),
        (
            vec!["--collection=refunds"],
            expected(archive, |r| day(r) && r.collection == "refunds"),
        ),
        (
            vec!["--account=globex", "--collection=clicks", "--since=40h"],
            expected(archive, |r| r.account == "globex"),
        ),
        (
            vec!["--source=shop/orders"],
            expected(archive, |r| day(r) && r.source == "shop/orders"),
        ),
        (
            vec!["--source=refunds", "-n", "shop", "--since=40h"],
            expected(archive, |r| r.source == "shop/refunds"),
        ),
        (
            vec!["-n", "lab"],
            expected(archive, |r| day(r) && r.source.starts_with("lab/")),
        ),
        (
            vec!["--state=failed", "--since=40h"],
            expected(archive, |r| r.state == TaskState::Failed),
        ),
        (
            vec!["--state=succeeded", "--account=globex"],
            expected(archive, |r| {
                day(r) && r.state == TaskState::Succeeded && r.account == "globex"
            }),
        ),
        (
            vec!["--worker", failed_by_worker, "--state=failed"],
            expected(archive, |r| {
                day(r)
                    && r.worker.as_deref() == Some(failed_by_worker)
                    && r.state == TaskState::Failed
            }),
        ),
        (
            vec!["--task=1-5", "--since=40h"],
            expected(archive, |r| r.id.to_string() == "1-5"),
        ),
        (
            vec!["--task=2-5", "--source=shop/orders", "--since=40h"],
            expected(archive, |r| {
                r.id.to_string() == "2-5" && r.source == "shop/orders"
            }),
        ),
        (
            vec!["--since=5h", "--until=2h"],
            expected(archive, |r| {
                r.finished >= ago(archive, 5) && r.finished < ago(archive, 2)
            }),
        ),
        (
            vec!["--since", &from, "--until", &to],
            vec![format!("shop/refunds:{}", first_failed.id)],
        ),
        (
            vec!["--grep", some_key, "--since=40h"],
            expected(archive, |r| r.objects.iter().any(|o| o.key == *some_key)),
        ),
        (
            vec!["--grep=lost its lease", "--since=40h", "--account=acme"],
            expected(archive, |r| {
                r.account == "acme"
                    && r.error
                        .as_deref()
                        .is_some_and(|e| e.contains("lost its lease"))
            }),
        ),
        (vec!["--account=nobody", "--since=40h"], Vec::new()),
    ];
    for (args, wanted) in cases {
        let printed = query(archive, &args);
        assert_eq!(names(&printed), wanted, "{args:?}");
    }
    // The windows above stay 5 minutes from every record: the test would
    // be flaky otherwise.
    assert!(Timestamp::now() < archive.t0 + SignedDuration::from_mins(5));
}

#[tokio::test]
async fn records_print_whole_and_in_time_order_and_a_limit_keeps_the_latest() {
    let archive = shared().await;
    let printed = query(archive, &["--since=40h"]);
    assert_eq!(
        printed, archive.records,
        "every field as archived, oldest first"
    );

    let latest = query(archive, &["--since=40h", "--state=failed", "--limit=3"]);
    let failed: Vec<_> = archive
        .records
        .iter()
        .filter(|r| r.state == TaskState::Failed)
        .collect();
    assert_eq!(
        names(&latest),
        names(failed[failed.len() - 3..].iter().copied())
    );
}

#[tokio::test]
async fn every_output_format_carries_the_same_tasks() {
    let archive = shared().await;
    let base = at(archive);
    let run = |format: &str| {
        let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
        args.extend(["--source=shop/refunds", "--state=failed", "-o", format]);
        succeed(sluice(&args))
    };
    let wanted = expected(archive, |r| {
        r.finished >= ago(archive, 24) && r.source == "shop/refunds" && r.state == TaskState::Failed
    });
    assert!(wanted.len() >= 3);

    let table = run("table");
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "FINISHED", "SOURCE", "TASK", "STATE", "WORKER", "OBJECTS", "RECORDS", "DURATION",
            "ERROR"
        ]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    let shown: Vec<String> = rows
        .iter()
        .map(|row| format!("{}:{}", row[1], row[2]))
        .collect();
    assert_eq!(shown, wanted);
    assert!(rows.iter().all(|row| row[3] == "failed" && row[7] == "60s"));

    let wide = run("wide");
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .contains("ACCOUNT   COLLECTION   SOURCE"),
        "{wide}"
    );
    assert!(
        wide.contains("acme      refunds      shop/refunds"),
        "{wide}"
    );

    let json: Value = serde_json::from_str(&run("json")).unwrap();
    let items: Vec<TaskRecord> = serde_json::from_value(json["items"].clone()).unwrap();
    assert_eq!(names(&items), wanted);

    let yaml: Value = serde_yaml::from_str(&run("yaml")).unwrap();
    let items: Vec<TaskRecord> = serde_json::from_value(yaml["items"].clone()).unwrap();
    assert_eq!(names(&items), wanted);
    assert!(items.iter().all(|r| r.error.is_some()));

    let ndjson: Vec<TaskRecord> = run("ndjson")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(names(&ndjson), wanted);
}

#[tokio::test]
async fn count_and_stats_summarise_the_matches() {
    let archive = shared().await;
    let base = at(archive);
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
        all.push("--since=40h");
        all.extend(args);
        succeed(sluice(&all))
    };
    let acme: Vec<&TaskRecord> = archive
        .records
        .iter()
        .filter(|r| r.account == "acme")
        .collect();
    assert_eq!(
        run(&["--count", "--account=acme"]),
        format!("{}\n", acme.len())
    );
    let failed = acme.iter().filter(|r| r.state == TaskState::Failed).count();
    let count: Value = serde_json::from_str(&run(&[
        "--count",
        "--account=acme",
        "--state=failed",
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(count, json!({"count": failed}));

    let stats: Value =
        serde_json::from_str(&run(&["--stats", "--account=acme", "-o", "json"])).unwrap();
    assert_eq!(stats["tasks"], json!(acme.len()));
    assert_eq!(
        stats["states"],
        json!({"failed": failed, "succeeded": acme.len() - failed})
    );
    let mut by_worker: HashMap<String, (u64, u64)> = HashMap::new();
    for record in &acme {
        let entry = by_worker
            .entry(record.worker.clone().unwrap_or_else(|| "-".into()))
            .or_default();
        entry.0 += 1;
        entry.1 += u64::from(record.state == TaskState::Failed);
    }
    let workers = stats["workers"].as_array().unwrap();
    assert_eq!(workers.len(), by_worker.len());
    for worker in workers {
        let name = worker["worker"].as_str().unwrap();
        assert_eq!(
            (
                worker["tasks"].as_u64().unwrap(),
                worker["failed"].as_u64().unwrap()
            ),
            by_worker[name],
            "{name}"
        );
    }
    let counts: Vec<u64> = workers
        .iter()
        .map(|w| w["tasks"].as_u64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|pair| pair[0] >= pair[1]),
        "most tasks first"
    );
    // One kind of error per cause and source, however many objects, lines
    // and workers they name.
    let errors = stats["errors"].as_array().unwrap();
    let mut kinds: Vec<&str> = errors.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "s3 object \"…\": line N: expected value at column N",
            "worker orders-worker-N lost its lease after Ns",
            "worker refunds-worker-N lost its lease after Ns",
        ]
    );
    let total: u64 = errors.iter().map(|e| e["tasks"].as_u64().unwrap()).sum();
    assert_eq!(total, failed as u64);
    let latest_parse_error = acme
        .iter()
        .rev()
        .find(|r| {
            r.error
                .as_deref()
                .is_some_and(|e| e.starts_with("s3 object"))
        })
        .unwrap();
    let parse_errors = errors
        .iter()
        .find(|e| e["kind"].as_str().unwrap().starts_with("s3"))
        .unwrap();
    assert_eq!(parse_errors["example"], json!(latest_parse_error.error));

    let table = run(&["--stats", "--source=lab/clicks"]);
    assert!(table.starts_with("STATE       TASKS\nfailed"), "{table}");
    assert!(
        table.contains("\nWORKER            TASKS   FAILED   RECORDS   READ\nclicks-worker-"),
        "{table}"
    );
    assert!(table.contains("\nTASKS   LAST"), "{table}");
}

#[tokio::test]
async fn bad_input_gets_an_error_a_person_understands() {
    let archive = shared().await;
    let base = at(archive);
    let with = |args: &[&str]| {
        let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
        all.extend(args);
        fail(sluice(&all))
    };
    let err = with(&["--since=yesterday"]);
    assert!(
        err.contains("invalid --since \"yesterday\"")
            && err.contains("90m, 24h or 7d")
            && err.contains("RFC 3339"),
        "{err}"
    );
    let err = with(&["--since=1h", "--until=2h"]);
    assert!(err.contains("is not before --until"), "{err}");
    let err = with(&["--state=running"]);
    assert!(
        err.contains("only tasks that ended are archived") && err.contains("sluice tasks"),
        "{err}"
    );
    let err = with(&["--state=lost"]);
    assert!(err.contains("unknown state \"lost\""), "{err}");
    let err = with(&["--source=a/b/c"]);
    assert!(
        err.contains("invalid --source \"a/b/c\": write it as NAMESPACE/NAME"),
        "{err}"
    );
    let err = with(&["--source=orders"]);
    assert!(
        err.contains("invalid --source \"orders\""),
        "a name without namespace: {err}"
    );

    let err = fail(sluice(&["--archive=acme-archive"]));
    assert!(
        err.contains("invalid --archive \"acme-archive\": write it as s3://BUCKET"),
        "{err}"
    );

    // Nothing listens on this port.
    let dead = format!("http://127.0.0.1:{}", sluice_testenv::free_port().unwrap());
    let err = fail(sluice(&[
        "--archive=s3://archive/sluice",
        "--endpoint",
        &dead,
    ]));
    assert!(
        err.contains(&format!(
            "cannot read the archive s3://archive/sluice at {dead}: "
        )) && err.contains("Connection refused"),
        "{err}"
    );
    let err = fail(sluice(&[
        "--archive=s3://no-such-bucket/sluice",
        "--endpoint",
        minio().endpoint(),
    ]));
    assert!(
        err.contains("cannot read the archive s3://no-such-bucket/sluice at http://127.0.0.1:")
            && err.contains("NoSuchBucket"),
        "{err}"
    );
    let err = fail(
        command(&at(archive).iter().map(String::as_str).collect::<Vec<_>>())
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .output()
            .unwrap(),
    );
    assert!(err.contains("SignatureDoesNotMatch"), "{err}");

    // Without --archive the cluster is needed, and there is none.
    let err = fail(sluice(&[]));
    assert!(
        err.contains("no kubeconfig") && err.contains("pass --archive s3://BUCKET/PREFIX"),
        "{err}"
    );
}

/// The key of an object of shop/orders that no coordinator wrote (epoch
/// 9), number `seq`, in the hour partition of `archive`'s first record,
/// with the source directory `source_dir` (`source=shop%2Forders`, or the
/// legacy layout's `shop.orders`).
fn planted_key(archive: &Archive, source_dir: &str, seq: u32) -> String {
    let hour =
        sluice_core::archive::partition(sluice_core::archive::hour_of(archive.records[0].finished));
    format!(
        "{PREFIX}/tasks/{hour}/account=acme/collection=orders/{source_dir}/0000000009-{seq:08}.ndjson.zst"
    )
}

/// Puts `body` at `key` in `archive`'s bucket, with `index` as its frame
/// index metadata when given.
async fn plant(archive: &Archive, key: &str, body: Vec<u8>, index: Option<String>) {
    minio()
        .client()
        .await
        .put_object()
        .bucket(&archive.bucket)
        .key(key)
        .set_metadata(
            index.map(|index| [(sluice_core::archive::INDEX_METADATA.to_owned(), index)].into()),
        )
        .body(body.into())
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_damaged_object_is_named_and_the_rest_still_print() {
    let archive = generate(&[("acme", "orders", "shop", "orders")], 6).await;
    let key = planted_key(&archive, "source=shop%2Forders", 1);
    plant(&archive, &key, b"not zstd".to_vec(), None).await;
    let mut args = at(&archive);
    args.extend(["-o".into(), "ndjson".into()]);
    let output = sluice(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let printed = String::from_utf8(output.stdout.clone()).unwrap();
    let err = fail(output);
    assert_eq!(printed.lines().count(), 6, "{printed}");
    assert!(
        err.contains(&format!("warning: s3://{}/{key}: not zstd", archive.bucket))
            && err.contains("could not read 1 of the archive's objects or lines"),
        "{err}"
    );
}

/// Crafted archive objects cannot crash or exhaust `sluice history`: an
/// index whose frame lengths wrap around is ignored (the object is read
/// whole, and its records still print), and an object that decompresses to
/// far more than sluice ever writes is named and skipped.
#[tokio::test]
async fn crafted_objects_are_read_safely_or_named() {
    let archive = generate(&[("acme", "orders", "shop", "orders")], 6).await;
    let key = |seq| planted_key(&archive, "source=shop%2Forders", seq);
    // A failed task's record under an index whose first frame claims
    // u64::MAX - 5 bytes: the sum of the lengths wraps around.
    let mut failed = archive.records[0].clone();
    failed.id = TaskId { epoch: 9, seq: 1 };
    failed.state = TaskState::Failed;
    failed.error = Some("crafted".into());
    let mut lines = Vec::new();
    sluice_core::archive::encode_lines(std::slice::from_ref(&failed), &mut lines);
    let (honest, mut index) = sluice_core::archive::compress(&lines);
    index.frames.insert(
        0,
        sluice_core::archive::Frame {
            state: Some(TaskState::Succeeded),
            records: 1,
            bytes: u64::MAX - 5,
        },
    );
    // 65 MiB of zeros in a few KiB.
    let bomb = zstd::bulk::compress(&vec![0u8; 65 << 20], 19).unwrap();
    for (seq, body) in [(1, honest), (2, bomb)] {
        plant(&archive, &key(seq), body, Some(index.to_string())).await;
    }

    let mut args = at(&archive);
    args.extend(["--state", "failed", "-o", "ndjson"].map(String::from));
    let output = sluice(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let printed = String::from_utf8(output.stdout.clone()).unwrap();
    let err = fail(output);
    let expected_failed = archive
        .records
        .iter()
        .filter(|r| r.state == TaskState::Failed)
        .count();
    assert_eq!(
        printed.lines().count(),
        expected_failed + 1,
        "{printed}\n{err}"
    );
    assert!(printed.contains("\"crafted\""), "{printed}");
    assert!(
        err.contains(&format!("warning: s3://{}/{}: ", archive.bucket, key(2)))
            && err.contains("decompresses to more than 64 MiB")
            && err.contains("could not read 1 of the archive's objects or lines"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Archives written before the source partition (the source directory
/// `NAMESPACE.NAME`, the index in a skippable frame at the start of each
/// object) still read, beside the new layout: whole, and by state through
/// their index.
#[tokio::test]
async fn objects_of_the_legacy_layout_still_read() {
    let archive = generate(&[("acme", "orders", "shop", "orders")], 6).await;
    let mut old = [archive.records[0].clone(), archive.records[0].clone()];
    for (seq, (record, state)) in old
        .iter_mut()
        .zip([TaskState::Failed, TaskState::Succeeded])
        .enumerate()
    {
        record.id = TaskId {
            epoch: 9,
            seq: seq as u64 + 1,
        };
        record.state = state;
    }
    // The legacy layout: the index as JSON in a skippable frame, then
    // one frame per state, failed first.
    let frames: Vec<Vec<u8>> = old
        .iter()
        .map(|record| {
            let mut lines = Vec::new();
            sluice_core::archive::encode_lines(std::slice::from_ref(record), &mut lines);
            zstd::bulk::compress(&lines, 3).unwrap()
        })
        .collect();
    let index = json!({"frames": [
        {"state": "failed", "records": 1, "bytes": frames[0].len()},
        {"state": "succeeded", "records": 1, "bytes": frames[1].len()},
    ]})
    .to_string();
    let mut body = 0x184D_2A50u32.to_le_bytes().to_vec();
    body.extend((index.len() as u32).to_le_bytes());
    body.extend(index.as_bytes());
    body.extend(frames.concat());
    plant(
        &archive,
        &planted_key(&archive, "shop.orders", 1),
        body,
        None,
    )
    .await;

    let all = query(&archive, &["--source=shop/orders"]);
    assert_eq!(all.len(), 8, "six new and two old: {:?}", names(&all));
    let failed = query(&archive, &["--source=shop/orders", "--state=failed"]);
    let wanted = archive
        .records
        .iter()
        .filter(|r| r.state == TaskState::Failed)
        .chain(&old[..1]);
    let (mut failed, mut wanted) = (names(&failed), names(wanted));
    failed.sort();
    wanted.sort();
    assert_eq!(failed, wanted);
}

/// A kubeconfig for `server` that presents `token`.
fn kubeconfig(dir: &Path, server: &str, token: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    \
             certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {token}\ncontexts:\n\
             - name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\n\
             current-context: c\n",
            support::kube().ca_cert().display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test]
async fn the_archive_is_found_through_the_ingestsource_and_its_secret() {
    let kube = kube_with_crd();
    let client = kube.client().await;
    let namespace = kube.namespace("history").unwrap();
    let archive = generate(
        &[
            ("acme", "orders", &namespace, "orders"),
            ("acme", "refunds", &namespace, "refunds"),
        ],
        20,
    )
    .await;
    let credentials = minio().credentials();
    succeed(support::kubectl(
        &[
            "create",
            "secret",
            "generic",
            "archive-s3",
            "-n",
            &namespace,
            &format!(
                "--from-literal=AWS_ACCESS_KEY_ID={}",
                credentials.access_key_id
            ),
            &format!(
                "--from-literal=AWS_SECRET_ACCESS_KEY={}",
                credentials.secret_access_key
            ),
        ],
        None,
    ));
    for (name, collection) in [("orders", "orders"), ("refunds", "refunds")] {
        let mut source = sources::orders(name);
        source["spec"]["collection"] = json!(collection);
        source["spec"]["archive"]["s3"] = json!({
            "bucket": archive.bucket,
            "prefix": format!("{PREFIX}/"),
            "endpoint": minio().endpoint(),
            "forcePathStyle": true,
            "credentialsSecretRef": {"name": "archive-s3"},
        });
        sources::apply(&client, &namespace, &source).await;
    }
    let admin = kube.kubeconfig();
    // Only the Secret has the credentials.
    let run = |kubeconfig: &Path, args: &[&str]| {
        let mut command = command(args);
        command
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY");
        command
    };
    let listed = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--since=5h", "-o", "ndjson"]);
        let stdout = succeed(run(admin, &all).output().unwrap());
        let records: Vec<TaskRecord> = stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        names(&records)
    };
    let all = expected(&archive, |_| true);
    assert_eq!(listed(&["-n", &namespace]), all);
    let orders = format!("{namespace}/orders");
    assert_eq!(
        listed(&["--source", &orders]),
        expected(&archive, |r| r.source == orders)
    );
    assert_eq!(
        listed(&["--source=refunds", "-n", &namespace, "--state=failed"]),
        expected(&archive, |r| r.source.ends_with("/refunds")
            && r.state == TaskState::Failed)
    );
    // The archive of another namespace's sources is not this one's.
    assert_eq!(
        listed(&["-A", "--collection=refunds"]),
        expected(&archive, |r| r.collection == "refunds")
    );

    let err = fail(
        run(admin, &["--source", &format!("{namespace}/nope")])
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&format!(
            "IngestSource \"nope\" not found in namespace \"{namespace}\""
        )),
        "{err}"
    );
    let empty = kube.namespace("history-empty").unwrap();
    let err = fail(run(admin, &["-n", &empty]).output().unwrap());
    assert!(
        err.contains(&format!(
            "no IngestSources in namespace {empty} to take the archive location from"
        )),
        "{err}"
    );

    // Someone who may read IngestSources but not Secrets: the environment's
    // credentials are used, and named when they fail.
    let reader = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": "reader"},
               "rules": [{"apiGroups": ["sluice.dev"], "resources": ["ingestsources"], "verbs": ["get", "list"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "reader"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
               "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]}),
    ];
    for object in reader {
        succeed(support::kubectl(
            &["apply", "-n", &namespace, "-f", "-"],
            Some(&object.to_string()),
        ));
    }
    let token = succeed(support::kubectl(
        &["create", "token", "reader", "-n", &namespace],
        None,
    ));
    let dir = tempfile::tempdir().unwrap();
    let limited = kubeconfig(dir.path(), kube.server(), token.trim());
    let err = fail(
        run(&limited, &["-n", &namespace])
            .env("AWS_ACCESS_KEY_ID", "someone")
            .env("AWS_SECRET_ACCESS_KEY", "wrong")
            .output()
            .unwrap(),
    );
    assert!(
        err.contains("InvalidAccessKeyId")
            && err.contains(&format!(
                "Secret {namespace}/archive-s3: you may not read it"
            )),
        "{err}"
    );
    let output = run(&limited, &["-n", &namespace, "--count", "--since=5h"])
        .env("AWS_ACCESS_KEY_ID", &credentials.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", &credentials.secret_access_key)
        .output()
        .unwrap();
    assert_eq!(succeed(output), format!("{}\n", all.len()));
}

#[tokio::test]
async fn with_the_cluster_gone_archive_still_answers_from_s3() {
    let archive = shared().await;
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("https://127.0.0.1:{}", sluice_testenv::free_port().unwrap());
    let gone = kubeconfig(dir.path(), &dead, "anyone");

    let err = fail(
        command(&["--source=shop/orders"])
            .arg("--kubeconfig")
            .arg(&gone)
            .output()
            .unwrap(),
    );
    assert!(
        err.contains(&format!("cannot reach the API server at {dead}"))
            && err.contains("pass --archive s3://BUCKET/PREFIX"),
        "{err}"
    );

    let mut args = at(archive);
    args.extend([
        "--source=shop/orders".into(),
        "--state=failed".into(),
        "-o".into(),
        "ndjson".into(),
    ]);
    let output = command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .arg("--kubeconfig")
        .arg(&gone)
        .output()
        .unwrap();
    let stdout = succeed(output);
    let records: Vec<TaskRecord> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        names(&records),
        expected(archive, |r| {
            r.finished >= ago(archive, 24)
                && r.source == "shop/orders"
                && r.state == TaskState::Failed
        })
    );
}

/// Runs `command` with its stderr on a new pseudo-terminal; returns what
/// it printed on stdout and what the terminal showed.
fn on_a_terminal(mut command: Command) -> (Output, String) {
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two new descriptors, owned below.
    let result = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(result, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and nothing else owns them.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    // Only the child holds the terminal now: reading ends when it exits.
    drop(command);
    let reader = std::thread::spawn(move || {
        let mut screen = Vec::new();
        let mut master = std::fs::File::from(master);
        let mut buffer = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            screen.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&screen).into_owned()
    });
    let output = child.wait_with_output().unwrap();
    (output, reader.join().unwrap())
}

#[tokio::test]
async fn a_progress_bar_shows_on_a_terminal_only() {
    let archive = shared().await;
    let mut args = at(archive);
    args.extend(["--since=40h".into(), "--count".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (output, screen) = on_a_terminal(command(&args));
    assert_eq!(succeed(output), format!("{}\n", archive.records.len()));
    assert!(screen.contains("reading the archive ["), "{screen:?}");
    assert!(
        screen.contains(" matches") && screen.contains(" objects, "),
        "{screen:?}"
    );
    assert!(
        screen.ends_with("\r\x1b[2K"),
        "the bar is erased: {screen:?}"
    );

    // Piped: nothing but the result.
    let output = sluice(&args);
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    assert_eq!(succeed(output), format!("{}\n", archive.records.len()));
}

#[test]
fn as_a_kubectl_plugin_the_help_says_kubectl_sluice_history() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("kubectl-sluice");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sluice"), &plugin).unwrap();
    let output = Command::new(&plugin)
        .args(["history", "--help"])
        .output()
        .unwrap();
    let help = succeed(output);
    assert!(
        help.contains("Usage: kubectl sluice history [OPTIONS]"),
        "{help}"
    );
    assert!(
        help.contains("kubectl sluice history --collection orders --state failed"),
        "{help}"
    );
}

#[tokio::test]
async fn a_state_filter_fetches_only_that_states_frames_of_large_objects() {
    let archive = generate(&[("acme", "orders", "shop", "orders")], 1).await;
    let client = minio().client().await;
    let source = SourceId {
        account: "acme".into(),
        collection: "orders".into(),
        namespace: "shop".into(),
        name: "orders".into(),
    };
    let template = archive.records[0].clone();
    // All in the hour before this one (27 minutes of it), so that they make
    // one large object whatever the time of day.
    let hour = sluice_core::archive::hour_of(archive.t0) - SignedDuration::from_hours(1);
    let records: Vec<TaskRecord> = (0..4000u64)
        .rev()
        .map(|i| {
            let mut record = template.clone();
            record.id = TaskId {
                epoch: 5,
                seq: 4000 - i,
            };
            record.finished = hour + SignedDuration::from_millis((4000 - i as i64) * 400);
            record.state = if i % 9 == 0 {
                TaskState::Failed
            } else {
                TaskState::Succeeded
            };
            record.error = (i % 9 == 0).then(|| format!("failure {i}"));
            let noise = |salt: u64| (i ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            record.objects[0].key = format!("in/{:016x}{:016x}.ndjson", noise(1), noise(2));
            record.objects[0].etag = format!("\"{:016x}{:016x}\"", noise(3), noise(4));
            record
        })
        .collect();
    write(&client, &archive.bucket, &source, &records, 500).await;
    let sizes: Vec<i64> = client
        .list_objects_v2()
        .bucket(&archive.bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.size())
        .collect();
    assert!(
        sizes.iter().any(|size| *size > 64 << 10),
        "objects larger than the first bytes read: {sizes:?}"
    );
    for state in [TaskState::Failed, TaskState::Succeeded] {
        let printed = query(
            &archive,
            &["--since=2h", &format!("--state={}", state.as_str())],
        );
        let wanted = records
            .iter()
            .chain(&archive.records)
            .filter(|r| r.state == state);
        let (mut printed, mut wanted) = (names(&printed), names(wanted));
        printed.sort();
        wanted.sort();
        let missing: Vec<_> = wanted.iter().filter(|n| !printed.contains(n)).collect();
        let extra: Vec<_> = printed.iter().filter(|n| !wanted.contains(n)).collect();
        assert!(
            printed == wanted,
            "{state:?}: {} printed, {} wanted; missing {missing:?}, extra {extra:?}",
            printed.len(),
            wanted.len()
        );
    }
}

/// Runs `sql` (its last statement) in DuckDB with httpfs against MinIO; the
/// rows.
fn duckdb(sql: &str) -> Vec<Value> {
    minio()
        .duckdb_query(sql)
        .unwrap_or_else(|err| panic!("{err}"))
}

/// The archive is the portable format the docs promise: the pure-Java zstd
/// that Trino and Athena read with (aircompressor) reads every object, and
/// DuckDB over S3 reads the partitions, both giving exactly the records
/// `sluice history` gives; and the DuckDB query in docs/archive.md, run as
/// written, finds what the same `sluice history` query finds.
#[tokio::test]
async fn aircompressor_and_duckdb_read_the_same_records_as_history() {
    let archive = shared().await;
    let history = query(archive, &["--since=3d"]);
    assert_eq!(history.len(), archive.records.len());

    // Every object, downloaded, through aircompressor.
    let client = minio().client().await;
    let objects = client
        .list_objects_v2()
        .bucket(&archive.bucket)
        .prefix(format!("{PREFIX}/tasks/"))
        .send()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (i, object) in objects.contents().iter().enumerate() {
        let key = object.key().unwrap();
        assert!(
            key.contains("/source=shop%2F") || key.contains("/source=lab%2F"),
            "{key}"
        );
        let body = sluice_testenv::s3::object(&client, &archive.bucket, key)
            .await
            .unwrap();
        let path = dir.path().join(format!("{i}.ndjson.zst"));
        std::fs::write(&path, body).unwrap();
        files.push(path);
    }
    let java = succeed(
        Command::new("java")
            .arg("-cp")
            .arg(sluice_testenv::tools::binary("aircompressor.jar").unwrap())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/readers/ReadArchive.java"))
            .args(&files)
            .output()
            .unwrap(),
    );
    let mut from_java: Vec<TaskRecord> = java
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let mut from_history = history.clone();
    for records in [&mut from_java, &mut from_history] {
        records.sort_by(|a, b| (&a.source, a.id).cmp(&(&b.source, b.id)));
    }
    assert!(
        from_java == from_history,
        "aircompressor read other records"
    );

    // DuckDB over S3, the partitions' columns included.
    let url = format!("s3://{}/{PREFIX}", archive.bucket);
    let rows = duckdb(&format!(
        "SELECT id, account, collection, source, state, worker, records, error \
         FROM read_json('{url}/tasks/**/*.ndjson.zst', hive_partitioning = true)"
    ));
    let as_row = |r: &TaskRecord| {
        json!({
            "id": r.id.to_string(), "account": r.account, "collection": r.collection,
            "source": r.source, "state": r.state.as_str(), "worker": r.worker,
            "records": r.records, "error": r.error,
        })
    };
    let key = |row: &Value| (row["source"].to_string(), row["id"].to_string());
    let mut from_duckdb = rows;
    let mut wanted: Vec<Value> = history.iter().map(as_row).collect();
    from_duckdb.sort_by_key(key);
    wanted.sort_by_key(key);
    assert!(from_duckdb == wanted, "DuckDB read other records");

    // The docs' query, its last statement as written but for the bucket.
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/archive.md"))
            .unwrap();
    let snippet = docs
        .split("**DuckDB**")
        .nth(1)
        .and_then(|rest| rest.split("```sql\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("docs/archive.md has a DuckDB query");
    let select = snippet
        .rsplit(';')
        .find(|statement| statement.contains("SELECT"))
        .unwrap()
        .replace("s3://BUCKET/PREFIX", &url);
    let yesterday = Timestamp::now() - SignedDuration::from_hours(24);
    let since = yesterday.strftime("%Y-%m-%d").to_string();
    let failed = query(
        archive,
        &[
            "--source=shop/orders",
            "--state=failed",
            &format!("--since={since}"),
        ],
    );
    assert!(!failed.is_empty());
    let mut documented: Vec<String> = duckdb(&select)
        .iter()
        .map(|row| {
            format!(
                "{}:{}",
                row["source"].as_str().unwrap(),
                row["id"].as_str().unwrap()
            )
        })
        .collect();
    let mut wanted = names(&failed);
    documented.sort();
    wanted.sort();
    assert_eq!(documented, wanted, "{select}");
}
