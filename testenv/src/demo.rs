//! `make demo` (`sluice-testenv demo`): all of sluice on one machine, as a user
//! runs it. It starts the test [`Node`] (a real single-node Kubernetes) with
//! the sluice image and MinIO on the node's address, installs the chart
//! with `helm install` (the operator runs as a pod under the chart's
//! ServiceAccount), generates sample data in MinIO (two accounts, three
//! collections, some objects malformed), applies three IngestSources, shows
//! `kubectl get isrc` while their coordinator and worker pods ingest, and
//! then answers with `kubectl get pods -o wide`, `sluice tasks` (through the
//! API server's service proxy), `sluice history` and `kubectl describe
//! isrc`. It checks what it shows: the sink must hold exactly the valid
//! records, the archive a record per task, the failures must be named, and
//! no pod's log may show an RBAC refusal.

use std::io::{IsTerminal, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::GzEncoder;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use super::node::NODE_IP;
use super::s3::sink_records;
use super::{Error, KubeEnv, MinioEnv, Node, image, tools};
use sluice::crd::{IngestSource, IngestSourceStatus};

const NAMESPACE: &str = "demo";
const OPERATOR_NAMESPACE: &str = "sluice-system";
/// Every object holds this many records, unless it is malformed.
const RECORDS_PER_OBJECT: u64 = 20;
/// One object in this many is malformed.
const MALFORMED_EVERY: usize = 50;
const DONE_TIMEOUT: Duration = Duration::from_secs(600);

/// `sluice-testenv demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Source objects to generate, spread over three IngestSources.
    #[arg(long, default_value_t = 3000)]
    pub objects: usize,

    /// Stop once everything is ingested and the answers are printed,
    /// instead of running until Ctrl-C.
    #[arg(long)]
    pub exit_when_done: bool,
}

/// One IngestSource of the demo and the data it ingests.
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    pub name: &'static str,
    pub account: &'static str,
    pub collection: &'static str,
    /// The file extension, which tells the workers the format.
    pub extension: &'static str,
}

pub const FEEDS: [Feed; 3] = [
    Feed {
        name: "orders",
        account: "acme",
        collection: "orders",
        extension: "ndjson",
    },
    Feed {
        name: "clicks",
        account: "acme",
        collection: "clicks",
        extension: "ndjson.gz",
    },
    Feed {
        name: "payments",
        account: "globex",
        collection: "payments",
        extension: "csv",
    },
];

/// The `index`th object of `feed`: its key under the feed's prefix, its
/// body, and the records it holds (None when it is malformed).
pub fn sample(feed: &Feed, index: usize) -> (String, Vec<u8>, Option<u64>) {
    let key = format!(
        "{}/2026/11/24/part-{index:05}.{}",
        feed.name, feed.extension
    );
    let malformed = index % MALFORMED_EVERY == MALFORMED_EVERY / 2;
    let rows = 0..RECORDS_PER_OBJECT;
    let body = match feed.extension {
        "csv" => {
            let mut text = String::from("id,amount,currency\n");
            for n in rows {
                text.push_str(&format!("{index}-{n},{}.{:02},EUR\n", n * 7, n));
            }
            if malformed {
                text.push_str("broken-row,1.00\n");
            }
            text.into_bytes()
        }
        _ => {
            let mut text = String::new();
            for n in rows {
                text.push_str(&format!(
                    "{{\"id\":\"{index}-{n}\",\"{}\":{n},\"ts\":\"2026-11-24T12:00:00Z\"}}\n",
                    feed.collection
                ));
            }
            if malformed {
                text.push_str("{\"id\": \"cut short\n");
            }
            if feed.extension.ends_with(".gz") {
                let mut gzip = GzEncoder::new(Vec::new(), Compression::fast());
                gzip.write_all(text.as_bytes()).expect("gzip into memory");
                gzip.finish().expect("gzip into memory")
            } else {
                text.into_bytes()
            }
        }
    };
    (key, body, (!malformed).then_some(RECORDS_PER_OBJECT))
}

