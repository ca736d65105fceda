//! The operator: what `sluice operator` runs. For every IngestSource it
//! keeps a coordinator and a pool of workers in shape (see [`children`]),
//! reports what it sees in the status (see [`status`]), and only reconciles
//! while it holds the leader Lease (see [`leader`]).

pub mod autoscale;
pub mod children;
pub mod controller;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod status;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use prometheus_client::registry::Registry;
use tracing::{error, info};

use crate::telemetry::{self, LogFormat, Readiness};
use children::{DEFAULT_COORDINATOR_RESOURCES, DEFAULT_COORDINATOR_SCRATCH, PodDefaults, TokenKey};
use controller::Scope;
use leader::{LeaderElector, LeaseConfig};

/// `sluice operator`: reconcile IngestSources into coordinators and worker
/// pools.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// The image the coordinator and worker pods run.
    #[arg(long, env = "SLUICE_IMAGE", default_value = concat!("sluice:", env!("CARGO_PKG_VERSION")))]
    pub image: String,

    /// The pull policy of that image (Always, IfNotPresent, Never); unset:
    /// Kubernetes' default for the tag.
    #[arg(long, env = "SLUICE_IMAGE_PULL_POLICY")]
    pub image_pull_policy: Option<String>,

    /// The coordinator pods' requests and limits, as JSON
    /// (`{"requests": {"cpu": …, "memory": …}, "limits": {…}}`). A
    /// coordinator holds every finished key of its source in memory, so it
    /// is not BestEffort, the first pod evicted. A source's
    /// spec.coordinator.resources replaces these for its coordinator.
    #[arg(long, env = "SLUICE_COORDINATOR_RESOURCES", default_value = DEFAULT_COORDINATOR_RESOURCES, value_parser = resources)]
    pub coordinator_resources: ResourceRequirements,

    /// The size limit of the coordinator pods' `/tmp` (an emptyDir), where
    /// they spill merges of finished keys.
    #[arg(long, env = "SLUICE_COORDINATOR_SCRATCH_LIMIT", default_value = DEFAULT_COORDINATOR_SCRATCH, value_parser = quantity)]
    pub coordinator_scratch_limit: Quantity,

    /// A file holding the secret key the coordinators' API tokens are
    /// derived from (at least 32 bytes; the chart mounts one from a Secret
    /// it makes). Every replica must have the same; a new key gives every
    /// source a new token and restarts its pods.
    #[arg(long, env = "SLUICE_TOKEN_KEY_FILE")]
    pub token_key_file: std::path::PathBuf,

    /// Serve only IngestSources in these namespaces (repeat the flag or
    /// separate them with commas), so that Roles in those namespaces suffice;
    /// unset: all namespaces, which needs a ClusterRole.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE", value_delimiter = ',')]
    pub watch_namespace: Vec<String>,

    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "SLUICE_ADMIN_ADDRESS", default_value = "0.0.0.0:8080")]
    pub admin_address: SocketAddr,

    /// Reconcile only while holding the leader Lease, so that several
    /// replicas can run and exactly one works.
    #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// The namespace of the leader Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,

    /// The name of the leader Lease.
    #[arg(long, default_value = "sluice-operator")]
    pub lease_name: String,

    /// How long a leader's Lease is valid without renewal; a standby takes
    /// over at most this long after the leader dies.
    #[arg(long, default_value = "15s", value_parser = sluice_core::duration::parse_std)]
    pub lease_duration: Duration,

    /// How often the leader renews its Lease.
    #[arg(long, default_value = "5s", value_parser = sluice_core::duration::parse_std)]
    pub lease_renew_interval: Duration,

    /// This replica's identity in the Lease (in a pod: its name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Report an IngestSource Degraded (CoordinatorUnavailable) when its
    /// coordinator has not written its status for this long. Coordinators
    /// write it at least every --heartbeat-interval (1m by default), so
    /// keep this a few times longer.
    #[arg(long, env = "SLUICE_COORDINATOR_TIMEOUT", default_value = "3m", value_parser = sluice_core::duration::parse_std)]
    pub coordinator_timeout: Duration,

    /// Report an IngestSource Degraded (TasksFailed) while its latest task
    /// that failed for good (status.recentFailures) is younger than this.
    #[arg(long, env = "SLUICE_FAILURE_WINDOW", default_value = "1h", value_parser = sluice_core::duration::parse_std)]
    pub failure_window: Duration,

    /// Shrink an autoscaled worker pool (spec.workers.autoscale) only to the
    /// largest size its backlog asked for within this long, so a brief dip
    /// does not stop workers; growing is immediate.
    #[arg(long, env = "SLUICE_SCALE_DOWN_STABILIZATION", default_value = "5m", value_parser = sluice_core::duration::parse_std)]
    pub scale_down_stabilization: Duration,

    /// How logs are written, here and by the coordinators and workers
    /// (which also get this process's `RUST_LOG`).
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot serve health and metrics: {0}")]
    Admin(#[from] std::io::Error),
    #[error("leader election: {0}")]
    Leader(#[from] leader::Error),
    #[error("lost the leader Lease; exiting so that a standby takes over")]
    LostLeadership,
    #[error("--token-key-file {path}: {reason}")]
    TokenKey { path: String, reason: String },
}

/// The shortest token key: 256 bits, as long as the tokens.
const MIN_TOKEN_KEY: usize = 32;

/// Reads the token key, refusing one too short to keep tokens unguessable.
fn token_key(path: &std::path::Path) -> Result<TokenKey, Error> {
    let fail = |reason: String| Error::TokenKey {
        path: path.display().to_string(),
        reason,
    };
    let key = std::fs::read(path).map_err(|err| fail(err.to_string()))?;
    if key.len() < MIN_TOKEN_KEY {
        return Err(fail(format!(
            "holds {} bytes; a key needs at least {MIN_TOKEN_KEY} (for example `head -c 48 /dev/urandom | base64`)",
            key.len()
        )));
    }
    Ok(TokenKey(key.into()))
}

/// `--coordinator-resources`: requests and limits as JSON. The quantities
/// are the API server's to check, as in any Deployment.
fn resources(text: &str) -> Result<ResourceRequirements, String> {
    serde_json::from_str(text).map_err(|err| {
        format!("not a JSON object of requests and limits, such as {DEFAULT_COORDINATOR_RESOURCES}: {err}")
    })
}

/// `--coordinator-scratch-limit`: a quantity, such as `1Gi`.
fn quantity(text: &str) -> Result<Quantity, std::convert::Infallible> {
    Ok(Quantity(text.to_owned()))
}

/// Runs the operator until SIGTERM or Ctrl-C.
pub async fn run(args: OperatorArgs) -> Result<(), Error> {
    telemetry::init_logging(args.log_format);
    let token_key = token_key(&args.token_key_file)?;
    let client = kube::Client::try_default().await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(metrics::Metrics::new(&mut registry));
    // A standby replica is healthy and ready; the leader is ready once its
    // first watch has synced.
    let readiness = Readiness::default();
    readiness.set(true);
    let admin = telemetry::serve_admin(
        args.admin_address,
        readiness.clone(),
        registry,
        axum::Router::new(),
    )
    .await?;
    info!(address = %admin, "serving /healthz, /readyz and /metrics");

    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        telemetry::terminated().await;
        info!("shutting down");
        let _ = stop.send(true);
    });

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    // The Lease has a client, and so connections, of its own: renewals
    // never queue behind the reconciles' requests.
    let lease_client = if args.leader_election {
        Some(kube::Client::try_default().await?)
    } else {
        None
    };
    let elector = lease_client.map(|lease_client| {
        LeaderElector::new(
            lease_client,
            LeaseConfig {
                namespace: args.lease_namespace.clone(),
                name: args.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: args.lease_duration,
                renew_interval: args.lease_renew_interval,
            },
        )
    });
    if let Some(elector) = &elector {
        let mut stop = stopped.clone();
        tokio::select! {
            acquired = elector.acquire() => acquired?,
            _ = stop.wait_for(|stop| *stop) => return Ok(()),
        }
    }

    readiness.set(false);
    let scopes = scopes(args.watch_namespace);
    let options = controller::Options {
        defaults: PodDefaults {
            image: args.image,
            image_pull_policy: args.image_pull_policy,
            coordinator_resources: args.coordinator_resources,
            coordinator_scratch: args.coordinator_scratch_limit,
            log_format: args.log_format,
            log_filter: std::env::var("RUST_LOG").ok(),
        },
        limits: status::Limits {
            coordinator_timeout: args.coordinator_timeout,
            failure_window: args.failure_window,
        },
        scale_down_stabilization: args.scale_down_stabilization,
        token_key,
    };
    // One controller per namespace (each with its own namespaced watches,
    // which is all a Role allows); ready once every one has synced.
    let unsynced = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
    let reconciling = futures::future::join_all(scopes.into_iter().map(|scope| {
        let (unsynced, readiness) = (unsynced.clone(), readiness.clone());
        controller::run(
            client.clone(),
            scope,
            options.clone(),
            events::Recorder::new(client.clone(), controller::MANAGER, &identity),
            metrics.clone(),
            stopped.clone(),
            move || {
                if unsynced.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                    readiness.set(true);
                }
            },
        )
    }));
    let reconciling = async move {
        reconciling.await;
    };
    match elector {
        None => {
            reconciling.await;
            Ok(())
        }
        Some(elector) => tokio::select! {
            () = reconciling => {
                elector.release().await;
                Ok(())
            }
            lost = elector.hold() => {
                error!(reason = %lost, "lost the leader Lease");
                Err(Error::LostLeadership)
            }
        },
    }
}

