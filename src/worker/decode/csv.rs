//! CSV: a header row, then each row becomes an object of strings.

use std::collections::HashMap;
use std::io::{self, Read};

use super::input::{Ctx, UTF8_BOM};
use super::sink::{META_KEY, Sink, push_json_str};
use super::{DecodeError, Lines, Position};

/// Buffer the CSV parser keeps of its own.
const CSV_BUFFER: usize = 64 << 10;

pub(super) fn records<W: Lines>(
    input: impl Read,
    ctx: &Ctx,
    sink: &mut Sink<W>,
) -> Result<u64, DecodeError> {
    // The CSV reader buffers ahead of the row it parses; the guard allows for that.
    let guarded = ctx.guard(input);
    let tail = Tail {
        inner: guarded,
        ring: vec![0; 2 * CSV_BUFFER],
        delivered: 0,
    };
    // Headers and field counts are checked here, for messages that name the line.
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(CSV_BUFFER)
        .from_reader(tail);
    let mut row = csv::ByteRecord::new();
    let mut next_line = 1;
    let Some(header_line) = next_row(&mut reader, &mut row, &mut next_line, ctx)? else {
        return Ok(0);
    };
    let columns = header_columns(&row, header_line, ctx)?;
    let mut records = 0;
    while let Some(line) = next_row(&mut reader, &mut row, &mut next_line, ctx)? {
        if row.len() != columns.len() {
            return Err(ctx.data(
                Position::Line(line),
                format!(
                    "row has {} fields but the header has {}",
                    row.len(),
                    columns.len()
                ),
            ));
        }
        sink.row(&columns, &row, line)?;
        records += 1;
    }
    Ok(records)
}

/// Reads one CSV row; returns the line it starts on, or `None` at the end.
///
/// csv's own record positions count the blank lines before a row, and the `\n` of a
/// CRLF that ended the previous row, as part of the row. So the start line is worked out
/// backwards from the end: the end line, less the newlines inside quoted fields, less
/// one if the row was terminated by a `\n`.
fn next_row<R: Read>(
    reader: &mut csv::Reader<Tail<R>>,
    row: &mut csv::ByteRecord,
    next_line: &mut u64,
    ctx: &Ctx,
) -> Result<Option<u64>, DecodeError> {
    let start = reader.position().byte();
    match reader.read_byte_record(row) {
        Ok(false) => Ok(None),
        Ok(true) => {
            let end = reader.position();
            let last = reader.get_ref().byte_at(end.byte().wrapping_sub(1));
            let inner_newlines = memchr::memchr_iter(b'\n', row.as_slice()).count() as u64;
            // Saturating: an unterminated quote at the end can end in a newline of its own.
            let line = end
                .line()
                .saturating_sub(inner_newlines + u64::from(last == Some(b'\n')))
                .max(1);
            *next_line = end.line() + u64::from(last == Some(b'\r'));
            if end.byte() - start > ctx.max as u64 {
                return Err(ctx.too_long(Position::Line(line)));
            }
            ctx.start_record();
            Ok(Some(line))
        }
        Err(err) => {
            let position = Position::Line(*next_line);
            let reason = err.to_string();
            match err.into_kind() {
                csv::ErrorKind::Io(err) => Err(ctx.io(err, position)),
                _ => Err(ctx.data(position, reason)),
            }
        }
    }
}

/// Keeps the last bytes handed to the CSV reader, so that the byte that ended a row can
/// be looked at after the fact. The reader never holds more than its buffer unread, so
/// twice that is always enough.
struct Tail<R> {
    inner: R,
    ring: Vec<u8>,
    delivered: u64,
}

impl<R> Tail<R> {
    fn byte_at(&self, offset: u64) -> Option<u8> {
        let len = self.ring.len() as u64;
        let kept = offset < self.delivered && self.delivered - offset <= len;
        kept.then(|| self.ring[(offset % len) as usize])
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let len = self.ring.len();
        let data = &buf[n.saturating_sub(len)..n];
        let at = ((self.delivered + (n - data.len()) as u64) % len as u64) as usize;
        let first = data.len().min(len - at);
        self.ring[at..at + first].copy_from_slice(&data[..first]);
        self.ring[..data.len() - first].copy_from_slice(&data[first..]);
        self.delivered += n as u64;
        Ok(n)
    }
}

/// Checks the header row and precomputes each column's `,"name":` bytes. A column named
/// `_sluice` is dropped: sluice's metadata wins.
fn header_columns(
    header: &csv::ByteRecord,
    line: u64,
    ctx: &Ctx,
) -> Result<Vec<Option<Vec<u8>>>, DecodeError> {
    let mut seen = HashMap::new();
    let mut columns = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        let column = i + 1;
        let name = if i == 0 {
            name.strip_prefix(UTF8_BOM).unwrap_or(name)
        } else {
            name
        };
        let name = std::str::from_utf8(name).map_err(|_| {
            ctx.data(
                Position::Line(line),
                format!("header column {column} is not valid UTF-8"),
            )
        })?;
        if name.is_empty() {
            return Err(ctx.data(
                Position::Line(line),
                format!("header column {column} has no name"),
            ));
        }
        if let Some(first) = seen.insert(name, column) {
            return Err(ctx.data(
                Position::Line(line),
                format!("header name {name:?} appears twice (columns {first} and {column})"),
            ));
        }
        if name == META_KEY {
            columns.push(None);
            continue;
        }
        let mut bytes = vec![b','];
        push_json_str(&mut bytes, name);
        bytes.push(b':');
        columns.push(Some(bytes));
    }
    Ok(columns)
}
