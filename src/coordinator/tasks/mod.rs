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
//!
//! This file holds the table and its state machine; `views.rs` what is read
//! from it (archive records, the live API's views, the summary).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use sluice_core::api::{
    Completion, Failure, LeasedTask, ObjectRef, Progress, TaskDetail, TaskState,
};
use sluice_core::archive::TaskRecord;
use sluice_core::id::{SourceId, TaskId};
use sluice_core::layout::Sink;

use super::finished::{Finished, FinishedKeys, fingerprint};
use crate::crd::Redriven;

/// Finished tasks kept for the live API after they were archived, and
/// split task ids remembered to refuse late reports with the reason.
const RECENT: usize = 500;
/// Redrives remembered (in the checkpoint), so that each is done once.
const REDRIVES_KEPT: usize = 20;

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

    /// The worker that holds or last held it.
    fn worker(&self) -> Option<&str> {
        match (&self.outcome, &self.lease) {
            (Some(outcome), _) => outcome.worker.as_deref(),
            (None, Some(lease)) => Some(&lease.worker),
            (None, None) => None,
        }
    }

    fn leasable(&self) -> bool {
        self.committed && self.lease.is_none() && self.outcome.is_none()
    }

    /// Whether `worker` holds `attempt` of this unfinished task: it is the
    /// current attempt, and the lease is the worker's, or nobody's (it
    /// expired, or the coordinator restarted, and no other worker has
    /// taken the task since). Only the holder's reports change the task.
    fn held_by(&self, worker: &str, attempt: u32) -> bool {
        self.outcome.is_none()
            && attempt > 0
            && self.planned.attempt == attempt
            && match &self.lease {
                Some(lease) => lease.worker == worker,
                None => self.committed,
            }
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
    /// Where every task's output goes.
    sink: Sink,
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
    /// Ids retired by a split, with what became of their objects.
    retired: VecDeque<(TaskId, String)>,
    totals: Totals,
    /// The latest redrives, newest last.
    redrives: VecDeque<Redriven>,
}

impl Tasks {
    /// The table of a coordinator of `epoch`, resuming from what a
    /// checkpoint kept: finished keys, tasks not yet archived, totals.
    pub fn new(
        source: SourceId,
        sink: Sink,
        limits: Limits,
        epoch: u64,
        finished: FinishedKeys,
        restored: Vec<Planned>,
        totals: Totals,
    ) -> Self {
        let mut tasks = Tasks {
            source,
            sink,
            limits,
            epoch,
            next_seq: 1,
            finished,
            live: BTreeMap::new(),
            by_key: HashMap::new(),
            queue: VecDeque::new(),
            deadlines: BTreeSet::new(),
            recent: VecDeque::new(),
            retired: VecDeque::new(),
            totals,
            redrives: VecDeque::new(),
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

    pub fn sink(&self) -> &Sink {
        &self.sink
    }

    /// The sink object of a task: the same for every attempt.
    fn output(&self, task: &Planned) -> String {
        let date = task.created.strftime("%Y-%m-%d");
        self.sink.object(&self.source, date, task.id)
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
        self.plan_tasks(new, now)
    }

    /// Queues again, for redrive `id`, those of `objects` that still
    /// failed for good and are in no live task: new tasks, fresh attempts.
    /// The others count as `skipped`, beside those the caller found so;
    /// `missing` are keys no longer in the source. Remembers the redrive,
    /// so it is done once.
    pub fn requeue(
        &mut self,
        id: &str,
        objects: Vec<Listed>,
        skipped: u64,
        missing: u64,
        now: Timestamp,
    ) -> Redriven {
        let asked = objects.len() as u64;
        let failed: Vec<Listed> = objects
            .into_iter()
            .filter(|listed| {
                let key = &listed.object.key;
                !self.by_key.contains_key(key)
                    && self
                        .finished
                        .get(key)
                        .is_some_and(|finished| finished.failed)
            })
            .collect();
        let objects = failed.len() as u64;
        // No longer dead letters: they count again once they end.
        self.totals.objects_failed = self.totals.objects_failed.saturating_sub(objects);
        self.plan_tasks(failed, now);
        let done = Redriven {
            id: id.to_owned(),
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now),
            objects,
            skipped: skipped + (asked - objects),
            missing,
        };
        if self.redrives.len() == REDRIVES_KEPT {
            self.redrives.pop_front();
        }
        self.redrives.push_back(done.clone());
        done
    }

    /// Whether redrive `id` was done.
    pub fn redriven(&self, id: &str) -> bool {
        self.redrives.iter().any(|done| done.id == id)
    }

    /// The latest redrive, for the status.
    pub fn last_redrive(&self) -> Option<&Redriven> {
        self.redrives.back()
    }

    /// The redrives remembered, oldest first: what the checkpoint keeps.
    pub fn redrives(&self) -> Vec<Redriven> {
        self.redrives.iter().cloned().collect()
    }

    /// Remembers the redrives a checkpoint kept.
    pub fn restore_redrives(&mut self, redrives: Vec<Redriven>) {
        self.redrives = redrives.into_iter().collect();
    }

    /// Packs `objects` into new tasks; returns how many.
    fn plan_tasks(&mut self, objects: Vec<Listed>, now: Timestamp) -> usize {
        let groups = pack(objects, self.limits.max_objects, self.limits.max_bytes);
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
            let Some(task) = self
                .live
                .get_mut(&id)
                .filter(|task| task.held_by(worker, report.attempt))
            else {
                lost.push(id);
                continue;
            };
            match &mut task.lease {
                Some(lease) => {
                    self.deadlines.remove(&(lease.deadline, id));
                    lease.deadline = deadline;
                    lease.records = report.records;
                    lease.bytes = report.bytes;
                }
                None => {
                    task.lease = Some(Lease {
                        worker: worker.to_owned(),
                        started: now,
                        deadline,
                        records: report.records,
                        bytes: report.bytes,
                    });
                }
            }
            self.deadlines.insert((deadline, id));
        }
        lost
    }

