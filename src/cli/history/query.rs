//! The plain part of `sluice history`, without I/O: what a query asks
//! ([`Filter`]), which archive objects can hold a match (by their keys),
//! matching records line by line ([`Matcher`]), the order results are
//! printed in, the summary of `--stats`, and how a record prints as a row.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use jiff::{SignedDuration, Timestamp};
use memchr::memmem::Finder;
use serde::{Deserialize, Serialize};

use sluice_core::api::TaskState;
use sluice_core::archive::{self, ObjectKey, TaskRecord};
use sluice_core::id::TaskId;

use crate::cli::output::{self, Row};

/// What `sluice history` looks for. Every field set must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub account: Option<String>,
    pub collection: Option<String>,
    /// The IngestSource's namespace.
    pub namespace: Option<String>,
    /// The IngestSource's name (with `namespace`).
    pub name: Option<String>,
    pub state: Option<TaskState>,
    pub worker: Option<String>,
    pub task: Option<TaskId>,
    /// Text in the task's error, id, worker, source, objects or outputs.
    pub grep: Option<String>,
    /// Tasks that finished at or after this time...
    pub since: Timestamp,
    /// ...and before this one.
    pub until: Option<Timestamp>,
}

impl Filter {
    /// Every task that finished in the window.
    pub fn window(since: Timestamp, until: Option<Timestamp>) -> Self {
        Self {
            account: None,
            collection: None,
            namespace: None,
            name: None,
            state: None,
            worker: None,
            task: None,
            grep: None,
            since,
            until,
        }
    }

    /// The first and the last hour partition that can hold a match (their
    /// starts); without `until`, up to a few minutes past `now`, for clocks
    /// a little ahead.
    pub fn hours(&self, now: Timestamp) -> (Timestamp, Timestamp) {
        let end = match self.until {
            Some(until) => until - SignedDuration::from_nanos(1),
            None => now + SignedDuration::from_mins(5),
        };
        (archive::hour_of(self.since), archive::hour_of(end))
    }

    /// The part of an object's key below its hour partition that every
    /// match shares: `account=A/collection=C/NS.NAME/` as far as the
    /// filter fixes it, so a listing asks only for those.
    pub fn key_prefix(&self) -> String {
        let mut prefix = String::new();
        let Some(account) = &self.account else {
            return prefix;
        };
        prefix.push_str(&format!("account={account}/"));
        let Some(collection) = &self.collection else {
            return prefix;
        };
        prefix.push_str(&format!("collection={collection}/"));
        if let (Some(namespace), Some(name)) = (&self.namespace, &self.name) {
            prefix.push_str(&format!("{namespace}.{name}/"));
        }
        prefix
    }

    /// Whether the object with this key can hold a match.
    pub fn may_hold(&self, key: &ObjectKey, now: Timestamp) -> bool {
        let (first, last) = self.hours(now);
        let same = |wanted: &Option<String>, actual: Option<&str>| {
            wanted
                .as_deref()
                .is_none_or(|wanted| Some(wanted) == actual)
        };
        // A task is archived by the coordinator that planned it or a later
        // one: never in an object of an earlier epoch.
        (first..=last).contains(&key.hour)
            && same(&self.account, Some(key.account))
            && same(&self.collection, Some(key.collection))
            && same(&self.namespace, Some(key.namespace))
            && same(&self.name, Some(key.name))
            && self.task.is_none_or(|task| task.epoch <= key.epoch)
    }
}

/// Why a `--since` or `--until` value is not a time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid {flag} {value:?}: use a duration like 90m, 24h or 7d (before now), \
     an RFC 3339 time like 2026-11-24T13:00:00Z, or a date like 2026-11-24 (UTC)"
)]
pub struct BadTime {
    pub flag: &'static str,
    pub value: String,
}

/// A point in time written as a duration before `now` (`90m`, `24h`, `7d`,
/// `2w`, `1h30m`), an RFC 3339 time, or a date (its start, UTC).
pub fn parse_time(flag: &'static str, value: &str, now: Timestamp) -> Result<Timestamp, BadTime> {
    let bad = || BadTime {
        flag,
        value: value.to_owned(),
    };
    let text = value.trim();
    if let Some(ago) = parse_ago(text) {
        return now.checked_sub(ago).map_err(|_| bad());
    }
    if let Ok(time) = text.parse::<Timestamp>() {
        return Ok(time);
    }
    if text.len() == 10
        && let Ok(date) = text.parse::<jiff::civil::Date>()
    {
        return date
            .to_zoned(jiff::tz::TimeZone::UTC)
            .map(|zoned| zoned.timestamp())
            .map_err(|_| bad());
    }
    Err(bad())
}

