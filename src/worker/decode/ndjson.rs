//! NDJSON: each line validated without building a tree, then copied with its metadata.

use std::io::BufRead;

use serde::de::IgnoredAny;

use super::input::{Ctx, Shift, UTF8_BOM};
use super::json::kind_of;
use super::sink::Sink;
use super::syntax::{Shape, Syntax, trim};
use super::{DecodeError, Lines, Position};

pub(super) fn records<W: Lines>(
    mut reader: impl BufRead,
    ctx: &Ctx,
    sink: &mut Sink<W>,
) -> Result<u64, DecodeError> {
    // Only a line that straddles two buffer fills is copied, into `long`. Every line a
    // fill holds is handled before the next fill: a fill reaches through the reader
    // layers down to the connection.
    let mut long = Vec::new();
    let mut syntax = Syntax::default();
    let mut line_no = 0u64;
    let mut records = 0u64;
    loop {
        let buf = reader
            .fill_buf()
            .map_err(|err| ctx.io(err, Position::Line(line_no + 1)))?;
        if buf.is_empty() {
            if !long.is_empty() {
                records += ndjson_line(&long, line_no + 1, ctx, &mut syntax, sink)?;
            }
            return Ok(records);
        }
        let mut start = 0;
        while start < buf.len() {
            // The hot path: the line is checked where it is, and its LF found on the
            // way. The first line may start with a byte order mark, and the rest of a
            // line that straddles two fills is in `long`: those take the path below,
            // as does any line the check does not accept, which then says why.
            if line_no > 0
                && long.is_empty()
                && let Some((shape, len)) = syntax.line(&buf[start..])
                && len <= ctx.max
            {
                line_no += 1;
                let shift = Shift {
                    lines: line_no - 1,
                    columns: 0,
                };
                let line = &buf[start..start + len];
                checked_line(line, shape, line_no, shift, ctx, sink)?;
                records += 1;
                start += len + 1;
                continue;
            }
            let Some(len) = memchr::memchr(b'\n', &buf[start..]) else {
                // The start of a line the next fill goes on with, checked before it
                // is copied, so that a huge line is never held whole.
                if long.len() + buf.len() - start > ctx.max {
                    return Err(ctx.too_long(Position::Line(line_no + 1)));
                }
                long.extend_from_slice(&buf[start..]);
                break;
            };
            let piece = &buf[start..start + len];
            if long.len() + piece.len() > ctx.max {
                return Err(ctx.too_long(Position::Line(line_no + 1)));
            }
            line_no += 1;
            records += if long.is_empty() {
                ndjson_line(piece, line_no, ctx, &mut syntax, sink)?
            } else {
                long.extend_from_slice(piece);
                let line = ndjson_line(&long, line_no, ctx, &mut syntax, sink)?;
                long.clear();
                line
            };
            start += len + 1;
        }
        let consumed = buf.len();
        reader.consume(consumed);
    }
}

/// Handles one NDJSON line; returns the number of records written (0 for a blank line).
fn ndjson_line<W: Lines>(
    full: &[u8],
    n: u64,
    ctx: &Ctx,
    syntax: &mut Syntax,
    sink: &mut Sink<W>,
) -> Result<u64, DecodeError> {
    let line = if n == 1 {
        full.strip_prefix(UTF8_BOM).unwrap_or(full)
    } else {
        full
    };
    let shift = Shift {
        lines: n - 1,
        columns: if line.len() < full.len() {
            UTF8_BOM.len() as u64
        } else {
            0
        },
    };
    if trim(line).is_empty() {
        return Ok(0);
    }
    // Checking without building anything is what makes this path fast. Only
    // serde_json says where and why a line is not JSON; it parses the untrimmed text
    // so that columns count from the start of the line.
    let shape = match syntax.scan(line) {
        Some(shape) => shape,
        None => {
            serde_json::from_str::<IgnoredAny>(utf8(line, n, shift, ctx)?)
                .map_err(|err| ctx.json(err, shift, None))?;
            // serde_json accepts what the check rejected (the fuzz target `json_syntax`
            // looks for such lines).
            Shape::UNKNOWN
        }
    };
    checked_line(line, shape, n, shift, ctx, sink)?;
    Ok(1)
}

/// Writes line `n` (after a byte order mark, which `shift` counts), which the JSON
/// check accepted, noting `shape`, as a record: what is left to check is that it is
/// UTF-8 (only when the check saw a byte outside ASCII) and a JSON object.
fn checked_line<W: Lines>(
    line: &[u8],
    shape: Shape,
    n: u64,
    shift: Shift,
    ctx: &Ctx,
    sink: &mut Sink<W>,
) -> Result<(), DecodeError> {
    if shape.non_ascii {
        utf8(line, n, shift, ctx)?;
    }
    let object = trim(line);
    if object[0] != b'{' {
        return Err(ctx.data(
            Position::Line(n),
            format!("not a JSON object (found {})", kind_of(object[0])),
        ));
    }
    sink.object(object, shape, n, Position::Line(n))
}

/// Line `n` as text, or the column where it stops being UTF-8.
fn utf8<'l>(line: &'l [u8], n: u64, shift: Shift, ctx: &Ctx) -> Result<&'l str, DecodeError> {
    std::str::from_utf8(line).map_err(|err| {
        ctx.data(
            Position::Line(n),
            format!(
                "invalid UTF-8 at column {}",
                shift.columns + err.valid_up_to() as u64 + 1
            ),
        )
    })
}
