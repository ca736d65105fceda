//! Logs, health and metrics, shared by every long-running part of sluice.
//!
//! `serve_admin` answers `/healthz` (the process runs), `/readyz` (it has
//! done what it must before serving, for example synced its first watch)
//! and `/metrics` (Prometheus text). `terminated` is how every part
//! learns it should stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tracing_subscriber::EnvFilter;

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Sets up logging to stderr. `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether the process is ready to serve.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    registry: Arc<Registry>,
}

/// Binds `addr` and serves the health and metrics endpoints (`registry`'s
/// metrics and `sluice_build_info`), and the routes of `api`, until the
/// process exits. Returns the bound address
/// (useful with port 0).
pub async fn serve_admin(
    addr: SocketAddr,
    readiness: Readiness,
    registry: Registry,
    api: Router,
) -> std::io::Result<SocketAddr> {
    let mut registry = registry;
    registry.register(
        "sluice_build",
        "The sluice version this process runs",
        prometheus_client::metrics::info::Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let admin = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            readiness,
            registry: Arc::new(registry),
        });
    tokio::spawn(serve(listener, api.merge(admin)));
    Ok(bound)
}

/// How long a connection may sit idle, or take to send a request's head,
/// before it is closed: a client that opens connections and sends nothing
/// (or a byte at a time) holds none of them for longer.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 1024;

/// Serves `app` over HTTP/1.1 on every connection `listener` accepts, at
/// most [`MAX_CONNECTIONS`] at a time, each closed after [`IDLE_TIMEOUT`]
/// without a request.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(IDLE_TIMEOUT);
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let turn = connections
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                // Answers go out at once, not held back to fill a segment.
                let _ = stream.set_nodelay(true);
                stream
            }
            Err(err) => {
                // Out of file descriptors, say: give the open ones time to close.
                tracing::warn!(error = %err, "cannot accept a connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection closed");
            }
            drop(turn);
        });
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.get() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            "cannot encode metrics\n".to_owned(),
        ),
    }
}

/// Completes on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
pub async fn terminated() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Asks `url` (a health endpoint such as an operator's `/readyz`) and
/// succeeds on a 2xx answer; `sluice probe` is how `helm test` asks it, the
/// image having no shell and no curl.
pub async fn probe(url: &str, timeout: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|err| err.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|err| format!("GET {url}: {err}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status.is_success() {
        println!("GET {url}: {status} {}", body.trim());
        Ok(())
    } else {
        Err(format!("GET {url}: {status} {}", body.trim()))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// `<prefix>_tasks_finished_total{state}`: what ended, by state. The
/// coordinator counts tasks (succeeded, or failed for good), a worker its
/// attempts, in the same shape.
#[derive(Clone, Debug, Default)]
pub struct FinishedTasks(
    prometheus_client::metrics::family::Family<
        StateLabels,
        prometheus_client::metrics::counter::Counter,
    >,
);

impl FinishedTasks {
    pub fn register(&self, registry: &mut Registry, help: &str) {
        registry.register("tasks_finished", help, self.0.clone());
    }

    pub fn count(&self, state: &'static str) {
        self.0.get_or_create(&StateLabels { state }).inc();
    }
}
