//! The summary of `--stats`: matches counted by state, worker and kind of
//! error, and its tables.

use std::collections::{BTreeMap, HashMap};

use jiff::Timestamp;
use serde::Serialize;

use sluice_core::api::TaskState;
use sluice_core::archive::TaskRecord;

use crate::cli::output::{self};

use super::matcher::{Probe, Sink};
use super::rows::{ERROR_WIDTH, one_line};

/// `--stats`: matches counted by state, worker and kind of error.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub tasks: u64,
    pub first: Option<Timestamp>,
    pub last: Option<Timestamp>,
    states: BTreeMap<TaskState, u64>,
    workers: HashMap<String, WorkerStats>,
    errors: HashMap<String, ErrorStats>,
}

/// One worker's tasks among the matches.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    pub worker: String,
    pub tasks: u64,
    pub failed: u64,
    pub records: u64,
    pub bytes_read: u64,
}

/// One kind of error among the matches.
#[derive(Serialize, Debug, Default, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorStats {
    /// The error with its names and numbers blanked out.
    pub kind: String,
    pub tasks: u64,
    /// The latest one in full.
    pub example: String,
    pub last: Option<Timestamp>,
}

/// The summary as printed (`-o json|yaml|ndjson`).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub tasks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last: Option<Timestamp>,
    pub states: BTreeMap<&'static str, u64>,
    /// Most tasks first.
    pub workers: Vec<WorkerStats>,
    /// Most tasks first.
    pub errors: Vec<ErrorStats>,
}

/// Tasks without a worker (failed before any lease) are counted under
/// this name.
const NO_WORKER: &str = "-";

impl Sink for Stats {
    fn add(&mut self, _: &[u8], probe: &Probe, _: Option<TaskRecord>) {
        self.tasks += 1;
        self.first = Some(self.first.map_or(probe.finished, |t| t.min(probe.finished)));
        self.last = Some(self.last.map_or(probe.finished, |t| t.max(probe.finished)));
        *self.states.entry(probe.state).or_default() += 1;
        let failed = probe.state == TaskState::Failed;
        let worker = probe.worker.as_deref().unwrap_or(NO_WORKER);
        let stats = match self.workers.get_mut(worker) {
            Some(stats) => stats,
            None => self
                .workers
                .entry(worker.to_owned())
                .or_insert(WorkerStats {
                    worker: worker.to_owned(),
                    ..WorkerStats::default()
                }),
        };
        stats.tasks += 1;
        stats.failed += u64::from(failed);
        stats.records += probe.records;
        stats.bytes_read += probe.bytes_read;
        if let Some(error) = &probe.error {
            let kind = error_kind(error);
            let stats = self.errors.entry(kind.clone()).or_insert(ErrorStats {
                kind,
                ..ErrorStats::default()
            });
            stats.tasks += 1;
            if stats.last.is_none_or(|last| last <= probe.finished) {
                stats.last = Some(probe.finished);
                stats.example = error.to_string();
            }
        }
    }
}

impl Stats {
    pub fn merge(&mut self, other: Stats) {
        self.tasks += other.tasks;
        self.first = self.first.min(other.first).or(self.first).or(other.first);
        self.last = self.last.max(other.last);
        for (state, count) in other.states {
            *self.states.entry(state).or_default() += count;
        }
        for (name, theirs) in other.workers {
            let ours = self.workers.entry(name).or_insert_with(|| WorkerStats {
                worker: theirs.worker.clone(),
                ..WorkerStats::default()
            });
            ours.tasks += theirs.tasks;
            ours.failed += theirs.failed;
            ours.records += theirs.records;
            ours.bytes_read += theirs.bytes_read;
        }
        for (kind, theirs) in other.errors {
            match self.errors.get_mut(&kind) {
                Some(ours) => {
                    ours.tasks += theirs.tasks;
                    if theirs.last > ours.last {
                        ours.last = theirs.last;
                        ours.example = theirs.example;
                    }
                }
                None => {
                    self.errors.insert(kind, theirs);
                }
            }
        }
    }

    pub fn summary(&self) -> Summary {
        let mut workers: Vec<_> = self.workers.values().cloned().collect();
        workers.sort_by(|a, b| b.tasks.cmp(&a.tasks).then_with(|| a.worker.cmp(&b.worker)));
        let mut errors: Vec<_> = self.errors.values().cloned().collect();
        errors.sort_by(|a, b| b.tasks.cmp(&a.tasks).then_with(|| a.kind.cmp(&b.kind)));
        Summary {
            tasks: self.tasks,
            first: self.first,
            last: self.last,
            states: self
                .states
                .iter()
                .map(|(state, count)| (state.as_str(), *count))
                .collect(),
            workers,
            errors,
        }
    }
}

/// An error with what varies between occurrences blanked: quoted names
/// become `"…"` and numbers `N`, so `line 3` and `line 7` of different
/// objects count as one kind.
pub fn error_kind(error: &str) -> String {
    let mut kind = String::with_capacity(error.len());
    let mut chars = error.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                kind.push_str("\"…\"");
                let mut escaped = false;
                for c in chars.by_ref() {
                    match c {
                        '\\' if !escaped => escaped = true,
                        '"' if !escaped => break,
                        _ => escaped = false,
                    }
                }
            }
            // A number, not a digit in a word like `s3`.
            c if c.is_ascii_digit() && !kind.ends_with(|c: char| c.is_alphanumeric()) => {
                kind.push('N');
                while chars.peek().is_some_and(|c| c.is_ascii_digit()) {
                    chars.next();
                }
            }
            c if c.is_whitespace() => {
                if !kind.ends_with(' ') {
                    kind.push(' ');
                }
            }
            c => kind.push(c),
        }
    }
    kind.trim().to_owned()
}

/// `--stats` as tables: by state, by worker, by kind of error.
pub fn stats_tables(summary: &Summary, now: Timestamp) -> String {
    let mut text = String::new();
    let states: Vec<Vec<String>> = summary
        .states
        .iter()
        .map(|(state, count)| vec![state.to_string(), count.to_string()])
        .chain(std::iter::once(vec![
            "total".to_owned(),
            summary.tasks.to_string(),
        ]))
        .collect();
    text.push_str(&output::table(&["state", "tasks"], &states));
    if !summary.workers.is_empty() {
        let workers: Vec<Vec<String>> = summary
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.worker.clone(),
                    w.tasks.to_string(),
                    w.failed.to_string(),
                    w.records.to_string(),
                    output::bytes(w.bytes_read),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&output::table(
            &["worker", "tasks", "failed", "records", "read"],
            &workers,
        ));
    }
    if !summary.errors.is_empty() {
        let errors: Vec<Vec<String>> = summary
            .errors
            .iter()
            .map(|e| {
                vec![
                    e.tasks.to_string(),
                    output::since(e.last, now),
                    one_line(&e.kind, 2 * ERROR_WIDTH),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&output::table(&["tasks", "last", "error"], &errors));
    }
    text
}
