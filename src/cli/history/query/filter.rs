//! What a query asks ([`Filter`]), its times, and which archive objects
//! can hold a match (by their keys).

use jiff::{SignedDuration, Timestamp};

use sluice_core::api::TaskState;
use sluice_core::archive::{self, ObjectKey};
use sluice_core::duration::Duration;
use sluice_core::id::TaskId;

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
    /// match shares: `account=A/collection=C/` as far as the filter fixes
    /// it, so a listing asks only for those.
    pub fn key_prefix(&self) -> String {
        // Not the source's directory: objects of the legacy layout hold it
        // in another one, and a listing of a collection's hour is one page.
        match (&self.account, &self.collection) {
            (None, _) => String::new(),
            (Some(account), None) => format!("account={account}/"),
            (Some(account), Some(collection)) => {
                format!("account={account}/collection={collection}/")
            }
        }
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
    if let Ok(ago) = Duration::parse_with_days(text) {
        return SignedDuration::try_from(ago.0)
            .ok()
            .and_then(|ago| now.checked_sub(ago).ok())
            .ok_or_else(bad);
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
