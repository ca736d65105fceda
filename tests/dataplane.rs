//! The data plane against a real MinIO: a coordinator and workers as local
//! processes, started as the operator's Deployments start them.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use sluice::worker::decode::Lines;
use sluice::worker::output::{self, PART_SIZE, UploadError};
use sluice_core::api::{
    self, HeartbeatResponse, LeaseResponse, Summary, TaskDetail, TaskList, TaskState,
};
use sluice_testenv::MotoEnv;
use support::dataplane::{Ingest, Part, TOKEN, wait_until_done};
use support::eventually;
use support::silence::Silence;

const SHORT: Duration = Duration::from_secs(2);
/// How long a coordinator may take to say or do what a test waits for.
const SETTLE: Duration = Duration::from_secs(60);
const DONE: Duration = Duration::from_secs(120);

/// Object `index` holding `records` records with ids `o{index}-r{n}`, in
/// one of six encodings (NDJSON, CSV, JSON; plain, gzip, zstd) chosen by
/// the index.
fn object(index: usize, records: usize) -> (String, Vec<u8>) {
    let ids = (0..records).map(|n| format!("o{index}-r{n}"));
    let (extension, text) = match index % 4 {
        0 | 1 => (
            "ndjson",
            ids.map(|id| format!("{{\"id\":\"{id}\",\"amount\":{index}}}\n"))
                .collect::<String>(),
        ),
        2 => (
            "csv",
            std::iter::once("id,amount\n".to_owned())
                .chain(ids.map(|id| format!("{id},{index}\n")))
                .collect(),
        ),
        _ => (
            "json",
            format!(
                "[{}]",
                ids.map(|id| format!("{{\"id\":\"{id}\"}}"))
                    .collect::<Vec<_>>()
                    .join(",\n")
            ),
        ),
    };
    let key = format!("{index:05}.{extension}");
    match index % 3 {
        0 => (key, text.into_bytes()),
        1 => {
            let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gzip.write_all(text.as_bytes()).unwrap();
            (format!("{key}.gz"), gzip.finish().unwrap())
        }
        _ => (
            format!("{key}.zst"),
            zstd::encode_all(text.as_bytes(), 1).unwrap(),
        ),
    }
}

fn expected(objects: std::ops::Range<usize>, records: usize) -> BTreeSet<String> {
    objects
        .flat_map(|index| (0..records).map(move |n| format!("o{index}-r{n}")))
        .collect()
}

/// Asserts that the sink holds exactly `expected`, each once.
async fn assert_exactly_once(ingest: &Ingest, expected: &BTreeSet<String>) {
    let ids = ingest.sink_ids().await;
    let duplicated: Vec<_> = ids.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(duplicated.is_empty(), "duplicated records: {duplicated:?}");
    let found: BTreeSet<String> = ids.into_keys().collect();
    let lost: Vec<_> = expected.difference(&found).take(5).collect();
    assert!(lost.is_empty(), "lost records: {lost:?}");
    let extra: Vec<_> = found.difference(expected).take(5).collect();
    assert!(extra.is_empty(), "unexpected records: {extra:?}");
}

/// Asserts that every task is archived exactly once, and that the
/// succeeded ones cover `objects` objects.
async fn assert_archived_once(ingest: &Ingest, objects: usize) {
    let records = eventually("the archive to hold every task", DONE, || async {
        let records = ingest.archive_records().await;
        let covered: usize = records
            .iter()
            .filter(|(_, r)| r.state == TaskState::Succeeded)
            .map(|(_, r)| r.objects.len())
            .sum();
        (covered >= objects).then_some(records)
    })
    .await;
    let mut ids = BTreeSet::new();
    for (_, record) in &records {
        assert!(ids.insert(record.id), "task {} archived twice", record.id);
    }
    let keys: BTreeSet<_> = records
        .iter()
        .filter(|(_, r)| r.state == TaskState::Succeeded)
        .flat_map(|(_, r)| r.objects.iter().map(|o| o.key.clone()))
        .collect();
    assert_eq!(
        keys.len(),
        objects,
        "every object is in exactly one succeeded task"
    );
}

#[tokio::test]
async fn three_workers_ingest_every_record_exactly_once_and_archive_every_task() {
    let ingest = Ingest::new("mixed", 25, Duration::from_secs(30), 3).await;
    let objects = 2000;
    ingest
        .put((0..objects).map(|i| object(i, 3)).collect())
        .await;
    let coordinator = ingest.coordinator(None, &[]);
    let _workers: Vec<_> = ["w1", "w2", "w3"]
        .iter()
        .map(|name| ingest.worker(coordinator.port, name))
        .collect();

    let summary = wait_until_done(&coordinator, objects as u64, DONE).await;
    assert_eq!(summary.objects.discovered, objects as u64);
    assert_eq!(summary.objects.ingested, objects as u64);
    assert_eq!(summary.records_ingested, 3 * objects as u64);
    assert_eq!(summary.tasks.failed, 0);
    assert_exactly_once(&ingest, &expected(0..objects, 3)).await;
    assert_archived_once(&ingest, objects).await;

    // Records carry where they came from, and land in the collection's
    // partition.
    let (output, record) = ingest.sink_records().await.swap_remove(0);
    assert!(
        output.starts_with("collections/orders/dt=") && output.ends_with(".ndjson.zst"),
        "{output}"
    );
    let meta = &record["_sluice"];
    assert!(meta["key"].as_str().unwrap().starts_with("in/"), "{record}");
    assert!(meta["etag"].is_string() && meta["task"].is_string() && meta["ingested"].is_string());

    // The archive records say who did what.
    let (key, task) = ingest.archive_records().await.swap_remove(0);
    assert!(key.starts_with("sluice/tasks/dt="), "{key}");
    assert!(
        key.contains("/hour=") && key.contains("/source=shop%2Fmixed/"),
        "{key}"
    );
    assert_eq!(
        (task.account.as_str(), task.source.as_str()),
        ("acme", "shop/mixed")
    );
    assert!(["w1", "w2", "w3"].contains(&task.worker.as_deref().unwrap()));
    assert_eq!(task.outputs.len(), 1);

    // The live API: filters, pages, one task.
    let page: TaskList = coordinator.get("/v1/tasks?state=succeeded&limit=7");
    assert_eq!(page.items.len(), 7);
    assert!(page.items.iter().all(|t| t.state == TaskState::Succeeded));
    let next: TaskList = coordinator.get(&format!(
        "/v1/tasks?state=succeeded&limit=7&cursor={}",
        page.next.unwrap()
    ));
    assert!(next.items[0].id > page.items[6].id);
    let by_worker: TaskList = coordinator.get("/v1/tasks?worker=w2&limit=1000");
    assert!(
        by_worker
            .items
            .iter()
            .all(|t| t.worker.as_deref() == Some("w2"))
    );
    let none: TaskList = coordinator.get("/v1/tasks?account=someone-else");
    assert!(none.items.is_empty());
    let mine: TaskList =
        coordinator.get("/v1/tasks?account=acme&collection=orders&source=shop/mixed");
    assert!(!mine.items.is_empty());
    let detail: TaskDetail = coordinator.get(&format!("/v1/tasks/{}", page.items[0].id));
    assert_eq!(detail.keys.len() as u32, detail.task.objects);
}

