//! `sluice history`: what happened to tasks that ended, read straight from
//! the archive in S3, so it answers even when the cluster's ingest (or the
//! cluster) is down. The cluster is only asked where the archive is, and
//! only when `--archive` does not say.

pub mod progress;
pub mod query;
pub mod scan;

use std::collections::BTreeMap;
use std::sync::Arc;

use clap::Args;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use sluice_core::api::TaskState;
use sluice_core::id::TaskId;
use sluice_core::location::S3Location;

use self::progress::Progress;
use self::query::{BadTime, Filter, Matcher};
use self::scan::{Archive, Mode, Unreachable};

use super::cluster::{Cluster, ClusterArgs, ClusterError};
use super::output::{self, OutputArgs};
use crate::config::Store;
use crate::crd::IngestSource;
use crate::s3;

/// The window when `--since` is not given.
const DEFAULT_SINCE: &str = "24h";

/// Show tasks that ended, from the archive in S3.
///
/// Reads the task records the coordinators archive (succeeded and failed
/// tasks, with worker, times, objects, records and error) straight from S3,
/// so it answers even when ingest or the whole cluster is down. Only the
/// time and source partitions that can match are read; matches print
/// oldest first.
///
/// Where the archive is: --archive (with --endpoint and --region) wins, and
/// then the cluster is not contacted at all; credentials come from
/// SLUICE_ARCHIVE_AWS_ACCESS_KEY_ID/..._SECRET_ACCESS_KEY, else the standard
/// AWS chain (AWS_ACCESS_KEY_ID, AWS_PROFILE and ~/.aws, web identity,
/// instance metadata). Without --archive, the archive of the IngestSource
/// --source names, or of every IngestSource in the namespace (-n, or all
/// with -A), is used, with the credentials Secret it names when you may read
/// it, else the same environment credentials; --endpoint and --region then
/// override the IngestSource's (for example through a port-forward).
///
/// Examples:
///   kubectl sluice history --collection orders --state failed --since 24h
///   kubectl sluice history --source shop/orders --worker orders-worker-7d9f-x2x -o wide
///   kubectl sluice history -A --grep 'in/2026/11/24/part-0042.ndjson' --since 7d
///   kubectl sluice history --task 3-1042 --since 30d -o yaml
///   kubectl sluice history --account acme --since 2026-11-24T00:00:00Z --until 2026-11-25 --stats
///   sluice history --archive s3://acme-archive/sluice --endpoint http://127.0.0.1:9000 \
///       --state failed -o ndjson | jq .error
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct HistoryArgs {
    /// Only tasks of this account.
    #[arg(long, help_heading = "Filters")]
    pub account: Option<String>,

    /// Only tasks of this collection.
    #[arg(long, help_heading = "Filters")]
    pub collection: Option<String>,

    /// Only tasks of this IngestSource, as NAMESPACE/NAME (or NAME, in the
    /// namespace of -n or the kubeconfig's).
    #[arg(long, value_name = "NS/NAME", help_heading = "Filters")]
    pub source: Option<String>,

    /// Only tasks that ended so: succeeded or failed (failed for good,
    /// after every attempt).
    #[arg(long, value_name = "STATE", help_heading = "Filters")]
    pub state: Option<TaskState>,

    /// Only tasks whose last attempt ran on this worker (its pod name).
    #[arg(long, help_heading = "Filters")]
    pub worker: Option<String>,

    /// Only the task with this id (EPOCH-SEQ, as `sluice tasks` shows it).
    #[arg(long, value_name = "ID", help_heading = "Filters")]
    pub task: Option<TaskId>,

    /// Only tasks that finished at or after this time: a duration before now
    /// (90m, 24h, 7d, 2w), an RFC 3339 time (2026-11-24T13:00:00Z), or a
    /// date (2026-11-24, UTC).
    #[arg(long, value_name = "TIME", default_value = DEFAULT_SINCE, help_heading = "Filters")]
    pub since: String,

    /// Only tasks that finished before this time (same forms as --since).
    #[arg(long, value_name = "TIME", help_heading = "Filters")]
    pub until: Option<String>,

    /// Only tasks with this text (case-sensitive) in their error, id,
    /// worker, source, object keys or outputs.
    #[arg(long, value_name = "TEXT", help_heading = "Filters")]
    pub grep: Option<String>,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Print only the latest N matches (still oldest first).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,

    /// Print only how many tasks match.
    #[arg(long, conflicts_with_all = ["stats", "limit"])]
    pub count: bool,

    /// Print a summary of the matches instead: tasks by state, by worker
    /// (with failures, records, bytes) and by kind of error.
    #[arg(long, conflicts_with = "limit")]
    pub stats: bool,

    /// The archive to read, s3://BUCKET/PREFIX (the IngestSource's
    /// spec.archive.s3). Wins over the cluster, which is then not contacted.
    #[arg(
        long,
        env = "SLUICE_ARCHIVE",
        value_name = "URL",
        help_heading = "Archive"
    )]
    pub archive: Option<String>,

    /// The S3 endpoint of an S3-compatible store, for example
    /// http://minio.storage:9000 (buckets are then addressed by path).
    /// Overrides the IngestSources'.
    #[arg(long, value_name = "URL", help_heading = "Archive")]
    pub endpoint: Option<String>,

    /// The S3 region. Overrides the IngestSources'; default: AWS_REGION, then
    /// us-east-1.
    #[arg(long, help_heading = "Archive")]
    pub region: Option<String>,

    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Why `sluice history` could not answer (fully).
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "{0}\n(to read the archive without the cluster, pass --archive s3://BUCKET/PREFIX, \
         with --endpoint for an S3-compatible store)"
    )]
    Cluster(ClusterError),
    #[error(transparent)]
    Time(#[from] BadTime),
    #[error("--since {since} is not before --until {until}: nothing can match")]
    EmptyWindow { since: String, until: String },
    #[error("invalid --archive {0:?}: write it as s3://BUCKET or s3://BUCKET/PREFIX")]
    BadArchive(String),
    #[error("invalid --source {0:?}: write it as NAMESPACE/NAME, or NAME with -n NAMESPACE")]
    BadSource(String),
    #[error(
        "only tasks that ended are archived: use --state succeeded or --state failed \
         (for {state} tasks: sluice tasks --state {state})", state = .0.as_str()
    )]
    LiveState(TaskState),
    #[error(
        "no IngestSources {scope} to take the archive location from: name one with --source \
         NAMESPACE/NAME, look in all namespaces with -A, or pass --archive s3://BUCKET/PREFIX"
    )]
    NoSources { scope: String },
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "could not read {0} of the archive's objects or lines (named above); the results miss \
         their tasks"
    )]
    Damaged(usize),
}

