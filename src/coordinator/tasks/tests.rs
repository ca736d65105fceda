use sluice_core::api::{TaskQuery, TaskView};

use super::*;

fn id(text: &str) -> TaskId {
    text.parse().unwrap()
}

const T0: &str = "2026-11-24T13:00:00Z";

fn at(seconds: i64) -> Timestamp {
    T0.parse::<Timestamp>().unwrap() + jiff::SignedDuration::from_secs(seconds)
}

fn listed(key: &str, size: u64) -> Listed {
    Listed {
        object: ObjectRef {
            key: key.into(),
            size,
            etag: format!("\"{key}-v1\""),
        },
        modified: at(-60),
    }
}

fn limits() -> Limits {
    Limits {
        max_objects: 2,
        max_bytes: 100,
        lease: Duration::from_secs(10),
        max_attempts: 3,
    }
}

fn table() -> Tasks {
    Tasks::new(
        SourceId {
            namespace: "shop".into(),
            name: "orders".into(),
            account: "acme".into(),
            collection: "orders".into(),
        },
        Sink {
            prefix: Some("sink/".into()),
            lineage: None,
        },
        limits(),
        7,
        FinishedKeys::default(),
        Vec::new(),
        Totals::default(),
    )
}

/// A table with `keys` planned (sizes 10) and committed.
fn committed(keys: &[&str]) -> Tasks {
    let mut tasks = table();
    tasks.plan(keys.iter().map(|key| listed(key, 10)).collect(), at(0));
    let snapshot = tasks.snapshot();
    tasks.committed(&snapshot);
    tasks
}

fn done(worker: &str, attempt: u32) -> Completion {
    Completion {
        worker: worker.into(),
        attempt,
        records: 5,
        bytes_read: 20,
        bytes_written: 8,
        outputs: vec!["out".into()],
        lease: None,
    }
}

fn failure(worker: &str, attempt: u32, key: Option<&str>) -> Failure {
    Failure {
        worker: worker.into(),
        attempt,
        error: "s3 object \"b\": line 3: not a JSON object".into(),
        key: key.map(Into::into),
        released: false,
    }
}

fn progress(id: TaskId, attempt: u32) -> Progress {
    Progress {
        id,
        attempt,
        records: 3,
        bytes: 30,
    }
}

fn keys(task: &LeasedTask) -> Vec<&str> {
    task.objects.iter().map(|o| o.key.as_str()).collect()
}

#[test]
fn packing_respects_both_budgets_and_isolates_oversized_objects() {
    let sizes = |groups: Vec<Vec<Listed>>| -> Vec<Vec<u64>> {
        groups
            .into_iter()
            .map(|group| group.iter().map(|l| l.object.size).collect())
            .collect()
    };
    let objects = |sizes: &[u64]| -> Vec<Listed> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, size)| listed(&format!("k{i}"), *size))
            .collect()
    };
    assert_eq!(
        sizes(pack(objects(&[1, 1, 1, 1, 1]), 2, 100)),
        [vec![1, 1], vec![1, 1], vec![1]]
    );
    assert_eq!(
        sizes(pack(objects(&[40, 40, 40, 500, 10]), 10, 100)),
        [vec![40, 40], vec![40], vec![500], vec![10]]
    );
    assert!(pack(Vec::new(), 2, 100).is_empty());
}

#[test]
fn planned_tasks_are_leased_only_once_committed() {
    let mut tasks = table();
    assert_eq!(tasks.plan(vec![listed("a", 10), listed("b", 10)], at(0)), 1);
    assert!(tasks.has_uncommitted());
    assert!(tasks.lease("w1", 10, at(1)).is_empty());
    let snapshot = tasks.snapshot();
    assert_eq!(snapshot.tasks.len(), 1);
    tasks.committed(&snapshot);
    assert!(!tasks.has_uncommitted());
    let leased = tasks.lease("w1", 10, at(1));
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, id("7-1"));
    assert_eq!(leased[0].attempt, 1);
    assert_eq!(keys(&leased[0]), ["a", "b"]);
    assert_eq!(
        leased[0].output,
        "sink/orders/dt=2026-11-24/shop.orders-7-1.ndjson.zst"
    );
}

