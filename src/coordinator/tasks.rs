//! The coordinator's task table: packing listed objects into tasks, leasing
//! them to workers, lease expiry, retries, the dead letter, and folding
//! finished tasks into the finished keys.
//!
//! Plain state, no I/O: every method takes the current time, so the lease
//! logic is tested without clocks or servers.
//!
//! A task's life: planned (its objects fixed) → committed (written to the
//! checkpoint, so a restart recreates exactly this task and its output name)
//! → leased (attempt raised) → succeeded, or back to pending on failure or
//! lease expiry, or failed for good after `maxAttempts`. Only committed
//! tasks are leased: a worker's output is named after its task, and a task
//! that a restart could pack differently would write its records twice.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use sluice_core::api::{
    Completion, Failure, LeasedTask, ObjectCounts, ObjectRef, Progress, Summary, TaskCounts,
    TaskDetail, TaskQuery, TaskState, TaskView,
};
use sluice_core::archive::TaskRecord;
use sluice_core::id::{SourceId, TaskId};
use sluice_core::layout;

use super::keys::{Finished, FinishedKeys, fingerprint};

/// Finished tasks kept for the live API after they were archived.
const RECENT: usize = 500;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_objects: u32,
    pub max_bytes: u64,
    pub lease: Duration,
    pub max_attempts: u32,
}

/// An object as the listing found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub object: ObjectRef,
    pub modified: Timestamp,
}

/// What the checkpoint keeps of a task that has not been archived yet.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Planned {
    pub id: TaskId,
    pub created: Timestamp,
    /// Leases so far.
    pub attempt: u32,
    pub objects: Vec<ObjectRef>,
    /// The oldest object's last-modified time, for the lag.
    pub oldest: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Counts that outlive the tasks they count; kept in the checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub tasks_succeeded: u64,
    pub tasks_failed: u64,
    pub objects_discovered: u64,
    pub objects_ingested: u64,
    pub objects_failed: u64,
    pub records: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug)]
struct Lease {
    worker: String,
    started: Timestamp,
    deadline: Timestamp,
    records: u64,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct Outcome {
    state: TaskState,
    worker: Option<String>,
    started: Option<Timestamp>,
    finished: Timestamp,
    records: u64,
    bytes_read: u64,
    bytes_written: u64,
    outputs: Vec<String>,
}

#[derive(Clone, Debug)]
struct Task {
    planned: Planned,
    size: u64,
    /// Raised whenever the planned part changes, so a checkpoint taken
    /// before the change does not commit it.
    revision: u64,
    committed: bool,
    lease: Option<Lease>,
    outcome: Option<Outcome>,
}

impl Task {
    fn new(planned: Planned) -> Self {
        Task {
            size: planned.objects.iter().map(|o| o.size).sum(),
            planned,
            revision: 0,
            committed: false,
            lease: None,
            outcome: None,
        }
    }

    fn state(&self) -> TaskState {
        match (&self.outcome, &self.lease) {
            (Some(outcome), _) => outcome.state,
            (None, Some(_)) => TaskState::Running,
            (None, None) => TaskState::Pending,
        }
    }

    fn leasable(&self) -> bool {
        self.committed && self.lease.is_none() && self.outcome.is_none()
    }
}

/// Why the coordinator refused a worker's report.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no task {0}")]
    NotFound(TaskId),
    #[error("{0}")]
    Conflict(String),
}

/// A snapshot of the live tasks for a checkpoint, and what to mark
/// committed once it is written.
pub struct Snapshot {
    pub tasks: Vec<Planned>,
    revisions: Vec<(TaskId, u64)>,
}

/// The task table of one source.
pub struct Tasks {
    source: SourceId,
    /// The sink location's prefix, which every task's output is under.
    sink_prefix: Option<String>,
    limits: Limits,
    epoch: u64,
    next_seq: u64,
    finished: FinishedKeys,
    live: BTreeMap<TaskId, Task>,
    /// Which live task holds each key, so a relisting does not plan it again.
    by_key: HashMap<String, TaskId>,
    /// Committed pending tasks in lease order; may hold ids that were leased
    /// or finished since (skipped when popped).
    queue: VecDeque<TaskId>,
    deadlines: BTreeSet<(Timestamp, TaskId)>,
    recent: VecDeque<TaskDetail>,
    totals: Totals,
}