/// Runs the demo; returns once done with `--exit-when-done`, else at
/// Ctrl-C (or SIGTERM), which also stops it at any moment before. Either
/// way the node and MinIO are removed. Fails when what it shows is not
/// what it should be.
pub async fn run(args: &DemoArgs) -> Result<(), Error> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| Error::Io {
        what: "listening for SIGTERM".into(),
        source,
    })?;
    tokio::select! {
        result = demo(args) => result,
        _ = tokio::signal::ctrl_c() => stopping(),
        _ = terminate.recv() => stopping(),
    }
}

fn stopping() -> Result<(), Error> {
    eprintln!("Stopping: removing the node and MinIO.");
    Ok(())
}

async fn demo(args: &DemoArgs) -> Result<(), Error> {
    let start = Instant::now();
    let fail = |what: &str, why: String| Error::Command {
        what: what.to_owned(),
        stderr: why,
    };
    let binary = image::release_binary("sluice")?;
    let sluice_image = image::sluice(&binary, env!("CARGO_PKG_VERSION"))?;
    say(
        "Starting a single-node Kubernetes (etcd, kube-apiserver, kube-controller-manager, \
         kube-scheduler, containerd, kubelet, kube-proxy, CoreDNS) and MinIO",
    );
    let (node, minio) = tokio::task::spawn_blocking(move || {
        let node = Node::start(&[sluice_image])?;
        let minio = MinioEnv::start_at(std::net::IpAddr::V4(NODE_IP))?;
        Ok::<_, Error>((node, minio))
    })
    .await
    .expect("starting the environment does not panic")?;
    let kube = node.kube();
    let client = kube.client().await;

    say("helm install sluice charts/sluice --namespace sluice-system --create-namespace --wait");
    install_chart(kube)?;
    say("helm test sluice --namespace sluice-system: the operator answers");
    print!("{}", test_chart(kube)?);

    say("Generating sample data in MinIO");
    let [source, sink, archive] = ["raw", "collections", "archive"];
    let buckets = futures::future::try_join_all([source, sink, archive].map(|b| minio.bucket(b)))
        .await
        .map_err(|err| fail("creating buckets", err.to_string()))?;
    let s3 = minio.client().await;
    let mut expected_records = 0;
    let mut malformed = 0;
    for i in 0..args.objects {
        let feed = &FEEDS[i % FEEDS.len()];
        let (key, body, records) = sample(feed, i / FEEDS.len());
        expected_records += records.unwrap_or(0);
        malformed += usize::from(records.is_none());
        s3.put_object()
            .bucket(&buckets[0])
            .key(key)
            .body(body.into())
            .send()
            .await
            .map_err(|err| fail("writing sample data", sluice::s3::describe(&err)))?;
    }

    say("Applying three IngestSources in namespace demo");
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}})).expect("a Namespace"),
        )
        .await
        .map_err(|err| fail("creating namespace demo", err.to_string()))?;
    let credentials = minio.credentials();
    Api::<Secret>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &minio.credentials_secret("demo-s3"))
        .await
        .map_err(|err| fail("creating the credentials Secret", err.to_string()))?;
    let sources: Api<IngestSource> = Api::namespaced(client.clone(), NAMESPACE);
    for feed in &FEEDS {
        let location = |bucket: &str, prefix: &str| {
            json!({"s3": {
                "bucket": bucket, "prefix": prefix, "endpoint": minio.endpoint(),
                "forcePathStyle": true, "credentialsSecretRef": {"name": "demo-s3"},
            }})
        };
        let source = json!({
            "apiVersion": "sluice.dev/v1alpha1",
            "kind": "IngestSource",
            "metadata": {"name": feed.name},
            "spec": {
                "account": feed.account,
                "collection": feed.collection,
                "source": location(&buckets[0], &format!("{}/", feed.name)),
                "sink": location(&buckets[1], feed.account),
                "archive": location(&buckets[2], "sluice"),
                "workers": {"replicas": 2},
                "tasks": {"maxObjects": 10, "maxAttempts": 2},
            }
        });
        sources
            .patch(
                feed.name,
                &PatchParams::apply("sluice-demo"),
                &Patch::Apply(&source),
            )
            .await
            .map_err(|err| fail("applying an IngestSource", err.to_string()))?;
    }
    let get = |args: &[&str]| {
        kube.kubectl_output(args)
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
    };
    let terminal = std::io::stdout().is_terminal();
    let deadline = Instant::now() + DONE_TIMEOUT;
    loop {
        let table = get(&["get", "isrc", "-n", NAMESPACE]);
        if terminal {
            print!("\x1b[H\x1b[2J");
        }
        println!(
            "$ kubectl get isrc -n demo      ({:.0}s)\n{table}",
            start.elapsed().as_secs_f64()
        );
        let list = sources
            .list(&Default::default())
            .await
            .map_err(|err| fail("listing IngestSources", err.to_string()))?;
        let finished = total(&list.items, |s| {
            s.objects.as_ref().map(|o| o.ingested + o.failed)
        });
        let busy = list.items.iter().any(|s| {
            s.status
                .as_ref()
                .and_then(|s| s.tasks.as_ref())
                .is_none_or(|t| t.pending + t.running > 0)
        });
        if finished == args.objects as u64 && !busy {
            break;
        }
        if Instant::now() > deadline {
            return Err(fail(
                "the demo ingest",
                format!(
                    "not done after {DONE_TIMEOUT:?}:\n{}",
                    get(&["get", "pods", "-A", "-o", "wide"])
                ),
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // The answers, as a person would ask for them.
    let sluice = |args: &[String]| {
        let out = Command::new(&binary)
            .args(args)
            .env("KUBECONFIG", kube.kubeconfig())
            .env(
                "SLUICE_ARCHIVE_AWS_ACCESS_KEY_ID",
                &credentials.access_key_id,
            )
            .env(
                "SLUICE_ARCHIVE_AWS_SECRET_ACCESS_KEY",
                &credentials.secret_access_key,
            )
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_else(|err| err.to_string())
    };
    let archive_url = format!("s3://{}/sluice", buckets[2]);
    let history = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "history",
            "--archive",
            &archive_url,
            "--endpoint",
            minio.endpoint(),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    println!(
        "$ kubectl get pods -n demo -o wide\n{}",
        get(&["get", "pods", "-n", NAMESPACE, "-o", "wide"])
    );
    let tasks = ["tasks", "-n", NAMESPACE, "--state", "failed"].map(String::from);
    println!(
        "$ kubectl sluice tasks -n demo --state failed   (the coordinators' live view, through the API server)\n{}",
        sluice(&tasks)
    );
    println!(
        "$ kubectl sluice history --state failed   (from the archive in S3)\n{}",
        sluice(&history(&["--state", "failed"]))
    );
    println!(
        "$ kubectl sluice history --stats\n{}",
        sluice(&history(&["--stats"]))
    );
    println!(
        "$ kubectl describe isrc -n demo orders\n{}",
        get(&["describe", "isrc", "-n", NAMESPACE, "orders"])
    );

    // Check what was shown.
    let records = sink_records(&s3, &buckets[1], "").await?;
    let archived = sluice(&history(&["-o", "ndjson"]))
        .lines()
        .filter(|l| l.starts_with('{'))
        .count();
    let list = sources
        .list(&Default::default())
        .await
        .map_err(|err| fail("listing IngestSources", err.to_string()))?;
    let tasks_done = total(&list.items, |s| {
        s.tasks.as_ref().map(|t| t.succeeded + t.failed)
    });
    let failed_objects = total(&list.items, |s| s.objects.as_ref().map(|o| o.failed));
    println!(
        "Sink s3://{}/: {records} records (expected {expected_records}); archive: {archived} task records \
         for {tasks_done} finished tasks; {failed_objects} objects failed (generated {malformed} malformed).",
        buckets[1]
    );
    if records != expected_records
        || archived as u64 != tasks_done
        || failed_objects != malformed as u64
    {
        return Err(fail(
            "the demo's checks",
            "the numbers above do not match".into(),
        ));
    }
    // Each source names its failed objects and why in its status.
    let unexplained: Vec<String> = list
        .items
        .iter()
        .filter(|source| {
            let status = source.status.clone().unwrap_or_default();
            let failures = status.recent_failures.unwrap_or_default();
            status.objects.is_some_and(|o| o.failed > 0)
                && !failures
                    .iter()
                    .any(|f| !f.key.is_empty() && f.last_error.contains(&f.key))
        })
        .map(|source| source.metadata.name.clone().unwrap_or_default())
        .collect();
    if !unexplained.is_empty() {
        return Err(fail(
            "the demo's checks",
            format!("status.recentFailures of {unexplained:?} does not name the failed objects"),
        ));
    }
    for namespace in [OPERATOR_NAMESPACE, NAMESPACE] {
        let pods = get(&["get", "pods", "-n", namespace, "-o", "name"]);
        for pod in pods.lines() {
            let log = get(&["logs", "-n", namespace, pod]);
            if log.to_lowercase().contains("forbidden") {
                return Err(fail(
                    "the demo's checks",
                    format!("RBAC refused a request of {namespace}/{pod}:\n{log}"),
                ));
            }
        }
    }
    println!(
        "\nEverything ran in pods under the chart's RBAC (`kubectl logs` shows each).\nS3: {} (access key {}, secret key {})",
        minio.endpoint(),
        credentials.access_key_id,
        credentials.secret_access_key
    );
    if args.exit_when_done {
        return Ok(());
    }
    println!(
        "\nIn another shell:\n  export KUBECONFIG={}\n  kubectl get isrc -n demo -o wide\n  kubectl describe isrc -n demo orders\n\n\
         Press Ctrl-C to stop and remove everything.",
        kube.kubeconfig().display()
    );
    std::future::pending().await
}

/// `helm install sluice charts/sluice` with its defaults into
/// `sluice-system`, waiting until the operator's pod is available.
pub fn install_chart(kube: &KubeEnv) -> Result<(), Error> {
    let chart = super::repo().join("charts/sluice");
    helm(
        kube,
        "helm install",
        &[
            "install",
            "sluice",
            chart.to_str().unwrap_or_default(),
            "--create-namespace",
            "--wait",
        ],
    )
    .map(drop)
}

/// `helm test sluice`: the chart's test pod asks the operator's /readyz.
/// Returns what helm printed.
pub fn test_chart(kube: &KubeEnv) -> Result<String, Error> {
    helm(kube, "helm test", &["test", "sluice"])
}

/// helm against `kube` in `sluice-system`, with a timeout; its stdout, or
/// an error with its stderr.
fn helm(kube: &KubeEnv, what: &str, args: &[&str]) -> Result<String, Error> {
    let output = Command::new(tools::binary("helm")?)
        .args(args)
        .args(["--namespace", OPERATOR_NAMESPACE, "--timeout", "180s"])
        .arg("--kubeconfig")
        .arg(kube.kubeconfig())
        .output()
        .map_err(|source| Error::Spawn {
            name: "helm".into(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            what: what.into(),
            stderr: String::from_utf8_lossy(&output.stderr).into(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The sum over `sources` of what `count` reads from each status.
fn total(sources: &[IngestSource], count: impl Fn(&IngestSourceStatus) -> Option<u64>) -> u64 {
    sources
        .iter()
        .filter_map(|source| count(source.status.as_ref()?))
        .sum()
}

fn say(what: &str) {
    println!("==> {what}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_hold_their_records_and_some_are_malformed() {
        for feed in &FEEDS {
            let (key, body, records) = sample(feed, 0);
            assert!(key.starts_with(&format!("{}/", feed.name)) && key.ends_with(feed.extension));
            assert_eq!(records, Some(RECORDS_PER_OBJECT));
            assert!(!body.is_empty());
            let (_, _, broken) = sample(feed, MALFORMED_EVERY / 2);
            assert_eq!(broken, None, "{}", feed.name);
        }
        let malformed = (0..1000)
            .filter(|i| sample(&FEEDS[0], *i).2.is_none())
            .count();
        assert_eq!(malformed, 1000 / MALFORMED_EVERY);
    }
}