#[test]
fn a_task_changed_after_a_snapshot_waits_for_the_next_commit() {
    let mut tasks = committed(&["a", "b"]);
    tasks.lease("w1", 1, at(1));
    tasks
        .fail(id("7-1"), failure("w1", 1, Some("b")), at(2))
        .unwrap();
    let stale = tasks.snapshot();
    // The rest (7-2) and the object at fault (7-3) are uncommitted now.
    assert!(tasks.lease("w2", 10, at(3)).is_empty());
    tasks.committed(&stale);
    let leased = tasks.lease("w2", 10, at(3));
    assert_eq!(leased.len(), 2);
}

#[test]
fn a_lease_takes_several_tasks_at_once_in_order() {
    let mut tasks = committed(&["a", "b", "c", "d", "e"]);
    let leased = tasks.lease("w1", 2, at(1));
    assert_eq!(
        leased.iter().map(|t| t.id.to_string()).collect::<Vec<_>>(),
        ["7-1", "7-2"]
    );
    let rest = tasks.lease("w2", 10, at(1));
    assert_eq!(rest.len(), 1);
    assert_eq!(keys(&rest[0]), ["e"]);
    assert!(tasks.lease("w3", 10, at(1)).is_empty());
}

#[test]
fn relisting_skips_what_is_finished_or_in_a_task_and_replans_changed_objects() {
    let mut tasks = committed(&["a", "b"]);
    // In a live task: not planned again.
    assert_eq!(tasks.plan(vec![listed("a", 10)], at(1)), 0);
    let leased = tasks.lease("w1", 1, at(1));
    tasks.complete(leased[0].id, done("w1", 1), at(2)).unwrap();
    tasks.drain_finished();
    // Finished with the same ETag and size: skipped.
    assert_eq!(tasks.plan(vec![listed("a", 10), listed("b", 10)], at(3)), 0);
    // A new ETag or size: ingested again.
    let mut changed = listed("a", 10);
    changed.object.etag = "\"a-v2\"".into();
    assert_eq!(tasks.plan(vec![changed, listed("b", 11)], at(3)), 1);
    assert_eq!(tasks.totals().objects_discovered, 4);
}

#[test]
fn heartbeats_renew_leases_and_report_lost_ones() {
    let mut tasks = committed(&["a", "b", "c"]);
    let leased = tasks.lease("w1", 1, at(0));
    // Renewed at 8 s: still held at 15 s (deadline 18 s).
    assert!(
        tasks
            .heartbeat("w1", &[progress(leased[0].id, 1)], at(8))
            .is_empty()
    );
    assert_eq!(tasks.expire(at(15)), 0);
    let view = tasks.get(leased[0].id).unwrap().task;
    assert_eq!(
        (view.state, view.records, view.bytes),
        (TaskState::Running, 3, 30)
    );
    // Another worker, a wrong attempt, an unknown id: lost.
    let lost = tasks.heartbeat(
        "w2",
        &[
            progress(leased[0].id, 1),
            progress(id("7-1"), 2),
            progress(id("9-9"), 1),
        ],
        at(9),
    );
    assert_eq!(lost, [id("7-1"), id("7-1"), id("9-9")]);
    assert_eq!(tasks.expire(at(18)), 1);
}