/// Runs the query and prints the answer.
pub async fn run(args: HistoryArgs) -> Result<(), HistoryError> {
    let now = Timestamp::now();
    let mut filter = filter(&args, now)?;
    let archives = match &args.archive {
        Some(url) => {
            let location = archive_location(url, &args)?;
            vec![archive_for(location, None, None).await]
        }
        None => from_cluster(&args, &mut filter).await?,
    };
    let matcher = Arc::new(Matcher::new(filter));
    let outcome = query(
        &archives,
        matcher.clone(),
        mode(&args),
        Progress::stderr(),
        now,
    )
    .await?;
    for problem in &outcome.problems {
        eprintln!("warning: {problem}");
    }
    print(
        &args,
        &archives,
        &matcher,
        outcome.matches,
        &outcome.stats,
        now,
    )?;
    match outcome.problems.len() {
        0 => Ok(()),
        damaged => Err(HistoryError::Damaged(damaged)),
    }
}

/// Lists what can match in every archive, then reads it.
pub async fn query(
    archives: &[Archive],
    matcher: Arc<Matcher>,
    mode: Mode,
    progress: Progress,
    now: Timestamp,
) -> Result<scan::Outcome, Unreachable> {
    let shared = &matcher;
    let listings = futures::future::join_all(archives.iter().enumerate().map(
        |(index, archive)| async move {
            archive.check_credentials().await?;
            archive.list(index, shared, now).await
        },
    ))
    .await;
    let mut objects = Vec::new();
    for listing in listings {
        objects.extend(listing?);
    }
    Ok(scan::read(archives, objects, matcher, mode, progress).await)
}

fn mode(args: &HistoryArgs) -> Mode {
    if args.count || args.stats {
        Mode::Stats
    } else {
        Mode::List(args.limit.map(|limit| limit as usize))
    }
}

