//! Writes each record as one NDJSON line with `_sluice` metadata in front.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::syntax::{Shape, trim};
use super::{DecodeError, Lines, Origin, Position};

/// Key under which each record carries its origin; sluice owns it.
pub(super) const META_KEY: &str = "_sluice";

/// Writes records with their metadata. The metadata is built once per object, around
/// the place where the record's line or index goes. It hands the pieces of a line
/// straight to `out` (the task's encoder, which gathers a frame's worth before it
/// compresses): a buffer in between would only copy every byte once more.
pub(super) struct Sink<'a, W: Lines> {
    out: W,
    key: &'a str,
    /// `{"_sluice":{"key":…,"etag":…,"line":`
    prefix: Vec<u8>,
    /// `,"task":…,"ingested":…}`
    suffix: Vec<u8>,
    /// Scratch for records that are rewritten rather than copied.
    scratch: Vec<u8>,
}

impl<'a, W: Lines> Sink<'a, W> {
    pub(super) fn new(origin: &Origin<'a>, counter: &str, out: W) -> Self {
        let mut prefix = br#"{"_sluice":{"key":"#.to_vec();
        push_json_str(&mut prefix, origin.key);
        prefix.extend_from_slice(br#","etag":"#);
        push_json_str(&mut prefix, origin.etag);
        prefix.extend_from_slice(b",");
        push_json_str(&mut prefix, counter);
        prefix.push(b':');
        let mut suffix = br#","task":"#.to_vec();
        push_json_str(&mut suffix, origin.task);
        suffix.extend_from_slice(br#","ingested":"#);
        push_json_str(&mut suffix, origin.ingested);
        suffix.push(b'}');
        Self {
            out,
            key: origin.key,
            prefix,
            suffix,
            scratch: Vec::new(),
        }
    }

    /// Writes record `n` as one line: its metadata, then `members`, the rest of the
    /// line (from the comma after the metadata, or the closing brace, to the LF).
    fn line(&mut self, n: u64, members: &[&[u8]]) -> Result<(), DecodeError> {
        let mut digits = [0u8; 20];
        let mut pieces: [&[u8]; 6] = [
            &self.prefix,
            format_u64(n, &mut digits),
            &self.suffix,
            &[],
            &[],
            &[],
        ];
        pieces[3..3 + members.len()].copy_from_slice(members);
        self.out
            .line(&pieces[..3 + members.len()])
            .map_err(DecodeError::Write)
    }

    /// Writes a JSON object checked by [`Syntax::scan`](super::syntax::Syntax::scan)
    /// (no surrounding whitespace, `shape` what the check noted) as record `n`.
    pub(super) fn object(
        &mut self,
        object: &[u8],
        shape: Shape,
        n: u64,
        position: Position,
    ) -> Result<(), DecodeError> {
        // The key can only be there if its bytes are, or if an escape spells it.
        if shape.sluice_key || shape.unicode_escape {
            let entries: Entries =
                serde_json::from_slice(object).map_err(|err| DecodeError::Data {
                    key: self.key.to_owned(),
                    position,
                    reason: err.to_string(),
                })?;
            if entries.0.iter().any(|(key, _)| key == META_KEY) {
                return self.rebuild(&entries, n);
            }
        }
        let members = &object[1..];
        if trim(members) == b"}" {
            // An empty object: nothing follows the metadata but the brace.
            return self.line(n, &[b"}\n"]);
        }
        // A raw CR or LF in valid JSON is whitespace between tokens; it must not split
        // the output line.
        if shape.line_break {
            let mut line = std::mem::take(&mut self.scratch);
            line.clear();
            push_one_line(&mut line, members);
            let written = self.line(n, &[b",", &line, b"\n"]);
            self.scratch = line;
            return written;
        }
        self.line(n, &[b",", members, b"\n"])
    }

    /// Rewrites a record that has its own `_sluice` key: sluice's metadata wins. The
    /// other members keep their order and their bytes.
    fn rebuild(&mut self, entries: &Entries, n: u64) -> Result<(), DecodeError> {
        let mut line = std::mem::take(&mut self.scratch);
        line.clear();
        for (key, value) in entries.0.iter().filter(|(key, _)| key != META_KEY) {
            line.push(b',');
            push_json_str(&mut line, key);
            line.push(b':');
            push_one_line(&mut line, value.get().as_bytes());
        }
        line.extend_from_slice(b"}\n");
        let written = self.line(n, &[&line]);
        self.scratch = line;
        written
    }

    /// Writes a CSV row as an object of strings. `columns` holds each column's
    /// `,"name":` bytes, or `None` for a column that is dropped.
    pub(super) fn row(
        &mut self,
        columns: &[Option<Vec<u8>>],
        row: &csv::ByteRecord,
        line_no: u64,
    ) -> Result<(), DecodeError> {
        let mut line = std::mem::take(&mut self.scratch);
        line.clear();
        for (i, (column, field)) in columns.iter().zip(row.iter()).enumerate() {
            let Some(column) = column else { continue };
            let Ok(value) = std::str::from_utf8(field) else {
                self.scratch = line;
                return Err(DecodeError::Data {
                    key: self.key.to_owned(),
                    position: Position::Line(line_no),
                    reason: format!("field {} is not valid UTF-8", i + 1),
                });
            };
            line.extend_from_slice(column);
            push_json_str(&mut line, value);
        }
        line.extend_from_slice(b"}\n");
        let written = self.line(line_no, &[&line]);
        self.scratch = line;
        written
    }
}

/// The members of a JSON object, in order, for the rare record that must be rewritten.
struct Entries<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(Key(key)) = map.next_key()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Appends JSON text with raw CR and LF turned into spaces. Outside strings they are
/// insignificant whitespace, and inside strings they cannot occur unescaped.
fn push_one_line(out: &mut Vec<u8>, json: &[u8]) {
    out.extend(json.iter().map(|&b| match b {
        b'\n' | b'\r' => b' ',
        b => b,
    }));
}

/// Appends `s` as a JSON string. Hand-written because it is on the CSV hot path and
/// cannot fail, unlike serde_json's writer-based API.
pub(super) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => br#"\""#,
            b'\\' => br"\\",
            b'\n' => br"\n",
            b'\r' => br"\r",
            b'\t' => br"\t",
            0x08 => br"\b",
            0x0c => br"\f",
            0x00..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escape);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Formats `n` in decimal into `buf`, without the formatting machinery.
fn format_u64(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_json_str_round_trips_every_control_character() {
        let s: String = (0u8..0x80)
            .map(char::from)
            .chain("é😀\u{2028}".chars())
            .collect();
        let mut buf = Vec::new();
        push_json_str(&mut buf, &s);
        assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), s);
        assert_eq!(buf, serde_json::to_vec(&s).unwrap());
    }

    #[test]
    fn format_u64_edges() {
        let mut buf = [0u8; 20];
        assert_eq!(format_u64(0, &mut buf), b"0");
        assert_eq!(format_u64(1234567890, &mut buf), b"1234567890");
        assert_eq!(
            format_u64(u64::MAX, &mut buf),
            u64::MAX.to_string().as_bytes()
        );
    }
}