#[test]
fn an_expired_lease_is_retried_then_failed_for_good() {
    let mut tasks = committed(&["a"]);
    for attempt in 1..=3 {
        let leased = tasks.lease("w1", 1, at(attempt * 100));
        assert_eq!(leased[0].attempt, attempt as u32);
        assert_eq!(tasks.expire(at(attempt * 100 + 9)), 0);
        assert_eq!(tasks.expire(at(attempt * 100 + 10)), 1);
    }
    assert!(tasks.lease("w1", 1, at(400)).is_empty());
    let view = tasks.get(id("7-1")).unwrap().task;
    assert_eq!(view.state, TaskState::Failed);
    assert_eq!(
        view.error.as_deref(),
        Some("lease expired: worker w1 sent no heartbeat for 10s")
    );
    let summary = tasks.summary(at(400));
    assert_eq!(summary.tasks.failed, 1);
    assert_eq!(summary.objects.failed, 1);
    // It stays visible after it is archived, and its key is not retried.
    let records = tasks.drain_finished();
    assert_eq!(records[0].state, TaskState::Failed);
    assert_eq!(tasks.get(id("7-1")).unwrap().task.state, TaskState::Failed);
    assert_eq!(tasks.plan(vec![listed("a", 10)], at(500)), 0);
}

#[test]
fn a_completed_task_is_archived_once_and_leaves_memory() {
    let mut tasks = committed(&["a", "b"]);
    let leased = tasks.lease("w1", 1, at(0));
    tasks.complete(id("7-1"), done("w1", 1), at(4)).unwrap();
    assert_eq!(
        tasks.complete(id("7-1"), done("w1", 1), at(5)),
        Err(Refusal::Conflict("task 7-1 has already finished".into()))
    );
    assert_eq!(
        tasks.complete(id("7-99"), done("w1", 1), at(5)),
        Err(Refusal::NotFound(id("7-99")))
    );
    let records = tasks.drain_finished();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record.source, "shop/orders");
    assert_eq!(record.worker.as_deref(), Some("w1"));
    assert_eq!(
        (record.records, record.bytes_read, record.duration_ms),
        (5, 20, 4000)
    );
    assert_eq!(record.objects, leased[0].objects);
    assert!(tasks.drain_finished().is_empty());
    assert_eq!(tasks.live_objects(), 0);
    assert!(tasks.finished_keys().get("a").is_some());
    assert_eq!(
        tasks.complete(id("7-1"), done("w1", 1), at(6)),
        Err(Refusal::Conflict("task 7-1 has already finished".into()))
    );
    let summary = tasks.summary(at(6));
    assert_eq!(
        (
            summary.tasks.succeeded,
            summary.objects.ingested,
            summary.records_ingested
        ),
        (1, 2, 5)
    );
}

#[test]
fn a_late_completion_counts_until_another_worker_holds_the_task() {
    // Expired and not leased again: the late worker still holds attempt 1.
    let mut tasks = committed(&["a", "b", "c"]);
    tasks.lease("w1", 2, at(0));
    tasks.expire(at(10));
    tasks.complete(id("7-1"), done("w1", 1), at(12)).unwrap();
    assert_eq!(
        tasks.get(id("7-1")).unwrap().task.state,
        TaskState::Succeeded
    );

    // Leased again to w2: w1's attempt 1 of 7-2 is void and changes nothing.
    tasks.lease("w2", 1, at(11));
    assert_eq!(
        tasks.complete(id("7-2"), done("w1", 1), at(12)),
        Err(Refusal::Conflict(
            "worker w1 does not hold attempt 1 of task 7-2: the lease expired and the task went \
             on without it"
                .into()
        ))
    );
    assert!(matches!(
        tasks.fail(id("7-2"), failure("w1", 1, None), at(12)),
        Err(Refusal::Conflict(_))
    ));
    let view = tasks.get(id("7-2")).unwrap().task;
    assert_eq!(
        (view.state, view.worker.as_deref(), view.attempt),
        (TaskState::Running, Some("w2"), 2)
    );
    assert!(
        tasks
            .heartbeat("w2", &[progress(id("7-2"), 2)], at(13))
            .is_empty()
    );
    tasks.complete(id("7-2"), done("w2", 2), at(14)).unwrap();
    assert_eq!(tasks.totals().tasks_succeeded, 2);
}

