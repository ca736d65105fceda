//! JSON: one object, or a top-level array streamed element by element.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read};

use serde::de::{self, Deserialize, Deserializer as _, IgnoredAny, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::input::{Ctx, READ_BUFFER, Shift, UTF8_BOM};
use super::sink::Sink;
use super::syntax::Shape;
use super::{DecodeError, Lines, Position};

pub(super) fn records<W: Lines>(
    input: impl Read,
    ctx: &Ctx,
    sink: &mut Sink<W>,
) -> Result<u64, DecodeError> {
    // The guard sits below the buffer, which reads ahead of the record being parsed.
    let guarded = ctx.guard(input);
    let mut reader = BufReader::with_capacity(READ_BUFFER, guarded);
    let skipped = skip_whitespace(&mut reader).map_err(|err| ctx.io(err, Position::Record(1)))?;
    let Some((first, shift)) = skipped else {
        return Ok(0);
    };
    let mut de = serde_json::Deserializer::from_reader(reader);
    let mut records = 0;
    match first {
        b'[' => {
            let mut failure = None;
            let visitor = ArrayVisitor {
                sink,
                ctx,
                records: &mut records,
                failure: &mut failure,
            };
            let result = de.deserialize_seq(visitor);
            if let Some(err) = failure {
                return Err(err);
            }
            result.map_err(|err| ctx.json(err, shift, Some(records + 1)))?;
            de.end().map_err(|err| ctx.json(err, shift, None))?;
        }
        b'{' => {
            let object =
                Box::<RawValue>::deserialize(&mut de).map_err(|err| ctx.json(err, shift, None))?;
            de.end().map_err(|err| match ctx.json(err, shift, None) {
                DecodeError::Data {
                    key,
                    position,
                    reason,
                } => DecodeError::Data {
                    key,
                    position,
                    reason: format!(
                        "{reason} (more than one top-level value: if this is NDJSON, set \
                         spec.source.format to ndjson)"
                    ),
                },
                err => err,
            })?;
            if object.get().len() > ctx.max {
                return Err(ctx.too_long(Position::Record(1)));
            }
            let object = object.get().as_bytes();
            sink.object(object, shape_of(object), 1, Position::Record(1))?;
            records = 1;
        }
        other => {
            // Invalid JSON gets serde_json's syntax error; valid JSON gets ours.
            IgnoredAny::deserialize(&mut de).map_err(|err| ctx.json(err, shift, None))?;
            return Err(ctx.data(
                Position::Record(1),
                format!(
                    "expected a JSON object or an array of JSON objects, found {}",
                    kind_of(other)
                ),
            ));
        }
    }
    Ok(records)
}

/// Skips a byte order mark and whitespace; returns the first byte that is neither
/// (without consuming it) and what was skipped, or `None` at the end of the input.
fn skip_whitespace(reader: &mut impl BufRead) -> io::Result<Option<(u8, Shift)>> {
    let mut shift = Shift::default();
    let buf = reader.fill_buf()?;
    if buf.starts_with(UTF8_BOM) {
        reader.consume(UTF8_BOM.len());
        shift.columns = UTF8_BOM.len() as u64;
    }
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(None);
        }
        let end = buf
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .unwrap_or(buf.len());
        for &b in &buf[..end] {
            if b == b'\n' {
                shift.lines += 1;
                shift.columns = 0;
            } else {
                shift.columns += 1;
            }
        }
        let first = buf.get(end).copied();
        reader.consume(end);
        if let Some(first) = first {
            return Ok(Some((first, shift)));
        }
    }
}

/// Streams the elements of a top-level array, writing each as it arrives, so that the
/// array is never held whole.
struct ArrayVisitor<'v, 'a, 'c, W: Lines> {
    sink: &'v mut Sink<'a, W>,
    ctx: &'v Ctx<'c>,
    records: &'v mut u64,
    /// An error of ours, which serde's error type cannot carry.
    failure: &'v mut Option<DecodeError>,
}

impl<'de, W: Lines> Visitor<'de> for ArrayVisitor<'_, '_, '_, W> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of JSON objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            self.ctx.start_record();
            let Some(element) = seq.next_element::<Box<RawValue>>()? else {
                return Ok(());
            };
            let n = *self.records + 1;
            let position = Position::Record(n);
            let text = element.get();
            let result = if text.len() > self.ctx.max {
                Err(self.ctx.too_long(position))
            } else if !text.starts_with('{') {
                let found = kind_of(text.as_bytes()[0]);
                Err(self
                    .ctx
                    .data(position, format!("not a JSON object (found {found})")))
            } else {
                let object = text.as_bytes();
                self.sink.object(object, shape_of(object), n, position)
            };
            if let Err(err) = result {
                *self.failure = Some(err);
                return Err(de::Error::custom("stopped"));
            }
            *self.records = n;
        }
    }
}

/// What a JSON value is, from its first byte.
pub(super) fn kind_of(first: u8) -> &'static str {
    match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

/// What the sink needs to know of an object serde_json has parsed, found by searching
/// its bytes (cheaper than checking it again).
fn shape_of(object: &[u8]) -> Shape {
    Shape {
        non_ascii: !object.is_ascii(),
        unicode_escape: memchr::memmem::find(object, br"\u").is_some(),
        line_break: memchr::memchr2(b'\n', b'\r', object).is_some(),
        sluice_key: memchr::memmem::find(object, br#""_sluice""#).is_some(),
    }
}
