//! How a record prints as a row of `sluice history`'s table.

use jiff::Timestamp;

use sluice_core::archive::TaskRecord;

use crate::cli::output::{self, Row};

/// Text cut to `max` characters, on one line.
pub(super) fn one_line(text: &str, max: usize) -> String {
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
pub(super) const ERROR_WIDTH: usize = 80;

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

    /// `task/NAMESPACE/SOURCE/ID`: a task's id is its source's own.
    fn name(&self) -> String {
        format!("task/{}/{}", self.source, self.id)
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