/// A worker stalled in attempt 1 of a task that another attempt split
/// (one object at fault) must not get its whole-task output counted: the
/// others go on under a new id and output, and the old id refuses it.
#[test]
fn a_zombie_attempt_of_a_split_task_is_refused_and_writes_no_live_output() {
    let mut tasks = committed(&["a", "b"]);
    let zombie = tasks.lease("w1", 1, at(0)).remove(0);
    tasks.expire(at(10));
    tasks.lease("w2", 1, at(11));
    tasks
        .fail(id("7-1"), failure("w2", 2, Some("b")), at(12))
        .unwrap();
    let snapshot = tasks.snapshot();
    tasks.committed(&snapshot);
    let leased = tasks.lease("w3", 10, at(13));
    let (rest, culprit) = (&leased[0], &leased[1]);
    assert_eq!(
        (rest.id, keys(rest), rest.attempt),
        (id("7-2"), vec!["a"], 1)
    );
    assert_eq!((culprit.id, keys(culprit)), (id("7-3"), vec!["b"]));
    assert!(rest.output != zombie.output && culprit.output != zombie.output);

    let refused = Err(Refusal::Conflict(
        "task 7-1 was split: its object at fault is task 7-3 now, the others task 7-2".into(),
    ));
    assert_eq!(tasks.complete(id("7-1"), done("w1", 1), at(14)), refused);
    assert_eq!(
        tasks.fail(id("7-1"), failure("w1", 1, None), at(14)),
        refused
    );
    assert_eq!(
        tasks.heartbeat("w1", &[progress(id("7-1"), 1)], at(14)),
        [id("7-1")]
    );
    assert_eq!(tasks.totals().tasks_succeeded, 0);
    tasks.complete(rest.id, done("w3", 1), at(15)).unwrap();
    assert_eq!(tasks.get(rest.id).unwrap().task.state, TaskState::Succeeded);
}

#[test]
fn a_poison_object_is_split_off_and_fails_alone() {
    let mut tasks = committed(&["a", "b"]);
    tasks.lease("w1", 1, at(0));
    tasks
        .fail(id("7-1"), failure("w1", 1, Some("b")), at(1))
        .unwrap();
    let commit = |tasks: &mut Tasks| {
        let snapshot = tasks.snapshot();
        tasks.committed(&snapshot);
    };
    commit(&mut tasks);
    let leased = tasks.lease("w1", 10, at(2));
    assert_eq!(leased.len(), 2);
    let (good, poison) = (&leased[0], &leased[1]);
    assert_eq!((keys(good), good.attempt), (vec!["a"], 1));
    assert_eq!((keys(poison), poison.attempt), (vec!["b"], 2));
    tasks.complete(good.id, done("w1", 1), at(3)).unwrap();
    tasks
        .fail(poison.id, failure("w1", 2, Some("b")), at(3))
        .unwrap();
    let again = tasks.lease("w1", 10, at(4));
    assert_eq!(again[0].attempt, 3);
    tasks
        .fail(poison.id, failure("w1", 3, Some("b")), at(5))
        .unwrap();
    assert!(tasks.lease("w1", 10, at(6)).is_empty());
    let view = tasks.get(poison.id).unwrap().task;
    assert_eq!(view.state, TaskState::Failed);
    assert_eq!(view.first_key, "b");
    assert!(view.error.unwrap().contains("line 3"));
    let states: Vec<_> = tasks.drain_finished().iter().map(|r| r.state).collect();
    assert_eq!(states, [TaskState::Succeeded, TaskState::Failed]);
}

#[test]
fn failures_from_a_worker_that_lost_the_lease_are_refused() {
    let mut tasks = committed(&["a"]);
    tasks.lease("w1", 1, at(0));
    assert!(matches!(
        tasks.fail(id("7-1"), failure("w2", 1, None), at(1)),
        Err(Refusal::Conflict(_))
    ));
    assert!(matches!(
        tasks.fail(id("7-1"), failure("w1", 2, None), at(1)),
        Err(Refusal::Conflict(_))
    ));
    assert!(matches!(
        tasks.fail(id("9-1"), failure("w1", 1, None), at(1)),
        Err(Refusal::NotFound(_))
    ));
    tasks
        .fail(id("7-1"), failure("w1", 1, None), at(1))
        .unwrap();
    assert_eq!(tasks.lease("w2", 1, at(2))[0].attempt, 2);
}

