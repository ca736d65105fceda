//! The coordinator: what `sluice coordinator` runs, one per IngestSource.
//!
//! It lists the source ([`listing`]), packs what is new into tasks and
//! leases them to workers ([`tasks`], served by [`http`]), remembers the
//! finished keys compactly ([`keys`]), and every few seconds writes its
//! checkpoint ([`checkpoint`]) and archives the tasks that ended
//! ([`sluice_core::archive`]). It publishes its counts into the
//! IngestSource's status ([`publish`]) and queues dead letters again when
//! asked ([`redrive`]).

pub mod archiver;
pub mod checkpoint;
pub mod finished;
pub mod http;
pub mod listing;
pub mod metrics;
pub mod publish;
pub mod redrive;
pub mod tasks;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use sluice_core::api::{LeaseResponse, LeasedTask, Summary};
use sluice_core::archive::{Appender, Batch};
use sluice_core::layout::Sink;
use sluice_core::sync::lock;

use crate::config::{PodArgs, RuntimeConfig, Store};
use crate::telemetry::{self, Readiness};
use crate::{retry, s3};
use archiver::{Unwritten, Written, append};
use checkpoint::{Checkpoint, CheckpointError, Manifest, SegmentRef};
use finished::{ApplyError, FinishedKeys, Merged};
use tasks::{Limits, Tasks};

/// `sluice coordinator`: track one source's keys and lease its tasks.
#[derive(clap::Args, Debug)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub pod: PodArgs,

    /// How often the checkpoint is written and finished tasks archived.
    #[arg(long, env = "SLUICE_CHECKPOINT_INTERVAL", default_value = "5s", value_parser = sluice_core::duration::parse_std)]
    pub checkpoint_interval: Duration,

    /// How often, at most, the task counts are written into the
    /// IngestSource's status (only when they changed). The status is
    /// published when a Kubernetes configuration is found (in a pod: always).
    #[arg(long, env = "SLUICE_STATUS_INTERVAL", default_value = "5s", value_parser = sluice_core::duration::parse_std)]
    pub status_interval: Duration,

    /// Write the status at least this often even when nothing changed, so
    /// the operator knows the coordinator is alive (it reports
    /// CoordinatorUnavailable after its --coordinator-timeout, 3m by
    /// default). Checked every --status-interval.
    #[arg(long, env = "SLUICE_HEARTBEAT_INTERVAL", default_value = "1m", value_parser = sluice_core::duration::parse_std)]
    pub heartbeat_interval: Duration,

    /// At most this many objects are in tasks not yet archived; the
    /// listing waits for room. Bounds memory however large the source.
    #[arg(long, env = "SLUICE_MAX_LIVE_OBJECTS", default_value_t = 100_000)]
    pub max_live_objects: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot serve the task API: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Keys(#[from] finished::ApplyError),
}

/// Commits of newly planned tasks are at least this far apart, so a fast
/// listing does not write a checkpoint per page.
const MIN_COMMIT_SPACING: Duration = Duration::from_millis(100);

/// What the HTTP handlers, the listing and the commit loop share.
pub struct Shared {
    tasks: Mutex<Tasks>,
    /// What workers present.
    token: String,
    /// What readers present: derived from `token`.
    read_token: String,
    /// When reads may be answered ([`http::READS_PER_SECOND`]).
    reads: http::Pace,
    /// Held by the read being answered: one at a time.
    reading: tokio::sync::Mutex<()>,
    lease_duration: Duration,
    metrics: metrics::Metrics,
    /// Signalled when tasks were planned that need a commit.
    planned: Notify,
    listing_passes: AtomicU64,
    last_checkpoint: Mutex<Option<Timestamp>>,
}

impl Shared {
    /// The state of a coordinator serving `tasks` to workers that present
    /// `token`, counting in `metrics`. Needs no S3: the fuzz
    /// targets drive [`http::router`] with it in process.
    pub fn new(
        tasks: Tasks,
        token: String,
        lease_duration: Duration,
        last_checkpoint: Option<Timestamp>,
        metrics: metrics::Metrics,
    ) -> Arc<Self> {
        Arc::new(Shared {
            tasks: Mutex::new(tasks),
            read_token: sluice_core::api::read_token(&token),
            token,
            reads: http::Pace::default(),
            reading: tokio::sync::Mutex::new(()),
            lease_duration,
            metrics,
            planned: Notify::new(),
            listing_passes: AtomicU64::new(0),
            last_checkpoint: Mutex::new(last_checkpoint),
        })
    }

    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        lock(&self.tasks)
    }

    /// The answer to a worker that leased `tasks`, counted.
    fn leased(&self, tasks: Vec<LeasedTask>) -> LeaseResponse {
        self.metrics.leases.inc_by(tasks.len() as u64);
        LeaseResponse {
            tasks,
            lease_duration_ms: self.lease_duration.as_millis() as u64,
        }
    }

    fn summary(&self) -> Summary {
        let mut summary = self.tasks().summary(Timestamp::now());
        summary.listing_passes = self.listing_passes.load(Ordering::Relaxed);
        summary.last_checkpoint = *lock(&self.last_checkpoint);
        summary
    }
}

