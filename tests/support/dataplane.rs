//! Coordinators and workers as local processes, started the way the
//! operator's Deployments start them (config file, token file, credentials
//! in the environment), against this binary's MinIO.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use backon::Retryable;
use futures::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use sluice::config::{RuntimeConfig, SourceConfig, TaskLimits};
use sluice_core::api::{self, Summary};
use sluice_core::archive::TaskRecord;
use sluice_core::encoding::{Compression, Format};
use sluice_core::id::SourceId;
use sluice_core::layout;
use sluice_testenv::{Daemon, MinioEnv, free_port, http};

use super::{eventually, minio};

pub const TOKEN: &str = "test-token";

/// How often a source object's PUT is tried again: enough to outlast a
/// MinIO restart (about 33 s in all, with jitter up to twice that).
const PUT_RETRIES: usize = 20;

/// One IngestSource's buckets and configuration, without Kubernetes.
pub struct Ingest {
    pub config: RuntimeConfig,
    pub client: aws_sdk_s3::Client,
    dir: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Ingest {
    /// Fresh source, sink and archive buckets; tasks of `max_objects`
    /// objects with `lease` leases.
    pub async fn new(name: &str, max_objects: u32, lease: Duration, max_attempts: u32) -> Self {
        Self::on(minio(), name, max_objects, lease, max_attempts).await
    }

    /// The same on another MinIO server (same credentials).
    pub async fn on(
        minio: &MinioEnv,
        name: &str,
        max_objects: u32,
        lease: Duration,
        max_attempts: u32,
    ) -> Self {
        let (source, sink, archive) = (
            minio.bucket("source").await.unwrap(),
            minio.bucket("sink").await.unwrap(),
            minio.bucket("archive").await.unwrap(),
        );
        let location = |bucket: &str, prefix: &str| {
            let mut location = minio.location(bucket);
            location.prefix = Some(prefix.into());
            location
        };
        let config = RuntimeConfig {
            id: SourceId {
                namespace: "shop".into(),
                name: name.into(),
                account: "acme".into(),
                collection: "orders".into(),
            },
            source: SourceConfig {
                s3: location(&source, "in/"),
                format: Format::Auto,
                compression: Compression::Auto,
                poll_interval: None,
            },
            sink: location(&sink, "collections"),
            archive: location(&archive, "sluice/"),
            tasks: TaskLimits {
                max_objects,
                max_bytes: 64 << 20,
                lease_duration: sluice_core::duration::Duration(lease),
                max_attempts,
            },
        };
        let ingest = Ingest {
            config,
            client: minio.client().await,
            dir: tempfile::tempdir().unwrap(),
            kubeconfig: None,
        };
        ingest.write_config();
        std::fs::write(ingest.dir.path().join("token"), TOKEN).unwrap();
        ingest
    }

    /// Writes the configuration file again (after a change to `config`).
    pub fn write_config(&self) {
        std::fs::write(
            self.dir.path().join("config.json"),
            serde_json::to_vec(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// Processes started from now on find the API server through
    /// `kubeconfig` (the coordinator then publishes its status).
    pub fn use_kubeconfig(&mut self, kubeconfig: &std::path::Path) {
        self.kubeconfig = Some(kubeconfig.to_owned());
    }

    fn command(&self, args: &[&str]) -> Command {
        self.command_with(args, &self.dir.path().join("config.json"))
    }

    fn command_with(&self, args: &[&str], config: &std::path::Path) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command
            .args(args)
            .arg("--config")
            .arg(config)
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .env("RUST_LOG", "info,sluice=debug")
            .env_remove("KUBECONFIG");
        if let Some(kubeconfig) = &self.kubeconfig {
            command.env("KUBECONFIG", kubeconfig);
        }
        command.envs(minio().pod_credentials_env());
        command
    }

    /// Starts a coordinator on `port` (a free one when None) and waits
    /// until it serves.
    pub fn coordinator(&self, port: Option<u16>, args: &[&str]) -> Part {
        let port = port.unwrap_or_else(|| free_port().unwrap());
        let mut command = self.command(&["coordinator"]);
        command.arg(format!("--address=127.0.0.1:{port}"));
        // Frequent checkpoints make tests quick, unless `args` choose.
        if !args
            .iter()
            .any(|arg| arg.starts_with("--checkpoint-interval"))
        {
            command.arg("--checkpoint-interval=300ms");
        }
        command.args(args);
        Part::start(&self.dir, "coordinator", port, command, true)
    }

    /// Starts a coordinator that may exit at once (for startup errors).
    pub fn coordinator_unchecked(&self) -> Part {
        let port = free_port().unwrap();
        let mut command = self.command(&["coordinator"]);
        command.arg(format!("--address=127.0.0.1:{port}"));
        Part::start(&self.dir, "coordinator", port, command, false)
    }

    /// Starts a worker named `name` that works for the coordinator on
    /// `coordinator_port`.
    pub fn worker(&self, coordinator_port: u16, name: &str) -> Part {
        self.worker_with(coordinator_port, name, &[])
    }

    /// A worker with extra `args`.
    pub fn worker_with(&self, coordinator_port: u16, name: &str, args: &[&str]) -> Part {
        let mut command = self.command(&["worker"]);
        command.args(args);
        self.start_worker(command, coordinator_port, name)
    }

    /// A worker that runs with `config` instead of the source's own (to
    /// point it at an unreachable store, say).
    pub fn worker_configured(
        &self,
        coordinator_port: u16,
        name: &str,
        config: &RuntimeConfig,
    ) -> Part {
        let path = self.dir.path().join(format!("config-{name}.json"));
        std::fs::write(&path, serde_json::to_vec(config).unwrap()).unwrap();
        self.start_worker(
            self.command_with(&["worker"], &path),
            coordinator_port,
            name,
        )
    }

    /// A worker whose address space is limited to `max_memory` bytes
    /// (`RLIMIT_AS`, set in the child before it runs): allocations past it
    /// fail, as under a container's memory limit but stricter, since
    /// reserved but untouched memory counts too.
    pub fn worker_limited(&self, coordinator_port: u16, name: &str, max_memory: u64) -> Part {
        use std::os::unix::process::CommandExt;
        let mut command = self.command(&["worker"]);
        let limit = libc::rlimit {
            rlim_cur: max_memory,
            rlim_max: max_memory,
        };
        // SAFETY: setrlimit is async-signal-safe; nothing is allocated here.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_AS, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        self.start_worker(command, coordinator_port, name)
    }

    /// Starts `command` (a `sluice worker`) as the worker `name` of the
    /// coordinator on `coordinator_port`.
    fn start_worker(&self, mut command: Command, coordinator_port: u16, name: &str) -> Part {
        let port = free_port().unwrap();
        command
            .arg(format!("--coordinator=http://127.0.0.1:{coordinator_port}"))
            .arg(format!("--address=127.0.0.1:{port}"))
            .env("POD_NAME", name);
        Part::start(&self.dir, name, port, command, true)
    }

    /// Puts one object of `parts` parts into the source with a multipart
    /// upload, asking `part(n)` for each part in turn, so that objects far
    /// larger than memory can be made. Every part but the last must be at
    /// least 5 MiB.
    pub async fn put_parts(&self, key: &str, parts: usize, part: impl Fn(usize) -> Vec<u8>) {
        use aws_sdk_s3::config::RequestChecksumCalculation;
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        // Checksums of a GiB in a debug build take longer than the upload.
        let client = aws_sdk_s3::Client::from_conf(
            self.client
                .config()
                .to_builder()
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .build(),
        );
        let bucket = &self.config.source.s3.bucket;
        let key = format!("in/{key}");
        let upload = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        let id = upload.upload_id().unwrap();
        let mut completed = Vec::new();
        for n in 0..parts {
            let number = n as i32 + 1;
            let sent = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(id)
                .part_number(number)
                .body(part(n).into())
                .send()
                .await
                .unwrap();
            completed.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(sent.e_tag().map(str::to_owned))
                    .build(),
            );
        }
        client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(&key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    /// Deletes a source object (a large one, once a test is done with it).
    pub async fn delete(&self, key: &str) {
        self.client
            .delete_object()
            .bucket(&self.config.source.s3.bucket)
            .key(format!("in/{key}"))
            .send()
            .await
            .unwrap();
    }

    /// Puts `objects` into the source, 32 at a time.
    pub async fn put(&self, objects: Vec<(String, Vec<u8>)>) {
        let bucket = &self.config.source.s3.bucket;
        futures::stream::iter(objects)
            .map(|(key, body)| async move {
                // A PUT cut off by a MinIO restart (the chaos tests restart
                // it) is sent again; a repeated PUT of the same bytes is
                // harmless.
                let put = || {
                    self.client
                        .put_object()
                        .bucket(bucket)
                        .key(format!("in/{key}"))
                        .body(body.clone().into())
                        .send()
                };
                put.retry(
                    sluice::retry::backoff(Duration::from_millis(100), Duration::from_secs(2))
                        .with_max_times(PUT_RETRIES),
                )
                .await
                .map(|_| ())
            })
            .buffer_unordered(32)
            .try_collect::<()>()
            .await
            .unwrap();
    }

    /// Every object under `prefix` in `bucket`, with its bytes.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let keys = sluice_testenv::s3::keys(&self.client, bucket, prefix)
            .await
            .unwrap();
        futures::stream::iter(keys)
            .map(|key| async move {
                let body = sluice_testenv::s3::object(&self.client, bucket, &key)
                    .await
                    .unwrap()
                    .to_vec();
                (key, body)
            })
            .buffer_unordered(32)
            .collect()
            .await
    }

    /// Every record in the sink, with the object it is in.
    pub async fn sink_records(&self) -> Vec<(String, serde_json::Value)> {
        let mut records = Vec::new();
        for (key, body) in self.objects(&self.config.sink.bucket, "").await {
            let text = zstd::decode_all(&body[..]).unwrap();
            for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                records.push((key.clone(), serde_json::from_slice(line).unwrap()));
            }
        }
        records
    }

    /// Calls `visit` with each line of the sink, decompressing as it goes,
    /// for sinks too large to hold decompressed.
    pub async fn each_sink_line(&self, mut visit: impl FnMut(&[u8])) {
        use std::io::BufRead;
        for (_, body) in self.objects(&self.config.sink.bucket, "").await {
            let mut lines = std::io::BufReader::new(zstd::Decoder::new(&body[..]).unwrap());
            let mut line = Vec::new();
            while lines.read_until(b'\n', &mut line).unwrap() > 0 {
                visit(&line);
                line.clear();
            }
        }
    }

    /// How often each record `id` is in the sink.
    pub async fn sink_ids(&self) -> BTreeMap<String, usize> {
        let mut ids = BTreeMap::new();
        for (_, record) in self.sink_records().await {
            let id = record["id"].as_str().expect("every test record has an id");
            *ids.entry(id.to_owned()).or_default() += 1;
        }
        ids
    }

    /// Every task record in the archive, with the archive object it is in.
    pub async fn archive_records(&self) -> Vec<(String, TaskRecord)> {
        let mut records = Vec::new();
        for (key, body) in self
            .objects(&self.config.archive.bucket, "sluice/tasks/")
            .await
        {
            for record in super::archive_records(&body) {
                records.push((key.clone(), record));
            }
        }
        records
    }

    /// The manifest object's key in the archive bucket.
    pub fn manifest_key(&self) -> String {
        layout::checkpoint_manifest(&layout::checkpoint_dir(
            self.config.archive.prefix.as_deref(),
            &self.config.id.namespace,
            &self.config.id.name,
        ))
    }
}

/// A coordinator or worker process.
pub struct Part {
    daemon: Daemon,
    pub port: u16,
    log: PathBuf,
}

impl Part {
    fn start(dir: &tempfile::TempDir, name: &str, port: u16, command: Command, wait: bool) -> Self {
        let log = dir.path().join(format!("{name}-{port}.log"));
        let mut daemon = Daemon::spawn(name, command, &log).unwrap();
        if wait {
            daemon
                .wait_ready(Duration::from_secs(30), || {
                    http(port, "GET", "/readyz", &[], b"").is_some_and(|(s, _)| s == 200)
                })
                .unwrap_or_else(|err| panic!("{err}"));
        }
        Part { daemon, port, log }
    }

    /// A request to the process's HTTP API.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, String) {
        let auth = token.map(|token| format!("Bearer {token}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        http(self.port, method, path, &headers, body.as_bytes())
            .unwrap_or_else(|| panic!("{method} {path}: no answer\n{}", self.log()))
    }

    /// GET `path` of the task API, presenting `read_token` (if any).
    pub fn read(&self, path: &str, read_token: Option<&str>) -> (u16, String) {
        let headers: Vec<(&str, &str)> = read_token
            .map(|token| (api::READ_TOKEN_HEADER, token))
            .into_iter()
            .collect();
        http(self.port, "GET", path, &headers, b"")
            .unwrap_or_else(|| panic!("GET {path}: no answer\n{}", self.log()))
    }

    /// GET `path` of the task API as JSON, as a reader with the read token.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> T {
        let (status, body) = self.read(path, Some(&api::read_token(TOKEN)));
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET {path}: {err}: {body}"))
    }

    /// The sum of every series of the Prometheus metric `name`.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.request("GET", "/metrics", None, "");
        super::metric(&body, name)
    }

    pub fn summary(&self) -> Summary {
        self.get("/v1/summary")
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// The most memory the process has had resident so far (`VmHWM`), in
    /// bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {status}"));
        kib << 10
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// SIGTERM, and wait up to `grace` for the exit.
    pub fn terminate(&mut self, grace: Duration) {
        self.daemon.terminate(grace);
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.daemon.wait_exit(timeout)
    }

    pub fn running(&mut self) -> bool {
        self.daemon.check_running().is_ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until the coordinator on `part` reports `objects` objects ingested
/// or failed and every finished task archived.
pub async fn wait_until_done(coordinator: &Part, objects: u64, timeout: Duration) -> Summary {
    eventually(
        &format!("{objects} objects to be finished"),
        timeout,
        || async {
            let summary = coordinator.summary();
            let finished = summary.objects.ingested + summary.objects.failed;
            (finished >= objects && summary.tasks.pending == 0 && summary.tasks.running == 0)
                .then_some(summary)
        },
    )
    .await
}