#[test]
fn a_task_given_back_does_not_use_up_an_attempt() {
    let mut tasks = committed(&["a"]);
    for _ in 0..5 {
        let leased = tasks.lease("w1", 1, at(0));
        assert_eq!(leased[0].attempt, 1);
        let mut given_back = failure("w1", 1, None);
        given_back.released = true;
        tasks.fail(id("7-1"), given_back, at(1)).unwrap();
    }
    assert_eq!(tasks.get(id("7-1")).unwrap().task.state, TaskState::Pending);
}

#[test]
fn a_restarted_coordinator_recreates_the_same_tasks_and_outputs() {
    let mut before = committed(&["a", "b", "c"]);
    let leased = before.lease("w1", 2, at(0));
    let restored = before.snapshot().tasks;
    let mut after = Tasks::new(
        before.source().clone(),
        Sink {
            prefix: Some("sink/".into()),
            lineage: None,
        },
        limits(),
        8,
        FinishedKeys::default(),
        restored,
        before.totals().clone(),
    );
    // A worker that outlived the restart keeps its task...
    let lost = after.heartbeat(
        "w1",
        &[Progress {
            id: leased[0].id,
            attempt: 1,
            records: 1,
            bytes: 1,
        }],
        at(1),
    );
    assert!(lost.is_empty());
    // ...and the rest are leased again under their old ids and outputs.
    let again = after.lease("w2", 10, at(2));
    assert_eq!(
        again.iter().map(|t| (&t.id, &t.output)).collect::<Vec<_>>(),
        [(&leased[1].id, &leased[1].output)]
    );
    assert_eq!(again[0].attempt, 2);
    // New tasks get ids of the new epoch.
    after.plan(vec![listed("z", 1)], at(3));
    assert!(
        after
            .snapshot()
            .tasks
            .iter()
            .any(|t| t.id.to_string() == "8-1")
    );
}

