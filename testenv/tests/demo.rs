//! `make demo` end to end, with less data, on the real node: the chart
//! installed by helm, the operator and every coordinator and worker in pods
//! of the sluice image under their own ServiceAccounts, three IngestSources
//! over generated data with malformed objects, and the answers of `kubectl
//! get pods`, `sluice tasks` (through the API server's service proxy),
//! `sluice history` and `kubectl describe`. The demo checks the sink and the
//! archive against the data it generated and fails otherwise.

use std::process::Command;

/// One node per machine, and each test checks that the machine is clean
/// after its own: they take turns.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn the_demo_ingests_everything_and_answers() {
    let _alone = alone();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice-testenv"))
        .args(["demo", "--objects", "150", "--exit-when-done"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_torn_down("after the demo");

    // 150 objects, one in 50 malformed: 147 of 20 records in the sink, the
    // three malformed ones failed for good and named in the answers.
    assert!(
        stdout.contains("Sink s3://") && stdout.contains(": 2940 records (expected 2940)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 objects failed (generated 3 malformed)"),
        "{stdout}"
    );
    let pods = section(&stdout, "$ kubectl get pods -n demo -o wide");
    for component in ["orders-coordinator-", "clicks-worker-", "payments-worker-"] {
        assert!(pods.contains(component), "{pods}");
    }
    assert!(pods.contains("10.244.0."), "pod IPs: {pods}");
    let live = section(&stdout, "$ kubectl sluice tasks -n demo --state failed");
    for source in ["demo/orders", "demo/clicks", "demo/payments"] {
        assert!(live.contains(source), "{live}");
    }
    let history = section(&stdout, "$ kubectl sluice history --state failed");
    assert_eq!(
        history.lines().filter(|l| l.contains("failed")).count(),
        3,
        "{history}"
    );
    assert!(
        stdout.contains("Everything ran in pods under the chart's RBAC"),
        "{stdout}"
    );
    let describe = section(&stdout, "$ kubectl describe isrc -n demo orders");
    assert!(describe.contains("Recent Failures"), "{describe}");
}

/// The lines after `heading` up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{text}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}

/// Starts `sluice-testenv demo` (which runs until stopped) and returns it once
/// its node is up: it has printed the `helm install` line.
fn demo_with_a_node() -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut demo = Command::new(env!("CARGO_BIN_EXE_sluice-testenv"))
        .args(["demo", "--objects", "30"])
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(demo.stdout.take().unwrap()).lines();
    let mut seen = String::new();
    for line in stdout.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.starts_with("==> helm install") {
            // Read on, so that the demo's output never meets a closed pipe.
            std::thread::spawn(move || stdout.for_each(drop));
            return demo;
        }
    }
    let status = demo.wait().unwrap();
    panic!("the demo ended ({status}) before its node was up:\n{seen}");
}

/// Waits up to a minute for everything of the node to be gone.
fn assert_torn_down(how: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = sluice_testenv::node::leftovers();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{how}, the node left behind: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn ctrl_c_removes_the_node_and_everything_it_added_to_the_host() {
    let _alone = alone();
    let mut demo = demo_with_a_node();
    // SAFETY: signalling a child process the test started.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let status = demo.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_torn_down("after Ctrl-C");
}

#[test]
fn a_killed_demo_leaves_nothing_behind() {
    let _alone = alone();
    let mut demo = demo_with_a_node();
    demo.kill().unwrap();
    demo.wait().unwrap();
    // Its watchdog, in a session of its own, tears the node down.
    assert_torn_down("after kill -9");
}