/// `90m`, `24h`, `7d`, `2w`, `1h30m`: whole numbers with units s, m, h, d, w.
fn parse_ago(text: &str) -> Option<SignedDuration> {
    if text.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let number: i64 = rest[..digits].parse().ok()?;
        let unit = match rest[digits..].chars().next()? {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(unit)?)?;
        rest = &rest[digits + 1..];
    }
    Some(SignedDuration::from_secs(total))
}

/// The fields a match is decided on, read without copying where possible
/// and without the task's objects.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Probe<'a> {
    pub id: TaskId,
    #[serde(borrow)]
    pub account: Cow<'a, str>,
    #[serde(borrow)]
    pub collection: Cow<'a, str>,
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    pub state: TaskState,
    #[serde(borrow, default)]
    pub worker: Option<Cow<'a, str>>,
    #[serde(default)]
    pub records: u64,
    #[serde(default)]
    pub bytes_read: u64,
    pub finished: Timestamp,
    #[serde(borrow, default)]
    pub error: Option<Cow<'a, str>>,
}

/// A [`Filter`] ready to test archive lines: byte searches that every
/// matching line passes reject most lines before any parsing.
pub struct Matcher {
    filter: Filter,
    /// Each must occur in a matching line.
    needles: Vec<Finder<'static>>,
    /// How the `finished` field starts in a line.
    finished: Finder<'static>,
}

/// `text` as it appears inside a JSON string.
fn json_escaped(text: &str) -> String {
    let quoted = serde_json::to_string(text).expect("a string always serializes");
    quoted[1..quoted.len() - 1].to_owned()
}

/// What one archive object gave.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Lines read.
    pub lines: u64,
    /// Lines that are not task records, with why.
    pub damaged: Vec<String>,
}

/// Where matches go: a list to print, or a summary.
pub trait Sink {
    /// A match: its line, its probe, and the whole record when it was
    /// already parsed.
    fn add(&mut self, line: &[u8], probe: &Probe, record: Option<TaskRecord>);
}

impl Matcher {
    pub fn new(filter: Filter) -> Self {
        let field = |name: &str, value: &str| {
            Finder::new(format!("\"{name}\":\"{}\"", json_escaped(value)).as_bytes()).into_owned()
        };
        // The most selective first: it alone is searched for in a whole
        // object.
        let mut needles = Vec::new();
        if let Some(task) = filter.task {
            needles.push(field("id", &task.to_string()));
        }
        if let Some(grep) = &filter.grep {
            needles.push(Finder::new(json_escaped(grep).as_bytes()).into_owned());
        }
        if let Some(worker) = &filter.worker {
            needles.push(field("worker", worker));
        }
        if let Some(state) = filter.state {
            needles.push(field("state", state.as_str()));
        }
        Self {
            filter,
            needles,
            finished: Finder::new(b"\"finished\":\"").into_owned(),
        }
    }

    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Feeds the matches among the NDJSON `lines` of one archive object to
    /// `sink`. With a byte test, only the lines where its first (most
    /// selective) needle occurs are looked at: one search over the whole
    /// object instead of one per line.
    pub fn scan(&self, lines: &[u8], sink: &mut impl Sink) -> Scanned {
        let mut scanned = Scanned {
            lines: memchr::memchr_iter(b'\n', lines).count() as u64
                + u64::from(!lines.is_empty() && !lines.ends_with(b"\n")),
            damaged: Vec::new(),
        };
        match self.needles.first() {
            Some(first) => {
                let mut next = 0;
                for hit in first.find_iter(lines) {
                    if hit < next {
                        continue;
                    }
                    let start = memchr::memrchr(b'\n', &lines[..hit]).map_or(0, |i| i + 1);
                    let end = memchr::memchr(b'\n', &lines[hit..]).map_or(lines.len(), |i| hit + i);
                    next = end + 1;
                    self.consider(lines, start, end, sink, &mut scanned);
                }
            }
            None => {
                let mut start = 0;
                while start < lines.len() {
                    let end =
                        memchr::memchr(b'\n', &lines[start..]).map_or(lines.len(), |i| start + i);
                    self.consider(lines, start, end, sink, &mut scanned);
                    start = end + 1;
                }
            }
        }
        scanned
    }

