//! `sluice tasks` against coordinators running as processes on a real
//! MinIO, and against a real API server that finds them.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_core::api::{self, TaskList, TaskView};
use support::dataplane::{Ingest, Part, TOKEN};
use support::{eventually, fail, kube_with_crd, operator, sources, succeed};

const SETTLE: Duration = Duration::from_secs(60);

/// `sluice tasks ARGS` with the read token of the test coordinators in
/// `SLUICE_READ_TOKEN`, as after `kubectl port-forward`.
fn sluice(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("tasks")
        .args(args)
        .env_remove("KUBECONFIG")
        .env("SLUICE_READ_TOKEN", api::read_token(TOKEN))
        .output()
        .unwrap()
}

/// The tasks `sluice tasks ARGS -o json` lists, by id.
fn listed(args: &[&str]) -> Vec<TaskView> {
    let mut args = args.to_vec();
    args.extend(["-o", "json"]);
    let list: TaskList = serde_json::from_str(&succeed(sluice(&args))).unwrap();
    list.items
}

fn ids(tasks: &[TaskView]) -> Vec<String> {
    let mut ids: Vec<String> = tasks
        .iter()
        .map(|t| format!("{}:{}", t.source, t.id))
        .collect();
    ids.sort();
    ids
}

/// Leases one task of `coordinator` to `worker` through the task API: its
/// id, or None while none is leasable.
fn lease_one(coordinator: &Part, worker: &str) -> Option<String> {
    let body = json!({"worker": worker, "max": 1}).to_string();
    let (status, body) = coordinator.request("POST", "/v1/lease", Some(TOKEN), &body);
    assert_eq!(status, 200, "{body}");
    let leased: Value = serde_json::from_str(&body).unwrap();
    leased["tasks"][0]["id"].as_str().map(str::to_owned)
}

/// A coordinator with `objects` one-object tasks planned and nothing
/// running.
async fn coordinator(
    name: &str,
    account: &str,
    collection: &str,
    objects: usize,
) -> (Ingest, Part) {
    let mut ingest = Ingest::new(name, 1, Duration::from_secs(60), 3).await;
    ingest.config.id.account = account.into();
    ingest.config.id.collection = collection.into();
    ingest.write_config();
    ingest
        .put(
            (0..objects)
                .map(|i| (format!("{i}.ndjson"), b"{\"id\":1}\n".to_vec()))
                .collect(),
        )
        .await;
    let part = ingest.coordinator(None, &[]);
    eventually("the tasks to be planned", SETTLE, || async {
        (part.summary().tasks.pending == objects as u64).then_some(())
    })
    .await;
    (ingest, part)
}

