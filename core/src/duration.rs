//! Durations written the way Kubernetes users write them: Go's
//! `time.ParseDuration` syntax (`30s`, `1m30s`, `1.5h`, `250ms`).
//!
//! The API server checks these strings with CEL's `duration()`, which uses the
//! same syntax, so every value that passed admission parses here. A time
//! before now (`sluice history --since 7d`) may also count days and weeks
//! ([`Duration::parse_with_days`]); the grammar is otherwise the same.

use std::fmt;
use std::time::Duration as StdDuration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The regular expression a duration string must match in CEL rules (no
/// sign, at least one number with a unit)
/// (`[.]` rather than an escaped dot, so it needs no escaping in a CEL string.)
pub const PATTERN: &str = "^([0-9]+([.][0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A non-negative duration that (de)serializes as a Go duration string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub StdDuration);

/// Why a string is not a duration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason} (write it like 30s, 1m30s or 2h)")]
pub struct ParseError {
    input: String,
    reason: &'static str,
}

/// Parses a Go duration into a standard one: the value parser of every
/// duration flag.
pub fn parse_std(input: &str) -> Result<StdDuration, ParseError> {
    Duration::parse(input).map(|duration| duration.0)
}

const SECOND: u128 = 1_000_000_000;

/// Each unit in nanoseconds: Go's, then the days and weeks only
/// [`Duration::parse_with_days`] takes.
const UNITS: [(&str, u128); 9] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", SECOND),
    ("m", 60 * SECOND),
    ("h", 3_600 * SECOND),
    ("d", 86_400 * SECOND),
    ("w", 7 * 86_400 * SECOND),
];

/// How many of [`UNITS`] Go's syntax has.
const GO_UNITS: usize = 7;

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(StdDuration::from_secs(secs))
    }

    /// Parses Go's duration syntax: a sequence of decimal numbers, each with
    /// a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`).
    pub fn parse(input: &str) -> Result<Self, ParseError> {
        parse_units(
            input,
            &UNITS[..GO_UNITS],
            "the unit is not one of ns, us, ms, s, m, h",
        )
    }

    /// Parses Go's syntax with days (`d`, 24 hours) and weeks (`w`) too:
    /// `7d`, `2w`, `1d12h`. For how long before now; not for the
    /// IngestSource, whose durations CEL checks with Go's units.
    pub fn parse_with_days(input: &str) -> Result<Self, ParseError> {
        parse_units(
            input,
            &UNITS,
            "the unit is not one of ns, us, ms, s, m, h, d, w",
        )
    }
}

/// A sequence of decimal numbers, each with one of `units`.
fn parse_units(
    input: &str,
    units: &[(&str, u128)],
    unknown_unit: &'static str,
) -> Result<Duration, ParseError> {
    let fail = |reason| ParseError {
        input: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(fail("it is empty"));
    }
    let mut total_nanos: u128 = 0;
    let mut rest = input;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| fail("a number has no unit"))?;
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(fail("a unit has no number before it"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let (_, unit_nanos) = units
            .iter()
            .find(|(name, _)| *name == unit)
            .ok_or_else(|| fail(unknown_unit))?;
        total_nanos += scaled(number, *unit_nanos).ok_or_else(|| fail("a number is malformed"))?;
        rest = after;
    }
    let nanos = u64::try_from(total_nanos).map_err(|_| fail("it is too long"))?;
    Ok(Duration(StdDuration::from_nanos(nanos)))
}

/// `number` (decimal, maybe with a fraction) times `unit_nanos`, truncated to
/// whole nanoseconds.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let parse = |digits: &str| -> Option<u128> {
        if digits.is_empty() {
            Some(0)
        } else {
            digits.parse().ok()
        }
    };
    let mut nanos = parse(whole)?.checked_mul(unit_nanos)?;
    // Nanosecond precision needs at most 19 fractional digits of an hour.
    let fraction = &fraction[..fraction.len().min(19)];
    if !fraction.is_empty() {
        let scale = 10u128.pow(fraction.len() as u32);
        nanos = nanos.checked_add(parse(fraction)?.checked_mul(unit_nanos)? / scale)?;
    }
    Some(nanos)
}