    /// Tests the line `lines[start..end]` and gives it to `sink` when it
    /// matches.
    fn consider(
        &self,
        lines: &[u8],
        start: usize,
        end: usize,
        sink: &mut impl Sink,
        scanned: &mut Scanned,
    ) {
        let line = &lines[start..end];
        if line.is_empty()
            || !self
                .needles
                .iter()
                .all(|needle| needle.find(line).is_some())
        {
            return;
        }
        if self
            .quick_finished(line)
            .is_some_and(|finished| !self.in_window(finished))
        {
            return;
        }
        let damaged = |scanned: &mut Scanned, err: serde_json::Error| {
            let number = memchr::memchr_iter(b'\n', &lines[..start]).count() + 1;
            scanned.damaged.push(format!("line {number}: {err}"));
        };
        let probe: Probe = match serde_json::from_slice(line) {
            Ok(probe) => probe,
            Err(err) => return damaged(scanned, err),
        };
        if !self.matches(&probe) {
            return;
        }
        let record = match &self.filter.grep {
            Some(grep) => match serde_json::from_slice::<TaskRecord>(line) {
                Ok(record) if contains(&record, grep) => Some(record),
                Ok(_) => return,
                Err(err) => return damaged(scanned, err),
            },
            None => None,
        };
        sink.add(line, &probe, record);
    }

    /// The `finished` time of a line without parsing it, when it is where
    /// the archive writer puts it. A JSON string cannot hold an unescaped
    /// quote, so the first `"finished":"` is the field.
    fn quick_finished(&self, line: &[u8]) -> Option<Timestamp> {
        let start = self.finished.find(line)? + self.finished.needle().len();
        let length = memchr::memchr(b'"', &line[start..])?;
        std::str::from_utf8(&line[start..start + length])
            .ok()?
            .parse()
            .ok()
    }

    fn in_window(&self, finished: Timestamp) -> bool {
        finished >= self.filter.since && self.filter.until.is_none_or(|until| finished < until)
    }

    /// Whether a record matches every filter but `--grep`.
    pub fn matches(&self, probe: &Probe) -> bool {
        let filter = &self.filter;
        let same = |wanted: &Option<String>, actual: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == actual)
        };
        let (namespace, name) = probe
            .source
            .split_once('/')
            .unwrap_or(("", probe.source.as_ref()));
        self.in_window(probe.finished)
            && same(&filter.account, &probe.account)
            && same(&filter.collection, &probe.collection)
            && same(&filter.namespace, namespace)
            && same(&filter.name, name)
            && filter.state.is_none_or(|state| state == probe.state)
            && filter
                .worker
                .as_deref()
                .is_none_or(|worker| probe.worker.as_deref() == Some(worker))
            && filter.task.is_none_or(|task| task == probe.id)
    }
}

/// Whether `text` occurs in one of the record's values a person would
/// search: its error, id, worker, source, object keys and outputs.
pub fn contains(record: &TaskRecord, text: &str) -> bool {
    let id = record.id.to_string();
    let values = [
        record.error.as_deref(),
        Some(id.as_str()),
        record.worker.as_deref(),
        Some(record.source.as_str()),
    ];
    values
        .into_iter()
        .flatten()
        .any(|value| value.contains(text))
        || record
            .objects
            .iter()
            .any(|object| object.key.contains(text))
        || record.outputs.iter().any(|output| output.contains(text))
}

/// The order results print in: by the time they finished, then by source
/// and task.
pub fn order_key(record: &TaskRecord) -> (Timestamp, &str, TaskId) {
    (record.finished, &record.source, record.id)
}

/// Matching records to print; with a limit, only the latest.
#[derive(Debug, Default)]
pub struct Collected {
    limit: Option<usize>,
    records: Vec<TaskRecord>,
    /// Matches seen, including those the limit dropped.
    pub seen: u64,
}