#[tokio::test]
async fn tasks_lists_what_the_coordinators_hold_with_each_filter() {
    let (_orders, orders) = coordinator("orders", "acme", "orders", 3).await;
    let (_clicks, mut clicks) = coordinator("clicks", "globex", "clicks", 2).await;
    // A task is leased only once the checkpoint naming it is written.
    let leased_id = eventually("a task to lease", SETTLE, || async {
        lease_one(&orders, "w-1")
    })
    .await;

    let orders_url = format!("http://127.0.0.1:{}", orders.port);
    let clicks_url = format!("http://127.0.0.1:{}", clicks.port);
    let both = ["--coordinator", &orders_url, "--coordinator", &clicks_url];
    let with = |extra: &[&str]| -> Vec<TaskView> {
        let mut args = both.to_vec();
        args.extend(extra);
        listed(&args)
    };
    let held: Vec<TaskView> = [&orders, &clicks]
        .iter()
        .flat_map(|part| part.get::<TaskList>("/v1/tasks").items)
        .collect();
    assert_eq!(held.len(), 5);
    assert_eq!(
        ids(&with(&[])),
        ids(&held),
        "everything the coordinators hold"
    );

    let running = with(&["--state", "running"]);
    assert_eq!(running.len(), 1);
    assert_eq!(
        (running[0].id.to_string(), running[0].worker.as_deref()),
        (leased_id.clone(), Some("w-1"))
    );
    assert_eq!(ids(&with(&["--worker", "w-1"])), ids(&running));
    assert_eq!(with(&["--worker", "w-2"]).len(), 0);
    assert_eq!(with(&["--state", "pending"]).len(), 4);
    let globex = with(&["--account", "globex"]);
    assert_eq!(globex.len(), 2);
    assert!(globex.iter().all(|t| t.source == "shop/clicks"));
    assert_eq!(with(&["--collection", "orders"]).len(), 3);
    assert_eq!(
        with(&["--account", "globex", "--collection", "orders"]).len(),
        0
    );

    // The table: kubectl's look, the running task first.
    let mut args = both.to_vec();
    args.extend(["--state", "running", "-o", "wide"]);
    let table = succeed(sluice(&args));
    let lines: Vec<&str> = table.lines().collect();
    let headers: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    assert_eq!(
        headers,
        [
            "SOURCE",
            "TASK",
            "STATE",
            "WORKER",
            "ATTEMPT",
            "OBJECTS",
            "RECORDS",
            "READ",
            "AGE",
            "ACCOUNT",
            "COLLECTION",
            "SIZE",
            "FIRST KEY",
            "ERROR"
        ],
        "{table}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cells[..4],
        ["shop/orders", leased_id.as_str(), "running", "w-1"],
        "{table}"
    );
    assert_eq!(
        lines[0].find("WORKER"),
        lines[1].find("w-1"),
        "columns align:\n{table}"
    );

    // An error (or a key) holding terminal control sequences prints them
    // escaped: a table never moves the cursor or recolours the terminal.
    let failure = r#"{"worker":"w-1","attempt":1,"error":"denied \u001b[2J\u001b[31mred\u0007"}"#;
    let (status, body) = orders.request(
        "POST",
        &format!("/v1/tasks/{leased_id}/fail"),
        Some(TOKEN),
        failure,
    );
    assert_eq!(status, 204, "{body}");
    let mut args = vec!["--coordinator", orders_url.as_str(), "--state", "pending"];
    args.extend(["-o", "wide"]);
    let table = succeed(sluice(&args));
    assert!(
        table.contains(r"denied \u{1b}[2J\u{1b}[31mred\u{7}"),
        "{table}"
    );
    assert!(
        !table.chars().any(|c| c.is_control() && c != '\n'),
        "{table:?}"
    );

    // Reads need the read token: a guess is refused, and without one the
    // CLI says what to give it.
    let refused = fail(sluice(&[
        "--coordinator",
        &orders_url,
        "--read-token",
        "guess",
    ]));
    assert!(
        refused.contains("HTTP 401")
            && refused.contains("wrong token: readers send the `read-token`"),
        "{refused}"
    );
    let unasked = fail(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["tasks", "--coordinator", &orders_url])
            .env_remove("SLUICE_READ_TOKEN")
            .output()
            .unwrap(),
    );
    assert!(unasked.contains("--read-token"), "{unasked}");

    // A bad filter is the coordinator's clear refusal, not an empty list.
    let refused = fail(sluice(&["--coordinator", &orders_url, "--state", "done"]));
    assert!(
        refused.contains("done") && refused.contains("pending, running"),
        "{refused}"
    );

    // As kubectl prints: names, and tables without their header.
    let names = succeed(sluice(&["--coordinator", &orders_url, "-o", "name"]));
    let mut expected: Vec<String> = orders
        .get::<TaskList>("/v1/tasks")
        .items
        .iter()
        .map(|task| format!("task/shop/orders/{}", task.id))
        .collect();
    expected.sort();
    let mut printed: Vec<&str> = names.lines().collect();
    printed.sort();
    assert_eq!(printed, expected, "{names}");
    let bare = succeed(sluice(&["--coordinator", &orders_url, "--no-headers"]));
    assert_eq!(bare.lines().count(), 3, "{bare}");
    assert!(!bare.contains("SOURCE"), "{bare}");

    // --watch into a pipe: every task once, then each change once.
    let mut watching = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "tasks",
            "--coordinator",
            &orders_url,
            "--watch",
            "-o",
            "name",
        ])
        .env("SLUICE_READ_TOKEN", api::read_token(TOKEN))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    let stdout = watching.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let _ = lines.send(line.unwrap());
        }
    });
    let next = || received.recv_timeout(SETTLE).expect("a line from --watch");
    let mut first: Vec<String> = (0..3).map(|_| next()).collect();
    first.sort();
    assert_eq!(first, expected);
    let changed = format!(
        "task/shop/orders/{}",
        lease_one(&orders, "w-2").expect("a pending task to lease")
    );
    assert_eq!(next(), changed, "the leased task, printed again");
    assert!(
        received.recv_timeout(Duration::from_secs(5)).is_err(),
        "nothing else changed"
    );
    watching.kill().unwrap();
    watching.wait().unwrap();

    // One coordinator down: the other still answers, the missing one is
    // named, and the exit code says not everything was seen.
    clicks.kill();
    let mut args = both.to_vec();
    args.extend(["-o", "json"]);
    let output = sluice(&args);
    let stderr = fail(output.clone());
    let partial: TaskList = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(partial.items.len(), 3);
    assert!(partial.items.iter().all(|t| t.source == "shop/orders"));
    assert!(
        stderr.contains(&format!("coordinator {clicks_url}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 of 2 coordinators did not answer"),
        "{stderr}"
    );
}

