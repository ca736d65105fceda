//! `sluice tasks`: who is doing what now. Asks the coordinator of every
//! matching IngestSource for its live tasks, merges them and prints them
//! like `kubectl get`. A coordinator that does not answer is named; the
//! others still print.
//!
//! Kubernetes RBAC decides who may look: the request goes through the API
//! server's service proxy (`get` on services/proxy) and presents the read
//! token from the source's token Secret (`get` on that Secret), which no
//! pod of the cluster holds unless given it.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use clap::Args;
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use sluice_core::api::{ErrorBody, READ_TOKEN_HEADER, TaskList, TaskQuery, TaskState, TaskView};

use super::cluster::{ClusterArgs, ClusterError};
use super::output::{self, OutputArgs, Row};
use crate::crd::IngestSource;
use crate::operator::children::READ_TOKEN_KEY;

/// How long one coordinator may take to answer one page.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The most tasks a coordinator returns in one page.
const PAGE: u32 = 1000;
/// How many coordinators are asked at once.
const PARALLEL: usize = 16;

/// List the live tasks of the coordinators: pending, running, and the latest finished.
///
/// Examples:
///   kubectl sluice tasks                         # every source in the namespace
///   kubectl sluice tasks orders --state running -o wide
///   kubectl sluice tasks -A --account acme --worker orders-worker-7d9f-x2x
///   sluice tasks --coordinator http://127.0.0.1:8080 --read-token "$TOKEN"
///       # after kubectl port-forward, with TOKEN the read-token of the source's token Secret
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct TasksArgs {
    /// Only this IngestSource (in the namespace of -n).
    #[arg(value_name = "SOURCE")]
    pub source: Option<String>,

    /// Only tasks of this account.
    #[arg(long)]
    pub account: Option<String>,

    /// Only tasks of this collection.
    #[arg(long)]
    pub collection: Option<String>,

    /// Only tasks in this state.
    #[arg(long, value_parser = super::task_states(&TaskState::ALL))]
    pub state: Option<TaskState>,

    /// Only tasks leased to this worker (its pod name).
    #[arg(long)]
    pub worker: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,

    /// After listing, keep watching: on a terminal the list is redrawn
    /// every 2 seconds; otherwise each task that appears or changes is
    /// printed again, one line per change (with -o ndjson, one object).
    /// Stops on Ctrl-C.
    #[arg(short = 'w', long)]
    pub watch: bool,

    /// At most this many tasks from each source.
    #[arg(long, default_value_t = 500, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: u32,

    /// Ask the coordinator at this URL directly instead of finding the
    /// coordinators through the cluster (repeat for several).
    #[arg(long, value_name = "URL", conflicts_with_all = ["source", "all_namespaces", "namespace"],
          requires = "read_token")]
    pub coordinator: Vec<String>,

    /// The read token to present to the coordinators of --coordinator: the
    /// `read-token` of the source's token Secret (`SOURCE-token`). Without
    /// --coordinator, each source's is read from its Secret and this is
    /// not used.
    #[arg(
        long,
        env = "SLUICE_READ_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub read_token: Option<String>,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `sluice tasks` printed nothing or not everything.
#[derive(Debug, thiserror::Error)]
pub enum TasksError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("{failed} of {asked} coordinators did not answer (named above)")]
    Unanswered { failed: usize, asked: usize },
}