impl Tasks {
    /// The table of a coordinator of `epoch`, resuming from what a
    /// checkpoint kept: finished keys, tasks not yet archived, totals.
    pub fn new(
        source: SourceId,
        sink_prefix: Option<String>,
        limits: Limits,
        epoch: u64,
        finished: FinishedKeys,
        restored: Vec<Planned>,
        totals: Totals,
    ) -> Self {
        let mut tasks = Tasks {
            source,
            sink_prefix,
            limits,
            epoch,
            next_seq: 1,
            finished,
            live: BTreeMap::new(),
            by_key: HashMap::new(),
            queue: VecDeque::new(),
            deadlines: BTreeSet::new(),
            recent: VecDeque::new(),
            totals,
        };
        for planned in restored {
            let id = planned.id;
            tasks.add(planned);
            tasks.live.get_mut(&id).expect("just added").committed = true;
            tasks.queue.push_back(id);
        }
        tasks
    }

    pub fn source(&self) -> &SourceId {
        &self.source
    }

    /// The sink object of a task: the same for every attempt.
    fn output(&self, task: &Planned) -> String {
        let date = task.created.strftime("%Y-%m-%d");
        layout::sink_object(self.sink_prefix.as_deref(), &self.source, date, task.id)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn finished_keys(&self) -> &FinishedKeys {
        &self.finished
    }

    pub fn finished_keys_mut(&mut self) -> &mut FinishedKeys {
        &mut self.finished
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Objects in tasks not yet archived: what the listing must wait on
    /// before it plans more.
    pub fn live_objects(&self) -> usize {
        self.by_key.len()
    }

    /// Plans tasks for the objects of one listing page that are neither
    /// finished with the same ETag and size nor in a live task. Returns how
    /// many tasks it planned; they are leased once committed.
    pub fn plan(&mut self, page: Vec<Listed>, now: Timestamp) -> usize {
        let new: Vec<Listed> = page
            .into_iter()
            .filter(|listed| {
                let object = &listed.object;
                !self.by_key.contains_key(&object.key)
                    && self.finished.get(&object.key).is_none_or(|finished| {
                        finished.fingerprint != fingerprint(&object.etag, object.size)
                    })
            })
            .collect();
        self.totals.objects_discovered += new.len() as u64;
        let groups = pack(new, self.limits.max_objects, self.limits.max_bytes);
        let planned = groups.len();
        for group in groups {
            let id = self.next_id();
            let oldest = group
                .iter()
                .map(|listed| listed.modified)
                .min()
                .unwrap_or(now);
            self.add(Planned {
                id,
                created: now,
                attempt: 0,
                objects: group.into_iter().map(|listed| listed.object).collect(),
                oldest,
                error: None,
            });
        }
        planned
    }

    fn next_id(&mut self) -> TaskId {
        let id = TaskId {
            epoch: self.epoch,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        id
    }

    fn add(&mut self, planned: Planned) {
        for object in &planned.objects {
            self.by_key.insert(object.key.clone(), planned.id);
        }
        self.live.insert(planned.id, Task::new(planned));
    }

    /// Whether some planned task waits for a checkpoint before it can be
    /// leased.
    pub fn has_uncommitted(&self) -> bool {
        self.live
            .values()
            .any(|task| !task.committed && task.outcome.is_none())
    }

    /// Every live task, for the checkpoint.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            tasks: self
                .live
                .values()
                .map(|task| task.planned.clone())
                .collect(),
            revisions: self
                .live
                .values()
                .filter(|task| !task.committed)
                .map(|task| (task.planned.id, task.revision))
                .collect(),
        }
    }

    /// Marks the tasks of a written checkpoint committed, unless they
    /// changed since the snapshot.
    pub fn committed(&mut self, snapshot: &Snapshot) {
        for (id, revision) in &snapshot.revisions {
            if let Some(task) = self.live.get_mut(id)
                && task.revision == *revision
                && !task.committed
            {
                task.committed = true;
                if task.outcome.is_none() {
                    self.queue.push_back(*id);
                }
            }
        }
    }

    /// Leases up to `max` pending tasks to `worker`.
    pub fn lease(&mut self, worker: &str, max: u32, now: Timestamp) -> Vec<LeasedTask> {
        let mut leased = Vec::new();
        while leased.len() < max as usize {
            let Some(id) = self.queue.pop_front() else {
                break;
            };
            let deadline = now + self.limits.lease;
            let Some(task) = self.live.get_mut(&id).filter(|task| task.leasable()) else {
                continue;
            };
            task.planned.attempt += 1;
            task.lease = Some(Lease {
                worker: worker.to_owned(),
                started: now,
                deadline,
                records: 0,
                bytes: 0,
            });
            self.deadlines.insert((deadline, id));
            let planned = &self.live[&id].planned;
            leased.push(LeasedTask {
                id,
                attempt: planned.attempt,
                objects: planned.objects.clone(),
                output: self.output(planned),
            });
        }
        leased
    }

    /// Renews the leases `worker` reports progress on. Returns the tasks it
    /// no longer holds. A pending task reported with the attempt it was last
    /// leased for (a worker that outlived a coordinator restart) is leased
    /// to it again rather than redone.
    pub fn heartbeat(
        &mut self,
        worker: &str,
        progress: &[Progress],
        now: Timestamp,
    ) -> Vec<TaskId> {
        let deadline = now + self.limits.lease;
        let mut lost = Vec::new();
        for report in progress {
            let id = report.id;
            let Some(task) = self.live.get_mut(&id) else {
                lost.push(id);
                continue;
            };
            if task.planned.attempt != report.attempt || task.outcome.is_some() {
                lost.push(id);
                continue;
            }
            match &mut task.lease {
                Some(lease) if lease.worker == worker => {
                    self.deadlines.remove(&(lease.deadline, id));
                    lease.deadline = deadline;
                    lease.records = report.records;
                    lease.bytes = report.bytes;
                }
                None if task.committed => {
                    task.lease = Some(Lease {
                        worker: worker.to_owned(),
                        started: now,
                        deadline,
                        records: report.records,
                        bytes: report.bytes,
                    });
                }
                _ => {
                    lost.push(id);
                    continue;
                }
            }
            self.deadlines.insert((deadline, id));
        }
        lost
    }

    /// Records a task done. Accepted from whichever worker finished it
    /// first: every attempt writes the same output, so a late duplicate
    /// attempt changes nothing.
    pub fn complete(
        &mut self,
        id: TaskId,
        done: Completion,
        now: Timestamp,
    ) -> Result<(), Refusal> {
        self.find_live(id)?;
        let task = self.live.get_mut(&id).expect("found");
        if task.outcome.is_some() {
            return Err(Refusal::Conflict(format!("task {id} has already finished")));
        }
        if task.planned.attempt == 0 {
            return Err(Refusal::Conflict(format!("task {id} was never leased")));
        }
        let started = task.lease.take().map(|lease| {
            self.deadlines.remove(&(lease.deadline, id));
            lease.started
        });
        task.planned.error = None;
        task.outcome = Some(Outcome {
            state: TaskState::Succeeded,
            worker: Some(done.worker),
            started,
            finished: now,
            records: done.records,
            bytes_read: done.bytes_read,
            bytes_written: done.bytes_written,
            outputs: done.outputs,
        });
        self.totals.tasks_succeeded += 1;
        self.totals.objects_ingested += task.planned.objects.len() as u64;
        self.totals.records += done.records;
        self.totals.bytes += done.bytes_read;
        Ok(())
    }

    /// Records a failed attempt. The task is retried until it has had
    /// `maxAttempts`; an object named as the fault is split off into a task
    /// of its own so the other objects go on.
    pub fn fail(&mut self, id: TaskId, failure: Failure, now: Timestamp) -> Result<(), Refusal> {
        self.find_live(id)?;
        let task = self.live.get_mut(&id).expect("found");
        let holds = task.outcome.is_none()
            && task.planned.attempt == failure.attempt
            && task
                .lease
                .as_ref()
                .is_some_and(|lease| lease.worker == failure.worker);
        if !holds {
            return Err(Refusal::Conflict(format!(
                "worker {} does not hold attempt {} of task {id}",
                failure.worker, failure.attempt
            )));
        }
        let lease = task.lease.take().expect("held");
        self.deadlines.remove(&(lease.deadline, id));
        if failure.released {
            task.planned.attempt -= 1;
            if task.committed {
                self.queue.push_front(id);
            }
            return Ok(());
        }
        task.planned.error = Some(failure.error.clone());
        let culprit = failure.key.as_deref().and_then(|key| {
            task.planned
                .objects
                .iter()
                .position(|object| object.key == key)
        });
        match culprit {
            Some(index) if task.planned.objects.len() > 1 => {
                let object = task.planned.objects.remove(index);
                let oldest = task.planned.oldest;
                // The others did nothing wrong: they start over.
                task.planned.attempt = 0;
                task.planned.error = None;
                task.size -= object.size;
                task.revision += 1;
                task.committed = false;
                let split = Planned {
                    id: self.next_id(),
                    created: now,
                    attempt: failure.attempt,
                    objects: vec![object],
                    oldest,
                    error: Some(failure.error),
                };
                let split_id = split.id;
                self.add(split);
                self.retry_or_give_up(split_id, Some(lease), now);
            }
            _ => self.retry_or_give_up(id, Some(lease), now),
        }
        Ok(())
    }

    /// Expires the leases whose deadline passed: their tasks are retried
    /// or, after `maxAttempts`, failed for good. Returns how many expired.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let mut expired = 0;
        while let Some(&(deadline, id)) = self.deadlines.first()
            && deadline <= now
        {
            self.deadlines.pop_first();
            let Some(task) = self.live.get_mut(&id) else {
                continue;
            };
            let Some(lease) = task.lease.take_if(|lease| lease.deadline == deadline) else {
                continue;
            };
            task.planned.error = Some(format!(
                "lease expired: worker {} sent no heartbeat for {}",
                lease.worker,
                sluice_core::duration::Duration(self.limits.lease)
            ));
            expired += 1;
            self.retry_or_give_up(id, Some(lease), now);
        }
        expired
    }

