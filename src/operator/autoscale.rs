//! Sizing the worker pool from the coordinator's backlog
//! (`spec.workers.autoscale`), as pure functions and a small history.
//!
//! The recommendation is ceil((pending + running) / tasksPerWorker) workers,
//! clamped to [minReplicas, maxReplicas]. The pool grows to a higher
//! recommendation at once, and shrinks only to the highest recommendation
//! of the last stabilization window, so a backlog that dips for a moment
//! does not stop workers that are needed again a moment later (the
//! HorizontalPodAutoscaler's scale-down stabilization).

use std::collections::VecDeque;
use std::time::Duration;

use jiff::Timestamp;

use sluice_core::api::TaskCounts;

use crate::crd::AutoscaleSpec;

/// What the backlog alone asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    /// Workers, within [minReplicas, maxReplicas].
    pub replicas: i32,
    /// Tasks pending or running; None before the coordinator's first count.
    pub backlog: Option<u64>,
}

/// The workers `autoscale` asks for with `tasks` as the backlog. Before the
/// coordinator has counted anything, minReplicas.
pub fn recommend(autoscale: &AutoscaleSpec, tasks: Option<&TaskCounts>) -> Recommendation {
    let backlog = tasks.map(|tasks| tasks.pending.saturating_add(tasks.running));
    let per_worker = u64::from(autoscale.tasks_per_worker.max(1));
    let wanted = backlog.map_or(0, |backlog| backlog.div_ceil(per_worker));
    let max = autoscale.max_replicas.max(0);
    let min = autoscale.min_replicas.clamp(0, max);
    let replicas = i32::try_from(wanted).unwrap_or(i32::MAX).clamp(min, max);
    Recommendation { replicas, backlog }
}

/// Why the pool has the size it has, for the Scaled event.
pub fn reason(autoscale: &AutoscaleSpec, recommendation: Recommendation, chosen: i32) -> String {
    let per_worker = autoscale.tasks_per_worker;
    let why = match recommendation.backlog {
        None => format!(
            "the coordinator has not counted tasks yet (minReplicas {})",
            autoscale.min_replicas
        ),
        Some(0) => format!(
            "no tasks pending or running (minReplicas {})",
            autoscale.min_replicas
        ),
        Some(backlog) => {
            let tasks = if backlog == 1 { "task" } else { "tasks" };
            let bound = if recommendation.replicas == autoscale.max_replicas {
                format!(", at most maxReplicas {}", autoscale.max_replicas)
            } else if recommendation.replicas == autoscale.min_replicas {
                format!(", at least minReplicas {}", autoscale.min_replicas)
            } else {
                String::new()
            };
            format!(
                "backlog of {backlog} {tasks} pending or running, {per_worker} per worker{bound}"
            )
        }
    };
    if chosen > recommendation.replicas {
        format!(
            "{why}; holding {chosen} for the scale-down stabilization window, then {}",
            recommendation.replicas
        )
    } else {
        why
    }
}

/// The recent recommendations of one IngestSource, as far back as the
/// stabilization window reaches: only those that may still be the highest
/// are kept (each newer than the ones before it and lower than them), so it
/// holds at most one entry per distinct worker count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    entries: VecDeque<(Timestamp, i32)>,
}

impl History {
    /// A history that holds `replicas` as of `now`: after an operator
    /// restart (which forgets the history), the pool it finds does not
    /// shrink before a full window has passed.
    pub fn starting_at(now: Timestamp, replicas: i32) -> Self {
        Self {
            entries: VecDeque::from([(now, replicas)]),
        }
    }

    /// Records `recommendation` at `now` and returns the worker count to
    /// run: the highest recommendation within `window`, this one included.
    pub fn record(&mut self, now: Timestamp, recommendation: i32, window: Duration) -> i32 {
        let horizon = now.checked_sub(window).unwrap_or(Timestamp::MIN);
        while self
            .entries
            .front()
            .is_some_and(|(time, _)| *time <= horizon)
        {
            self.entries.pop_front();
        }
        while self
            .entries
            .back()
            .is_some_and(|(_, replicas)| *replicas <= recommendation)
        {
            self.entries.pop_back();
        }
        self.entries.push_back((now, recommendation));
        self.entries.front().map_or(recommendation, |(_, r)| *r)
    }

    /// When the chosen count drops next if no higher recommendation comes:
    /// when the oldest (highest) entry leaves the window.
    pub fn next_drop(&self, window: Duration) -> Option<Timestamp> {
        if self.entries.len() < 2 {
            return None;
        }
        let (time, _) = self.entries.front()?;
        Some(time.checked_add(window).unwrap_or(Timestamp::MAX))
    }