/// Runs the coordinator until SIGTERM, then writes a last checkpoint.
pub async fn run(args: CoordinatorArgs) -> Result<(), Error> {
    let (config, token) = args.pod.start().map_err(Error::Config)?;
    let source_client = s3::client_for(Store::Source, &config.source.s3, args.pod.s3_timeout).await;
    let archive_client = s3::client_for(Store::Archive, &config.archive, args.pod.s3_timeout).await;
    let kube = kube::Client::try_default()
        .await
        .inspect_err(
            |err| info!(reason = %err, "no Kubernetes configuration: not publishing status"),
        )
        .ok();

    // Alive (and answering probes) from the start, ready once it serves.
    let mut registry = Registry::default();
    let metrics = metrics::Metrics::new(&mut registry);
    let readiness = Readiness::default();
    let api = Arc::new(OnceLock::new());
    let address = telemetry::serve_admin(
        args.pod.address,
        readiness.clone(),
        registry,
        http::once_claimed(api.clone()),
    )
    .await?;

    let (checkpoint, resumed) = claim(archive_client.clone(), &config, kube.as_ref()).await?;
    let manifest = resumed.manifest;
    info!(
        checkpoint = %checkpoint.location(),
        epoch = checkpoint.epoch(),
        tasks = manifest.tasks.len(),
        "claimed the checkpoint"
    );
    let mut tasks = Tasks::new(
        config.id.clone(),
        Sink {
            prefix: config.sink.prefix.clone(),
            lineage: manifest.lineage.clone(),
        },
        Limits {
            max_objects: config.tasks.max_objects,
            max_bytes: config.tasks.max_bytes,
            lease: config.tasks.lease_duration.0,
            max_attempts: config.tasks.max_attempts,
        },
        checkpoint.epoch(),
        FinishedKeys::from_segments(resumed.segments),
        manifest.tasks,
        manifest.totals,
    );
    tasks.restore_redrives(manifest.redrives);
    let shared = Shared::new(
        tasks,
        token,
        config.tasks.lease_duration.0,
        manifest.written,
        metrics,
    );
    api.set(http::router(shared.clone()))
        .expect("the task API is set once");
    readiness.set(true);
    info!(%address, "serving the task API");

    tokio::spawn(listing::run(
        shared.clone(),
        source_client.clone(),
        config.source.clone(),
        args.max_live_objects,
    ));
    tokio::spawn(expire_leases(shared.clone()));
    if let Some(client) = kube {
        tokio::spawn(publish::run(
            shared.clone(),
            client.clone(),
            config.id.namespace.clone(),
            config.id.name.clone(),
            args.status_interval,
            args.heartbeat_interval,
        ));
        let stores = redrive::Stores {
            source: source_client,
            source_location: config.source.s3.clone(),
            archive: archive_client.clone(),
            archive_location: config.archive.clone(),
        };
        tokio::spawn(redrive::run(
            shared.clone(),
            client,
            config.id.clone(),
            stores,
        ));
    }
    let appender = Appender::new(
        config.archive.prefix.as_deref(),
        &config.id,
        checkpoint.epoch(),
    );
    let mut committer = Committer {
        shared,
        checkpoint,
        archive: archive_client,
        config,
        outbox: manifest.outbox,
        appender,
        written: HashMap::new(),
        obsolete: Vec::new(),
        compaction: None,
        last: None,
    };
    committer.run(args.checkpoint_interval).await
}

/// The first and the longest wait between tries to claim the checkpoint
/// (each stretched by up to 100 %): the longest stays well inside the
/// operator's --coordinator-timeout, since every try is also a heartbeat.
const CLAIM_RETRY: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(30));