    fn retry_or_give_up(&mut self, id: TaskId, lease: Option<Lease>, now: Timestamp) {
        let max_attempts = self.limits.max_attempts;
        let task = self.live.get_mut(&id).expect("a live task");
        if task.planned.attempt < max_attempts {
            if task.committed {
                self.queue.push_back(id);
            }
            return;
        }
        let (records, bytes, worker, started) = match lease {
            Some(lease) => (
                lease.records,
                lease.bytes,
                Some(lease.worker),
                Some(lease.started),
            ),
            None => (0, 0, None, None),
        };
        task.outcome = Some(Outcome {
            state: TaskState::Failed,
            worker,
            started,
            finished: now,
            records,
            bytes_read: bytes,
            bytes_written: 0,
            outputs: Vec::new(),
        });
        self.totals.tasks_failed += 1;
        self.totals.objects_failed += task.planned.objects.len() as u64;
    }

    /// The id of a live task, or why there is none.
    fn find_live(&self, id: TaskId) -> Result<(), Refusal> {
        if self.live.contains_key(&id) {
            return Ok(());
        }
        if self.recent.iter().any(|detail| detail.task.id == id) {
            return Err(Refusal::Conflict(format!("task {id} has already finished")));
        }
        Err(Refusal::NotFound(id))
    }