#[tokio::test]
async fn tasks_finds_the_coordinators_through_the_cluster_and_names_the_unavailable() {
    let kube = kube_with_crd();
    let client = kube.client().await;
    let _operator = operator();
    let namespace = kube.namespace("tasks").unwrap();
    let kubeconfig = kube.kubeconfig().to_str().unwrap();
    for (name, account) in [("orders", "acme"), ("clicks", "globex")] {
        let mut source = sources::orders(name);
        source["spec"]["account"] = json!(account);
        sources::apply(&client, &namespace, &source).await;
    }
    // The operator's coordinator Services exist, but no kubelet runs their
    // pods: the API server's service proxy finds no endpoint to ask.
    eventually("the coordinator Services' Endpoints", SETTLE, || async {
        let endpoints: kube::Api<k8s_openapi::api::core::v1::Endpoints> =
            kube::Api::namespaced(client.clone(), &namespace);
        let orders = endpoints.get_opt("orders-coordinator").await.ok()??;
        let clicks = endpoints.get_opt("clicks-coordinator").await.ok()??;
        Some((orders, clicks))
    })
    .await;

    let stderr = fail(sluice(&["--kubeconfig", kubeconfig, "-n", &namespace]));
    for name in ["orders", "clicks"] {
        assert!(
            stderr.contains(&format!(
                "IngestSource {namespace}/{name}: the coordinator is not available"
            )),
            "{stderr}"
        );
    }
    assert!(stderr.contains("no endpoints available"), "{stderr}");

    // Sources of other accounts are not asked at all.
    let stderr = fail(sluice(&[
        "--kubeconfig",
        kubeconfig,
        "-n",
        &namespace,
        "--account",
        "globex",
    ]));
    assert!(
        stderr.contains("clicks") && !stderr.contains("orders"),
        "{stderr}"
    );
    let stderr = fail(sluice(&[
        "--kubeconfig",
        kubeconfig,
        "-n",
        &namespace,
        "orders",
    ]));
    assert!(
        stderr.contains("orders") && !stderr.contains("clicks"),
        "{stderr}"
    );

    // -A finds them from any namespace; an empty namespace has none.
    let stderr = fail(sluice(&[
        "--kubeconfig",
        kubeconfig,
        "-A",
        "--account",
        "globex",
    ]));
    assert!(stderr.contains(&format!("{namespace}/clicks")), "{stderr}");
    let empty = kube.namespace("empty").unwrap();
    let output = sluice(&["--kubeconfig", kubeconfig, "-n", &empty]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains(&format!("No IngestSources found in namespace {empty}"))
    );

    // Errors a person understands.
    let stderr = fail(sluice(&[
        "--kubeconfig",
        kubeconfig,
        "-n",
        &namespace,
        "nosuch",
    ]));
    assert!(
        stderr.contains(&format!(
            "IngestSource \"nosuch\" not found in namespace \"{namespace}\""
        )),
        "{stderr}"
    );
    let stderr = fail(sluice(&["--kubeconfig", "/nonexistent/kubeconfig"]));
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
    let stderr = fail(sluice(&["--kubeconfig", kubeconfig, "--context", "nosuch"]));
    assert!(stderr.contains("nosuch"), "{stderr}");

    // kubectl finds the binary as its plugin `kubectl sluice` and passes
    // kubectl's flags through.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_sluice"),
        bin.path().join("kubectl-sluice"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let plugin = |args: &[&str]| {
        Command::new(kube.kubectl().get_program())
            .args(args)
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    // kubectl's identity flags: --as acts as another user, whom RBAC
    // refuses; --user and --cluster choose from the kubeconfig.
    let stderr = fail(sluice(&[
        "--kubeconfig",
        kubeconfig,
        "-n",
        &namespace,
        "--as",
        "nobody",
        "--request-timeout",
        "20s",
    ]));
    assert!(stderr.contains("User \"nobody\" cannot list"), "{stderr}");
    for flag in ["--user", "--cluster"] {
        let stderr = fail(sluice(&["--kubeconfig", kubeconfig, flag, "nosuch"]));
        assert!(stderr.contains("nosuch"), "{flag}: {stderr}");
    }

    let help = succeed(plugin(&["sluice", "tasks", "--help"]));
    assert!(help.contains("Usage: kubectl sluice tasks"), "{help}");
    let stderr = fail(plugin(&[
        "sluice",
        "tasks",
        "--kubeconfig",
        kubeconfig,
        "-n",
        &namespace,
        "clicks",
    ]));
    assert!(
        stderr.contains(&format!("IngestSource {namespace}/clicks")),
        "{stderr}"
    );

    // `kubectl sluice <TAB>`: kubectl asks kubectl_complete-sluice, the
    // same binary, which completes commands, flag values and the sources
    // in the cluster.
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_sluice"),
        bin.path().join("kubectl_complete-sluice"),
    )
    .unwrap();
    let complete = |words: &[&str]| {
        let mut args = vec!["__complete", "sluice"];
        args.extend(words);
        let output = Command::new(kube.kubectl().get_program())
            .args(&args)
            .env("PATH", &path)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        let printed = succeed(output);
        printed.lines().map(str::to_owned).collect::<Vec<_>>()
    };
    let commands = complete(&[""]);
    assert!(
        commands.contains(&"tasks".into()) && commands.contains(&"history".into()),
        "{commands:?}"
    );
    let sources = complete(&["tasks", "-n", &namespace, ""]);
    assert_eq!(sources, ["clicks", "orders", ":4"]);
    let states = complete(&["tasks", "--state", "r"]);
    assert_eq!(states, ["running", ":4"]);

    // And the shells' own scripts for `sluice`.
    let script = succeed(
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["completion", "bash"])
            .output()
            .unwrap(),
    );
    assert!(
        script.contains("complete -F") && script.contains("tasks"),
        "{script}"
    );
}

