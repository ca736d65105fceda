//! The operator's Prometheus metrics. Labels are bounded: a result, an
//! error kind or a Kubernetes kind, never an object's name or an error's
//! text.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    kind: String,
}

pub struct Metrics {
    reconciles: Family<ResultLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Histogram,
    writes: Family<WriteLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            writes: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("sluice_operator");
        registry.register(
            "reconciles",
            "Reconciles by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error kind",
            metrics.errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long one reconcile takes",
            metrics.duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes to the Kubernetes API by kind (a reconcile that changes nothing writes nothing)",
            metrics.writes.clone(),
        );
        metrics
    }

    /// Records one reconcile; `error` is the kind of its error, if any.
    pub fn reconciled(&self, took: Duration, error: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(kind) = error {
            self.errors.get_or_create(&ErrorLabels { kind }).inc();
        }
    }

    /// Records one write (create, apply or status patch) of `kind`.
    pub fn wrote(&self, kind: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }
}