/// Lists, prints and reports; fails when any coordinator did not answer.
/// With --watch, goes on until Ctrl-C.
pub async fn run(args: TasksArgs) -> Result<(), TasksError> {
    let (coordinators, scope) = coordinators(&args).await?;
    if args.watch {
        return watch(&args, &coordinators).await;
    }
    let look = look(&args, &coordinators).await;
    output::print(&output::render(
        args.output,
        &look.tasks,
        jiff::Timestamp::now(),
    ))?;
    if coordinators.is_empty() {
        eprintln!("No IngestSources found {scope}.");
    } else if look.tasks.is_empty() && look.failed.is_empty() && args.output.is_table() {
        eprintln!("No tasks found {scope}.");
    }
    for label in &look.truncated {
        eprintln!(
            "{label}: more than {} tasks; showing the first (raise --limit)",
            args.limit
        );
    }
    for (label, error) in &look.failed {
        eprintln!("error: {label}: {error}");
    }
    match look.failed.len() {
        0 => Ok(()),
        failed => Err(TasksError::Unanswered {
            failed,
            asked: coordinators.len(),
        }),
    }
}

/// How often --watch looks again.
const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// --watch: a terminal gets the list redrawn, a pipe each change once.
async fn watch(args: &TasksArgs, coordinators: &[Coordinator]) -> Result<(), TasksError> {
    let terminal = std::io::stdout().is_terminal();
    let mut printed: HashMap<(String, String), String> = HashMap::new();
    let mut errors: HashMap<String, String> = HashMap::new();
    let mut output = args.output;
    let stop = crate::telemetry::terminated();
    tokio::pin!(stop);
    loop {
        let look = look(args, coordinators).await;
        let now = jiff::Timestamp::now();
        if terminal {
            // Home, clear, then the list as without --watch.
            let list = output::render(args.output, &look.tasks, now);
            output::print(&format!("\x1b[H\x1b[2J{list}"))?;
        } else {
            let changed: Vec<TaskView> = look
                .tasks
                .into_iter()
                .filter(|task| {
                    let key = (task.source.clone(), task.id.to_string());
                    let seen = serde_json::to_string(task).expect("a task view serializes");
                    printed.insert(key, seen.clone()).as_ref() != Some(&seen)
                })
                .collect();
            if !changed.is_empty() {
                output::print(&output::render(output, &changed, now))?;
                output.no_headers = true;
            }
        }
        for (label, error) in look.failed {
            if errors.get(&label) != Some(&error) {
                eprintln!("error: {label}: {error}");
                errors.insert(label, error);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = &mut stop => return Ok(()),
        }
    }
}

/// One look at every coordinator.
struct Look {
    /// What those that answered hold, sorted.
    tasks: Vec<TaskView>,
    /// Those that hold more than --limit, sorted.
    truncated: Vec<String>,
    /// Those that did not answer, and why, sorted.
    failed: Vec<(String, String)>,
}

async fn look(args: &TasksArgs, coordinators: &[Coordinator]) -> Look {
    let query = TaskQuery {
        account: args.account.clone(),
        collection: args.collection.clone(),
        state: args.state,
        worker: args.worker.clone(),
        ..TaskQuery::default()
    };
    let answers: Vec<(String, Result<Listed, String>)> = stream::iter(coordinators)
        .map(|coordinator| {
            let query = query.clone();
            async move {
                let listed = coordinator.list(query, args.limit).await;
                (coordinator.label.clone(), listed)
            }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let mut look = Look {
        tasks: Vec::new(),
        truncated: Vec::new(),
        failed: Vec::new(),
    };
    for (label, answer) in answers {
        match answer {
            Ok(listed) => {
                look.tasks.extend(listed.tasks);
                if listed.more {
                    look.truncated.push(label);
                }
            }
            Err(error) => look.failed.push((label, error)),
        }
    }
    sort(&mut look.tasks);
    look.truncated.sort();
    look.failed.sort();
    look
}

/// The coordinators to ask, and where they were looked for (for messages).
async fn coordinators(args: &TasksArgs) -> Result<(Vec<Coordinator>, String), TasksError> {
    if !args.coordinator.is_empty() {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .expect("a plain HTTP client builds");
        let direct = args
            .coordinator
            .iter()
            .map(|url| Coordinator {
                label: format!("coordinator {url}"),
                endpoint: Endpoint::Direct {
                    http: http.clone(),
                    base: url.trim_end_matches('/').to_owned(),
                    read_token: args.read_token.clone().unwrap_or_default(),
                },
            })
            .collect();
        return Ok((direct, "at the given coordinators".to_owned()));
    }
    let cluster = args.cluster.connect().await?;
    let scope = match &cluster.namespace {
        Some(namespace) => format!("in namespace {namespace}"),
        None => "in any namespace".to_owned(),
    };
    let sources = cluster.sources(args.source.as_deref()).await?;
    let wanted = |source: &IngestSource| {
        args.account
            .as_ref()
            .is_none_or(|a| *a == source.spec.account)
            && args
                .collection
                .as_ref()
                .is_none_or(|c| *c == source.spec.collection)
    };
    let via_proxy = sources
        .iter()
        .filter(|source| wanted(source))
        .map(|source| {
            let namespace = source.namespace().unwrap_or_default();
            let names = crate::crd::Names::of(source);
            Coordinator {
                label: format!("IngestSource {namespace}/{}", source.name_any()),
                endpoint: Endpoint::Proxy {
                    client: cluster.client.clone(),
                    base: format!(
                        "/api/v1/namespaces/{namespace}/services/{}:http/proxy",
                        names.coordinator
                    ),
                    namespace: namespace.clone(),
                    token_secret: names.token,
                },
            }
        })
        .collect();
    Ok((via_proxy, scope))
}

/// One coordinator and how to reach it.
struct Coordinator {
    /// How it is named in messages.
    label: String,
    endpoint: Endpoint,
}

enum Endpoint {
    /// Through the API server's service proxy, with the read token of the
    /// Secret `token_secret` of `namespace`.
    Proxy {
        client: kube::Client,
        base: String,
        namespace: String,
        token_secret: String,
    },
    /// Straight to its HTTP address.
    Direct {
        http: reqwest::Client,
        base: String,
        read_token: String,
    },
}

/// Up to a limit of the tasks of one coordinator.
struct Listed {
    tasks: Vec<TaskView>,
    /// There were more than the limit.
    more: bool,
}

impl Coordinator {
    /// Pages through `GET /v1/tasks` until `limit` tasks or the last page.
    async fn list(&self, mut query: TaskQuery, limit: u32) -> Result<Listed, String> {
        let read_token = self.endpoint.read_token().await?;
        let mut tasks = Vec::new();
        loop {
            query.limit = Some((limit - tasks.len() as u32).clamp(1, PAGE));
            let path = format!(
                "/v1/tasks?{}",
                serde_urlencoded::to_string(&query).expect("a task query encodes")
            );
            let (status, body) =
                tokio::time::timeout(TIMEOUT, self.endpoint.get(&path, &read_token))
                    .await
                    .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))??;
            if status != 200 {
                return Err(refusal(status, &body));
            }
            let page: TaskList = serde_json::from_slice(&body)
                .map_err(|err| format!("answered with an unreadable task list: {err}"))?;
            tasks.extend(page.items);
            match page.next {
                Some(cursor) if (tasks.len() as u32) < limit => query.cursor = Some(cursor),
                next => {
                    tasks.truncate(limit as usize);
                    return Ok(Listed {
                        tasks,
                        more: next.is_some(),
                    });
                }
            }
        }
    }
}

impl Endpoint {
    /// The read token to present, or why there is none.
    async fn read_token(&self) -> Result<String, String> {
        let (secrets, name) = match self {
            Endpoint::Direct { read_token, .. } => return Ok(read_token.clone()),
            Endpoint::Proxy {
                client,
                namespace,
                token_secret,
                ..
            } => (
                Api::<Secret>::namespaced(client.clone(), namespace),
                token_secret,
            ),
        };
        let secret = tokio::time::timeout(TIMEOUT, secrets.get(name))
            .await
            .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
            .map_err(|err| match err {
                kube::Error::Api(status) if status.is_forbidden() => format!(
                    "you may not read Secret {name}, which holds the read token: you need `get` on it \
                     (the `edit` and `admin` roles of the namespace have it)"
                ),
                kube::Error::Api(status) if status.is_not_found() => format!(
                    "its token Secret {name} does not exist (yet): see `kubectl describe ingestsource`"
                ),
                err => format!("cannot read Secret {name}: {err}"),
            })?;
        secret
            .data
            .and_then(|mut data| data.remove(READ_TOKEN_KEY))
            .and_then(|token| String::from_utf8(token.0).ok())
            .ok_or_else(|| {
                format!(
                    "Secret {name} holds no {READ_TOKEN_KEY} yet: an older operator wrote it; \
                     the operator adds it when it next updates the pods"
                )
            })
    }

    /// The status code and body of `GET path`, or why there was none.
    async fn get(&self, path: &str, read_token: &str) -> Result<(u16, bytes::Bytes), String> {
        match self {
            Endpoint::Proxy { client, base, .. } => {
                let request = http::Request::get(format!("{base}{path}"))
                    .header(READ_TOKEN_HEADER, read_token)
                    .body(kube::client::Body::empty())
                    .expect("a GET request builds");
                let response = client
                    .send(request)
                    .await
                    .map_err(|err| format!("cannot reach the API server: {err}"))?;
                let status = response.status().as_u16();
                let body = response
                    .into_body()
                    .collect_bytes()
                    .await
                    .map_err(|err| format!("the answer broke off: {err}"))?;
                Ok((status, body))
            }
            Endpoint::Direct { http, base, .. } => {
                let response = http
                    .get(format!("{base}{path}"))
                    .header(READ_TOKEN_HEADER, read_token)
                    .send()
                    .await
                    .map_err(|err| format!("cannot reach it: {}", error_chain(&err)))?;
                let status = response.status().as_u16();
                let body = response
                    .bytes()
                    .await
                    .map_err(|err| format!("the answer broke off: {err}"))?;
                Ok((status, body))
            }
        }
    }
}

/// A refusal said plainly: the coordinator's own error, or the API
/// server's (a 503 from the service proxy means no coordinator pod is
/// ready).
fn refusal(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct ApiStatus {
        message: String,
    }
    if let Ok(ErrorBody { error }) = serde_json::from_slice(body) {
        return format!("the coordinator refused the query (HTTP {status}): {error}");
    }
    let message = serde_json::from_slice::<ApiStatus>(body)
        .map(|s| s.message)
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(300)
                .collect()
        });
    match status {
        503 => {
            format!("the coordinator is not available (is its pod running and ready?): {message}")
        }
        401 | 403 => format!(
            "the API server refused (HTTP {status}): {message}; you need `get` on services/proxy in this namespace"
        ),
        _ => format!("HTTP {status}: {message}"),
    }
}