/// The krew manifest: `tools/krew.sh` packages the release binary, krew's
/// own `validate-krew-manifest` accepts the manifest, and krew installs the
/// plugin from that archive (offline: `--archive`, no index, no upgrade
/// check) as a `kubectl-sluice` that runs.
#[test]
fn krew_installs_the_plugin_from_its_manifest() {
    let binary = sluice_testenv::image::release_binary("sluice").unwrap();
    let out = tempfile::tempdir().unwrap();
    let packaged = succeed(
        Command::new(support::repo().join("tools/krew.sh"))
            .args(["https://example.invalid/download/v0.1.0"])
            .arg(out.path())
            .env("SLUICE_BINARY", &binary)
            .output()
            .unwrap(),
    );
    let (archive, manifest) = packaged.trim().split_once('\n').unwrap();
    let text = std::fs::read_to_string(manifest).unwrap();
    assert!(!text.contains('@'), "a placeholder is left:\n{text}");
    let tool = |name: &str| sluice_testenv::tools::binary(name).unwrap();
    let validated = Command::new(tool("validate-krew-manifest"))
        .args(["-manifest", manifest, "-skip-install"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&validated.stderr).into_owned();
    assert!(validated.status.success(), "{said}");
    assert!(said.contains("structural validation OK"), "{said}");

    let root = tempfile::tempdir().unwrap();
    let installed = Command::new(tool("krew"))
        .args(["install", "--manifest", manifest, "--archive", archive])
        .env("KREW_ROOT", root.path())
        .env("KREW_NO_UPGRADE_CHECK", "1")
        .output()
        .unwrap();
    succeed(installed);
    let version = succeed(
        Command::new(root.path().join("bin/kubectl-sluice"))
            .arg("--version")
            .output()
            .unwrap(),
    );
    assert_eq!(
        version.trim(),
        format!("kubectl sluice {}", env!("CARGO_PKG_VERSION"))
    );
}