    /// Takes the finished tasks out of the table, folds their keys into the
    /// finished keys, and returns their archive records.
    pub fn drain_finished(&mut self) -> Vec<TaskRecord> {
        let done: Vec<TaskId> = self
            .live
            .iter()
            .filter(|(_, task)| task.outcome.is_some())
            .map(|(id, _)| *id)
            .collect();
        let mut records = Vec::with_capacity(done.len());
        for id in done {
            let task = self.live.remove(&id).expect("listed above");
            let outcome = task.outcome.as_ref().expect("finished");
            let failed = outcome.state == TaskState::Failed;
            for object in &task.planned.objects {
                self.by_key.remove(&object.key);
                self.finished.insert(
                    &object.key,
                    Finished {
                        fingerprint: fingerprint(&object.etag, object.size),
                        failed,
                    },
                );
            }
            records.push(self.record(&task));
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(self.detail(id, &task));
        }
        records
    }

    fn record(&self, task: &Task) -> TaskRecord {
        let outcome = task.outcome.as_ref().expect("finished");
        let duration = outcome
            .started
            .map(|started| outcome.finished.duration_since(started))
            .unwrap_or_default();
        TaskRecord {
            id: task.planned.id,
            account: self.source.account.clone(),
            collection: self.source.collection.clone(),
            source: self.source.to_string(),
            state: outcome.state,
            worker: outcome.worker.clone(),
            attempt: task.planned.attempt,
            objects: task.planned.objects.clone(),
            records: outcome.records,
            bytes_read: outcome.bytes_read,
            bytes_written: outcome.bytes_written,
            outputs: outcome.outputs.clone(),
            created: task.planned.created,
            started: outcome.started,
            finished: outcome.finished,
            duration_ms: duration.as_millis().try_into().unwrap_or(0),
            error: task.planned.error.clone(),
        }
    }