/// The namespaces to serve, each once; none named: all of them.
fn scopes(namespaces: Vec<String>) -> Vec<Scope> {
    let mut namespaces: Vec<String> = namespaces
        .into_iter()
        .map(|namespace| namespace.trim().to_owned())
        .filter(|namespace| !namespace.is_empty())
        .collect();
    namespaces.sort();
    namespaces.dedup();
    if namespaces.is_empty() {
        vec![Scope::AllNamespaces]
    } else {
        namespaces.into_iter().map(Scope::Namespace).collect()
    }
}

/// Outside a pod: the host name and the process id, unique per process.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(scopes: &[Scope]) -> Vec<Option<&str>> {
        scopes
            .iter()
            .map(|scope| match scope {
                Scope::AllNamespaces => None,
                Scope::Namespace(namespace) => Some(namespace.as_str()),
            })
            .collect()
    }

    #[test]
    fn no_namespace_means_all_of_them() {
        assert_eq!(names(&scopes(vec![])), [None]);
        assert_eq!(names(&scopes(vec![" ".into()])), [None]);
    }

    #[test]
    fn each_watched_namespace_is_served_once() {
        let args = <OperatorArgs as clap::FromArgMatches>::from_arg_matches(
            &<OperatorArgs as clap::Args>::augment_args(clap::Command::new("operator"))
                .try_get_matches_from([
                    "operator",
                    "--token-key-file=key",
                    "--watch-namespace=team-b,team-a",
                    "--watch-namespace",
                    "team-a",
                ])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            names(&scopes(args.watch_namespace)),
            [Some("team-a"), Some("team-b")]
        );
    }
}
