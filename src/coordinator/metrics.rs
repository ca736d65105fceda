//! The coordinator's Prometheus metrics. Labels are bounded (a task state,
//! a result), never a key, a worker or an error's text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::telemetry::FinishedTasks;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WrittenToLabels {
    written_to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

pub struct Metrics {
    pub leases: Counter,
    pub failed_attempts: Counter,
    pub expired_leases: Counter,
    pub listed_objects: Counter,
    pub list_errors: Counter,
    pub archived_records: Counter,
    pub status_writes: Counter,
    pub checkpoint_duration: Histogram,
    pub finished_keys: Gauge,
    pub finished_keys_bytes: Gauge,
    pub finished: FinishedTasks,
    checkpoints: Family<ResultLabels, Counter>,
    merges: Family<WrittenToLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            leases: Counter::default(),
            failed_attempts: Counter::default(),
            expired_leases: Counter::default(),
            listed_objects: Counter::default(),
            list_errors: Counter::default(),
            archived_records: Counter::default(),
            status_writes: Counter::default(),
            checkpoint_duration: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            finished_keys: Gauge::default(),
            finished_keys_bytes: Gauge::default(),
            finished: FinishedTasks::default(),
            checkpoints: Family::default(),
            merges: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("sluice_coordinator");
        let counters = [
            ("task_leases", "Tasks leased to workers", &metrics.leases),
            (
                "failed_attempts",
                "Task attempts that workers reported failed",
                &metrics.failed_attempts,
            ),
            (
                "expired_leases",
                "Leases that expired without a heartbeat",
                &metrics.expired_leases,
            ),
            (
                "listed_objects",
                "Objects seen while listing the source",
                &metrics.listed_objects,
            ),
            (
                "list_errors",
                "Failed listing requests (retried)",
                &metrics.list_errors,
            ),
            (
                "archived_records",
                "Task records written to the archive",
                &metrics.archived_records,
            ),
            (
                "status_writes",
                "Status writes to the IngestSource",
                &metrics.status_writes,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        metrics.finished.register(
            registry,
            "Tasks that ended, by state: succeeded, or failed for good",
        );
        registry.register(
            "checkpoints",
            "Checkpoint writes by result",
            metrics.checkpoints.clone(),
        );
        registry.register(
            "checkpoint_duration_seconds",
            "How long writing one checkpoint takes",
            metrics.checkpoint_duration.clone(),
        );
        registry.register(
            "finished_keys",
            "Keys in the finished-key segments",
            metrics.finished_keys.clone(),
        );
        registry.register(
            "finished_keys_bytes",
            "Memory held by the finished keys",
            metrics.finished_keys_bytes.clone(),
        );
        registry.register(
            "finished_keys_merges",
            "Merges of finished-key segments, by where the merge was written: a file \
             in the temporary directory (the pod's emptyDir on /tmp) or, when no file \
             could be written there, memory",
            metrics.merges.clone(),
        );
        metrics
    }

    pub fn merged(&self, written_to: &'static str) {
        self.merges
            .get_or_create(&WrittenToLabels { written_to })
            .inc();
    }

    pub fn checkpoint(&self, result: &'static str) {
        self.checkpoints
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