/// Claims the checkpoint. While it cannot (an object of it damaged or
/// deleted, a store that ignores conditional writes, S3 refusing), it says
/// why in its log and in the IngestSource's `status.startupError`, and tries
/// again, so a repaired store or a restored object is picked up without a
/// restart, and the pod does not crash-loop. Gives up only on SIGTERM.
async fn claim(
    client: aws_sdk_s3::Client,
    config: &RuntimeConfig,
    kube: Option<&kube::Client>,
) -> Result<(Checkpoint, checkpoint::Resumed), Error> {
    let mut waits = retry::Waits::new(CLAIM_RETRY.0, CLAIM_RETRY.1);
    let mut stop = std::pin::pin!(telemetry::terminated());
    loop {
        let err = match Checkpoint::claim(
            client.clone(),
            &config.archive,
            &config.id.namespace,
            &config.id.name,
        )
        .await
        {
            Ok(claimed) => return Ok(claimed),
            Err(err) => err,
        };
        let wait = waits.current();
        error!(error = %err, retry_in = ?wait, "cannot use the checkpoint; not serving until it can");
        if let Some(kube) = kube {
            publish::startup_error(kube, &config.id, &err.to_string()).await;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => waits.advance(),
            () = &mut stop => return Err(err.into()),
        }
    }
}

/// Returns expired leases' tasks to the queue, several times per lease.
async fn expire_leases(shared: Arc<Shared>) {
    let period =
        (shared.lease_duration / 8).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        let expired = shared.tasks().expire(Timestamp::now());
        shared.metrics.expired_leases.inc_by(expired as u64);
    }
}

/// Writes checkpoints and archive batches.
struct Committer {
    shared: Arc<Shared>,
    checkpoint: Checkpoint,
    archive: aws_sdk_s3::Client,
    config: RuntimeConfig,
    /// Batches in a written manifest but maybe not yet in the archive; at
    /// most one per object.
    outbox: Vec<Batch>,
    /// Which object each finished task's record goes to.
    appender: Appender,
    /// What the open archive objects hold, as last written by this
    /// coordinator; an object not here is read back before it is
    /// appended to.
    written: HashMap<String, Written>,
    /// Segments merged away; deleted once a manifest without them is
    /// written.
    obsolete: Vec<String>,
    /// A running merge, and where it writes its output (`file` or `memory`).
    compaction: Option<tokio::task::JoinHandle<(Merged, &'static str)>>,
    /// The last manifest written (without its time), to skip writing an
    /// unchanged one.
    last: Option<Manifest>,
}

impl Committer {
    async fn run(&mut self, interval: Duration) -> Result<(), Error> {
        // Batches a previous coordinator committed but maybe did not write.
        self.commit(false).await?;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        // The first tasks planned after the start are committed at once: the
        // workers wait for nothing else then.
        let mut last = Instant::now()
            .checked_sub(MIN_COMMIT_SPACING)
            .unwrap_or_else(Instant::now);
        let mut stop = std::pin::pin!(telemetry::terminated());
        loop {
            let flush = tokio::select! {
                _ = ticks.tick() => true,
                () = shared.planned.notified() => {
                    tokio::time::sleep_until((last + MIN_COMMIT_SPACING).into()).await;
                    false
                }
                () = &mut stop => {
                    info!("stopping: writing a last checkpoint");
                    return self.commit(true).await;
                }
            };
            last = Instant::now();
            match self.commit(flush).await {
                Err(err @ Error::Checkpoint(CheckpointError::Fenced { .. })) => return Err(err),
                // The finished keys lost a merge's inputs: only a restart
                // from the checkpoint has them all again.
                Err(err @ Error::Keys(ApplyError::Unreadable { .. })) => return Err(err),
                Err(err) => warn!(error = %err, "cannot write the checkpoint; retrying"),
                Ok(()) => {}
            }
        }
    }