    fn view(&self, task: &Task) -> TaskView {
        let (worker, started, finished, records, bytes) = match (&task.outcome, &task.lease) {
            (Some(outcome), _) => (
                outcome.worker.clone(),
                outcome.started,
                Some(outcome.finished),
                outcome.records,
                outcome.bytes_read,
            ),
            (None, Some(lease)) => (
                Some(lease.worker.clone()),
                Some(lease.started),
                None,
                lease.records,
                lease.bytes,
            ),
            (None, None) => (None, None, None, 0, 0),
        };
        TaskView {
            id: task.planned.id,
            account: self.source.account.clone(),
            collection: self.source.collection.clone(),
            source: self.source.to_string(),
            state: task.state(),
            worker,
            attempt: task.planned.attempt,
            objects: task.planned.objects.len() as u32,
            size: task.size,
            first_key: task
                .planned
                .objects
                .first()
                .map(|object| object.key.clone())
                .unwrap_or_default(),
            records,
            bytes,
            created: task.planned.created,
            started,
            finished,
            error: task.planned.error.clone(),
        }
    }

    fn detail(&self, id: TaskId, task: &Task) -> TaskDetail {
        debug_assert_eq!(id, task.planned.id);
        TaskDetail {
            task: self.view(task),
            keys: task.planned.objects.clone(),
            output: self.output(&task.planned),
        }
    }

    /// The `limit` running tasks that started first.
    pub fn running(&self, limit: usize) -> Vec<TaskView> {
        let mut running: Vec<TaskView> = self
            .live
            .values()
            .filter(|task| task.lease.is_some() && task.outcome.is_none())
            .map(|task| self.view(task))
            .collect();
        running.sort_by_key(|view| view.started);
        running.truncate(limit);
        running
    }

    /// The `limit` tasks that failed for good most recently, newest first.
    pub fn recent_failures(&self, limit: usize) -> Vec<TaskView> {
        let mut failed: Vec<TaskView> = self
            .live
            .values()
            .filter(|task| task.state() == TaskState::Failed)
            .map(|task| self.view(task))
            .chain(
                self.recent
                    .iter()
                    .filter(|detail| detail.task.state == TaskState::Failed)
                    .map(|detail| detail.task.clone()),
            )
            .collect();
        failed.sort_by_key(|view| std::cmp::Reverse(view.finished));
        failed.truncate(limit);
        failed
    }

    /// One task, live or recently finished.
    pub fn get(&self, id: TaskId) -> Option<TaskDetail> {
        match self.live.get(&id) {
            Some(task) => Some(self.detail(id, task)),
            None => self
                .recent
                .iter()
                .find(|detail| detail.task.id == id)
                .cloned(),
        }
    }

