//! The operator's Prometheus metrics: its own work (`sluice_operator_*`,
//! labelled by a result, an error kind or a Kubernetes kind, never an
//! object's name or an error's text) and every IngestSource's state
//! (`sluice_source_*`, labelled by namespace, name, account and collection,
//! read from the status in the operator's cache at each scrape), so that
//! one scrape of the operator is enough to alert on every source, even
//! while its coordinator is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::ResourceExt;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use sluice_core::sync::lock;

use crate::crd::{IngestSource, Phase};

use super::status::DEGRADED;

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
    sources: Sources,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            writes: Family::default(),
            sources: Sources::default(),
        };
        registry
            .sub_registry_with_prefix("sluice_source")
            .register_collector(Box::new(metrics.sources.clone()));
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

    /// Exports the state of the IngestSources in `store` (a controller's
    /// cache; there is one per watched namespace).
    pub fn export_sources(&self, store: Store<DeserializeGuard<IngestSource>>) {
        lock(&self.sources.0).push(store);
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

/// The IngestSource caches whose sources are exported.
#[derive(Clone, Debug, Default)]
struct Sources(Arc<Mutex<Vec<Store<DeserializeGuard<IngestSource>>>>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    namespace: String,
    name: String,
    account: String,
    collection: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceWith {
    #[prometheus(flatten)]
    source: SourceLabels,
    #[prometheus(flatten)]
    extra: Extra,
}

/// The one label a per-source series may add.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Extra {
    None,
    Phase(&'static str),
    State(&'static str),
    Reason(String),
}

impl EncodeLabelSet for Extra {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        let label = match self {
            Extra::None => return Ok(()),
            Extra::Phase(phase) => ("phase", *phase),
            Extra::State(state) => ("state", *state),
            Extra::Reason(reason) => ("reason", reason.as_str()),
        };
        EncodeLabelSet::encode(&&[label][..], encoder)
    }
}

/// One per-source gauge: its name, help and series.
struct Gauge {
    name: &'static str,
    help: &'static str,
    series: Vec<(SourceWith, i64)>,
}

impl Sources {
    /// Every exported gauge of every cached source, from its status.
    fn gauges(&self) -> Vec<Gauge> {
        let gauge = |name, help| Gauge {
            name,
            help,
            series: Vec::new(),
        };
        let mut gauges = [
            gauge(
                "phase",
                "1 for the phase the source is in, 0 for the others",
            ),
            gauge("tasks", "Tasks pending (waiting for a worker) and running"),
            gauge(
                "lag_seconds",
                "Age of the oldest object not yet ingested (0 when caught up)",
            ),
            gauge(
                "dead_letter_objects",
                "Objects in tasks that failed for good (`kubectl sluice history --state failed` \
                 lists them)",
            ),
            gauge(
                "ingested_objects",
                "Objects ingested, each a finished key the coordinator tracks",
            ),
            gauge(
                "last_checkpoint_timestamp_seconds",
                "When the coordinator last wrote its checkpoint (Unix time)",
            ),
            gauge(
                "degraded",
                "1 while the source's Degraded condition is True, by its reason",
            ),
        ];
        let stores = lock(&self.0).clone();
        let sources = stores.iter().flat_map(|store| store.state());
        for guarded in sources {
            let Ok(source) = &guarded.0 else { continue };
            let labels = SourceLabels {
                namespace: source.namespace().unwrap_or_default(),
                name: source.name_any(),
                account: source.spec.account.clone(),
                collection: source.spec.collection.clone(),
            };
            let with = |extra| SourceWith {
                source: labels.clone(),
                extra,
            };
            let status = source.status.clone().unwrap_or_default();
            let [phase, tasks, lag, dead, ingested, checkpoint, degraded] = &mut gauges;
            for candidate in Phase::ALL {
                let on = status.phase == Some(candidate);
                phase
                    .series
                    .push((with(Extra::Phase(candidate.as_str())), on.into()));
            }
            let counts = status.tasks.clone().unwrap_or_default();
            for (state, count) in [("pending", counts.pending), ("running", counts.running)] {
                tasks
                    .series
                    .push((with(Extra::State(state)), saturate(count)));
            }
            lag.series
                .push((with(Extra::None), saturate(status.lag_seconds.unwrap_or(0))));
            let objects = status.objects.clone().unwrap_or_default();
            dead.series
                .push((with(Extra::None), saturate(objects.failed)));
            ingested
                .series
                .push((with(Extra::None), saturate(objects.ingested)));
            if let Some(time) = &status.last_checkpoint_time {
                checkpoint
                    .series
                    .push((with(Extra::None), time.0.as_second()));
            }
            if let Some(condition) = status.conditions.iter().find(|c| c.type_ == DEGRADED) {
                let on = condition.status == "True";
                let reason = Extra::Reason(condition.reason.clone());
                degraded.series.push((with(reason), on.into()));
            }
        }
        gauges.into()
    }
}

fn saturate(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for gauge in self.gauges() {
            if gauge.series.is_empty() {
                continue;
            }
            let mut family = encoder.encode_descriptor(
                gauge.name,
                gauge.help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for (labels, value) in &gauge.series {
                ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}
