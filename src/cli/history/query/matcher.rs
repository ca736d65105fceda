//! Matching archive lines against a [`Filter`] ([`Matcher`]), searching a
//! record's text, the order results print in, and collecting the latest
//! matches.

use std::borrow::Cow;

use jiff::Timestamp;
use memchr::memmem::Finder;
use serde::Deserialize;

use sluice_core::api::TaskState;
use sluice_core::archive::TaskRecord;
use sluice_core::id::TaskId;

use super::*;

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
        let mut scanned = Scanned::default();
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
fn contains(record: &TaskRecord, text: &str) -> bool {
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
    pub(super) records: Vec<TaskRecord>,
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