impl fmt::Display for Duration {
    /// Formats the shortest exact form: `1h30m`, `45s`, `1.5s`, `250ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            return if nanos.is_multiple_of(1_000_000) {
                write!(f, "{}ms", nanos / 1_000_000)
            } else if nanos.is_multiple_of(1_000) {
                write!(f, "{}us", nanos / 1_000)
            } else {
                write!(f, "{nanos}ns")
            };
        }
        let secs = self.0.as_secs();
        let (hours, minutes, seconds) = (secs / 3600, secs / 60 % 60, secs % 60);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        let sub_nanos = self.0.subsec_nanos();
        if sub_nanos > 0 {
            let fraction = format!("{sub_nanos:09}");
            write!(f, "{seconds}.{}s", fraction.trim_end_matches('0'))
        } else if seconds > 0 {
            write!(f, "{seconds}s")
        } else {
            Ok(())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration(StdDuration::from_secs_f64(s))
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(Duration::parse("30s"), Ok(secs(30.0)));
        assert_eq!(Duration::parse("1m30s"), Ok(secs(90.0)));
        assert_eq!(Duration::parse("1.5h"), Ok(secs(5400.0)));
        assert_eq!(Duration::parse("250ms"), Ok(secs(0.25)));
        assert_eq!(Duration::parse("2h45m10s"), Ok(secs(9910.0)));
        assert_eq!(
            Duration::parse("10us"),
            Ok(Duration(StdDuration::from_micros(10)))
        );
        assert_eq!(
            Duration::parse("10µs"),
            Ok(Duration(StdDuration::from_micros(10)))
        );
        assert_eq!(
            Duration::parse("7ns"),
            Ok(Duration(StdDuration::from_nanos(7)))
        );
        assert_eq!(Duration::parse(".5s"), Ok(secs(0.5)));
        assert_eq!(Duration::parse("0s"), Ok(secs(0.0)));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "",
            "30",
            "s",
            "5 s",
            "-5s",
            "5d",
            "1.2.3s",
            "1m 30s",
            "five seconds",
            ".",
        ] {
            let err = Duration::parse(bad).expect_err(bad);
            assert!(err.to_string().contains("write it like 30s"), "{err}");
        }
    }

    #[test]
    fn days_and_weeks_only_where_asked_for() {
        let day = 86_400;
        for (text, secs) in [("7d", 7 * day), ("2w", 14 * day), ("1d12h", day + day / 2)] {
            assert_eq!(
                Duration::parse_with_days(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
            assert!(Duration::parse(text).is_err(), "{text}");
        }
        assert_eq!(
            Duration::parse_with_days("1.5h"),
            Ok(Duration::from_secs(5_400))
        );
        let err = Duration::parse_with_days("5y").unwrap_err();
        assert!(
            err.to_string()
                .contains("not one of ns, us, ms, s, m, h, d, w"),
            "{err}"
        );
    }

    #[test]
    fn names_the_input_in_errors() {
        let err = Duration::parse("5d").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid duration \"5d\": the unit is not one of ns, us, ms, s, m, h (write it like 30s, 1m30s or 2h)"
        );
    }

    #[test]
    fn formats_the_shortest_exact_form() {
        assert_eq!(secs(60.0).to_string(), "1m");
        assert_eq!(secs(90.0).to_string(), "1m30s");
        assert_eq!(secs(3600.0).to_string(), "1h");
        assert_eq!(secs(3661.0).to_string(), "1h1m1s");
        assert_eq!(secs(1.5).to_string(), "1.5s");
        assert_eq!(secs(0.25).to_string(), "250ms");
        assert_eq!(Duration(StdDuration::from_micros(3)).to_string(), "3us");
        assert_eq!(Duration(StdDuration::from_nanos(3)).to_string(), "3ns");
        assert_eq!(secs(0.0).to_string(), "0s");
    }

    #[test]
    fn formatting_round_trips() {
        for text in [
            "1m", "1m30s", "1h1m1s", "1.5s", "250ms", "3us", "3ns", "0s", "100h",
        ] {
            let parsed = Duration::parse(text).unwrap();
            assert_eq!(parsed.to_string(), text);
            assert_eq!(Duration::parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn serializes_as_a_string() {
        let value = serde_json::to_value(secs(90.0)).unwrap();
        assert_eq!(value, serde_json::json!("1m30s"));
        let back: Duration = serde_json::from_value(value).unwrap();
        assert_eq!(back, secs(90.0));
        assert!(serde_json::from_value::<Duration>(serde_json::json!("soon")).is_err());
    }
}