#[test]
fn listing_filters_by_state_and_worker_and_pages_with_a_cursor() {
    let mut tasks = committed(&["a", "b", "c", "d", "e", "f"]);
    tasks.lease("w1", 1, at(0));
    tasks.lease("w2", 1, at(0));
    let query = |state: Option<TaskState>, worker: Option<&str>| TaskQuery {
        state,
        worker: worker.map(Into::into),
        ..TaskQuery::default()
    };
    let ids = |views: Vec<TaskView>| {
        views
            .into_iter()
            .map(|v| v.id.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(tasks.list(&query(Some(TaskState::Running), None), 10).0),
        ["7-1", "7-2"]
    );
    assert_eq!(ids(tasks.list(&query(None, Some("w2")), 10).0), ["7-2"]);
    assert_eq!(
        ids(tasks.list(&query(Some(TaskState::Pending), None), 10).0),
        ["7-3"]
    );
    let (page, more) = tasks.list(&query(None, None), 2);
    assert!(more);
    let mut next = query(None, None);
    next.cursor = Some(page[1].id);
    let (rest, more) = tasks.list(&next, 2);
    assert_eq!((ids(rest), more), (vec!["7-3".to_owned()], false));
    let other = TaskQuery {
        account: Some("other".into()),
        ..TaskQuery::default()
    };
    assert!(tasks.list(&other, 10).0.is_empty());
    let mine = TaskQuery {
        account: Some("acme".into()),
        collection: Some("orders".into()),
        source: Some("shop/orders".into()),
        ..TaskQuery::default()
    };
    assert_eq!(tasks.list(&mine, 10).0.len(), 3);
}

/// Archived tasks (kept for the live API, in the order they finished) and
/// live ones come back as one list in id order, a page at a time.
#[test]
fn archived_and_live_tasks_page_together_in_id_order() {
    let mut tasks = committed(&["a", "b", "c", "d", "e", "f", "g", "h"]);
    tasks.lease("w1", 4, at(0));
    tasks.complete(id("7-3"), done("w1", 1), at(1)).unwrap();
    tasks.drain_finished();
    tasks.complete(id("7-1"), done("w1", 1), at(2)).unwrap();
    tasks.drain_finished();
    let ids = |views: &[TaskView]| views.iter().map(|v| v.id.to_string()).collect::<Vec<_>>();
    let (page, more) = tasks.list(&TaskQuery::default(), 3);
    assert_eq!(
        (ids(&page), more),
        (vec!["7-1".into(), "7-2".into(), "7-3".into()], true)
    );
    let next = TaskQuery {
        cursor: Some(page[2].id),
        ..TaskQuery::default()
    };
    let (rest, more) = tasks.list(&next, 3);
    assert_eq!((ids(&rest), more), (vec!["7-4".to_owned()], false));
    let succeeded = TaskQuery {
        state: Some(TaskState::Succeeded),
        ..TaskQuery::default()
    };
    assert_eq!(ids(&tasks.list(&succeeded, 10).0), ["7-1", "7-3"]);
    let running = TaskQuery {
        state: Some(TaskState::Running),
        worker: Some("w1".into()),
        ..TaskQuery::default()
    };
    assert_eq!(ids(&tasks.list(&running, 1).0), ["7-2"]);
}

#[test]
fn the_summary_counts_tasks_and_the_lag_of_the_oldest_object() {
    let mut tasks = committed(&["a", "b", "c"]);
    tasks.lease("w1", 1, at(0));
    let summary = tasks.summary(at(40));
    assert_eq!(
        (
            summary.tasks.pending,
            summary.tasks.running,
            summary.lag_seconds
        ),
        (1, 1, 100)
    );
    assert_eq!(summary.objects.discovered, 3);
    assert_eq!(summary.epoch, 7);
}

/// `keys` leased and failed on every attempt, then folded into the finished
/// keys as failed for good.
fn dead(keys: &[&str]) -> Tasks {
    let mut tasks = committed(keys);
    for attempt in 1..=limits().max_attempts {
        let now = at(i64::from(attempt));
        for leased in tasks.lease("w1", 10, now) {
            tasks
                .fail(leased.id, failure("w1", attempt, None), now)
                .unwrap();
        }
    }
    tasks.drain_finished();
    tasks
}

#[test]
fn a_redrive_queues_only_dead_letters_once_in_new_tasks() {
    let mut tasks = dead(&["a", "b"]);
    assert_eq!(tasks.finished_keys().failed_keys(), ["a", "b"]);
    assert_eq!(tasks.totals().objects_failed, 2);
    // "c" never failed: a redrive leaves it alone.
    let done = tasks.requeue("r1", vec![listed("a", 10), listed("c", 10)], 0, 1, at(10));
    assert_eq!((done.objects, done.skipped, done.missing), (1, 1, 1));
    assert!(tasks.redriven("r1") && !tasks.redriven("r2"));
    assert_eq!(tasks.totals().objects_failed, 1);
    let snapshot = tasks.snapshot();
    let requeued = snapshot.tasks.last().unwrap();
    assert_eq!((requeued.attempt, keys_of(requeued)), (0, vec!["a"]));
    // A key queued already is not queued twice.
    let again = tasks.requeue("r2", vec![listed("a", 10)], 0, 0, at(11));
    assert_eq!((again.objects, again.skipped), (0, 1));

    // What a checkpoint keeps tells a new table what was done.
    let mut restored = table();
    restored.restore_redrives(tasks.redrives());
    assert!(restored.redriven("r1") && restored.redriven("r2"));
}

fn keys_of(planned: &Planned) -> Vec<&str> {
    planned.objects.iter().map(|o| o.key.as_str()).collect()
}