/// An error with its causes, which reqwest keeps apart.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// By source, then running, pending, failed, succeeded, then oldest first.
fn sort(tasks: &mut [TaskView]) {
    let rank = |state: TaskState| match state {
        TaskState::Running => 0,
        TaskState::Pending => 1,
        TaskState::Failed => 2,
        TaskState::Succeeded => 3,
    };
    tasks.sort_by(|a, b| {
        (
            &a.source,
            rank(a.state),
            a.started.or(Some(a.created)),
            &a.id,
        )
            .cmp(&(
                &b.source,
                rank(b.state),
                b.started.or(Some(b.created)),
                &b.id,
            ))
    });
}

impl Row for TaskView {
    fn headers(wide: bool) -> Vec<&'static str> {
        let mut headers = vec![
            "source", "task", "state", "worker", "attempt", "objects", "records", "read", "age",
        ];
        if wide {
            headers.extend(["account", "collection", "size", "first key", "error"]);
        }
        headers
    }

    /// `task/NAMESPACE/SOURCE/ID`: a task's id is its source's own.
    fn name(&self) -> String {
        format!("task/{}/{}", self.source, self.id)
    }

    fn cells(&self, wide: bool, now: jiff::Timestamp) -> Vec<String> {
        // Running: time in this attempt; pending: time waiting; finished:
        // time since it ended.
        let since = match self.state {
            TaskState::Running => self.started,
            TaskState::Pending => Some(self.created),
            TaskState::Succeeded | TaskState::Failed => self.finished,
        };
        let mut cells = vec![
            self.source.clone(),
            self.id.to_string(),
            self.state.as_str().to_owned(),
            self.worker.clone().unwrap_or_else(|| "-".into()),
            self.attempt.to_string(),
            self.objects.to_string(),
            self.records.to_string(),
            output::bytes(self.bytes),
            output::since(since, now),
        ];
        if wide {
            cells.extend([
                self.account.clone(),
                self.collection.clone(),
                output::bytes(self.size),
                self.first_key.clone(),
                self.error
                    .as_deref()
                    .map(first_line)
                    .unwrap_or("-")
                    .to_owned(),
            ]);
        }
        cells
    }
}

