//! The read side of the task table: the records the archive keeps, the
//! views the live task API and the status show, and the summary.

use jiff::Timestamp;

use sluice_core::api::{
    ObjectCounts, Summary, TaskCounts, TaskDetail, TaskQuery, TaskState, TaskView,
};
use sluice_core::archive::TaskRecord;
use sluice_core::id::TaskId;

use super::{Task, Tasks};

impl Tasks {
    pub(super) fn record(&self, task: &Task) -> TaskRecord {
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
        let (started, finished, records, bytes) = match (&task.outcome, &task.lease) {
            (Some(outcome), _) => (
                outcome.started,
                Some(outcome.finished),
                outcome.records,
                outcome.bytes_read,
            ),
            (None, Some(lease)) => (Some(lease.started), None, lease.records, lease.bytes),
            (None, None) => (None, None, 0, 0),
        };
        TaskView {
            id: task.planned.id,
            account: self.source.account.clone(),
            collection: self.source.collection.clone(),
            source: self.source.to_string(),
            state: task.state(),
            worker: task.worker().map(str::to_owned),
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

    pub(super) fn detail(&self, id: TaskId, task: &Task) -> TaskDetail {
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
        let wanted = |state: TaskState, worker: Option<&str>| {
            query.state.is_none_or(|wanted| state == wanted)
                && query
                    .worker
                    .as_deref()
                    .is_none_or(|wanted| worker == Some(wanted))
        };
        let after_cursor = |id: TaskId| after.is_none_or(|after| id > after);
        // Both in id order; a view is built only for what is returned, so a
        // request costs its page, not the whole table (the lock is held).
        let mut recent: Vec<&TaskView> = self
            .recent
            .iter()
            .map(|detail| &detail.task)
            .filter(|view| after_cursor(view.id) && wanted(view.state, view.worker.as_deref()))
            .collect();
        recent.sort_by_key(|view| view.id);
        let mut recent = recent.into_iter().peekable();
        let live = match after {
            Some(after) => self
                .live
                .range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            None => self.live.range(..),
        };
        let mut live = live
            .map(|(_, task)| task)
            .filter(|task| wanted(task.state(), task.worker()))
            .peekable();
        let mut views = Vec::with_capacity(limit.min(256) + 1);
        while views.len() <= limit {
            let recent_first = match (recent.peek(), live.peek()) {
                (None, None) => break,
                (Some(view), Some(task)) => view.id < task.planned.id,
                (recent, _) => recent.is_some(),
            };
            views.push(if recent_first {
                recent.next().expect("peeked").clone()
            } else {
                self.view(live.next().expect("peeked"))
            });
        }
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