    /// Records a task done, when reported by the worker that holds the
    /// attempt; a report of any other attempt changes nothing.
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
        if !task.held_by(&done.worker, done.attempt) {
            return Err(not_held(&done.worker, done.attempt, id));
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
        if !task.held_by(&failure.worker, failure.attempt) {
            return Err(not_held(&failure.worker, failure.attempt, id));
        }
        let lease = task.lease.take();
        if let Some(lease) = &lease {
            self.deadlines.remove(&(lease.deadline, id));
        }
        if failure.released {
            task.planned.attempt -= 1;
            if task.committed {
                self.queue.push_front(id);
            }
            return Ok(());
        }
        task.planned.error = Some(failure.error.clone());
        let at_fault = failure.key.as_deref().and_then(|key| {
            task.planned
                .objects
                .iter()
                .position(|object| object.key == key)
        });
        match at_fault {
            Some(index) if task.planned.objects.len() > 1 => {
                // The others did nothing wrong: they start over, under a new
                // id and so a new output, which no earlier attempt of the
                // whole task (still running somewhere) can write.
                let split = self.live.remove(&id).expect("found").planned;
                let (rest_id, culprit_id) = (self.next_id(), self.next_id());
                let mut objects = split.objects;
                let culprit = Planned {
                    id: culprit_id,
                    created: now,
                    attempt: split.attempt,
                    objects: vec![objects.remove(index)],
                    oldest: split.oldest,
                    error: Some(failure.error),
                };
                let rest = Planned {
                    id: rest_id,
                    created: now,
                    attempt: 0,
                    objects,
                    oldest: split.oldest,
                    error: None,
                };
                self.retire(id, rest_id, culprit_id);
                self.add(rest);
                self.add(culprit);
                self.retry_or_give_up(culprit_id, lease, now);
            }
            _ => self.retry_or_give_up(id, lease, now),
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

    /// Remembers that task `id` was split into `rest` and `culprit`.
    fn retire(&mut self, id: TaskId, rest: TaskId, culprit: TaskId) {
        if self.retired.len() == RECENT {
            self.retired.pop_front();
        }
        let fate = format!(
            "task {id} was split: its object at fault is task {culprit} now, the others task {rest}"
        );
        self.retired.push_back((id, fate));
    }

    /// The id of a live task, or why there is none.
    fn find_live(&self, id: TaskId) -> Result<(), Refusal> {
        if self.live.contains_key(&id) {
            return Ok(());
        }
        if self.recent.iter().any(|detail| detail.task.id == id) {
            return Err(Refusal::Conflict(format!("task {id} has already finished")));
        }
        if let Some((_, fate)) = self.retired.iter().find(|(retired, _)| *retired == id) {
            return Err(Refusal::Conflict(fate.clone()));
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
}

fn not_held(worker: &str, attempt: u32, id: TaskId) -> Refusal {
    Refusal::Conflict(format!(
        "worker {worker} does not hold attempt {attempt} of task {id}: the lease expired and \
         the task went on without it"
    ))
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

mod views;

#[cfg(test)]
mod tests;