impl Collected {
    pub fn new(limit: Option<usize>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    fn push(&mut self, record: TaskRecord) {
        self.seen += 1;
        self.records.push(record);
        if let Some(limit) = self.limit
            && self.records.len() >= 2 * limit.max(512)
        {
            self.trim(limit);
        }
    }

    fn trim(&mut self, limit: usize) {
        self.records
            .sort_unstable_by(|a, b| order_key(b).cmp(&order_key(a)));
        self.records.truncate(limit);
    }

    pub fn merge(&mut self, other: Collected) {
        self.seen += other.seen - other.records.len() as u64;
        for record in other.records {
            self.push(record);
        }
    }

    /// The matches in print order.
    pub fn into_sorted(mut self) -> Vec<TaskRecord> {
        if let Some(limit) = self.limit {
            self.trim(limit);
        }
        self.records
            .sort_unstable_by(|a, b| order_key(a).cmp(&order_key(b)));
        self.records
    }
}

impl Sink for Collected {
    fn add(&mut self, line: &[u8], _: &Probe, record: Option<TaskRecord>) {
        let record = match record {
            Some(record) => record,
            // The probe parsed, so the line is JSON; a record that does not
            // is counted as a match but cannot print.
            None => match serde_json::from_slice(line) {
                Ok(record) => record,
                Err(_) => return,
            },
        };
        self.push(record);
    }
}

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

/// Text cut to `max` characters, on one line.
fn one_line(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// A time as the table prints it: UTC, to the second.
pub fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A task's duration: `850ms`, `12s`, `3m20s`, `2h`.
fn duration(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        output::age((ms / 1000) as i64)
    }
}

/// The widest error the table (not wide) prints.
const ERROR_WIDTH: usize = 80;

impl Row for TaskRecord {
    fn headers(wide: bool) -> Vec<&'static str> {
        if wide {
            vec![
                "finished",
                "account",
                "collection",
                "source",
                "task",
                "state",
                "worker",
                "attempt",
                "objects",
                "records",
                "read",
                "written",
                "duration",
                "first key",
                "error",
            ]
        } else {
            vec![
                "finished", "source", "task", "state", "worker", "objects", "records", "duration",
                "error",
            ]
        }
    }

    fn cells(&self, wide: bool, _: Timestamp) -> Vec<String> {
        let worker = self.worker.clone().unwrap_or_else(|| "-".into());
        let error = self.error.as_deref().unwrap_or("");
        if wide {
            vec![
                time(self.finished),
                self.account.clone(),
                self.collection.clone(),
                self.source.clone(),
                self.id.to_string(),
                self.state.as_str().into(),
                worker,
                self.attempt.to_string(),
                self.objects.len().to_string(),
                self.records.to_string(),
                output::bytes(self.bytes_read),
                output::bytes(self.bytes_written),
                duration(self.duration_ms),
                self.objects
                    .first()
                    .map(|object| object.key.clone())
                    .unwrap_or_else(|| "-".into()),
                one_line(error, usize::MAX),
            ]
        } else {
            vec![
                time(self.finished),
                self.source.clone(),
                self.id.to_string(),
                self.state.as_str().into(),
                worker,
                self.objects.len().to_string(),
                self.records.to_string(),
                duration(self.duration_ms),
                one_line(error, ERROR_WIDTH),
            ]
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::api::ObjectRef;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    const NOW: &str = "2026-11-24T13:30:00Z";

    fn record(
        id: &str,
        source: &str,
        state: TaskState,
        worker: &str,
        finished: &str,
    ) -> TaskRecord {
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
            error: (state == TaskState::Failed).then(|| {
                format!("s3 object \"in/{id}.ndjson\": line 3: expected value at column 8")
            }),
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
        for bad in [
            "yesterday",
            "",
            "5x",
            "-1h",
            "1.5h",
            "h",
            "2026-11-24T13",
            "24 h",
        ] {
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
            "account=acme/collection=orders/shop.orders/"
        );
        filter.collection = None;
        assert_eq!(filter.key_prefix(), "account=acme/");
    }

    #[test]
    fn keys_outside_the_filter_are_not_read() {
        let key = |relative: &'static str| ObjectKey::parse(relative).unwrap();
        let object = key(
            "dt=2026-11-24/hour=12/account=acme/collection=orders/shop.orders/0000000003-00000001.ndjson.zst",
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
        assert_eq!(scanned.lines, 4);
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
        assert!(text.contains("WORKER   TASKS   FAILED   RECORDS   READ\nw1       2       1        4         20B\n"), "{text}");
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
}
