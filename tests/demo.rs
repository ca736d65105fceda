//! `make demo` end to end, with less data: the chart installed by helm, the
//! operator and every pod run as processes under their own ServiceAccounts,
//! three IngestSources over generated data with malformed objects, and the
//! answers of `sluice tasks` and `sluice history`. The demo checks the sink
//! and the archive against the data it generated and fails otherwise.

use std::process::Command;

#[test]
fn the_demo_ingests_everything_and_answers() {
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["dev", "demo", "--objects", "150", "--exit-when-done"])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

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
    let live = section(&stdout, "$ sluice tasks --state failed");
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
        stdout.contains("Everything ran under the chart's RBAC"),
        "{stdout}"
    );
}

/// The lines after `heading` up to the next blank line.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in\n{text}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n\n").unwrap_or(rest.len())]
}