#[tokio::test]
async fn a_coordinator_killed_again_and_again_resumes_without_loss_or_duplicates() {
    let ingest = Ingest::new("crashy", 5, Duration::from_secs(3), 5).await;
    let objects = 600;
    ingest
        .put((0..objects).map(|i| object(i, 2)).collect())
        .await;
    let mut coordinator = ingest.coordinator(None, &[]);
    let port = coordinator.port;
    let _workers: Vec<_> = ["w1", "w2"]
        .iter()
        .map(|name| ingest.worker(port, name))
        .collect();
    let mut epochs = vec![coordinator.summary().epoch];
    for round in 1..=3u64 {
        eventually("progress before the next crash", DONE, || async {
            (coordinator.summary().objects.ingested >= round * 100).then_some(())
        })
        .await;
        coordinator.kill();
        coordinator = ingest.coordinator(Some(port), &[]);
        epochs.push(coordinator.summary().epoch);
    }
    assert!(epochs.windows(2).all(|w| w[1] > w[0]), "epochs {epochs:?}");
    wait_until_done(&coordinator, 0, DONE).await;
    eventually("every object ingested", DONE, || async {
        let ids = ingest.sink_ids().await;
        (ids.len() == 2 * objects).then_some(())
    })
    .await;
    assert_exactly_once(&ingest, &expected(0..objects, 2)).await;
    assert_archived_once(&ingest, objects).await;
}

#[tokio::test]
async fn tasks_of_killed_workers_are_redone_elsewhere_exactly_once() {
    let ingest = Ingest::new("workers", 2, Duration::from_secs(2), 5).await;
    let objects = 300;
    ingest
        .put((0..objects).map(|i| object(i, 200)).collect())
        .await;
    let coordinator = ingest.coordinator(None, &[]);
    let mut doomed: Vec<_> = ["d1", "d2"]
        .iter()
        .map(|name| ingest.worker(coordinator.port, name))
        .collect();
    for worker in &mut doomed {
        eventually("the worker to run a task", DONE, || async {
            let running: TaskList = coordinator.get("/v1/tasks?state=running&worker=d1");
            let running2: TaskList = coordinator.get("/v1/tasks?state=running&worker=d2");
            (!running.items.is_empty() || !running2.items.is_empty()).then_some(())
        })
        .await;
        worker.kill();
    }
    let _survivor = ingest.worker(coordinator.port, "survivor");
    let summary = wait_until_done(&coordinator, objects as u64, DONE).await;
    assert_eq!(summary.tasks.failed, 0);
    assert_exactly_once(&ingest, &expected(0..objects, 200)).await;
    assert_archived_once(&ingest, objects).await;
}

#[tokio::test]
async fn a_second_coordinator_fences_out_the_first() {
    let ingest = Ingest::new("split-brain", 5, Duration::from_secs(30), 3).await;
    ingest.put((0..20).map(|i| object(i, 1)).collect()).await;
    let mut first = ingest.coordinator(None, &[]);
    let first_epoch = first.summary().epoch;
    let second = ingest.coordinator(None, &[]);
    assert_eq!(second.summary().epoch, first_epoch + 1);
    let status = first
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the fenced coordinator kept running:\n{}", first.log()));
    assert!(!status.success());
    let log = first.log();
    assert!(
        log.contains("was taken over by another coordinator of this source"),
        "{log}"
    );
    // The winner goes on and finishes the work.
    let _worker = ingest.worker(second.port, "w1");
    wait_until_done(&second, 20, DONE).await;
    assert_exactly_once(&ingest, &expected(0..20, 1)).await;
}

/// The fence is only as good as the store's conditional PUTs: on a real
/// store that ignores them (moto 4.2.14), a coordinator refuses to start,
/// naming the endpoint and why, and claims no checkpoint.
#[tokio::test]
async fn a_store_that_ignores_conditional_writes_is_refused() {
    let moto = MotoEnv::start().unwrap();
    moto.bucket("archive").await.unwrap();
    let mut ingest = Ingest::new("unfenced", 5, Duration::from_secs(30), 3).await;
    ingest.put((0..3).map(|i| object(i, 1)).collect()).await;
    ingest.config.archive = moto.location("archive");
    ingest.write_config();
    let mut coordinator = ingest.coordinator_unchecked();
    let why = format!(
        "the S3 store at {} accepted a PUT of s3://archive/checkpoints/shop.unfenced/probes/",
        moto.endpoint()
    );
    let log = waiting_unready(&mut coordinator, &[&why, "If-None-Match: *"]).await;
    assert!(log.contains("This coordinator refuses to start"), "{log}");
    assert!(!log.contains("claimed the checkpoint"), "{log}");
}

/// Waits until the log of a coordinator that cannot use its checkpoint
/// holds each of `words`, and checks that it stays up meanwhile (no crash
/// loop), alive but not ready, its task API saying it has not started.
/// Returns the log.
async fn waiting_unready(coordinator: &mut Part, words: &[&str]) -> String {
    let log = eventually("the coordinator to say why it waits", SETTLE, || async {
        let log = coordinator.log();
        words.iter().all(|word| log.contains(word)).then_some(log)
    })
    .await;
    assert!(coordinator.running(), "it exited:\n{log}");
    assert_eq!(coordinator.request("GET", "/healthz", None, "").0, 200);
    assert_eq!(coordinator.request("GET", "/readyz", None, "").0, 503);
    let (status, body) = coordinator.read("/v1/summary", Some(&api::read_token(TOKEN)));
    assert!(
        status == 503 && body.contains("not claimed yet"),
        "{status} {body}"
    );
    log
}

/// A start that finds no checkpoint (deleted by hand, or by a bucket
/// lifecycle rule) begins a new lineage: the same task ids again, but
/// outputs of other names, so the earlier outputs stay as they were.
#[tokio::test]
async fn a_restart_from_zero_writes_beside_the_earlier_output() {
    let ingest = Ingest::new("lineage", 5, Duration::from_secs(30), 3).await;
    ingest.put((0..5).map(|i| object(i, 2)).collect()).await;
    let sink = ingest.config.sink.bucket.clone();
    let mut first = ingest.coordinator(None, &[]);
    let mut worker = ingest.worker(first.port, "w1");
    wait_until_done(&first, 5, DONE).await;
    worker.kill();
    first.terminate(SHORT);
    let before = ingest.objects(&sink, "").await;
    assert!(!before.is_empty());
    ingest
        .client
        .delete_object()
        .bucket(&ingest.config.archive.bucket)
        .key(ingest.manifest_key())
        .send()
        .await
        .unwrap();

    let second = ingest.coordinator(None, &[]);
    assert_eq!(second.summary().epoch, 1);
    let _worker = ingest.worker(second.port, "w2");
    wait_until_done(&second, 5, DONE).await;
    let after: BTreeMap<String, Vec<u8>> = ingest.objects(&sink, "").await.into_iter().collect();
    for (key, bytes) in &before {
        assert!(after.get(key) == Some(bytes), "{key} was overwritten");
    }
    assert_eq!(after.len(), 2 * before.len(), "{:?}", after.keys());
}

/// A checkpoint write that landed but whose answer was lost (S3 restarted
/// in between) leaves a manifest of the coordinator's own epoch that it
/// does not know: that is not another coordinator, and it goes on.
#[tokio::test]
async fn a_checkpoint_write_whose_answer_was_lost_does_not_stop_the_coordinator() {
    let ingest = Ingest::new("lost-answer", 2, Duration::from_secs(30), 3).await;
    ingest.put((0..10).map(|i| object(i, 2)).collect()).await;
    let mut coordinator = ingest.coordinator(None, &[]);
    let epoch = coordinator.summary().epoch;
    eventually("the planned tasks in a checkpoint", DONE, || async {
        coordinator.summary().last_checkpoint.map(|_| ())
    })
    .await;
    // The same manifest, other bytes: a new ETag, as after a write whose
    // answer never came.
    let (bucket, key) = (&ingest.config.archive.bucket, ingest.manifest_key());
    let manifest = sluice_testenv::s3::object(&ingest.client, bucket, &key)
        .await
        .unwrap();
    let mut json = zstd::decode_all(&manifest[..]).unwrap();
    json.push(b'\n');
    ingest
        .client
        .put_object()
        .bucket(bucket)
        .key(&key)
        .body(zstd::encode_all(&json[..], 3).unwrap().into())
        .send()
        .await
        .unwrap();

    let _worker = ingest.worker(coordinator.port, "w1");
    let summary = wait_until_done(&coordinator, 10, DONE).await;
    assert!(coordinator.running(), "{}", coordinator.log());
    assert_eq!(summary.epoch, epoch);
    assert_exactly_once(&ingest, &expected(0..10, 2)).await;
}

