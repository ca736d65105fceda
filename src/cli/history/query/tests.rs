use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use sluice_core::api::TaskState;
use sluice_core::archive::{self, ObjectKey, TaskRecord};

use crate::cli::output::Row;

use super::matcher::order_key;
use super::rows::ERROR_WIDTH;
use super::stats::error_kind;
use super::*;
use sluice_core::api::ObjectRef;

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

const NOW: &str = "2026-11-24T13:30:00Z";

fn record(id: &str, source: &str, state: TaskState, worker: &str, finished: &str) -> TaskRecord {
    TaskRecord {
        id: id.parse().unwrap(),
        account: "acme".into(),
        collection: "orders".into(),
        source: source.into(),
        state,
        worker: Some(worker.into()),
        attempt: 1,
        objects: vec![ObjectRef {
            key: format!("in/{id}.ndjson"),
            size: 10,
            etag: "\"e\"".into(),
        }],
        records: 2,
        bytes_read: 10,
        bytes_written: 5,
        outputs: vec![format!("out/{id}.ndjson.zst")],
        created: at("2026-11-24T12:00:00Z"),
        started: Some(at("2026-11-24T12:00:01Z")),
        finished: at(finished),
        duration_ms: 1000,
        error: (state == TaskState::Failed)
            .then(|| format!("s3 object \"in/{id}.ndjson\": line 3: expected value at column 8")),
    }
}

fn lines(records: &[TaskRecord]) -> Vec<u8> {
    let mut lines = Vec::new();
    archive::encode_lines(records, &mut lines);
    lines
}

/// A day of records of two sources, several workers and both states.
fn sample() -> Vec<TaskRecord> {
    vec![
        record(
            "1-1",
            "shop/orders",
            TaskState::Succeeded,
            "w1",
            "2026-11-24T10:00:00Z",
        ),
        record(
            "1-2",
            "shop/orders",
            TaskState::Failed,
            "w1",
            "2026-11-24T11:00:00Z",
        ),
        record(
            "1-10",
            "shop/orders",
            TaskState::Succeeded,
            "w10",
            "2026-11-24T12:00:00Z",
        ),
        record(
            "1-3",
            "shop/refunds",
            TaskState::Failed,
            "w2",
            "2026-11-24T12:30:00Z",
        ),
        record(
            "2-1",
            "shop/refunds",
            TaskState::Succeeded,
            "w2",
            "2026-11-24T13:00:00Z",
        ),
    ]
}

fn ids(filter: Filter) -> Vec<String> {
    let matcher = Matcher::new(filter);
    let mut found = Collected::new(None);
    let scanned = matcher.scan(&lines(&sample()), &mut found);
    assert!(scanned.damaged.is_empty());
    found
        .into_sorted()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect()
}

fn day() -> Filter {
    Filter::window(at("2026-11-24T00:00:00Z"), None)
}

#[test]
fn times_are_durations_before_now_rfc3339_times_or_dates() {
    let now = at(NOW);
    let cases = [
        ("90m", "2026-11-24T12:00:00Z"),
        ("24h", "2026-11-23T13:30:00Z"),
        ("7d", "2026-11-17T13:30:00Z"),
        ("2w", "2026-11-10T13:30:00Z"),
        ("1h30m", "2026-11-24T12:00:00Z"),
        ("45s", "2026-11-24T13:29:15Z"),
        ("1.5h", "2026-11-24T12:00:00Z"),
        ("2026-11-24T13:00:00Z", "2026-11-24T13:00:00Z"),
        ("2026-11-24T14:00:00+01:00", "2026-11-24T13:00:00Z"),
        ("2026-11-20", "2026-11-20T00:00:00Z"),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_time("--since", text, now), Ok(at(expected)), "{text}");
    }
}

#[test]
fn a_bad_time_names_the_flag_the_value_and_the_accepted_forms() {
    for bad in ["yesterday", "", "5x", "-1h", "h", "2026-11-24T13", "24 h"] {
        let err = parse_time("--until", bad, at(NOW)).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("invalid --until {bad:?}")),
            "{err}"
        );
        assert!(
            err.contains("90m, 24h or 7d") && err.contains("RFC 3339"),
            "{err}"
        );
    }
}

