//! The reader layers under the parsers (counting bytes, guarding a record's length)
//! and the context that turns their errors into positions in the object.

use std::cell::Cell;
use std::fmt::Write as _;
use std::io::{self, BufRead, Read};

use super::codec::Codec;
use super::{DecodeError, Position};

/// The buffer after a decompressor, and under the JSON parser (plain NDJSON is
/// parsed where the source holds it): large enough that most lines are handled in place,
/// without copying, and small enough not to weigh on a small object, which gets one too
/// (zero-filled on its first read, as std's buffered readers do through a reader of ours:
/// at 256 KiB, that was 1 % of the machine's CPU on 4 KiB objects).
pub(super) const READ_BUFFER: usize = 64 << 10;
/// Extra bytes the record guard lets through beyond the limit: parsers read ahead of the
/// record they parse, by at most their buffer. The exact limit is checked once a record
/// is complete; the guard only keeps memory bounded while a record that is far too long
/// is still arriving.
pub(super) const GUARD_SLACK: u64 = READ_BUFFER as u64 + (64 << 10);
pub(super) const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Counters shared by the reader layers and the code that classifies their errors.
/// Readers are owned by decompressors and parsers, so the state lives outside them.
#[derive(Default)]
pub(super) struct Stats {
    /// Bytes read from the source.
    pub(super) compressed: Cell<u64>,
    /// The source itself returned an error: a read error, not bad data.
    pub(super) source_failed: Cell<bool>,
    /// Bytes out of the decompressor.
    pub(super) decoded: Cell<u64>,
    /// Bytes let through the record guard, and how far it may go.
    pub(super) guarded: Cell<u64>,
    pub(super) allowed: Cell<u64>,
    /// The record guard stopped a record that was too long.
    pub(super) too_long: Cell<bool>,
}

/// What error messages and classification need to know about the object.
pub(super) struct Ctx<'a> {
    pub(super) key: &'a str,
    pub(super) stats: &'a Stats,
    pub(super) codec: Codec,
    pub(super) max: usize,
}

impl<'a> Ctx<'a> {
    pub(super) fn data(&self, position: Position, reason: impl Into<String>) -> DecodeError {
        DecodeError::Data {
            key: self.key.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    pub(super) fn too_long(&self, position: Position) -> DecodeError {
        self.data(
            position,
            format!("record is longer than the limit of {} bytes", self.max),
        )
    }

    /// Classifies an I/O error that surfaced while parsing: it came from the source, from
    /// the record guard, or else from the decompressor finding bad data.
    pub(super) fn io(&self, err: io::Error, position: Position) -> DecodeError {
        if self.stats.too_long.get() {
            return self.too_long(position);
        }
        if self.stats.source_failed.get() || self.codec == Codec::Plain {
            return DecodeError::Read {
                key: self.key.to_owned(),
                source: err,
            };
        }
        let name = self.codec.name();
        let reason = if err.kind() == io::ErrorKind::UnexpectedEof {
            format!("{name} stream is truncated")
        } else {
            format!("{name} data is corrupt: {err}")
        };
        self.data(Position::Byte(self.stats.compressed.get()), reason)
    }

    /// Maps a serde_json error to a line and column of the object, or to the record
    /// guard or an I/O failure. `shift` corrects for whitespace skipped before parsing.
    pub(super) fn json(
        &self,
        err: serde_json::Error,
        shift: Shift,
        record: Option<u64>,
    ) -> DecodeError {
        if err.is_io() {
            return self.io(err.into(), Position::Record(record.unwrap_or(1)));
        }
        let line = err.line() as u64;
        let mut column = err.column() as u64;
        if line == 1 {
            column += shift.columns;
        }
        let mut reason = format!("{} at column {column}", describe(&err));
        if let Some(record) = record {
            let _ = write!(reason, " (in record {record})");
        }
        self.data(Position::Line(line + shift.lines), reason)
    }

    /// `input` behind the record guard, which lets the first record through.
    /// For parsers that buffer ahead of the record they parse.
    pub(super) fn guard<R: Read>(&self, input: R) -> Guard<'a, R> {
        self.start_record();
        Guard {
            inner: input,
            stats: self.stats,
        }
    }

    /// Lets the record guard pass `max` more bytes, plus slack, from now on.
    pub(super) fn start_record(&self) {
        let stats = self.stats;
        let allowed = stats.guarded.get() + self.max as u64 + GUARD_SLACK;
        stats.allowed.set(allowed);
    }
}

/// serde_json's message without its " at line L column C" tail, which is relative to
/// what serde_json saw rather than to the object.
fn describe(err: &serde_json::Error) -> String {
    let full = err.to_string();
    let tail = format!(" at line {} column {}", err.line(), err.column());
    match full.strip_suffix(&tail) {
        Some(message) => message.to_owned(),
        None => full,
    }
}

/// The source, counted, with its errors marked as read errors.
pub(super) struct Source<'s, R> {
    pub(super) inner: R,
    pub(super) stats: &'s Stats,
}

/// `Read::read` for a reader that is read through its `BufRead` side, where it keeps
/// its counts and checks.
pub fn read_buffered(reader: &mut impl BufRead, buf: &mut [u8]) -> io::Result<usize> {
    let n = reader.fill_buf()?.read(buf)?;
    reader.consume(n);
    Ok(n)
}

impl<R: BufRead> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

/// Reading through the source's own buffer (a body in memory, or the connection's
/// chunks) is what spares a plain object a copy.
impl<R: BufRead> BufRead for Source<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        loop {
            match self.inner.fill_buf() {
                // The end: asking again would read again.
                Ok([]) => return Ok(&[]),
                Ok(_) => break,
                // Decompressors do not all retry; an interrupted read is not a failure.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.stats.source_failed.set(true);
                    return Err(err);
                }
            }
        }
        // What the call above filled, handed out again without reading (the borrow
        // checker does not let that call's slice out of the loop).
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        let stats = self.stats;
        stats.compressed.set(stats.compressed.get() + n as u64);
        self.inner.consume(n);
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the input.
pub(super) fn read_prefix(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Counts the bytes passing through.
pub(super) struct Tally<'s, R> {
    pub(super) inner: R,
    pub(super) count: &'s Cell<u64>,
}

impl<R: BufRead> Read for Tally<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

impl<R: BufRead> BufRead for Tally<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.count.set(self.count.get() + n as u64);
        self.inner.consume(n);
    }
}

/// Stops a parser that buffers whole records (serde_json's raw values, the CSV reader)
/// from reading far past the record limit, which would otherwise let one huge record
/// take all memory.
pub(super) struct Guard<'s, R> {
    inner: R,
    stats: &'s Stats,
}

impl<R: Read> Read for Guard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stats = self.stats;
        let room = stats.allowed.get().saturating_sub(stats.guarded.get());
        let n = if room == 0 {
            // Out of room: only the end of the input is still acceptable.
            if self.inner.read(&mut [0u8])? == 0 {
                return Ok(0);
            }
            stats.too_long.set(true);
            return Err(io::Error::other("record is longer than the limit"));
        } else {
            let room = usize::try_from(room).unwrap_or(usize::MAX).min(buf.len());
            self.inner.read(&mut buf[..room])?
        };
        stats.guarded.set(stats.guarded.get() + n as u64);
        Ok(n)
    }
}

/// Whitespace skipped before handing a stream to serde_json, whose positions start
/// where it starts.
#[derive(Clone, Copy, Default)]
pub(super) struct Shift {
    pub(super) lines: u64,
    pub(super) columns: u64,
}