/// A store that stops answering (its connections stay open, nothing comes
/// back) holds no request forever: the coordinator's checkpoint write times
/// out and is tried again, and once the store answers on new connections,
/// new objects are planned, leased and ingested. Without timeouts the
/// checkpoint write that went unanswered never returned, and nothing new
/// was ever leased.
// The proxy runs on the runtime while the test blocks on starting processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_holds_up_nothing_for_good() {
    let mut ingest = Ingest::new("silent", 5, Duration::from_secs(30), 3).await;
    let minio_address = support::minio()
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let silence = Silence::start(minio_address).await;
    ingest.config.archive.endpoint = Some(format!("http://{}", silence.address));
    ingest.config.source.poll_interval = Some(sluice_core::duration::Duration(SHORT / 2));
    ingest.write_config();
    ingest.put((0..5).map(|i| object(i, 2)).collect()).await;
    let coordinator = ingest.coordinator(None, &["--s3-timeout=2s"]);
    let _worker = ingest.worker(coordinator.port, "w1");
    wait_until_done(&coordinator, 5, DONE).await;

    silence.go_silent();
    ingest.put((5..10).map(|i| object(i, 2)).collect()).await;
    eventually("a checkpoint write to time out", DONE, || async {
        let log = coordinator.log();
        (log.contains("cannot write the checkpoint; retrying") && log.contains("timeout"))
            .then_some(())
    })
    .await;
    silence.speak();
    wait_until_done(&coordinator, 10, DONE).await;
    assert_exactly_once(&ingest, &expected(0..10, 2)).await;
}

/// An output becomes visible only if the worker still holds its task right
/// before: told it does not, a worker writes neither a one-PUT output nor
/// a multipart one, and leaves no multipart upload behind.
#[tokio::test]
async fn an_output_is_not_written_once_the_task_is_lost() {
    let ingest = Ingest::new("lost-output", 1, SHORT, 1).await;
    let bucket = ingest.config.sink.bucket.clone();
    for (size, holds) in [
        (1000, false),
        (1000, true),
        (3 * PART_SIZE, false),
        (3 * PART_SIZE, true),
    ] {
        let key = format!("out-{size}-{holds}");
        let (mut encoder, parts) = output::encoder(std::sync::Arc::default());
        let upload = {
            let (client, bucket, key) = (ingest.client.clone(), bucket.clone(), key.clone());
            tokio::spawn(async move {
                output::upload(&client, &bucket, &key, parts, async move { holds }).await
            })
        };
        tokio::task::spawn_blocking(move || {
            let mut data = vec![0u8; size];
            rand::rngs::SmallRng::seed_from_u64(size as u64).fill_bytes(&mut data);
            encoder.line(&[&data]).unwrap();
            encoder.finish()
        })
        .await
        .unwrap()
        .unwrap();
        let written = upload.await.unwrap();
        let exists = ingest
            .client
            .head_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .is_ok();
        if holds {
            assert!(matches!(written, Ok(true)) && exists, "{key}: {written:?}");
        } else {
            assert!(
                matches!(written, Err(UploadError::Lost)) && !exists,
                "{key}: {written:?}"
            );
        }
    }
    let uploads = ingest
        .client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert!(uploads.uploads().is_empty(), "{:?}", uploads.uploads());
}