/// The filter the flags describe (the namespace of -n, too, when given).
fn filter(args: &HistoryArgs, now: Timestamp) -> Result<Filter, HistoryError> {
    let since = query::parse_time("--since", &args.since, now)?;
    let until = args
        .until
        .as_deref()
        .map(|until| query::parse_time("--until", until, now))
        .transpose()?;
    if let Some(until) = until.filter(|until| *until <= since) {
        return Err(HistoryError::EmptyWindow {
            since: query::time(since),
            until: query::time(until),
        });
    }
    if let Some(state @ (TaskState::Pending | TaskState::Running)) = args.state {
        return Err(HistoryError::LiveState(state));
    }
    let mut filter = Filter::window(since, until);
    filter.account = args.account.clone();
    filter.collection = args.collection.clone();
    filter.state = args.state;
    filter.worker = args.worker.clone();
    filter.task = args.task;
    filter.grep = args.grep.clone().filter(|grep| !grep.is_empty());
    if !args.cluster.all_namespaces {
        filter.namespace = args.cluster.namespace.clone();
    }
    if let Some(source) = &args.source {
        let bad = || HistoryError::BadSource(source.clone());
        let (namespace, name) = match source.split_once('/') {
            Some((namespace, name)) => (Some(namespace.to_owned()), name),
            None => (filter.namespace.clone(), source.as_str()),
        };
        if name.is_empty() || name.contains('/') || namespace.as_deref() == Some("") {
            return Err(bad());
        }
        // Without a namespace, only the cluster can say which one.
        if namespace.is_none() && args.archive.is_some() {
            return Err(bad());
        }
        filter.namespace = namespace;
        filter.name = Some(name.to_owned());
    }
    Ok(filter)
}

/// The location `--archive` names, with `--endpoint` and `--region`.
fn archive_location(url: &str, args: &HistoryArgs) -> Result<S3Location, HistoryError> {
    let bad = || HistoryError::BadArchive(url.to_owned());
    let rest = url.strip_prefix("s3://").ok_or_else(bad)?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad());
    }
    let mut location = S3Location {
        bucket: bucket.to_owned(),
        prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
        ..S3Location::default()
    };
    override_location(&mut location, args);
    Ok(location)
}

fn override_location(location: &mut S3Location, args: &HistoryArgs) {
    if let Some(endpoint) = &args.endpoint {
        location.endpoint = Some(endpoint.clone());
        location.force_path_style = true;
    }
    if let Some(region) = &args.region {
        location.region = Some(region.clone());
    }
}

/// A client for `location`: with `credentials` when given, else those of
/// the environment.
async fn archive_for(
    location: S3Location,
    credentials: Option<s3::Credentials>,
    note: Option<String>,
) -> Archive {
    let credentials = credentials.or_else(|| s3::env_credentials(Store::Archive));
    let environment = match credentials {
        Some(_) => None,
        None => aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await
            .credentials_provider(),
    };
    let client = s3::client(&location, credentials, s3::DEFAULT_TIMEOUT).await;
    Archive {
        client,
        environment,
        bucket: location.bucket,
        prefix: location.prefix,
        endpoint: location.endpoint,
        note,
    }
}

/// The archives of the IngestSources the flags select (one per distinct
/// location), narrowing `filter` to their namespace or source.
async fn from_cluster(
    args: &HistoryArgs,
    filter: &mut Filter,
) -> Result<Vec<Archive>, HistoryError> {
    let mut cluster = args
        .cluster
        .connect()
        .await
        .map_err(HistoryError::Cluster)?;
    if args.source.is_some() {
        if filter.namespace.is_none() {
            filter.namespace = cluster.namespace.clone();
        }
        cluster.namespace = filter.namespace.clone();
    } else if !args.cluster.all_namespaces {
        filter.namespace = cluster.namespace.clone();
    }
    let sources = cluster
        .sources(filter.name.as_deref())
        .await
        .map_err(HistoryError::Cluster)?;
    if sources.is_empty() {
        let scope = match &cluster.namespace {
            Some(namespace) => format!("in namespace {namespace}"),
            None => "in any namespace".to_owned(),
        };
        return Err(HistoryError::NoSources { scope });
    }
    if let [source] = &sources[..] {
        // The account and collection are in the archive's paths: knowing
        // them lists less.
        if filter.account.is_none() && filter.name.is_some() {
            filter.account = Some(source.spec.account.clone());
            filter
                .collection
                .get_or_insert(source.spec.collection.clone());
        }
    }
    // One archive per location, read with the first readable credentials.
    let mut locations: BTreeMap<String, Vec<&IngestSource>> = BTreeMap::new();
    for source in &sources {
        let location = &source.spec.archive.s3;
        let identity = format!(
            "{:?}|{:?}|{}|{}",
            args.endpoint.as_ref().or(location.endpoint.as_ref()),
            args.region.as_ref().or(location.region.as_ref()),
            location.bucket,
            location
                .prefix
                .as_deref()
                .unwrap_or("")
                .trim_end_matches('/'),
        );
        locations.entry(identity).or_default().push(source);
    }
    let mut archives = Vec::new();
    for sources in locations.values() {
        let mut location = sources[0].spec.archive.s3.location();
        override_location(&mut location, args);
        let (credentials, note) = credentials(&cluster, sources).await;
        archives.push(archive_for(location, credentials, note).await);
    }
    Ok(archives)
}