/// The first line of an error, for a table cell.
fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(source: &str, id: &str, state: TaskState, created: i64) -> TaskView {
        TaskView {
            id: id.parse().unwrap(),
            account: "acme".into(),
            collection: "orders".into(),
            source: source.into(),
            state,
            worker: (state == TaskState::Running).then(|| "w-1".into()),
            attempt: 1,
            objects: 3,
            size: 3 << 20,
            first_key: "in/a.json".into(),
            records: 42,
            bytes: 1536,
            created: jiff::Timestamp::from_second(created).unwrap(),
            started: None,
            finished: None,
            error: (state == TaskState::Failed).then(|| "bad gzip\nat offset 7".into()),
        }
    }

    #[test]
    fn tasks_sort_by_source_then_running_pending_failed_succeeded() {
        let mut tasks = vec![
            task("b/x", "1-1", TaskState::Running, 5),
            task("a/x", "1-4", TaskState::Succeeded, 1),
            task("a/x", "1-3", TaskState::Pending, 9),
            task("a/x", "1-2", TaskState::Pending, 2),
            task("a/x", "1-5", TaskState::Failed, 1),
            task("a/x", "1-6", TaskState::Running, 7),
        ];
        sort(&mut tasks);
        let order: Vec<String> = tasks.iter().map(|t| t.id.to_string()).collect();
        assert_eq!(order, ["1-6", "1-2", "1-3", "1-5", "1-4", "1-1"]);
    }

    #[test]
    fn a_wide_row_shows_the_first_line_of_the_error() {
        let now = jiff::Timestamp::from_second(100).unwrap();
        let row = task("a/x", "1-5", TaskState::Failed, 1).cells(true, now);
        assert_eq!(row.len(), TaskView::headers(true).len());
        assert_eq!(row.last().unwrap(), "bad gzip");
        assert_eq!(row[7], "1.5KiB");
        assert_eq!(
            row[8], "-",
            "a failed task without a finish time has no age"
        );
    }

    #[test]
    fn refusals_name_what_refused() {
        let coordinator = refusal(400, br#"{"error":"unknown state \"done\""}"#);
        assert!(coordinator.contains("coordinator refused") && coordinator.contains("done"));
        let proxy = refusal(
            503,
            br#"{"kind":"Status","message":"no endpoints available for service \"orders-coordinator\""}"#,
        );
        assert!(
            proxy.contains("not available") && proxy.contains("no endpoints"),
            "{proxy}"
        );
        let forbidden = refusal(
            403,
            br#"{"kind":"Status","message":"services \"x\" is forbidden"}"#,
        );
        assert!(forbidden.contains("services/proxy"), "{forbidden}");
        assert_eq!(refusal(502, b"bad gateway"), "HTTP 502: bad gateway");
    }
}