/// A zombie: a worker that leased a task, stalled past its lease and
/// reports much later. Once another worker's attempt split the task (one
/// object at fault) and the others are leased again, the zombie's reports
/// of the whole task are refused with 409 and a JSON error and change
/// nothing, and every good record is in the sink once.
#[tokio::test]
async fn a_zombie_attempt_of_a_split_task_is_refused() {
    let ingest = Ingest::new("zombie", 3, Duration::from_secs(2), 3).await;
    let mut objects = vec![object(0, 2), object(4, 2)];
    objects.push((
        "00001-bad.ndjson".into(),
        b"{\"id\":\"bad-1\"}\n{\"id\": oops}\n".to_vec(),
    ));
    ingest.put(objects).await;
    let coordinator = ingest.coordinator(None, &[]);
    // Workers driven by hand through the task API.
    let lease = |worker: &'static str| {
        let coordinator = &coordinator;
        move || async move {
            let request = format!(r#"{{"worker":"{worker}","max":1}}"#);
            let (status, body) = coordinator.request("POST", "/v1/lease", Some(TOKEN), &request);
            assert_eq!(status, 200, "{body}");
            serde_json::from_str::<LeaseResponse>(&body)
                .unwrap()
                .tasks
                .pop()
        }
    };
    let post = |path: String, body: String| coordinator.request("POST", &path, Some(TOKEN), &body);

    // The zombie leases the whole task and goes silent; its lease expires,
    // and w2's attempt fails on the bad object, which splits the task.
    let zombie = eventually("the zombie to lease", DONE, lease("zombie")).await;
    assert_eq!(zombie.objects.len(), 3);
    let id = zombie.id;
    let second = eventually("w2 to lease the task again", DONE, lease("w2")).await;
    assert_eq!((second.id, second.attempt), (id, 2));
    let failure =
        r#"{"worker":"w2","attempt":2,"error":"line 2: bad","key":"in/00001-bad.ndjson"}"#;
    let (status, body) = post(format!("/v1/tasks/{id}/fail"), failure.into());
    assert_eq!(status, 204, "{body}");
    let rest = eventually("w2 to lease the good objects", DONE, lease("w2")).await;
    assert_eq!(rest.objects.len(), 2);
    assert_ne!(rest.output, zombie.output);

    // Now the zombie reports.
    let complete = format!(
        r#"{{"worker":"zombie","attempt":1,"records":5,"bytesRead":1,"bytesWritten":1,"outputs":["{}"]}}"#,
        zombie.output
    );
    let (status, body) = post(format!("/v1/tasks/{id}/complete"), complete);
    assert_eq!(status, 409, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    let said = error["error"].as_str().unwrap();
    assert!(said.starts_with(&format!("task {id} was split")), "{body}");
    let fail = r#"{"worker":"zombie","attempt":1,"error":"late"}"#;
    let (status, body) = post(format!("/v1/tasks/{id}/fail"), fail.into());
    assert_eq!(status, 409, "{body}");
    let heartbeat = format!(
        r#"{{"worker":"zombie","tasks":[{{"id":"{id}","attempt":1,"records":0,"bytes":0}}]}}"#
    );
    let (_, body) = post("/v1/heartbeat".into(), heartbeat);
    let lost: HeartbeatResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(lost.lost, [id]);
    assert_eq!(coordinator.summary().tasks.succeeded, 0);

    // w2 goes silent too; a real worker does the rest.
    let _worker = ingest.worker(coordinator.port, "w1");
    let summary = wait_until_done(&coordinator, 3, DONE).await;
    assert_eq!((summary.tasks.succeeded, summary.tasks.failed), (1, 1));
    let good: BTreeSet<String> = expected(0..1, 2)
        .union(&expected(4..5, 2))
        .cloned()
        .collect();
    assert_exactly_once(&ingest, &good).await;
    let outputs: BTreeSet<String> = ingest
        .sink_records()
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(outputs, BTreeSet::from([rest.output]));
}

#[tokio::test]
async fn a_poison_object_fails_alone_after_its_attempts_and_the_rest_go_on() {
    let ingest = Ingest::new("poison", 4, Duration::from_secs(30), 2).await;
    let mut objects: Vec<_> = (0..10).map(|i| object(i * 4, 2)).collect();
    objects.push((
        "00001-bad.ndjson".into(),
        b"{\"id\":\"bad-1\"}\n{\"id\":\"bad-2\"}\n{\"id\": oops}\n".to_vec(),
    ));
    ingest.put(objects).await;
    let coordinator = ingest.coordinator(None, &[]);
    let _worker = ingest.worker(coordinator.port, "w1");
    let summary = wait_until_done(&coordinator, 11, DONE).await;
    assert_eq!((summary.objects.ingested, summary.objects.failed), (10, 1));
    assert_eq!(summary.tasks.failed, 1);
    let failed: TaskList = coordinator.get("/v1/tasks?state=failed");
    assert_eq!(failed.items.len(), 1);
    let task = &failed.items[0];
    assert_eq!(
        (task.first_key.as_str(), task.attempt),
        ("in/00001-bad.ndjson", 2)
    );
    let error = task.error.as_deref().unwrap();
    assert!(
        error.contains("in/00001-bad.ndjson") && error.contains("line 3"),
        "{error}"
    );
    assert_exactly_once(
        &ingest,
        &(0..10)
            .flat_map(|i| expected(i * 4..i * 4 + 1, 2))
            .collect(),
    )
    .await;
    let archived = eventually("the failure in the archive", DONE, || async {
        ingest
            .archive_records()
            .await
            .into_iter()
            .find(|(_, r)| r.state == TaskState::Failed)
    })
    .await;
    assert!(archived.1.error.unwrap().contains("line 3"));
}

/// A worker that cannot reach S3 (as while MinIO restarts) gives its tasks
/// back without using their attempts: none ends failed for good, and a
/// worker that reaches S3 ingests them all later, exactly once.
#[tokio::test]
async fn tasks_are_given_back_without_using_attempts_while_s3_is_unreachable() {
    let ingest = Ingest::new("outage", 2, Duration::from_secs(5), 1).await;
    ingest.put((0..10).map(|i| object(i, 3)).collect()).await;
    let coordinator = ingest.coordinator(None, &[]);
    let mut cut_off = ingest.config.clone();
    let nothing_listens = sluice_testenv::free_port().unwrap();
    cut_off.source.s3.endpoint = Some(format!("http://127.0.0.1:{nothing_listens}"));
    let mut stranded = ingest.worker_configured(coordinator.port, "stranded", &cut_off);
    eventually("the stranded worker to give up on tasks", DONE, || async {
        let log = stranded.log();
        let tries =
            log.matches("giving the task back").count() + log.matches("task failed").count();
        (tries >= 2).then_some(())
    })
    .await;
    stranded.terminate(DONE);
    assert_eq!(
        coordinator.summary().tasks.failed,
        0,
        "an unreachable S3 failed tasks for good:\n{}",
        stranded.log()
    );

    let _worker = ingest.worker(coordinator.port, "w1");
    let summary = wait_until_done(&coordinator, 10, DONE).await;
    assert_eq!((summary.objects.ingested, summary.tasks.failed), (10, 0));
    assert_exactly_once(&ingest, &expected(0..10, 3)).await;
}

#[tokio::test]
async fn polling_picks_up_new_and_changed_objects() {
    let mut ingest = Ingest::new("polling", 10, Duration::from_secs(30), 3).await;
    ingest.config.source.poll_interval =
        Some(sluice_core::duration::Duration(Duration::from_millis(300)));
    ingest.write_config();
    ingest.put((0..5).map(|i| object(i, 2)).collect()).await;
    let coordinator = ingest.coordinator(None, &[]);
    let _worker = ingest.worker(coordinator.port, "w1");
    wait_until_done(&coordinator, 5, DONE).await;
    // Two new objects, and object 0 rewritten with other records.
    let mut more: Vec<_> = (5..7).map(|i| object(i, 2)).collect();
    more.push((object(0, 2).0, b"{\"id\":\"o0-v2\"}\n".to_vec()));
    ingest.put(more).await;
    let summary = wait_until_done(&coordinator, 8, DONE).await;
    assert_eq!(summary.objects.discovered, 8);
    let mut wanted = expected(0..7, 2);
    wanted.insert("o0-v2".into());
    assert_exactly_once(&ingest, &wanted).await;
}

/// A completion may lease the task that takes its slot, as workers' do (one
/// request per task, not two): the answer is that task with the lease's
/// duration; a completion that asks for none is answered 204 No Content,
/// and one that is refused leases nothing.
#[tokio::test]
async fn a_completion_leases_the_next_task() {
    let ingest = Ingest::new("eager", 1, Duration::from_secs(30), 3).await;
    ingest.put((0..3).map(|i| object(i * 4, 1)).collect()).await;
    let coordinator = ingest.coordinator(None, &[]);
    let post = |path: String, body: String| coordinator.request("POST", &path, Some(TOKEN), &body);
    let first = eventually("a task to lease", DONE, || async {
        let (status, body) = post("/v1/lease".into(), r#"{"worker":"w1","max":1}"#.into());
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<LeaseResponse>(&body)
            .unwrap()
            .tasks
            .pop()
    })
    .await;
    let completion = |task: &api::LeasedTask, lease: &str| {
        format!(
            r#"{{"worker":"w1","attempt":{},"records":1,"bytesRead":1,"bytesWritten":1,"outputs":["{}"]{lease}}}"#,
            task.attempt, task.output
        )
    };
    let complete = |task: &api::LeasedTask, lease: &str| {
        post(
            format!("/v1/tasks/{}/complete", task.id),
            completion(task, lease),
        )
    };

    let (status, body) = complete(&first, r#","lease":1"#);
    assert_eq!(status, 200, "{body}");
    let next: LeaseResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(next.lease_duration_ms, 30_000, "{body}");
    let [second] = &next.tasks[..] else {
        panic!("one task leased with the completion: {body}");
    };
    assert_ne!(second.id, first.id);
    let (status, body) = complete(&first, r#","lease":1"#);
    assert_eq!(status, 409, "{body}");
    let (status, body) = complete(second, "");
    assert_eq!((status, body.as_str()), (204, ""));
    let summary = coordinator.summary();
    assert_eq!(
        (
            summary.tasks.succeeded,
            summary.tasks.running,
            summary.tasks.pending
        ),
        (2, 0, 1),
        "the refused completion leased nothing"
    );
}

#[tokio::test]
async fn the_task_api_refuses_bad_requests_with_json_errors() {
    let ingest = Ingest::new("api", 5, Duration::from_secs(30), 3).await;
    let mut coordinator = ingest.coordinator(None, &[]);
    let lease = r#"{"worker":"w1","max":1}"#;
    let refused = |status: u16, (got, body): (u16, String)| {
        assert_eq!(got, status, "{body}");
        let error: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|err| panic!("not a JSON error ({err}): {body}"));
        error["error"].as_str().unwrap().to_owned()
    };
    let message = refused(401, coordinator.request("POST", "/v1/lease", None, lease));
    assert!(message.contains("missing token"), "{message}");
    let message = refused(
        401,
        coordinator.request("POST", "/v1/lease", Some("guess"), lease),
    );
    assert!(message.contains("wrong token"), "{message}");
    assert_eq!(
        coordinator
            .request("POST", "/v1/lease", Some(TOKEN), lease)
            .0,
        200
    );
    refused(
        400,
        coordinator.request("POST", "/v1/lease", Some(TOKEN), "{\"worker\":"),
    );
    refused(
        422,
        coordinator.request("POST", "/v1/lease", Some(TOKEN), "{\"max\":1}"),
    );
    refused(
        400,
        coordinator.request(
            "POST",
            "/v1/lease",
            Some(TOKEN),
            r#"{"worker":"w","max":0}"#,
        ),
    );
    let huge = format!("{{\"worker\":\"{}\",\"max\":1}}", "x".repeat(2 << 20));
    refused(
        413,
        coordinator.request("POST", "/v1/lease", Some(TOKEN), &huge),
    );
    let complete =
        r#"{"worker":"w1","attempt":1,"records":0,"bytesRead":0,"bytesWritten":0,"outputs":[]}"#;
    refused(
        404,
        coordinator.request("POST", "/v1/tasks/9-9/complete", Some(TOKEN), complete),
    );
    refused(
        400,
        coordinator.request("POST", "/v1/tasks/garbage/complete", Some(TOKEN), complete),
    );
    let read_token = api::read_token(TOKEN);
    let read = |path: &str| coordinator.read(path, Some(&read_token));
    refused(404, read("/v1/tasks/9-9"));
    refused(400, read("/v1/tasks?state=sleeping"));
    refused(400, read("/v1/tasks?limit=0"));
    refused(404, read("/v2/anything"));

    // A small fuzz: random methods, paths, tokens and bodies.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let paths = [
        "/v1/lease",
        "/v1/heartbeat",
        "/v1/tasks",
        "/v1/tasks/1-1/fail",
        "/v1/summary",
        "/v1/tasks/%ff/complete",
        "/v1/tasks?limit=99999999999",
        "/",
    ];
    for _ in 0..300 {
        let method = ["GET", "POST", "PUT", "DELETE"][rng.random_range(0..4)];
        let path = paths[rng.random_range(0..paths.len())];
        let body: String = match rng.random_range(0..3) {
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random_range(32u8..127) as char)
                .collect(),
            1 => format!(
                "{{\"worker\":\"{}\",\"max\":{},\"tasks\":[{{\"id\":\"{}\"}}]}}",
                rng.random_range(0..3),
                rng.random_range(-2i64..5000),
                rng.random_range(0..9)
            ),
            _ => String::new(),
        };
        let token = [None, Some(TOKEN), Some("nope")][rng.random_range(0..3)];
        let (status, _) = coordinator.request(method, path, token, &body);
        assert!(status < 500, "{method} {path} {body:?} -> {status}");
    }
    assert!(coordinator.running(), "{}", coordinator.log());
    let _ = SHORT;
}

/// A damaged checkpoint (a manifest overwritten, a segment deleted by a
/// bucket lifecycle rule) is named in the log, and the coordinator waits,
/// alive but not ready, instead of crash-looping or starting from zero;
/// once the object is back it resumes by itself, without a restart.
#[tokio::test]
async fn a_damaged_checkpoint_is_named_and_waited_out_without_a_restart() {
    let ingest = Ingest::new("damaged", 5, Duration::from_secs(30), 3).await;
    ingest.put((0..6).map(|i| object(i, 2)).collect()).await;
    let mut first = ingest.coordinator(None, &[]);
    let worker = ingest.worker(first.port, "w1");
    wait_until_done(&first, 6, DONE).await;
    drop(worker);
    first.terminate(SHORT);
    let archive = &ingest.config.archive.bucket;
    let segments = ingest
        .objects(archive, &format!("{}segments/", checkpoint_dir(&ingest)))
        .await;
    let (segment, bytes) = segments
        .first()
        .expect("a segment of finished keys")
        .clone();
    let manifest = ingest.objects(archive, &ingest.manifest_key()).await;

    // A lifecycle rule deletes a segment.
    ingest
        .client
        .delete_object()
        .bucket(archive)
        .key(&segment)
        .send()
        .await
        .unwrap();
    let mut coordinator = ingest.coordinator_unchecked();
    let object = format!("s3://{archive}/{segment}");
    waiting_unready(
        &mut coordinator,
        &[&object, "it does not exist", "Refusing to start from zero"],
    )
    .await;
    // It tries again, and writes nothing to the checkpoint meanwhile.
    eventually("a second try", SETTLE, || async {
        (coordinator.log().matches(&object).count() >= 2).then_some(())
    })
    .await;
    assert_eq!(
        ingest.objects(archive, &ingest.manifest_key()).await,
        manifest
    );

    // The segment is restored: the same process resumes where it was.
    let pid = coordinator.pid();
    ingest
        .client
        .put_object()
        .bucket(archive)
        .key(&segment)
        .body(bytes.into())
        .send()
        .await
        .unwrap();
    let summary = eventually("the coordinator to serve", SETTLE, || async {
        let (status, body) = coordinator.read("/v1/summary", Some(&api::read_token(TOKEN)));
        (status == 200).then(|| serde_json::from_str::<Summary>(&body).unwrap())
    })
    .await;
    assert_eq!(coordinator.pid(), pid);
    assert_eq!(summary.objects.ingested, 6, "{summary:?}");
    assert_eq!(coordinator.request("GET", "/readyz", None, "").0, 200);
    coordinator.terminate(SHORT);

    // An overwritten manifest: named too, never taken for a fresh start.
    ingest
        .client
        .put_object()
        .bucket(archive)
        .key(ingest.manifest_key())
        .body(b"definitely not a checkpoint".to_vec().into())
        .send()
        .await
        .unwrap();
    let mut coordinator = ingest.coordinator_unchecked();
    let manifest = format!("s3://{archive}/{}", ingest.manifest_key());
    waiting_unready(
        &mut coordinator,
        &[&manifest, "Refusing to start from zero"],
    )
    .await;
}

/// The checkpoint directory of `ingest`'s source in its archive bucket.
fn checkpoint_dir(ingest: &Ingest) -> String {
    sluice_core::layout::checkpoint_dir(
        ingest.config.archive.prefix.as_deref(),
        &ingest.config.id.namespace,
        &ingest.config.id.name,
    )
}

/// `records` NDJSON records with ids `big-N` and 64 hardly compressible
/// characters each: about 100 bytes per record.
fn noisy(records: usize) -> Vec<u8> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(11);
    let mut text = String::with_capacity(records * 100);
    for n in 0..records {
        let noise: String = (0..64)
            .map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)]))
            .collect();
        text.push_str(&format!("{{\"id\":\"big-{n}\",\"noise\":\"{noise}\"}}\n"));
    }
    text.into_bytes()
}