    /// Writes a checkpoint with the tasks planned so far (then leasable)
    /// and, when `flush`, the tasks that ended: their keys join the
    /// finished keys and their records the archive.
    async fn commit(&mut self, flush: bool) -> Result<(), Error> {
        let started = Instant::now();
        self.apply_compaction().await?;
        let now = Timestamp::now();
        let (mut manifest, snapshot, segments) = {
            let mut tasks = self.shared.tasks();
            if flush {
                let records = tasks.drain_finished();
                for record in &records {
                    self.shared.metrics.finished.count(record.state.as_str());
                }
                for batch in self.appender.append(records, now) {
                    match self
                        .outbox
                        .iter_mut()
                        .find(|queued| queued.key == batch.key)
                    {
                        Some(queued) => queued.records.extend(batch.records),
                        None => self.outbox.push(batch),
                    }
                }
                let appender = &self.appender;
                self.written.retain(|key, _| appender.is_open(key));
                tasks.finished_keys_mut().seal();
            }
            let mut snapshot = tasks.snapshot();
            let keys = tasks.finished_keys();
            self.shared.metrics.finished_keys.set(keys.len() as i64);
            self.shared
                .metrics
                .finished_keys_bytes
                .set(keys.memory_bytes() as i64);
            let segments: Vec<_> = keys.segments().cloned().collect();
            // Without its time first, to compare with the last one written.
            let manifest = Manifest {
                epoch: tasks.epoch(),
                lineage: tasks.sink().lineage.clone(),
                written: None,
                segments: segments
                    .iter()
                    .map(|segment| SegmentRef {
                        name: segment.name().to_owned(),
                        keys: segment.len() as u64,
                    })
                    .collect(),
                tasks: std::mem::take(&mut snapshot.tasks),
                outbox: self.outbox.clone(),
                totals: tasks.totals().clone(),
                redrives: tasks.redrives(),
            };
            (manifest, snapshot, segments)
        };
        if self.last.as_ref() == Some(&manifest) && self.obsolete.is_empty() {
            // Nothing new to write, so no write would fail on the fence: a
            // coordinator taken over while idle would never learn it and go
            // on leasing tasks. Check it instead.
            self.checkpoint.verify().await?;
            self.write_outbox().await;
            return Ok(());
        }
        manifest.written = Some(now);
        let written = self
            .checkpoint
            .write(&manifest, &segments.iter().collect::<Vec<_>>())
            .await;
        self.shared
            .metrics
            .checkpoint(if written.is_ok() { "ok" } else { "error" });
        written?;
        self.shared
            .metrics
            .checkpoint_duration
            .observe(started.elapsed().as_secs_f64());
        self.shared.tasks().committed(&snapshot);
        manifest.written = None;
        self.last = Some(manifest);
        *lock(&self.shared.last_checkpoint) = Some(now);
        let obsolete = std::mem::take(&mut self.obsolete);
        self.checkpoint.delete_segments(&obsolete).await;
        self.write_outbox().await;
        self.start_compaction();
        Ok(())
    }

    /// Writes the outbox's batches to the archive; those written leave it.
    async fn write_outbox(&mut self) {
        let bucket = &self.config.archive.bucket;
        let archive = &self.archive;
        let written = &mut self.written;
        let jobs: Vec<_> = self
            .outbox
            .iter()
            .map(|batch| (batch, written.remove(&batch.key)))
            .collect();
        let results: Vec<Result<Written, Unwritten>> = futures::stream::iter(jobs)
            .map(|(batch, known)| async move {
                let result = append(archive, bucket, batch, known).await;
                if let Err(unwritten) = &result {
                    warn!(object = %batch.key, error = %unwritten.reason, "cannot write to the archive; retrying");
                }
                result
            })
            .buffered(8)
            .collect()
            .await;
        let mut results = results.into_iter();
        let metrics = &self.shared.metrics;
        let appender = &self.appender;
        self.outbox.retain(|batch| {
            let result = results.next().unwrap_or_else(|| {
                Err(Unwritten {
                    reason: "not attempted".into(),
                    known: None,
                })
            });
            let done = result.is_ok();
            let known = match result {
                Ok(written) => {
                    metrics.archived_records.inc_by(batch.records.len() as u64);
                    Some(written)
                }
                Err(unwritten) => unwritten.known,
            };
            if let Some(known) = known.filter(|_| appender.is_open(&batch.key)) {
                written.insert(batch.key.clone(), known);
            }
            !done
        });
    }

    /// Starts merging finished-key segments in the background when the
    /// plan says so.
    fn start_compaction(&mut self) {
        if self.compaction.is_some() {
            return;
        }
        if let Some(compaction) = self.shared.tasks().finished_keys().compaction() {
            // Spilled to a file (in a pod, the emptyDir on /tmp) so that a
            // large merge does not hold its inputs and output in memory at
            // once; in memory when no file can be written.
            self.compaction = Some(tokio::task::spawn_blocking(move || {
                match compaction.spill(&std::env::temp_dir()) {
                    Ok(merged) => (merged, "file"),
                    Err(err) => {
                        warn!(error = %err, "cannot spill merged finished keys to a file; merging in memory");
                        (compaction.run(), "memory")
                    }
                }
            }));
        }
    }

    /// Puts a finished merge in place of the segments it merged. Fails
    /// only when the finished keys are no longer whole.
    async fn apply_compaction(&mut self) -> Result<(), Error> {
        let Some(running) = self.compaction.take_if(|running| running.is_finished()) else {
            return Ok(());
        };
        match running.await {
            Ok((merged, written_to)) => match self.shared.tasks().finished_keys_mut().apply(merged)
            {
                Ok(replaced) => {
                    self.shared.metrics.merged(written_to);
                    self.obsolete.extend(replaced);
                }
                Err(err @ ApplyError::Unreadable { .. }) => return Err(err.into()),
                Err(err) => warn!(error = %err, "cannot use merged finished keys"),
            },
            Err(err) => warn!(error = %err, "merging finished keys failed"),
        }
        Ok(())
    }
}