#[test]
fn the_window_selects_its_hour_partitions() {
    let mut filter = Filter::window(at("2026-11-24T10:15:00Z"), None);
    assert_eq!(
        filter.hours(at(NOW)),
        (at("2026-11-24T10:00:00Z"), at("2026-11-24T13:00:00Z"))
    );
    // A clock a little ahead writes into the next hour.
    assert_eq!(
        filter.hours(at("2026-11-24T13:58:00Z")).1,
        at("2026-11-24T14:00:00Z")
    );
    // --until is exclusive: ending on the hour leaves that hour out.
    filter.until = Some(at("2026-11-24T12:00:00Z"));
    assert_eq!(filter.hours(at(NOW)).1, at("2026-11-24T11:00:00Z"));
    filter.until = Some(at("2026-11-24T12:00:01Z"));
    assert_eq!(filter.hours(at(NOW)).1, at("2026-11-24T12:00:00Z"));
}

#[test]
fn listings_go_as_deep_as_the_filter_fixes_the_path() {
    let mut filter = day();
    assert_eq!(filter.key_prefix(), "");
    filter.collection = Some("orders".into());
    assert_eq!(filter.key_prefix(), "", "a collection without its account");
    filter.account = Some("acme".into());
    assert_eq!(filter.key_prefix(), "account=acme/collection=orders/");
    filter.namespace = Some("shop".into());
    filter.name = Some("orders".into());
    assert_eq!(
        filter.key_prefix(),
        "account=acme/collection=orders/",
        "both layouts' source directories"
    );
    filter.collection = None;
    assert_eq!(filter.key_prefix(), "account=acme/");
}

#[test]
fn keys_outside_the_filter_are_not_read() {
    let key = |relative: &'static str| ObjectKey::parse(relative).unwrap();
    let object = key(
        "dt=2026-11-24/hour=12/account=acme/collection=orders/source=shop%2Forders/0000000003-00000001.ndjson.zst",
    );
    let now = at(NOW);
    let mut filter = day();
    assert!(filter.may_hold(&object, now));
    filter.since = at("2026-11-24T13:00:00Z");
    assert!(!filter.may_hold(&object, now), "an hour before the window");
    let mut filter = day();
    filter.until = Some(at("2026-11-24T12:00:00Z"));
    assert!(!filter.may_hold(&object, now), "an hour after the window");
    for (field, wanted, holds) in [
        ("account", "acme", true),
        ("account", "other", false),
        ("collection", "refunds", false),
        ("namespace", "shop", true),
        ("namespace", "other", false),
        ("name", "orders", true),
        ("name", "orders.v2", false),
        ("task", "3-99", true),
        ("task", "2-99", true),
        ("task", "4-1", false),
    ] {
        let mut filter = day();
        let value = Some(wanted.to_owned());
        match field {
            "account" => filter.account = value,
            "collection" => filter.collection = value,
            "namespace" => filter.namespace = value,
            "name" => filter.name = value,
            _ => filter.task = value.map(|id| id.parse().unwrap()),
        }
        assert_eq!(filter.may_hold(&object, now), holds, "{field}={wanted}");
    }
}

#[test]
fn each_filter_selects_exactly_its_records() {
    let with = |change: &dyn Fn(&mut Filter)| {
        let mut filter = day();
        change(&mut filter);
        ids(filter)
    };
    assert_eq!(with(&|_| {}), ["1-1", "1-2", "1-10", "1-3", "2-1"]);
    assert_eq!(with(&|f| f.state = Some(TaskState::Failed)), ["1-2", "1-3"]);
    assert_eq!(with(&|f| f.worker = Some("w1".into())), ["1-1", "1-2"]);
    assert_eq!(with(&|f| f.task = Some("1-1".parse().unwrap())), ["1-1"]);
    assert_eq!(with(&|f| f.name = Some("refunds".into())), ["1-3", "2-1"]);
    assert_eq!(
        with(&|f| f.namespace = Some("other".into())),
        Vec::<String>::new()
    );
    assert_eq!(with(&|f| f.account = Some("acme".into())).len(), 5);
    assert!(with(&|f| f.collection = Some("refunds".into())).is_empty());
    assert_eq!(
        with(&|f| {
            f.since = at("2026-11-24T11:00:00Z");
            f.until = Some(at("2026-11-24T12:30:00Z"));
        }),
        ["1-2", "1-10"],
        "since is inclusive, until exclusive"
    );
    assert_eq!(
        with(&|f| {
            f.state = Some(TaskState::Succeeded);
            f.worker = Some("w2".into());
        }),
        ["2-1"]
    );
}