#[tokio::test]
async fn a_worker_stopped_mid_task_gives_it_back_without_using_an_attempt() {
    let ingest = Ingest::new("stopping", 10, Duration::from_secs(30), 1).await;
    let records = 300_000;
    ingest
        .put(vec![("big.ndjson".into(), noisy(records))])
        .await;
    let coordinator = ingest.coordinator(None, &[]);
    let mut stopping = ingest.worker_with(coordinator.port, "w1", &["--grace=0s"]);
    eventually("the worker to run the task", DONE, || async {
        let running: TaskList = coordinator.get("/v1/tasks?state=running&worker=w1");
        (!running.items.is_empty()).then_some(())
    })
    .await;
    stopping.terminate(Duration::from_secs(10));
    let status = stopping
        .wait_exit(Duration::ZERO)
        .expect("the worker exits");
    assert!(status.success(), "{}", stopping.log());
    let tasks: TaskList = coordinator.get("/v1/tasks");
    assert_eq!(tasks.items.len(), 1);
    // With maxAttempts 1, a counted attempt would have failed it for good.
    assert_eq!(
        (tasks.items[0].state, tasks.items[0].attempt),
        (TaskState::Pending, 0)
    );
    let _next = ingest.worker(coordinator.port, "w2");
    wait_until_done(&coordinator, 1, DONE).await;
    let wanted: BTreeSet<String> = (0..records).map(|n| format!("big-{n}")).collect();
    assert_exactly_once(&ingest, &wanted).await;
}