/// The credentials of the first of `sources` whose archive credentials
/// Secret the user may read; else none, and why, to say if reading fails.
async fn credentials(
    cluster: &Cluster,
    sources: &[&IngestSource],
) -> (Option<s3::Credentials>, Option<String>) {
    let mut unreadable = Vec::new();
    for source in sources {
        let Some(secret) = &source.spec.archive.s3.credentials_secret_ref else {
            continue;
        };
        let namespace = source.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(cluster.client.clone(), &namespace);
        let reason = match api.get(&secret.name).await {
            Ok(found) => match secret_credentials(&found) {
                Some(credentials) => return (Some(credentials), None),
                None => "it lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY".to_owned(),
            },
            Err(kube::Error::Api(status)) if status.code == 403 => "you may not read it".to_owned(),
            Err(kube::Error::Api(status)) if status.code == 404 => "it does not exist".to_owned(),
            Err(err) => err.to_string(),
        };
        unreadable.push(format!("Secret {namespace}/{}: {reason}", secret.name));
    }
    let note = (!unreadable.is_empty()).then(|| {
        format!(
            "used the AWS credentials of the environment, as the credentials {} could not be read: {}",
            if unreadable.len() == 1 { "Secret" } else { "Secrets" },
            unreadable.join("; ")
        )
    });
    (None, note)
}

fn secret_credentials(secret: &Secret) -> Option<s3::Credentials> {
    let data = secret.data.as_ref()?;
    let value = |key: &str| {
        data.get(key)
            .and_then(|bytes| String::from_utf8(bytes.0.clone()).ok())
            .map(|text| text.trim().to_owned())
    };
    Some(s3::Credentials {
        access_key_id: value("AWS_ACCESS_KEY_ID")?,
        secret_access_key: value("AWS_SECRET_ACCESS_KEY")?,
        session_token: value("AWS_SESSION_TOKEN"),
    })
}

/// Prints the matches, the count or the summary in the output format.
fn print(
    args: &HistoryArgs,
    archives: &[Archive],
    matcher: &Matcher,
    matches: query::Collected,
    stats: &query::Stats,
    now: Timestamp,
) -> Result<(), HistoryError> {
    let table = args.output.is_table();
    if args.count {
        #[derive(serde::Serialize)]
        struct Count {
            count: u64,
        }
        let count = Count { count: stats.tasks };
        let text = output::document(args.output.format, &count, || format!("{}\n", stats.tasks));
        output::print(&text)?;
        return Ok(());
    }
    if args.stats {
        let summary = stats.summary();
        let text = output::document(args.output.format, &summary, || {
            query::stats_tables(&summary, now)
        });
        output::print(&text)?;
        return Ok(());
    }
    let records = matches.into_sorted();
    output::print(&output::render(args.output, &records, now))?;
    if records.is_empty() && table {
        let places: Vec<String> = archives.iter().map(Archive::url).collect();
        let filter = matcher.filter();
        let window = match filter.until {
            Some(until) => format!(
                "between {} and {}",
                query::time(filter.since),
                query::time(until)
            ),
            None => format!("since {}", query::time(filter.since)),
        };
        eprintln!("No tasks found in {} {window}.", places.join(", "));
        if args.since == DEFAULT_SINCE {
            eprintln!(
                "Only the last {DEFAULT_SINCE} were searched: look further back with --since, \
                 for example --since 30d."
            );
        }
    }
    Ok(())
}