#[test]
fn grep_finds_text_in_values_not_in_field_names() {
    let with = |text: &str| {
        let mut filter = day();
        filter.grep = Some(text.into());
        ids(filter)
    };
    assert_eq!(with("in/1-10.ndjson"), ["1-10"], "an object key");
    assert_eq!(with("out/2-1."), ["2-1"], "an output");
    assert_eq!(with("expected value"), ["1-2", "1-3"], "an error");
    assert_eq!(
        with("\"in/1-3.ndjson\": line"),
        ["1-3"],
        "quotes, as the error has them"
    );
    assert_eq!(with("refunds"), ["1-3", "2-1"], "the source");
    assert_eq!(
        with("in/1-3.ndjson"),
        ["1-3"],
        "in its key and its error: once"
    );
    assert!(with("state").is_empty(), "a field name is no value");
    assert!(with("bytesRead").is_empty());
    assert!(with("Expected").is_empty(), "case-sensitive");
}

#[test]
fn damaged_lines_are_reported_and_the_rest_still_match() {
    let mut lines = lines(&sample()[..2]);
    lines.extend_from_slice(b"{\"id\": 7}\nnot json\n");
    let matcher = Matcher::new(day());
    let mut found = Collected::new(None);
    let scanned = matcher.scan(&lines, &mut found);
    assert_eq!(scanned.damaged.len(), 2);
    assert!(
        scanned.damaged[0].starts_with("line 3:"),
        "{:?}",
        scanned.damaged
    );
    assert_eq!(found.into_sorted().len(), 2);

    // Found through a byte search, a damaged line is still named.
    let mut filter = day();
    filter.grep = Some("not".into());
    let scanned = Matcher::new(filter).scan(&lines, &mut Collected::new(None));
    assert_eq!(scanned.damaged.len(), 1);
    assert!(
        scanned.damaged[0].starts_with("line 4:"),
        "{:?}",
        scanned.damaged
    );
}

#[test]
fn results_sort_by_time_then_source_then_task_number() {
    let same = "2026-11-24T10:00:00Z";
    let mut records = [
        record("1-10", "shop/orders", TaskState::Succeeded, "w", same),
        record("1-9", "shop/orders", TaskState::Succeeded, "w", same),
        record("1-1", "shop/refunds", TaskState::Succeeded, "w", same),
        record(
            "9-9",
            "shop/zeta",
            TaskState::Succeeded,
            "w",
            "2026-11-24T09:00:00Z",
        ),
    ];
    records.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    let ids: Vec<_> = records.iter().map(|r| r.id.to_string()).collect();
    assert_eq!(ids, ["9-9", "1-9", "1-10", "1-1"]);
}

#[test]
fn a_limit_keeps_the_latest_matches_in_time_order() {
    let mut total = Collected::new(Some(2));
    for chunk in sample().chunks(2) {
        let mut part = Collected::new(Some(2));
        Matcher::new(day()).scan(&lines(chunk), &mut part);
        total.merge(part);
    }
    assert_eq!(total.seen, 5);
    let ids: Vec<_> = total
        .into_sorted()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids, ["1-3", "2-1"]);
}