#[tokio::test]
async fn a_large_object_streams_through_a_multipart_output() {
    let ingest = Ingest::new("large", 10, Duration::from_secs(30), 3).await;
    // About 40 MB of hardly compressible records: the output takes several
    // upload parts.
    let records = 400_000;
    ingest
        .put(vec![("big.ndjson".into(), noisy(records))])
        .await;
    let coordinator = ingest.coordinator(None, &[]);
    let _worker = ingest.worker(coordinator.port, "w1");
    let summary = wait_until_done(&coordinator, 1, DONE).await;
    assert_eq!(summary.records_ingested, records as u64);
    let wanted: BTreeSet<String> = (0..records).map(|n| format!("big-{n}")).collect();
    assert_exactly_once(&ingest, &wanted).await;
    let outputs = ingest
        .client
        .list_objects_v2()
        .bucket(&ingest.config.sink.bucket)
        .send()
        .await
        .unwrap()
        .contents
        .unwrap_or_default();
    assert_eq!(outputs.len(), 1);
    let etag = outputs[0].e_tag().unwrap();
    assert!(
        etag.contains('-'),
        "a multipart upload's ETag ends in -PARTS: {etag}"
    );
}

/// A task record for the archive writer tests.
fn archived(id: &str) -> sluice_core::archive::TaskRecord {
    let at: jiff::Timestamp = "2026-11-24T13:00:00Z".parse().unwrap();
    sluice_core::archive::TaskRecord {
        id: id.parse().unwrap(),
        account: "acme".into(),
        collection: "orders".into(),
        source: "shop/orders".into(),
        state: TaskState::Succeeded,
        worker: Some("w1".into()),
        attempt: 1,
        objects: Vec::new(),
        records: 1,
        bytes_read: 1,
        bytes_written: 1,
        outputs: Vec::new(),
        created: at,
        started: Some(at),
        finished: at,
        duration_ms: 0,
        error: None,
    }
}

#[tokio::test]
async fn an_archive_object_is_appended_to_without_losing_or_repeating_a_record() {
    use sluice::coordinator::archiver::append;
    use sluice_core::archive::Batch;

    let minio = support::minio();
    let bucket = minio.bucket("archive").await.unwrap();
    let client = minio.client().await;
    let key = "sluice/tasks/dt=2026-11-24/hour=13/account=acme/collection=orders/source=shop%2Forders/0000000001-00000001.ndjson.zst";
    let batch = |ids: &[&str]| Batch {
        key: key.into(),
        records: ids.iter().map(|id| archived(id)).collect(),
    };
    let held = || async {
        let body = client
            .get_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        support::archive_records(&body.body.collect().await.unwrap().into_bytes())
            .into_iter()
            .map(|r| r.id.to_string())
            .collect::<Vec<_>>()
    };

    let first = append(&client, &bucket, &batch(&["1-1", "1-2"]), None)
        .await
        .unwrap_or_else(|u| panic!("{}", u.reason));
    let stale_etag = first.etag.clone();
    let second = append(&client, &bucket, &batch(&["1-3"]), Some(first))
        .await
        .unwrap_or_else(|u| panic!("{}", u.reason));
    assert_eq!(held().await, ["1-1", "1-2", "1-3"]);

    // A coordinator restarted from a checkpoint whose batch was written
    // before the crash: read back, nothing added twice, the rest added.
    append(&client, &bucket, &batch(&["1-2", "1-3", "1-4"]), None)
        .await
        .unwrap_or_else(|u| panic!("{}", u.reason));
    assert_eq!(held().await, ["1-1", "1-2", "1-3", "1-4"]);

    // A writer whose view is out of date (a lost answer, or a coordinator
    // fenced out) cannot overwrite what was added since.
    let outdated = sluice::coordinator::archiver::Written {
        lines: second.lines.clone(),
        etag: stale_etag,
    };
    let refused = append(&client, &bucket, &batch(&["1-5"]), Some(outdated))
        .await
        .err()
        .expect("a write from an outdated view is refused");
    assert!(refused.known.is_none(), "it must read the object again");
    assert_eq!(held().await, ["1-1", "1-2", "1-3", "1-4"]);
    append(&client, &bucket, &batch(&["1-5"]), None)
        .await
        .unwrap_or_else(|u| panic!("{}", u.reason));
    assert_eq!(held().await, ["1-1", "1-2", "1-3", "1-4", "1-5"]);

    // The index of its frames is in its metadata, and fits its bytes.
    let head = client
        .head_object()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    let index: sluice_core::archive::Index =
        head.metadata().unwrap()["sluice-frames"].parse().unwrap();
    let records: u64 = index.frames.iter().map(|frame| frame.records).sum();
    let bytes: u64 = index.frames.iter().map(|frame| frame.bytes).sum();
    assert_eq!(
        (records, bytes),
        (5, head.content_length().unwrap() as u64),
        "{index}"
    );
}

/// Bytes in a GiB, the size of the issue's largest bad and good objects.
const GIB: u64 = 1 << 30;

/// A size from the environment variable `name`, in bytes, else `default`.
fn size_from_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|value| {
            sluice::config::parse_bytes(&value).unwrap_or_else(|err| panic!("{name}: {err}"))
        })
        .unwrap_or(default)
}

/// `total` bytes as `parts` parts of the same size (the last one shorter),
/// each at least 5 MiB as S3 wants: the count and the size of a part.
fn parts_of(total: u64) -> (usize, usize) {
    let part = (16u64 << 20).min(total.max(1));
    (total.div_ceil(part) as usize, part as usize)
}