    /// The time of the newest entry.
    pub fn last_recorded(&self) -> Option<Timestamp> {
        self.entries.back().map(|(time, _)| *time)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(min: i32, max: i32, per_worker: u32) -> AutoscaleSpec {
        AutoscaleSpec {
            min_replicas: min,
            max_replicas: max,
            tasks_per_worker: per_worker,
        }
    }

    fn tasks(pending: u64, running: u64) -> TaskCounts {
        TaskCounts {
            pending,
            running,
            ..TaskCounts::default()
        }
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn the_backlog_divided_by_tasks_per_worker_rounded_up() {
        let autoscale = spec(0, 10, 4);
        let replicas = |pending, running| recommend(&autoscale, Some(&tasks(pending, running)));
        assert_eq!(replicas(1, 0).replicas, 1);
        assert_eq!(replicas(4, 0).replicas, 1);
        assert_eq!(replicas(4, 1).replicas, 2);
        assert_eq!(replicas(9, 3).replicas, 3);
        assert_eq!(replicas(9, 3).backlog, Some(12));
    }

    #[test]
    fn clamped_to_min_and_max_and_min_when_idle() {
        let autoscale = spec(2, 5, 4);
        assert_eq!(
            recommend(&autoscale, Some(&tasks(1000, 20))).replicas,
            5,
            "capped at max"
        );
        assert_eq!(recommend(&autoscale, Some(&tasks(0, 0))).replicas, 2);
        assert_eq!(recommend(&autoscale, Some(&tasks(1, 0))).replicas, 2);
        assert_eq!(recommend(&spec(0, 5, 4), Some(&tasks(0, 0))).replicas, 0);
        // Before the first count: min.
        assert_eq!(
            recommend(&autoscale, None),
            Recommendation {
                replicas: 2,
                backlog: None
            }
        );
        // Huge backlogs neither overflow nor exceed max.
        assert_eq!(
            recommend(&spec(0, 1000, 1), Some(&tasks(u64::MAX, u64::MAX))).replicas,
            1000
        );
    }

    #[test]
    fn a_min_above_max_never_exceeds_max() {
        // Admission refuses it; should one get through, max wins.
        assert_eq!(recommend(&spec(7, 3, 1), Some(&tasks(0, 0))).replicas, 3);
    }

    #[test]
    fn grows_at_once() {
        let mut history = History::default();
        assert_eq!(history.record(at(0), 1, WINDOW), 1);
        assert_eq!(history.record(at(1), 5, WINDOW), 5);
        assert_eq!(history.record(at(2), 8, WINDOW), 8);
        assert_eq!(history.next_drop(WINDOW), None, "nothing lower waits");
    }

    #[test]
    fn shrinks_only_after_the_window() {
        let mut history = History::default();
        history.record(at(0), 8, WINDOW);
        assert_eq!(history.record(at(10), 2, WINDOW), 8, "held");
        assert_eq!(history.next_drop(WINDOW), Some(at(60)));
        assert_eq!(history.record(at(59), 2, WINDOW), 8, "still held");
        assert_eq!(history.record(at(60), 2, WINDOW), 2, "dropped");
        assert_eq!(history.next_drop(WINDOW), None);
    }

    #[test]
    fn steps_down_through_the_highest_of_the_window() {
        let mut history = History::default();
        history.record(at(0), 8, WINDOW);
        history.record(at(20), 5, WINDOW);
        history.record(at(40), 1, WINDOW);
        assert_eq!(history.record(at(61), 1, WINDOW), 5, "8 left, 5 remains");
        assert_eq!(history.next_drop(WINDOW), Some(at(80)));
        assert_eq!(history.record(at(80), 1, WINDOW), 1);
    }

    #[test]
    fn a_brief_dip_does_not_shrink_the_pool() {
        let mut history = History::default();
        history.record(at(0), 6, WINDOW);
        assert_eq!(history.record(at(30), 0, WINDOW), 6);
        // The backlog is back before the window ends: the dip never showed.
        assert_eq!(history.record(at(45), 6, WINDOW), 6);
        assert_eq!(history.record(at(100), 6, WINDOW), 6);
        assert_eq!(history.next_drop(WINDOW), None);
    }

    #[test]
    fn stays_small_however_often_it_is_asked() {
        let mut history = History::default();
        for second in 0..100_000 {
            history.record(at(second), (second % 7) as i32, WINDOW);
        }
        assert!(history.len() <= 7, "{}", history.len());
    }

    #[test]
    fn a_restarted_operator_holds_what_it_finds_for_a_window() {
        let mut history = History::starting_at(at(0), 4);
        assert_eq!(history.record(at(1), 0, WINDOW), 4);
        assert_eq!(history.record(at(60), 0, WINDOW), 0);
    }

    #[test]
    fn reasons_name_the_backlog_and_the_bound() {
        let autoscale = spec(1, 3, 4);
        let busy = recommend(&autoscale, Some(&tasks(90, 10)));
        assert_eq!(
            reason(&autoscale, busy, 3),
            "backlog of 100 tasks pending or running, 4 per worker, at most maxReplicas 3"
        );
        let idle = recommend(&autoscale, Some(&tasks(0, 0)));
        assert_eq!(
            reason(&autoscale, idle, 1),
            "no tasks pending or running (minReplicas 1)"
        );
        let some = recommend(&spec(0, 10, 4), Some(&tasks(5, 3)));
        assert_eq!(
            reason(&spec(0, 10, 4), some, 2),
            "backlog of 8 tasks pending or running, 4 per worker"
        );
        assert!(reason(&autoscale, idle, 3).contains("holding 3"));
    }
}