    /// The tasks matching `query`, in id order, from after `query.cursor`.
    /// Returns the page and whether more follow.
    pub fn list(&self, query: &TaskQuery, limit: usize) -> (Vec<TaskView>, bool) {
        let source = &self.source;
        let mine = query.account.as_ref().is_none_or(|a| *a == source.account)
            && query
                .collection
                .as_ref()
                .is_none_or(|c| *c == source.collection)
            && query
                .source
                .as_ref()
                .is_none_or(|s| *s == source.to_string());
        if !mine {
            return (Vec::new(), false);
        }
        let after = query.cursor;
        let matches = |view: &TaskView| {
            query.state.is_none_or(|state| view.state == state)
                && query
                    .worker
                    .as_ref()
                    .is_none_or(|worker| view.worker.as_ref() == Some(worker))
        };
        let mut views: Vec<TaskView> = self
            .recent
            .iter()
            .map(|detail| &detail.task)
            .filter(|view| after.is_none_or(|after| view.id > after) && matches(view))
            .cloned()
            .collect();
        let live = match after {
            Some(after) => self
                .live
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.live.range(..),
        };
        views.extend(live.map(|(_, task)| self.view(task)).filter(matches));
        views.sort_by_key(|view| view.id);
        let more = views.len() > limit;
        views.truncate(limit);
        (views, more)
    }

    /// The counts the live API and the status report.
    pub fn summary(&self, now: Timestamp) -> Summary {
        let mut pending = 0;
        let mut running = 0;
        let mut oldest: Option<Timestamp> = None;
        for task in self.live.values() {
            match task.state() {
                TaskState::Pending => pending += 1,
                TaskState::Running => running += 1,
                _ => continue,
            }
            oldest = Some(oldest.map_or(task.planned.oldest, |o| o.min(task.planned.oldest)));
        }
        let lag = oldest
            .map(|oldest| now.duration_since(oldest).as_secs().max(0) as u64)
            .unwrap_or(0);
        Summary {
            account: self.source.account.clone(),
            collection: self.source.collection.clone(),
            source: self.source.to_string(),
            epoch: self.epoch,
            tasks: TaskCounts {
                pending,
                running,
                succeeded: self.totals.tasks_succeeded,
                failed: self.totals.tasks_failed,
            },
            objects: ObjectCounts {
                discovered: self.totals.objects_discovered,
                ingested: self.totals.objects_ingested,
                failed: self.totals.objects_failed,
            },
            records_ingested: self.totals.records,
            bytes_ingested: self.totals.bytes,
            lag_seconds: lag,
            listing_passes: 0,
            last_checkpoint: None,
        }
    }
}

/// Packs objects, in order, into groups of at most `max_objects` objects
/// and `max_bytes` bytes; an object larger than `max_bytes` is a group of
/// its own.
pub fn pack(objects: Vec<Listed>, max_objects: u32, max_bytes: u64) -> Vec<Vec<Listed>> {
    let mut groups: Vec<Vec<Listed>> = Vec::new();
    let mut bytes = 0u64;
    for listed in objects {
        let size = listed.object.size;
        let fits = groups.last().is_some_and(|group| {
            group.len() < max_objects as usize && bytes.saturating_add(size) <= max_bytes
        });
        if fits {
            bytes += size;
            groups.last_mut().expect("fits").push(listed);
        } else {
            bytes = size;
            groups.push(vec![listed]);
        }
    }
    groups
}

#[cfg(test)]
mod tests {
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
            Some("sink/".into()),
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
        // The split task 7-2 and the shrunk 7-1 are uncommitted now.
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
        let progress = |id: TaskId, attempt| Progress {
            id,
            attempt,
            records: 3,
            bytes: 30,
        };
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
    fn a_late_completion_from_an_expired_lease_still_counts() {
        let mut tasks = committed(&["a"]);
        tasks.lease("w1", 1, at(0));
        tasks.expire(at(10));
        tasks.lease("w2", 1, at(11));
        tasks.complete(id("7-1"), done("w1", 1), at(12)).unwrap();
        assert!(
            !tasks
                .heartbeat(
                    "w2",
                    &[Progress {
                        id: id("7-1"),
                        attempt: 2,
                        records: 0,
                        bytes: 0
                    }],
                    at(13)
                )
                .is_empty()
        );
        assert_eq!(tasks.expire(at(100)), 0);
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
            Some("sink/".into()),
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
}