#[tokio::test]
async fn malformed_objects_fail_alone_naming_the_key_and_where_and_the_rest_go_on() {
    // One object per task and one attempt: each bad object fails its own
    // task, at once.
    let ingest = Ingest::new("badinput", 1, Duration::from_secs(30), 1).await;
    let good: Vec<_> = (0..6).map(|i| object(i, 3)).collect();
    let many: String = (0..5000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let gzip = {
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(many.as_bytes()).unwrap();
        gzip.finish().unwrap()
    };
    let truncated = gzip[..gzip.len() - 100].to_vec();
    let mut zstd_garbage = vec![0x28, 0xb5, 0x2f, 0xfd];
    zstd_garbage.extend((0..4096u32).map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8));
    // Each bad object, and what its task's error must say besides its key.
    let bad: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "bad/truncated.ndjson.gz",
            truncated.clone(),
            vec![format!(
                "byte {} of the compressed input: gzip stream is truncated",
                truncated.len()
            )],
        ),
        (
            "bad/invalid-utf8.ndjson",
            b"{\"id\":\"u1\"}\n{\"id\":\"\xff\xfe\"}\n".to_vec(),
            vec!["line 2: invalid UTF-8 at column 8".into()],
        ),
        (
            "bad/ragged.csv",
            b"id,amount\nr1,1\nr2,2,extra\n".to_vec(),
            vec!["line 3: row has 3 fields but the header has 2".into()],
        ),
        (
            "bad/deep.json",
            vec![b'['; 100_000],
            vec!["record 1".into()],
        ),
        (
            "bad/deep.ndjson",
            [vec![b'['; 100_000], vec![b']'; 100_000], b"\n".to_vec()].concat(),
            vec!["line 1".into()],
        ),
        (
            "bad/garbage.ndjson.zst",
            zstd_garbage,
            vec!["of the compressed input: zstd data is corrupt".into()],
        ),
        (
            "bad/truncated.json",
            b"[{\"id\":\"t1\"},{\"id\":".to_vec(),
            vec!["record 2".into()],
        ),
    ];
    let mut objects = good.clone();
    objects.extend(
        bad.iter()
            .map(|(key, body, _)| (key.to_string(), body.clone())),
    );
    // An empty object is an object without records, not an error.
    objects.push(("empty.ndjson".into(), Vec::new()));
    ingest.put(objects).await;
    // A single line of 256 MiB (SLUICE_TEST_LONG_LINE_BYTES=1Gi for the
    // issue's GiB: the same, but a minute and a half of upload in a debug
    // build), streamed into MinIO: the worker must give up once the line
    // passes the record limit (16 MiB), without holding it.
    let long_line = size_from_env("SLUICE_TEST_LONG_LINE_BYTES", GIB / 4);
    let (parts, part) = parts_of(long_line);
    ingest
        .put_parts("bad/long-line.ndjson", parts, |n| {
            let mut bytes = vec![b'x'; part];
            if n == 0 {
                bytes[..14].copy_from_slice(b"{\"id\":\"long\",\"");
            }
            let last = long_line as usize - n * part;
            bytes.truncate(last.min(part));
            bytes
        })
        .await;

    let coordinator = ingest.coordinator(None, &[]);
    let mut worker = ingest.worker(coordinator.port, "w1");
    let total = good.len() + bad.len() + 2;
    let summary = wait_until_done(&coordinator, total as u64, DONE).await;
    let failed: TaskList = coordinator.get("/v1/tasks?state=failed");
    assert_eq!(
        (summary.objects.ingested, summary.objects.failed),
        (good.len() as u64 + 1, bad.len() as u64 + 1),
        "{summary:?}\n{:#?}",
        failed.items
    );
    assert!(
        worker.peak_rss() < 256 << 20,
        "the worker held {} MiB for a line it should have refused",
        worker.peak_rss() >> 20
    );
    assert!(worker.running(), "{}", worker.log());

    let mut failures: Vec<(String, Vec<String>)> = bad
        .iter()
        .map(|(key, _, words)| (format!("in/{key}"), words.clone()))
        .collect();
    failures.push((
        "in/bad/long-line.ndjson".into(),
        vec!["line 1: record is longer than the limit of 16777216 bytes".into()],
    ));
    assert_eq!(failed.items.len(), failures.len(), "{:#?}", failed.items);
    for (key, words) in &failures {
        let task = failed
            .items
            .iter()
            .find(|task| &task.first_key == key)
            .unwrap_or_else(|| panic!("no failed task for {key}: {:#?}", failed.items));
        let error = task.error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with(&format!("s3 object {key:?}: ")),
            "{key}: {error}"
        );
        for word in words {
            assert!(
                error.contains(word.as_str()),
                "{key}: {word:?} not in {error}"
            );
        }
    }
    // Every good object's records, each once, and nothing of the bad ones.
    assert_exactly_once(&ingest, &expected(0..6, 3)).await;
    // The failures are in the archive with their reasons.
    let archived = eventually("every failure in the archive", DONE, || async {
        let failures: Vec<_> = ingest
            .archive_records()
            .await
            .into_iter()
            .filter(|(_, r)| r.state == TaskState::Failed)
            .collect();
        (failures.len() == bad.len() + 1).then_some(failures)
    })
    .await;
    for (_, record) in &archived {
        let key = &record.objects[0].key;
        let error = record.error.as_deref().unwrap_or_default();
        assert!(error.contains(key.as_str()), "{key}: {error}");
    }
    ingest.delete("bad/long-line.ndjson").await;
}

/// A worker limited to 256 MiB of address space ingests an object of
/// `SLUICE_TEST_BIG_OBJECT_BYTES` of NDJSON: it streams, whatever the
/// object's size. The default, 320 MiB, is more than the worker could
/// hold (its binary alone maps 70 MB); `SLUICE_TEST_BIG_OBJECT_BYTES=1Gi`
/// is the issue's GiB (7 minutes in a debug build on 2 busy cores, 5 of
/// them the upload; the worker peaked at 53 MiB resident).
#[tokio::test]
async fn a_worker_in_256_mib_ingests_an_object_larger_than_that() {
    const LIMIT: u64 = 256 << 20;
    let ingest = Ingest::new("memory", 1, Duration::from_secs(30), 1).await;
    let size = size_from_env("SLUICE_TEST_BIG_OBJECT_BYTES", 320 << 20);
    // Records of 1 KiB, ids m0, m1, …, in parts that end on a record.
    const RECORD: usize = 1024;
    let (parts, part) = parts_of(size);
    let per_part = part / RECORD;
    let records = parts * per_part;
    let pad = "p".repeat(RECORD);
    let started = std::time::Instant::now();
    ingest
        .put_parts("big.ndjson", parts, |n| {
            let mut bytes = Vec::with_capacity(part);
            for r in n * per_part..(n + 1) * per_part {
                let head = format!("{{\"id\":\"m{r}\",\"pad\":\"");
                bytes.extend_from_slice(head.as_bytes());
                bytes.extend_from_slice(&pad.as_bytes()[..RECORD - head.len() - 3]);
                bytes.extend_from_slice(b"\"}\n");
            }
            bytes
        })
        .await;
    let uploaded = started.elapsed();
    let coordinator = ingest.coordinator(None, &[]);
    let worker = ingest.worker_limited(coordinator.port, "w1", LIMIT);
    let summary = wait_until_done(&coordinator, 1, Duration::from_secs(600)).await;
    let peak = worker.peak_rss();
    eprintln!(
        "{} MiB object ({records} records): uploaded in {uploaded:?}, ingested in {:?}; \
         worker peak RSS {} MiB under a {} MiB address-space limit",
        (parts * part) >> 20,
        started.elapsed() - uploaded,
        peak >> 20,
        LIMIT >> 20
    );
    assert_eq!(
        (summary.objects.ingested, summary.objects.failed),
        (1, 0),
        "{summary:?}\n{}",
        worker.log()
    );
    assert_eq!(summary.records_ingested, records as u64);
    // Every record in the sink once: the ids are counted off a bitmap, as
    // a million parsed records would take longer than the ingest.
    let mut seen = vec![false; records];
    let mut lines = 0;
    ingest
        .each_sink_line(|record| {
            lines += 1;
            let id = memchr::memmem::find(record, b"\"id\":\"m")
                .map(|at| &record[at + 7..])
                .and_then(|rest| rest.iter().position(|b| *b == b'"').map(|end| &rest[..end]))
                .and_then(|digits| std::str::from_utf8(digits).ok()?.parse::<usize>().ok())
                .filter(|id| *id < records)
                .unwrap_or_else(|| panic!("no id in {}", String::from_utf8_lossy(record)));
            assert!(!std::mem::replace(&mut seen[id], true), "m{id} twice");
        })
        .await;
    assert_eq!(lines, records, "every record in the sink");
    ingest.delete("big.ndjson").await;
}