#[test]
fn a_limit_holds_memory_to_a_few_times_itself() {
    let records: Vec<_> = (0..3000)
        .map(|i| {
            let finished = at("2026-11-24T10:00:00Z") + SignedDuration::from_secs(i);
            record(
                &format!("1-{i}"),
                "shop/orders",
                TaskState::Succeeded,
                "w",
                &finished.to_string(),
            )
        })
        .collect();
    let mut found = Collected::new(Some(10));
    Matcher::new(day()).scan(&lines(&records), &mut found);
    assert!(found.records.len() < 2 * 512);
    let ids: Vec<_> = found
        .into_sorted()
        .into_iter()
        .map(|r| r.id.to_string())
        .collect();
    assert_eq!(ids.first().map(String::as_str), Some("1-2990"));
    assert_eq!(ids.len(), 10);
}

#[test]
fn errors_of_one_kind_count_together() {
    assert_eq!(
        error_kind("s3 object \"in/a.ndjson\": line 3: expected value at column 8"),
        "s3 object \"…\": line N: expected value at column N"
    );
    assert_eq!(
        error_kind("s3 object \"in/\\\"odd\\\".json\" changed:  etag 12ab"),
        "s3 object \"…\" changed: etag Nab"
    );
    assert_eq!(error_kind("timeout\nafter 30s"), "timeout after Ns");
}

#[test]
fn stats_count_by_state_worker_and_error_kind_and_merge_alike() {
    let matcher = Matcher::new(day());
    let mut whole = Stats::default();
    matcher.scan(&lines(&sample()), &mut whole);
    let mut merged = Stats::default();
    for chunk in sample().chunks(2) {
        let mut part = Stats::default();
        matcher.scan(&lines(chunk), &mut part);
        merged.merge(part);
    }
    assert_eq!(whole, merged);
    let summary = whole.summary();
    assert_eq!(summary.tasks, 5);
    assert_eq!(
        summary.states,
        BTreeMap::from([("failed", 2), ("succeeded", 3)])
    );
    let workers: Vec<_> = summary
        .workers
        .iter()
        .map(|w| (w.worker.as_str(), w.tasks, w.failed, w.records))
        .collect();
    assert_eq!(
        workers,
        [("w1", 2, 1, 4), ("w2", 2, 1, 4), ("w10", 1, 0, 2)]
    );
    assert_eq!(summary.errors.len(), 1);
    assert_eq!(summary.errors[0].tasks, 2);
    assert_eq!(summary.errors[0].last, Some(at("2026-11-24T12:30:00Z")));
    assert!(summary.errors[0].example.contains("in/1-3.ndjson"));
    assert_eq!(summary.first, Some(at("2026-11-24T10:00:00Z")));
    assert_eq!(summary.last, Some(at("2026-11-24T13:00:00Z")));

    let text = stats_tables(&summary, at(NOW));
    assert!(
        text.starts_with("STATE       TASKS\nfailed      2\nsucceeded   3\ntotal       5\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "WORKER   TASKS   FAILED   RECORDS   READ\nw1       2       1        4         20B\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("2       60m    s3 object \"…\": line N"),
        "{text}"
    );
}

#[test]
fn a_row_shows_the_task_and_cuts_long_errors_unless_wide() {
    let mut failed = record(
        "1-2",
        "shop/orders",
        TaskState::Failed,
        "w1",
        "2026-11-24T11:00:00Z",
    );
    failed.error = Some(format!("{}\nend", "x".repeat(200)));
    let now = at(NOW);
    for wide in [false, true] {
        assert_eq!(
            TaskRecord::headers(wide).len(),
            failed.cells(wide, now).len()
        );
    }
    let cells = failed.cells(false, now);
    assert_eq!(
        cells[..8],
        [
            "2026-11-24T11:00:00Z",
            "shop/orders",
            "1-2",
            "failed",
            "w1",
            "1",
            "2",
            "1s"
        ]
    );
    assert_eq!(cells[8].chars().count(), ERROR_WIDTH);
    assert!(cells[8].ends_with('…'));
    let wide = failed.cells(true, now);
    assert!(wide[14].ends_with("x end"), "{}", wide[14]);
    assert_eq!(wide[13], "in/1-2.ndjson");
    assert_eq!(wide[10], "10B");
    let mut quick = failed.clone();
    quick.duration_ms = 850;
    quick.worker = None;
    let cells = quick.cells(false, now);
    assert_eq!((cells[4].as_str(), cells[7].as_str()), ("-", "850ms"));
}
