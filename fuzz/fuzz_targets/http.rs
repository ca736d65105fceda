#![no_main]
//! The coordinator's task API, driven in process: a few requests of
//! arbitrary method, path, query, token, content type and body, in turn,
//! against a coordinator holding three tasks. Every answer must be below 500,
//! and every refusal a JSON `{"error": "..."}` that says something.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use http::{Request, header};
use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use prometheus_client::registry::Registry;
use sluice::coordinator::Shared;
use sluice::coordinator::finished::FinishedKeys;
use sluice::coordinator::http::router;
use sluice::coordinator::metrics::Metrics;
use sluice::coordinator::tasks::{Limits, Listed, Tasks};
use sluice_core::api::{self, ObjectRef};
use sluice_core::id::SourceId;
use sluice_core::layout::Sink;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const PATHS: [&str; 10] = [
    "/v1/lease",
    "/v1/heartbeat",
    "/v1/tasks",
    "/v1/tasks/",
    "/v1/tasks/1-1",
    "/v1/tasks/1-1/complete",
    "/v1/tasks/1-2/fail",
    "/v1/summary",
    "/healthz",
    "/",
];

#[derive(Arbitrary, Debug)]
struct Call {
    method: u8,
    path: u8,
    /// Appended to the path: an id, more segments, a query.
    suffix: String,
    /// 0: none, 1: the right token, 2: a wrong one, 3: not Bearer.
    token: u8,
    json: bool,
    body: Vec<u8>,
}

fn shared() -> Arc<Shared> {
    let source = SourceId {
        namespace: "shop".into(),
        name: "orders".into(),
        account: "acme".into(),
        collection: "orders".into(),
    };
    let limits = Limits {
        max_objects: 1,
        max_bytes: 1 << 20,
        lease: Duration::from_secs(30),
        max_attempts: 2,
    };
    let mut tasks = Tasks::new(
        source,
        Sink::default(),
        limits,
        1,
        FinishedKeys::default(),
        Vec::new(),
        Default::default(),
    );
    let now = Timestamp::now();
    let listed = (0..3)
        .map(|n| Listed {
            object: ObjectRef {
                key: format!("in/{n}.ndjson"),
                size: 10,
                etag: format!("\"e{n}\""),
            },
            modified: now,
        })
        .collect();
    tasks.plan(listed, now);
    Shared::new(
        tasks,
        TOKEN.into(),
        Duration::from_secs(30),
        None,
        Metrics::new(&mut Registry::default()),
    )
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        // Paused time: a read's wait for its turn passes at once.
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime starts")
    })
}

fuzz_target!(|calls: Vec<Call>| {
    let app = router(shared());
    runtime().block_on(async {
        for call in calls.into_iter().take(8) {
            let method = METHODS[call.method as usize % METHODS.len()];
            let path = PATHS[call.path as usize % PATHS.len()];
            let mut request = Request::builder()
                .method(method)
                .uri(format!("{path}{}", call.suffix));
            match call.token % 6 {
                1 => request = request.header(header::AUTHORIZATION, format!("Bearer {TOKEN}")),
                2 => request = request.header(header::AUTHORIZATION, "Bearer nope"),
                3 => request = request.header(header::AUTHORIZATION, TOKEN),
                4 => request = request.header(api::READ_TOKEN_HEADER, api::read_token(TOKEN)),
                5 => request = request.header(api::READ_TOKEN_HEADER, TOKEN),
                _ => {}
            }
            if call.json {
                request = request.header(header::CONTENT_TYPE, "application/json");
            }
            // An invalid URI never reaches the router: hyper refuses it first.
            let Ok(request) = request.body(Body::from(call.body)) else {
                continue;
            };
            let shown = format!("{method} {path}{:?}", call.suffix);
            let response = app.clone().oneshot(request).await.expect("infallible");
            let status = response.status();
            assert!(status.as_u16() < 500, "{shown}: {status}");
            let body = axum::body::to_bytes(response.into_body(), 16 << 20)
                .await
                .expect("the body is in memory");
            if status.is_client_error() {
                let error: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or_else(|err| {
                        panic!("{shown}: {status} without a JSON body ({err}): {body:?}")
                    });
                let message = error["error"].as_str().unwrap_or_default();
                assert!(!message.is_empty(), "{shown}: {status}: {error}");
            }
        }
    });
});