/// Garbage on the task API beyond `the_task_api_refuses_bad_requests_…`:
/// wrong types, wrong methods, bodies that are not JSON objects, ids that
/// are not UTF-8, tokens in the wrong scheme, oversized lists, a client
/// that stalls. Each is a 4xx with a JSON message that says what is wrong,
/// and the coordinator keeps serving.
#[tokio::test]
async fn garbage_on_the_task_api_is_a_4xx_with_a_message_and_the_coordinator_goes_on() {
    let ingest = Ingest::new("garbage", 5, Duration::from_secs(30), 3).await;
    ingest.put((0..3).map(|i| object(i, 1)).collect()).await;
    let mut coordinator = ingest.coordinator(None, &[]);
    let port = coordinator.port;
    let json = Some("application/json");
    let many: Vec<_> = (0..1001)
        .map(|n| format!("{{\"id\":\"1-{n}\",\"attempt\":1,\"records\":0,\"bytes\":0}}"))
        .collect();
    let many = format!("{{\"worker\":\"w\",\"tasks\":[{}]}}", many.join(","));
    let long_error = format!(
        "{{\"worker\":\"w\",\"attempt\":1,\"error\":\"{}\"}}",
        "e".repeat(600 << 10)
    );
    let read_token = api::read_token(TOKEN);
    let worker = Some(("Authorization", "Bearer test-token"));
    let reader = Some((api::READ_TOKEN_HEADER, read_token.as_str()));
    let read_bearer = format!("Bearer {read_token}");
    /// Method, path, credential header, content type, body, status, words
    /// of the message.
    type Case<'a> = (
        &'a str,
        &'a str,
        Option<(&'a str, &'a str)>,
        Option<&'a str>,
        &'a str,
        u16,
        &'a str,
    );
    #[rustfmt::skip]
    let cases: Vec<Case> = vec![
        ("POST", "/v1/lease", worker, json, r#"{"worker":1,"max":1}"#, 422, "worker: invalid type: integer `1`, expected a string"),
        ("POST", "/v1/lease", worker, json, r#"{"worker":"w","max":"1"}"#, 422, "max: invalid type: string \"1\", expected u32"),
        ("POST", "/v1/lease", worker, json, r#"{"worker":"w","max":-1}"#, 422, "max: invalid value: integer `-1`, expected u32"),
        ("POST", "/v1/lease", worker, json, r#"{"worker":"w","max":4294967296}"#, 422, "max"),
        ("POST", "/v1/lease", worker, json, r#"[1,2]"#, 422, "[0]: invalid type: integer `1`, expected a string"),
        ("POST", "/v1/lease", worker, json, "null", 422, "expected struct LeaseRequest"),
        ("POST", "/v1/lease", worker, json, "", 400, "EOF while parsing"),
        ("POST", "/v1/lease", worker, json, "\u{0}\u{1}garbage", 400, "expected value"),
        ("POST", "/v1/lease", worker, json, r#"{"worker":"","max":1}"#, 400, "worker: must be the worker's name"),
        ("POST", "/v1/lease", worker, None, r#"{"worker":"w","max":1}"#, 415, "Content-Type: application/json"),
        ("POST", "/v1/lease", worker, Some("text/plain"), r#"{"worker":"w","max":1}"#, 415, "Content-Type: application/json"),
        ("POST", "/v1/lease", Some(("Authorization", "Basic dXNlcjpwYXNz")), json, r#"{"worker":"w","max":1}"#, 401, "missing token"),
        ("POST", "/v1/heartbeat", worker, json, &many, 400, "tasks: at most 1000"),
        ("POST", "/v1/heartbeat", worker, json, r#"{"worker":"w","tasks":{}}"#, 422, "tasks: invalid type: map, expected a sequence"),
        ("POST", "/v1/tasks/1-1/fail", worker, json, &long_error, 400, "error: too long"),
        ("POST", "/v1/tasks/%ff%fe/fail", worker, json, r#"{"worker":"w","attempt":1,"error":"x"}"#, 400, "UTF-8"),
        ("GET", "/v1/tasks/%ff", reader, None, "", 400, "UTF-8"),
        ("GET", "/v1/tasks/1-99999999999999999999999", reader, None, "", 400, "\"1-99999999999999999999999\" is not a task id (EPOCH-SEQ, for example 3-1042)"),
        ("POST", "/v1/tasks/garbage/complete", worker, json, "{}", 400, "\"garbage\" is not a task id"),
        ("POST", "/v1/tasks/9-9/complete", worker, json, r#"{"worker":"w","attempt":1,"records":0,"bytesRead":0,"bytesWritten":0,"outputs":[],"lease":0}"#, 400, "lease: must be between 1 and 1000"),
        ("POST", "/v1/tasks/9-9/complete", worker, json, r#"{"worker":"w","attempt":1,"records":0,"bytesRead":0,"bytesWritten":0,"outputs":[],"lease":1001}"#, 400, "lease: must be between 1 and 1000"),
        ("GET", "/v1/tasks?cursor=7", reader, None, "", 400, "cursor: \"7\" is not a task id"),
        ("GET", "/v1/tasks/9-9", reader, None, "", 404, "no task 9-9"),
        ("GET", "/v1/tasks?limit=x", reader, None, "", 400, "limit"),
        ("GET", "/v1/tasks?limit=-1", reader, None, "", 400, "limit"),
        ("GET", "/v1/tasks", None, None, "", 401, "missing token: readers send the `read-token`"),
        ("GET", "/v1/summary", worker, None, "", 401, "missing token: readers send"),
        ("GET", "/v1/tasks/1-1", Some((api::READ_TOKEN_HEADER, TOKEN)), None, "", 401, "wrong token"),
        ("POST", "/v1/lease", Some(("Authorization", read_bearer.as_str())), json, r#"{"worker":"w","max":1}"#, 401, "wrong token: workers"),
        ("POST", "/v1/lease", reader, json, r#"{"worker":"w","max":1}"#, 401, "missing token: workers"),
        ("DELETE", "/v1/lease", worker, json, "", 405, "method not allowed: workers POST to /v1/lease"),
        ("GET", "/v1/lease", None, None, "", 405, "method not allowed"),
        ("PUT", "/v1/tasks/1-1", None, None, "", 405, "method not allowed"),
        ("POST", "/v1/summary", None, json, "{}", 405, "method not allowed"),
    ];
    let mut wrong = Vec::new();
    for (method, path, credential, content_type, body, status, words) in cases {
        let mut headers: Vec<(&str, &str)> = credential.into_iter().collect();
        if let Some(content_type) = content_type {
            headers.push(("Content-Type", content_type));
        }
        let shown = format!("{method} {path} {:.60}", body);
        let Some((got, answer)) =
            sluice_testenv::http(port, method, path, &headers, body.as_bytes())
        else {
            wrong.push(format!("{shown}: no answer"));
            continue;
        };
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|error| error["error"].as_str().map(str::to_owned));
        match message {
            Some(message) if got == status && message.contains(words) => {}
            _ => wrong.push(format!(
                "{shown}: expected {status} with {words:?}, got {got}: {answer:.300}"
            )),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // A client that sends half a request and stalls holds no one else up.
    let mut stalled = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(
            b"POST /v1/lease HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Authorization: Bearer test-token\r\nContent-Length: 1000\r\n\r\n{\"worker\":",
        )
        .unwrap();
    // Answered while the stalled request is still open (the test's client
    // gives up after 5 s and fails the test).
    let summary = coordinator.summary();
    assert_eq!(summary.objects.discovered, 3, "{summary:?}");
    drop(stalled);

    // Connections that go quiet, before a request's head is complete or
    // between requests, are closed after the idle timeout: nobody holds
    // the coordinator's connections open for good.
    let closed = |sent: &'static [u8]| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(sent).unwrap();
        stream
            .set_read_timeout(Some(
                sluice::telemetry::IDLE_TIMEOUT + Duration::from_secs(30),
            ))
            .unwrap();
        let mut buffer = [0; 4096];
        loop {
            match std::io::Read::read(&mut stream, &mut buffer) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(err) => return Err(format!("{:?}: still open: {err}", sent)),
            }
        }
    };
    std::thread::scope(|scope| {
        let half_head = scope.spawn(|| closed(b"GET /v1/summary HTTP/1.1\r\nHost: x\r\n"));
        let kept_alive = scope.spawn(|| closed(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"));
        half_head.join().unwrap().unwrap();
        kept_alive.join().unwrap().unwrap();
    });
    // And it still works: a worker ingests everything.
    let _worker = ingest.worker(port, "w1");
    wait_until_done(&coordinator, 3, DONE).await;
    assert_exactly_once(&ingest, &expected(0..3, 1)).await;
    assert!(coordinator.running(), "{}", coordinator.log());
}
