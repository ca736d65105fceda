//! Turns one S3 object into NDJSON records readied for indexing.
//!
//! A worker hands [`decode`] the object as a blocking byte stream. The stream is
//! decompressed (gzip, zstd or none), parsed as NDJSON, JSON or CSV, and every record
//! is written as one line of NDJSON that starts with a `_sluice` object naming where
//! the record came from.
//!
//! Objects can be far larger than memory, so nothing here holds the whole object, a
//! whole JSON array, or a line longer than [`Limits::max_record_bytes`]. NDJSON is the
//! hot path: each line is validated without building a tree, and the metadata is
//! spliced in front of the line's own bytes instead of re-serializing the record.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};

use memchr::memmem;
use serde::de::{self, Deserialize, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use sluice_core::encoding::{Compression, Format};

/// Key under which each record carries its origin; sluice owns it.
const META_KEY: &str = "_sluice";
/// Read-side buffer: large enough that most lines are handled in place, without copying.
const READ_BUFFER: usize = 256 << 10;
/// Write-side buffer: batches many small records into one call on the caller's encoder.
const WRITE_BUFFER: usize = 256 << 10;
/// Buffer the CSV parser keeps of its own.
const CSV_BUFFER: usize = 64 << 10;
/// Extra bytes the record guard lets through beyond the limit: parsers read ahead of the
/// record they parse, by at most their buffer. The exact limit is checked once a record
/// is complete; the guard only keeps memory bounded while a record that is far too long
/// is still arriving.
const GUARD_SLACK: u64 = READ_BUFFER as u64 + (64 << 10);
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
const UTF8_BOM: &[u8] = b"\xef\xbb\xbf";

/// Where a record came from; becomes the `_sluice` metadata of each record.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub key: &'a str,
    pub etag: &'a str,
    pub task: &'a str,
    /// RFC 3339 time, pre-formatted by the caller so every record of a task agrees.
    pub ingested: &'a str,
}

/// Bounds on what one object may ask of a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A longer NDJSON line, JSON array element or CSV row is a data error. This is
    /// what bounds memory: a record must be held whole to be validated.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_record_bytes: 16 << 20,
        }
    }
}

/// What one call of [`decode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decoded {
    /// Records written to the output.
    pub records: u64,
    /// Bytes read from the source, before decompression.
    pub bytes_in: u64,
    /// Bytes after decompression.
    pub bytes_decoded: u64,
}

/// Where in an object a data error was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// 1-based line of the decompressed text (NDJSON, CSV, and JSON syntax errors).
    Line(u64),
    /// 1-based element of a JSON array (1 for a single object).
    Record(u64),
    /// Offset in the compressed input, for errors the decompressor finds. Decompressors
    /// read ahead, so this is how far the input had been read, not an exact offset.
    Byte(u64),
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Record(n) => write!(f, "record {n}"),
            Self::Byte(n) => write!(f, "byte {n} of the compressed input"),
        }
    }
}

/// Why an object could not be decoded. The variants tell the caller whether retrying
/// can help.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The data is malformed: permanent, retrying will not help.
    #[error("s3 object {key:?}: {position}: {reason}")]
    Data {
        key: String,
        position: Position,
        reason: String,
    },
    /// Reading the source failed (network etc.): maybe transient.
    #[error("s3 object {key:?}: reading failed: {source}")]
    Read { key: String, source: io::Error },
    /// Writing the output failed.
    #[error("writing decoded records failed: {0}")]
    Write(#[source] io::Error),
}

/// Decodes one object from `input` and writes its records to `out` as NDJSON.
///
/// Each output line is the record with `_sluice` metadata as its first key. On error,
/// part of the object may already have been written; the caller discards the output.
pub fn decode(
    input: impl Read,
    origin: &Origin,
    format: Format,
    compression: Compression,
    limits: &Limits,
    out: &mut impl Write,
) -> Result<Decoded, DecodeError> {
    let key = origin.key;
    // Decided before any byte is read, so a misconfigured source fails fast.
    let kind = resolve_format(format, key)?;
    let stats = Stats::default();
    let mut source = Source {
        inner: input,
        stats: &stats,
    };
    let mut magic = [0u8; 4];
    let len = read_prefix(&mut source, &mut magic).map_err(|source| DecodeError::Read {
        key: key.to_owned(),
        source,
    })?;
    let magic = &magic[..len];
    if magic.is_empty() {
        return Ok(Decoded::default());
    }
    let looks_like = sniff(magic);
    let codec = choose_codec(compression, looks_like).map_err(|reason| DecodeError::Data {
        key: key.to_owned(),
        position: Position::Byte(0),
        reason,
    })?;
    let ctx = Ctx {
        key,
        stats: &stats,
        codec,
        max: limits.max_record_bytes,
    };
    let raw = magic.chain(source);
    let records = decode_stream(raw, &ctx, kind, origin, out).map_err(|mut err| {
        // Obeying an explicit `none` on compressed data yields baffling errors; say why.
        if let (DecodeError::Data { reason, .. }, Some(codec), Codec::Plain) =
            (&mut err, looks_like, codec)
        {
            let name = codec.name();
            let _ = write!(
                reason,
                " (the object looks {name}-compressed but spec.source.compression is none)"
            );
        }
        err
    })?;
    Ok(Decoded {
        records,
        bytes_in: stats.compressed.get(),
        bytes_decoded: stats.decoded.get(),
    })
}

/// The format a key's extension implies, ignoring a trailing compression extension.
pub fn format_of(key: &str) -> Option<Format> {
    let name = key.rsplit('/').next().unwrap_or(key).to_ascii_lowercase();
    let name = [".gz", ".gzip", ".zst", ".zstd"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext))
        .unwrap_or(&name);
    let (_, ext) = name.rsplit_once('.')?;
    match ext {
        "ndjson" | "jsonl" => Some(Format::Ndjson),
        "json" => Some(Format::Json),
        "csv" => Some(Format::Csv),
        _ => None,
    }
}

/// A format that is known, unlike [`Format::Auto`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ndjson,
    Json,
    Csv,
}

fn resolve_format(format: Format, key: &str) -> Result<Kind, DecodeError> {
    match format {
        Format::Ndjson => Ok(Kind::Ndjson),
        Format::Json => Ok(Kind::Json),
        Format::Csv => Ok(Kind::Csv),
        Format::Auto => match format_of(key) {
            Some(Format::Ndjson) => Ok(Kind::Ndjson),
            Some(Format::Json) => Ok(Kind::Json),
            Some(Format::Csv) => Ok(Kind::Csv),
            Some(Format::Auto) | None => Err(DecodeError::Data {
                key: key.to_owned(),
                position: Position::Byte(0),
                reason: "the key's extension is unknown (expected .ndjson, .jsonl, .json or .csv, \
                         optionally followed by .gz or .zst); set spec.source.format"
                    .to_owned(),
            }),
        },
    }
}

/// How the object is compressed, once decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Codec {
    Plain,
    Gzip,
    Zstd,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// The codec the first bytes announce, if any.
fn sniff(magic: &[u8]) -> Option<Codec> {
    // zstd skippable frames (magic 0x184D2A5?) may open a zstd stream too.
    let skippable = magic.len() == 4 && magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18];
    if magic.starts_with(&GZIP_MAGIC) {
        Some(Codec::Gzip)
    } else if magic.starts_with(&ZSTD_MAGIC) || skippable {
        Some(Codec::Zstd)
    } else {
        None
    }
}

/// Obeys an explicit choice, but checks the magic bytes so that a wrong choice gives a
/// clear message instead of the decompressor's.
fn choose_codec(compression: Compression, looks_like: Option<Codec>) -> Result<Codec, String> {
    let wanted = match compression {
        Compression::Auto => return Ok(looks_like.unwrap_or(Codec::Plain)),
        Compression::None => return Ok(Codec::Plain),
        Compression::Gzip => Codec::Gzip,
        Compression::Zstd => Codec::Zstd,
    };
    if looks_like == Some(wanted) {
        return Ok(wanted);
    }
    let magic = if wanted == Codec::Gzip {
        "1f 8b"
    } else {
        "28 b5 2f fd"
    };
    Err(format!(
        "spec.source.compression is {} but the object does not start with its magic bytes {magic} \
         (it looks {})",
        wanted.name(),
        looks_like.unwrap_or(Codec::Plain).name()
    ))
}

fn decode_stream<W: Write>(
    raw: impl Read,
    ctx: &Ctx,
    kind: Kind,
    origin: &Origin,
    out: W,
) -> Result<u64, DecodeError> {
    let decompressed: Box<dyn Read + '_> = match ctx.codec {
        Codec::Plain => Box::new(raw),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Codec::Zstd => Box::new(zstd::Decoder::new(raw).map_err(|source| DecodeError::Read {
            key: ctx.key.to_owned(),
            source,
        })?),
    };
    let decoded = Tally {
        inner: decompressed,
        count: &ctx.stats.decoded,
    };
    let counter = if kind == Kind::Json { "record" } else { "line" };
    let mut sink = Sink::new(origin, counter, out);
    let records = match kind {
        Kind::Ndjson => ndjson(decoded, ctx, &mut sink)?,
        Kind::Json => json(decoded, ctx, &mut sink)?,
        Kind::Csv => csv(decoded, ctx, &mut sink)?,
    };
    sink.finish()?;
    Ok(records)
}

/// Counters shared by the reader layers and the code that classifies their errors.
/// Readers are owned by decompressors and parsers, so the state lives outside them.
#[derive(Default)]
struct Stats {
    /// Bytes read from the source.
    compressed: Cell<u64>,
    /// The source itself returned an error: a read error, not bad data.
    source_failed: Cell<bool>,
    /// Bytes out of the decompressor.
    decoded: Cell<u64>,
    /// Bytes let through the record guard, and how far it may go.
    guarded: Cell<u64>,
    allowed: Cell<u64>,
    /// The record guard stopped a record that was too long.
    too_long: Cell<bool>,
}

/// What error messages and classification need to know about the object.
struct Ctx<'a> {
    key: &'a str,
    stats: &'a Stats,
    codec: Codec,
    max: usize,
}

impl Ctx<'_> {
    fn data(&self, position: Position, reason: impl Into<String>) -> DecodeError {
        DecodeError::Data {
            key: self.key.to_owned(),
            position,
            reason: reason.into(),
        }
    }

    fn too_long(&self, position: Position) -> DecodeError {
        self.data(
            position,
            format!("record is longer than the limit of {} bytes", self.max),
        )
    }

    /// Classifies an I/O error that surfaced while parsing: it came from the source, from
    /// the record guard, or else from the decompressor finding bad data.
    fn io(&self, err: io::Error, position: Position) -> DecodeError {
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
    fn json(&self, err: serde_json::Error, shift: Shift, record: Option<u64>) -> DecodeError {
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

    /// Lets the record guard pass `max` more bytes, plus slack, from now on.
    fn start_record(&self) {
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
struct Source<'s, R> {
    inner: R,
    stats: &'s Stats,
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(n) => {
                    let stats = self.stats;
                    stats.compressed.set(stats.compressed.get() + n as u64);
                    return Ok(n);
                }
                // Decompressors do not all retry; an interrupted read is not a failure.
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.stats.source_failed.set(true);
                    return Err(err);
                }
            }
        }
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end of the input.
fn read_prefix(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
struct Tally<'s, R> {
    inner: R,
    count: &'s Cell<u64>,
}

impl<R: Read> Read for Tally<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Stops a parser that buffers whole records (serde_json's raw values, the CSV reader)
/// from reading far past the record limit, which would otherwise let one huge record
/// take all memory.
struct Guard<'s, R> {
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
struct Shift {
    lines: u64,
    columns: u64,
}

/// Writes records with their metadata. The metadata is built once per object, around
/// the place where the record's line or index goes.
struct Sink<'a, W: Write> {
    out: BufWriter<W>,
    key: &'a str,
    /// `{"_sluice":{"key":…,"etag":…,"line":`
    prefix: Vec<u8>,
    /// `,"task":…,"ingested":…}`
    suffix: Vec<u8>,
    /// Scratch for records that are rewritten rather than copied.
    scratch: Vec<u8>,
    meta_key: memmem::Finder<'static>,
    unicode_escape: memmem::Finder<'static>,
}

impl<'a, W: Write> Sink<'a, W> {
    fn new(origin: &Origin<'a>, counter: &str, out: W) -> Self {
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
            out: BufWriter::with_capacity(WRITE_BUFFER, out),
            key: origin.key,
            prefix,
            suffix,
            scratch: Vec::new(),
            meta_key: memmem::Finder::new(br#""_sluice""#),
            unicode_escape: memmem::Finder::new(br"\u"),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.out.write_all(bytes).map_err(DecodeError::Write)
    }

    fn write_meta(&mut self, n: u64) -> Result<(), DecodeError> {
        let mut digits = [0u8; 20];
        self.out
            .write_all(&self.prefix)
            .and_then(|()| self.out.write_all(format_u64(n, &mut digits)))
            .and_then(|()| self.out.write_all(&self.suffix))
            .map_err(DecodeError::Write)
    }

    /// Writes a validated JSON object (no surrounding whitespace) as record `n`.
    fn object(&mut self, object: &str, n: u64, position: Position) -> Result<(), DecodeError> {
        let bytes = object.as_bytes();
        // The key can only be present if its bytes are, or if some key is escaped.
        if self.meta_key.find(bytes).is_some() || self.unicode_escape.find(bytes).is_some() {
            let entries: Entries =
                serde_json::from_str(object).map_err(|err| DecodeError::Data {
                    key: self.key.to_owned(),
                    position,
                    reason: err.to_string(),
                })?;
            if entries.0.iter().any(|(key, _)| key == META_KEY) {
                return self.rebuild(&entries, n);
            }
        }
        self.write_meta(n)?;
        let rest = &bytes[1..];
        if trim_json(rest) == b"}" {
            // An empty object: nothing follows the metadata but the brace.
            return self.write(b"}\n");
        }
        self.write(b",")?;
        // A raw CR or LF in valid JSON is whitespace between tokens; it must not split
        // the output line.
        if memchr::memchr2(b'\n', b'\r', rest).is_some() {
            let mut line = std::mem::take(&mut self.scratch);
            line.clear();
            push_one_line(&mut line, rest);
            let written = self.write(&line);
            self.scratch = line;
            written?;
        } else {
            self.write(rest)?;
        }
        self.write(b"\n")
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
        let written = self.write_meta(n).and_then(|()| self.write(&line));
        self.scratch = line;
        written
    }

    /// Writes a CSV row as an object of strings. `columns` holds each column's
    /// `,"name":` bytes, or `None` for a column that is dropped.
    fn row(
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
        let written = self.write_meta(line_no).and_then(|()| self.write(&line));
        self.scratch = line;
        written
    }

    /// Hands buffered output to the caller's writer, without flushing it: flushing an
    /// encoder per object would only cost compression.
    fn finish(self) -> Result<(), DecodeError> {
        self.out
            .into_inner()
            .map(drop)
            .map_err(|err| DecodeError::Write(err.into_error()))
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

fn ndjson<W: Write>(input: impl Read, ctx: &Ctx, sink: &mut Sink<W>) -> Result<u64, DecodeError> {
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    // Only a line that straddles two buffer fills is copied, into `long`.
    let mut long = Vec::new();
    let mut line_no = 0u64;
    let mut records = 0u64;
    loop {
        let buf = reader
            .fill_buf()
            .map_err(|err| ctx.io(err, Position::Line(line_no + 1)))?;
        if buf.is_empty() {
            if !long.is_empty() {
                records += ndjson_line(&long, line_no + 1, ctx, sink)?;
            }
            return Ok(records);
        }
        let newline = memchr::memchr(b'\n', buf);
        // Checked before copying, so a huge line is never held whole.
        if long.len() + newline.unwrap_or(buf.len()) > ctx.max {
            return Err(ctx.too_long(Position::Line(line_no + 1)));
        }
        let consumed = match newline {
            Some(end) if long.is_empty() => {
                line_no += 1;
                records += ndjson_line(&buf[..end], line_no, ctx, sink)?;
                end + 1
            }
            Some(end) => {
                line_no += 1;
                long.extend_from_slice(&buf[..end]);
                records += ndjson_line(&long, line_no, ctx, sink)?;
                long.clear();
                end + 1
            }
            None => {
                long.extend_from_slice(buf);
                buf.len()
            }
        };
        reader.consume(consumed);
    }
}

/// Handles one NDJSON line; returns the number of records written (0 for a blank line).
fn ndjson_line<W: Write>(
    full: &[u8],
    n: u64,
    ctx: &Ctx,
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
    let text = std::str::from_utf8(line).map_err(|err| {
        ctx.data(
            Position::Line(n),
            format!(
                "invalid UTF-8 at column {}",
                shift.columns + err.valid_up_to() as u64 + 1
            ),
        )
    })?;
    let object = text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
    if object.is_empty() {
        return Ok(0);
    }
    // Validating without building anything is what makes this path fast. The untrimmed
    // text is parsed so that columns count from the start of the line.
    serde_json::from_str::<IgnoredAny>(text).map_err(|err| ctx.json(err, shift, None))?;
    if !object.starts_with('{') {
        return Err(ctx.data(
            Position::Line(n),
            format!(
                "not a JSON object (found {})",
                kind_of(object.as_bytes()[0])
            ),
        ));
    }
    sink.object(object, n, Position::Line(n))?;
    Ok(1)
}

/// What a JSON value is, from its first byte.
fn kind_of(first: u8) -> &'static str {
    match first {
        b'{' => "an object",
        b'[' => "an array",
        b'"' => "a string",
        b't' | b'f' => "a boolean",
        b'n' => "null",
        _ => "a number",
    }
}

fn json<W: Write>(input: impl Read, ctx: &Ctx, sink: &mut Sink<W>) -> Result<u64, DecodeError> {
    // The guard sits below the buffer, which reads ahead of the record being parsed.
    ctx.start_record();
    let guarded = Guard {
        inner: input,
        stats: ctx.stats,
    };
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
            sink.object(object.get(), 1, Position::Record(1))?;
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
struct ArrayVisitor<'v, 'a, 'c, W: Write> {
    sink: &'v mut Sink<'a, W>,
    ctx: &'v Ctx<'c>,
    records: &'v mut u64,
    /// An error of ours, which serde's error type cannot carry.
    failure: &'v mut Option<DecodeError>,
}

impl<'de, W: Write> Visitor<'de> for ArrayVisitor<'_, '_, '_, W> {
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
                self.sink.object(text, n, position)
            };
            if let Err(err) = result {
                *self.failure = Some(err);
                return Err(de::Error::custom("stopped"));
            }
            *self.records = n;
        }
    }
}

fn csv<W: Write>(input: impl Read, ctx: &Ctx, sink: &mut Sink<W>) -> Result<u64, DecodeError> {
    // The CSV reader buffers ahead of the row it parses; the guard allows for that.
    ctx.start_record();
    let guarded = Guard {
        inner: input,
        stats: ctx.stats,
    };
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

/// Appends JSON text with raw CR and LF turned into spaces. Outside strings they are
/// insignificant whitespace, and inside strings they cannot occur unescaped.
fn push_one_line(out: &mut Vec<u8>, json: &[u8]) {
    out.extend(json.iter().map(|&b| match b {
        b'\n' | b'\r' => b' ',
        b => b,
    }));
}

/// Trims JSON whitespace (not all ASCII whitespace: a form feed is not JSON whitespace).
fn trim_json(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Appends `s` as a JSON string. Hand-written because it is on the CSV hot path and
/// cannot fail, unlike serde_json's writer-based API.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
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
    use serde_json::{Value, json};

    const ORIGIN: Origin<'static> = Origin {
        key: "logs/a.ndjson",
        etag: "\"abc123\"",
        task: "task-1",
        ingested: "2024-05-01T12:00:00Z",
    };

    fn origin(key: &str) -> Origin<'_> {
        Origin { key, ..ORIGIN }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    /// Decodes `input` and returns the outcome and the raw output.
    fn run_with(
        input: &[u8],
        key: &str,
        format: Format,
        compression: Compression,
        max: usize,
    ) -> (Result<Decoded, DecodeError>, String) {
        let mut out = Vec::new();
        let limits = Limits {
            max_record_bytes: max,
        };
        let result = decode(input, &origin(key), format, compression, &limits, &mut out);
        (result, String::from_utf8(out).expect("output is UTF-8"))
    }

    /// Decodes successfully and parses every output line.
    fn records(input: &[u8], key: &str, format: Format, compression: Compression) -> Vec<Value> {
        let (result, out) = run_with(
            input,
            key,
            format,
            compression,
            Limits::default().max_record_bytes,
        );
        let decoded = result.unwrap_or_else(|err| panic!("decode failed: {err}"));
        let lines: Vec<Value> = out
            .lines()
            .map(|line| {
                let mut v: Value =
                    serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
                // Compared against `meta`, which uses ORIGIN's key.
                assert_eq!(v["_sluice"]["key"], key);
                v["_sluice"]["key"] = json!(ORIGIN.key);
                v
            })
            .collect();
        assert_eq!(decoded.records, lines.len() as u64);
        assert!(out.is_empty() || out.ends_with('\n'));
        lines
    }

    fn ndjson(input: &[u8]) -> Vec<Value> {
        records(input, "logs/a.ndjson", Format::Auto, Compression::Auto)
    }

    /// Decodes expecting a data error; returns its position and its whole message.
    fn data_error_with(
        input: &[u8],
        key: &str,
        format: Format,
        compression: Compression,
        max: usize,
    ) -> (Position, String) {
        match run_with(input, key, format, compression, max).0 {
            Err(err @ DecodeError::Data { .. }) => {
                let message = err.to_string();
                let DecodeError::Data {
                    key: k, position, ..
                } = err
                else {
                    unreachable!()
                };
                assert_eq!(k, key);
                assert!(
                    message.starts_with(&format!("s3 object {key:?}: {position}: ")),
                    "{message}"
                );
                (position, message)
            }
            other => panic!("expected a data error, got {other:?}"),
        }
    }

    fn data_error(input: &[u8], key: &str) -> (Position, String) {
        data_error_with(
            input,
            key,
            Format::Auto,
            Compression::Auto,
            Limits::default().max_record_bytes,
        )
    }

    fn meta(n: u64, counter: &str) -> Value {
        json!({"key": ORIGIN.key, "etag": ORIGIN.etag, counter: n, "task": ORIGIN.task, "ingested": ORIGIN.ingested})
    }

    /// Produces `head`, then `len` copies of `fill`, lazily, counting what was served.
    struct Lazy {
        head: Vec<u8>,
        len: u64,
        fill: u8,
        served: u64,
    }

    impl Lazy {
        fn new(head: &[u8], len: u64, fill: u8) -> Self {
            Self {
                head: head.to_vec(),
                len,
                fill,
                served: 0,
            }
        }
    }

    impl Read for &mut Lazy {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let total = self.head.len() as u64 + self.len;
            let left = total - self.served;
            let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let at = self.served + i as u64;
                *b = self.head.get(at as usize).copied().unwrap_or(self.fill);
            }
            self.served += n as u64;
            Ok(n)
        }
    }

    /// Serves `data`, then fails (or, with `interrupt`, interrupts every other read).
    struct Flaky {
        data: Vec<u8>,
        at: usize,
        interrupt: bool,
        calls: usize,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.interrupt && self.calls % 2 == 1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            if self.at == self.data.len() {
                if self.interrupt {
                    return Ok(0);
                }
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "connection reset by peer",
                ));
            }
            let n = buf.len().min(self.data.len() - self.at).min(7);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    // ---- format_of and Display ----

    #[test]
    fn format_of_extensions() {
        assert_eq!(format_of("a/b.ndjson"), Some(Format::Ndjson));
        assert_eq!(format_of("a/b.jsonl.gz"), Some(Format::Ndjson));
        assert_eq!(format_of("b.JSONL.ZST"), Some(Format::Ndjson));
        assert_eq!(format_of("b.json"), Some(Format::Json));
        assert_eq!(format_of("b.json.gzip"), Some(Format::Json));
        assert_eq!(format_of("b.csv.zstd"), Some(Format::Csv));
        assert_eq!(format_of("b.txt"), None);
        assert_eq!(format_of("b.gz"), None);
        assert_eq!(format_of("dir.json/b"), None);
        assert_eq!(format_of("b"), None);
        assert_eq!(format_of(""), None);
    }

    #[test]
    fn default_limit_is_16_mib() {
        assert_eq!(Limits::default().max_record_bytes, 16 << 20);
    }

    #[test]
    fn position_display() {
        assert_eq!(Position::Line(12).to_string(), "line 12");
        assert_eq!(Position::Record(3).to_string(), "record 3");
        assert_eq!(
            Position::Byte(1048576).to_string(),
            "byte 1048576 of the compressed input"
        );
    }

    #[test]
    fn unknown_extension_is_a_data_error_before_reading() {
        let mut reader = Lazy::new(b"", 10, b'x');
        let mut out = Vec::new();
        let err = decode(
            &mut reader,
            &origin("a.txt"),
            Format::Auto,
            Compression::Auto,
            &Limits::default(),
            &mut out,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, DecodeError::Data { .. }));
        assert!(
            message.contains("\"a.txt\"")
                && message.contains("unknown")
                && message.contains("spec.source.format"),
            "{message}"
        );
        assert_eq!(reader.served, 0);
    }

    // ---- NDJSON ----

    #[test]
    fn ndjson_splices_metadata_in_front() {
        let input = b"{\"a\":1,\"b\":\"x\"}\n{\"c\":[1,{\"d\":null}]}\n";
        let (result, out) = run_with(
            input,
            "logs/a.ndjson",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        let decoded = result.unwrap();
        let prefix = r#"{"_sluice":{"key":"logs/a.ndjson","etag":"\"abc123\"","line":"#;
        let suffix = r#","task":"task-1","ingested":"2024-05-01T12:00:00Z"},"#;
        assert_eq!(
            out,
            format!(
                "{prefix}1{suffix}\"a\":1,\"b\":\"x\"}}\n{prefix}2{suffix}\"c\":[1,{{\"d\":null}}]}}\n"
            )
        );
        let len = input.len() as u64;
        assert_eq!(
            decoded,
            Decoded {
                records: 2,
                bytes_in: len,
                bytes_decoded: len
            }
        );
    }

    #[test]
    fn ndjson_records_keep_their_fields() {
        let lines =
            ndjson(b"{\"a\":1,\"nested\":{\"x\":[true,false,null]},\"s\":\"\\u00e9\\\"q\"}\n");
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(1, "line"), "a": 1, "nested": {"x": [true, false, null]}, "s": "\u{e9}\"q"})
            ]
        );
    }

    #[test]
    fn ndjson_empty_objects() {
        let lines = ndjson(b"{}\n{ }\n  {\t}  \n");
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(1, "line")}),
                json!({"_sluice": meta(2, "line")}),
                json!({"_sluice": meta(3, "line")}),
            ]
        );
    }

    #[test]
    fn ndjson_blank_lines_crlf_and_whitespace() {
        let lines = ndjson(b"\r\n  \n{\"a\":1}\r\n\t{\"a\":2}  \r\n\n{\"a\":3}");
        let got: Vec<(u64, i64)> = lines
            .iter()
            .map(|v| {
                (
                    v["_sluice"]["line"].as_u64().unwrap(),
                    v["a"].as_i64().unwrap(),
                )
            })
            .collect();
        assert_eq!(got, vec![(3, 1), (4, 2), (6, 3)]);
    }

    #[test]
    fn ndjson_only_blank_lines_is_empty() {
        assert!(ndjson(b"\n\n  \r\n").is_empty());
    }

    #[test]
    fn ndjson_byte_order_mark_is_skipped() {
        let lines = ndjson(b"\xef\xbb\xbf{\"a\":1}\n");
        assert_eq!(lines[0]["a"], 1);
    }

    #[test]
    fn metadata_strings_are_escaped() {
        let key = "dir/\"quoted\"\\ é 日本 \u{1}\n.ndjson";
        let o = Origin {
            key,
            etag: "\"e\\t\"",
            task: "t\u{7f}",
            ingested: "i\u{2028}",
        };
        let mut out = Vec::new();
        decode(
            &b"{\"a\":1}\n"[..],
            &o,
            Format::Auto,
            Compression::Auto,
            &Limits::default(),
            &mut out,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v["_sluice"],
            json!({"key": key, "etag": "\"e\\t\"", "line": 1, "task": "t\u{7f}", "ingested": "i\u{2028}"})
        );
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

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

    #[test]
    fn record_keys_with_quotes_and_unicode_are_kept_verbatim() {
        let line = "{\"we\\\"ird\":1,\"日本\":\"語\",\"e\\u0301\":2,\"\\\\\":3}\n";
        let lines = ndjson(line.as_bytes());
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(1, "line"), "we\"ird": 1, "日本": "語", "e\u{301}": 2, "\\": 3})
            ]
        );
    }

    #[test]
    fn own_sluice_key_is_replaced_keeping_order() {
        let (result, out) = run_with(
            b"{\"z\":1,\"_sluice\":{\"key\":\"forged\"},\"a\":[1, 2],\"_sluice\":0,\"m\":\"x\"}\n",
            "logs/a.ndjson",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        result.unwrap();
        assert_eq!(out.matches("\"_sluice\"").count(), 1, "{out}");
        assert!(out.ends_with(r#"},"z":1,"a":[1, 2],"m":"x"}"#.to_owned().as_str().to_owned().as_str().to_owned().as_str().trim_end()) || out.trim_end().ends_with(r#"},"z":1,"a":[1, 2],"m":"x"}"#), "{out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"_sluice": meta(1, "line"), "z": 1, "a": [1, 2], "m": "x"})
        );
    }

    #[test]
    fn escaped_sluice_key_is_replaced_too() {
        let lines = ndjson(b"{\"\\u005fsluice\":\"forged\",\"a\":1}\n");
        assert_eq!(lines, vec![json!({"_sluice": meta(1, "line"), "a": 1})]);
    }

    #[test]
    fn sluice_elsewhere_is_kept() {
        let lines = ndjson(b"{\"a\":\"_sluice\",\"n\":{\"_sluice\":1},\"u\":\"\\u00e9\"}\n");
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(1, "line"), "a": "_sluice", "n": {"_sluice": 1}, "u": "\u{e9}"})
            ]
        );
    }

    #[test]
    fn ndjson_gzip_zstd_explicit_and_auto() {
        let plain = b"{\"a\":1}\n{\"a\":2}\n";
        let expected = ndjson(plain);
        for (data, compression) in [
            (gzip(plain), Compression::Auto),
            (gzip(plain), Compression::Gzip),
            (zstd(plain), Compression::Auto),
            (zstd(plain), Compression::Zstd),
            (plain.to_vec(), Compression::None),
        ] {
            // The key says nothing about compression: magic bytes decide.
            assert_eq!(
                records(&data, "logs/a.ndjson", Format::Auto, compression),
                expected
            );
        }
    }

    #[test]
    fn counts_compressed_and_decoded_bytes() {
        let plain: Vec<u8> = (0..1000)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        for data in [gzip(&plain), zstd(&plain)] {
            let (result, _) = run_with(
                &data,
                "x.jsonl.gz",
                Format::Auto,
                Compression::Auto,
                1 << 20,
            );
            assert_eq!(
                result.unwrap(),
                Decoded {
                    records: 1000,
                    bytes_in: data.len() as u64,
                    bytes_decoded: plain.len() as u64
                }
            );
        }
    }

    #[test]
    fn multi_member_gzip() {
        let mut data = gzip(b"{\"a\":1}\n");
        data.extend(gzip(b"{\"a\":2}\n{\"a\":3}"));
        let lines = records(&data, "x.ndjson.gz", Format::Auto, Compression::Auto);
        assert_eq!(
            lines
                .iter()
                .map(|v| v["a"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn multi_frame_zstd() {
        let mut data = zstd(b"{\"a\":1}\n");
        data.extend(zstd(b"{\"a\":2}\n"));
        assert_eq!(
            records(&data, "x.ndjson.zst", Format::Auto, Compression::Auto).len(),
            2
        );
    }

    #[test]
    fn lines_longer_than_the_read_buffer_are_joined() {
        let big = "x".repeat(READ_BUFFER * 2 + 17);
        let input = format!("{{\"a\":\"{big}\"}}\n{{\"b\":1}}\n{{\"c\":\"{big}\"}}");
        let lines = ndjson(input.as_bytes());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["a"].as_str().unwrap().len(), big.len());
        assert_eq!(lines[2]["_sluice"]["line"], 3);
        assert_eq!(lines[2]["c"].as_str().unwrap(), big);
    }

    #[test]
    fn ndjson_not_an_object() {
        for (line, found) in [
            ("[1,2]", "an array"),
            ("\"s\"", "a string"),
            ("3", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
        ] {
            let input = format!("{{\"a\":1}}\n\n{line}\n");
            let (position, message) = data_error(input.as_bytes(), "logs/a.ndjson");
            assert_eq!(position, Position::Line(3));
            assert!(
                message.ends_with(&format!("line 3: not a JSON object (found {found})")),
                "{message}"
            );
        }
    }

    #[test]
    fn ndjson_syntax_error_names_line_and_column() {
        let (position, message) = data_error(b"{\"a\":1}\n{\"a\":1 x}\n", "logs/a.ndjson");
        assert_eq!(position, Position::Line(2));
        assert_eq!(
            message,
            "s3 object \"logs/a.ndjson\": line 2: expected `,` or `}` at column 8"
        );
        // Columns count from the start of the untrimmed line.
        let (_, message) = data_error(b"   {\"a\" 1}", "logs/a.ndjson");
        assert!(
            message.ends_with("line 1: expected `:` at column 9"),
            "{message}"
        );
    }

    #[test]
    fn ndjson_truncated_and_trailing() {
        let (position, message) = data_error(b"{\"a\":1", "logs/a.ndjson");
        assert_eq!(position, Position::Line(1));
        assert!(message.contains("EOF while parsing an object"), "{message}");
        let (position, message) = data_error(b"{}\n{\"a\":1} {\"b\":2}\n", "logs/a.ndjson");
        assert_eq!(position, Position::Line(2));
        assert!(
            message.contains("trailing characters at column 9"),
            "{message}"
        );
    }

    #[test]
    fn ndjson_invalid_utf8() {
        let (position, message) = data_error(b"{\"a\":1}\n{\"a\":\"\xff\"}\n", "logs/a.ndjson");
        assert_eq!(position, Position::Line(2));
        assert!(
            message.ends_with("line 2: invalid UTF-8 at column 7"),
            "{message}"
        );
        // Also outside strings, and in a key.
        let (position, _) = data_error(b"{\"\xc3\":1}", "logs/a.ndjson");
        assert_eq!(position, Position::Line(1));
    }

    #[test]
    fn ndjson_line_limit() {
        let line = b"{\"a\":\"0123456789\"}"; // 18 bytes
        let ok = [&line[..], b"\n"].concat();
        let (result, _) = run_with(&ok, "a.ndjson", Format::Auto, Compression::Auto, 18);
        assert_eq!(result.unwrap().records, 1);
        let input = [&b"{}\n"[..], &ok, b"{\"a\":\"01234567890\"}\n"].concat();
        let (position, message) =
            data_error_with(&input, "a.ndjson", Format::Auto, Compression::Auto, 18);
        assert_eq!(position, Position::Line(3));
        assert!(
            message.ends_with("record is longer than the limit of 18 bytes"),
            "{message}"
        );
    }

    #[test]
    fn ndjson_huge_line_stops_early() {
        let mut reader = Lazy::new(b"{}\n{\"a\":\"", 50 << 20, b'x');
        let mut out = Vec::new();
        let limits = Limits {
            max_record_bytes: 1 << 20,
        };
        let err = decode(
            &mut reader,
            &origin("a.ndjson"),
            Format::Auto,
            Compression::Auto,
            &limits,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Data {
                    position: Position::Line(2),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            reader.served < (1 << 20) + 2 * READ_BUFFER as u64,
            "read {} bytes",
            reader.served
        );
    }

    #[test]
    fn ndjson_huge_compressed_line_stops_early() {
        let plain = [&b"{\"a\":\""[..], &vec![b'x'; 8 << 20]].concat();
        let data = zstd(&plain);
        let (position, _) =
            data_error_with(&data, "a.ndjson", Format::Auto, Compression::Auto, 1 << 20);
        assert_eq!(position, Position::Line(1));
    }

    #[test]
    fn ndjson_deep_nesting_is_not_a_stack_overflow() {
        let deep = [&b"{\"a\":"[..], &vec![b'['; 100_000]].concat();
        let (position, message) = data_error(&deep, "a.ndjson");
        assert_eq!(position, Position::Line(1));
        assert!(message.contains("EOF while parsing"), "{message}");
        // Well-formed deep nesting within the size limit is valid JSON and passes through.
        let closed = [&deep[..], &vec![b']'; 100_000], b"}\n"].concat();
        let (result, out) = run_with(
            &closed,
            "a.ndjson",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        assert_eq!(result.unwrap().records, 1);
        assert_eq!(out.matches('[').count(), 100_000);
    }

    // ---- JSON ----

    fn json_records(input: &[u8]) -> Vec<Value> {
        records(input, "data/x.json", Format::Auto, Compression::Auto)
    }

    #[test]
    fn json_single_object() {
        let lines = json_records(b"  {\"a\": 1,\n \"b\": {\"c\": \"d\"}}\n");
        assert_eq!(
            lines,
            vec![json!({"_sluice": meta(1, "record"), "a": 1, "b": {"c": "d"}})]
        );
    }

    #[test]
    fn json_array_streams_elements_and_joins_pretty_printing() {
        let input = b"\n[\n  {\"a\": 1},\r\n  {\n    \"b\": [1,\n 2]\n  }\n  , {}\n]\n\n";
        let (_, out) = run_with(input, "x.json", Format::Auto, Compression::Auto, 1 << 20);
        assert!(!out.contains('\r'));
        let lines = records(input, "x.json", Format::Auto, Compression::Auto);
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(1, "record"), "a": 1}),
                json!({"_sluice": meta(2, "record"), "b": [1, 2]}),
                json!({"_sluice": meta(3, "record")}),
            ]
        );
    }

    #[test]
    fn json_empty_inputs() {
        assert!(json_records(b"").is_empty());
        assert!(json_records(b"  \n ").is_empty());
        assert!(json_records(b"[]").is_empty());
        assert!(json_records(b" [ \n ] ").is_empty());
    }

    #[test]
    fn json_gzip_and_zstd() {
        let plain = b"[{\"a\":1},{\"a\":2}]";
        let expected = json_records(plain);
        assert_eq!(
            records(&gzip(plain), "x.json.gz", Format::Auto, Compression::Auto),
            expected
        );
        assert_eq!(
            records(&zstd(plain), "x", Format::Json, Compression::Zstd),
            expected
        );
    }

    #[test]
    fn json_sluice_collision_in_an_element() {
        let lines = json_records(b"[{\"a\":1},{\"_sluice\":\"x\",\"b\":2}]");
        assert_eq!(lines[1], json!({"_sluice": meta(2, "record"), "b": 2}));
    }

    #[test]
    fn json_element_that_is_not_an_object() {
        let (position, message) = data_error(b"[{}, {}, [1], {}]", "x.json");
        assert_eq!(position, Position::Record(3));
        assert!(
            message.ends_with("record 3: not a JSON object (found an array)"),
            "{message}"
        );
    }

    #[test]
    fn json_top_level_scalar() {
        let (position, message) = data_error(b"\"just a string\"", "x.json");
        assert_eq!(position, Position::Record(1));
        assert!(message.contains("found a string"), "{message}");
        let (position, message) = data_error(b"\n  nope", "x.json");
        assert_eq!(position, Position::Line(2));
        assert!(
            message.ends_with("line 2: expected ident at column 4"),
            "{message}"
        );
    }

    #[test]
    fn json_syntax_error_in_array_names_line_column_and_record() {
        let (position, message) = data_error(b"\n\n[{\"a\":1},\n {\"a\" 2}]", "x.json");
        assert_eq!(position, Position::Line(4));
        assert!(
            message.ends_with("line 4: expected `:` at column 7 (in record 2)"),
            "{message}"
        );
        // Whitespace skipped on the first line shifts the column.
        let (_, message) = data_error(b"   {\"a\" 2}", "x.json");
        assert!(
            message.ends_with("line 1: expected `:` at column 9"),
            "{message}"
        );
    }

    #[test]
    fn json_trailing_garbage() {
        let (position, message) = data_error(b"[{}]\n x", "x.json");
        assert_eq!(position, Position::Line(2));
        assert!(
            message.contains("trailing characters at column 2"),
            "{message}"
        );
        let (position, message) = data_error(b"{\"a\":1}\n{\"a\":2}\n", "x.json");
        assert_eq!(position, Position::Line(2));
        assert!(
            message.contains("set spec.source.format to ndjson"),
            "{message}"
        );
    }

    #[test]
    fn json_truncated_array() {
        let (_, message) = data_error(b"[{\"a\":1},{\"a\"", "x.json");
        assert!(message.contains("EOF while parsing"), "{message}");
    }

    #[test]
    fn json_invalid_utf8() {
        let (position, _) = data_error(b"[{\"a\":\"\xff\"}]", "x.json");
        assert_eq!(position, Position::Line(1));
    }

    #[test]
    fn json_deep_nesting_is_not_a_stack_overflow() {
        let (_, message) = data_error(&vec![b'['; 100_000], "x.json");
        assert!(message.contains("EOF while parsing"), "{message}");
        let deep = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
        let (position, message) = data_error(&deep, "x.json");
        assert_eq!(position, Position::Record(1));
        assert!(
            message.contains("not a JSON object (found an array)"),
            "{message}"
        );
        // Well-formed deep nesting within the size limit is valid JSON and passes through
        // (serde_json's own parser would refuse to read it back beyond depth 128).
        let nested = [
            &b"{\"a\":"[..],
            &vec![b'['; 100_000],
            &vec![b']'; 100_000],
            b"}",
        ]
        .concat();
        let (result, out) = run_with(&nested, "x.json", Format::Auto, Compression::Auto, 1 << 20);
        assert_eq!(result.unwrap().records, 1);
        let (_, small) = run_with(
            b"{\"a\":1}",
            "x.json",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        let overhead = small.len() - 7;
        assert!(
            out.ends_with("]}\n") && out.len() == nested.len() + overhead,
            "unexpected output length {}",
            out.len()
        );
    }

    #[test]
    fn json_element_limit() {
        let input = b"[{\"a\":\"0123456789\"},{\"a\":\"01234567890\"}]"; // 18 and 19 bytes
        let (position, message) =
            data_error_with(input, "x.json", Format::Auto, Compression::Auto, 18);
        assert_eq!(position, Position::Record(2));
        assert!(
            message.ends_with("record 2: record is longer than the limit of 18 bytes"),
            "{message}"
        );
        let (position, _) = data_error_with(
            b"{\"a\":\"01234567890\"}",
            "x.json",
            Format::Auto,
            Compression::Auto,
            18,
        );
        assert_eq!(position, Position::Record(1));
    }

    #[test]
    fn json_huge_element_stops_early() {
        for head in [&b"[{}, {\"a\":\""[..], b"{\"a\":\""] {
            let mut reader = Lazy::new(head, 50 << 20, b'x');
            let mut out = Vec::new();
            let limits = Limits {
                max_record_bytes: 1 << 20,
            };
            let err = decode(
                &mut reader,
                &origin("x.json"),
                Format::Auto,
                Compression::Auto,
                &limits,
                &mut out,
            )
            .unwrap_err();
            let expected = if head[0] == b'[' { 2 } else { 1 };
            assert!(
                matches!(err, DecodeError::Data { position: Position::Record(n), .. } if n == expected),
                "{err}"
            );
            assert!(err.to_string().contains("longer than the limit"), "{err}");
            assert!(
                reader.served < (1 << 20) + 2 * READ_BUFFER as u64,
                "read {} bytes",
                reader.served
            );
        }
    }

    // ---- CSV ----

    fn csv_records(input: &[u8]) -> Vec<Value> {
        records(input, "t/x.csv", Format::Auto, Compression::Auto)
    }

    #[test]
    fn csv_rows_become_string_objects_in_header_order() {
        let (result, out) = run_with(
            b"id,name\n1,x\n2,\"y, z\"\n",
            "t/x.csv",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        assert_eq!(result.unwrap().records, 2);
        let first = out.lines().next().unwrap();
        assert!(
            first.starts_with(r#"{"_sluice":{"key":"t/x.csv","etag":"\"abc123\"","line":2,"#),
            "{first}"
        );
        assert!(first.ends_with(r#"},"id":"1","name":"x"}"#), "{first}");
        let lines = csv_records(b"id,name\n1,x\n2,\"y, z\"\n");
        assert_eq!(
            lines[1],
            json!({"_sluice": meta(3, "line"), "id": "2", "name": "y, z"})
        );
    }

    #[test]
    fn csv_quoted_newlines_name_the_row_start() {
        let input =
            b"id,text\r\n1,\"multi\r\nline\nvalue\"\r\n2,\"say \"\"hi\"\"\"\r\n3,\xc3\xa9\\\t\n";
        let lines = csv_records(input);
        assert_eq!(
            lines,
            vec![
                json!({"_sluice": meta(2, "line"), "id": "1", "text": "multi\r\nline\nvalue"}),
                json!({"_sluice": meta(5, "line"), "id": "2", "text": "say \"hi\""}),
                json!({"_sluice": meta(6, "line"), "id": "3", "text": "é\\\t"}),
            ]
        );
    }

    #[test]
    fn csv_blank_lines_are_skipped_and_counted() {
        let lines = csv_records(b"\na\n\n1\n\r\n\n2\n\n");
        let at: Vec<_> = lines
            .iter()
            .map(|v| (v["_sluice"]["line"].clone(), v["a"].clone()))
            .collect();
        assert_eq!(at, vec![(json!(4), json!("1")), (json!(7), json!("2"))]);
        let (position, _) = data_error(b"a,b\r\n1,2\r\n\r\n3\r\n", "x.csv");
        assert_eq!(position, Position::Line(4));
    }

    #[test]
    fn csv_header_names_are_escaped() {
        let lines = csv_records("\"a \"\"q\"\"\",日本,\"x\\y\"\n1,2,3\n".as_bytes());
        assert_eq!(
            lines[0],
            json!({"_sluice": meta(2, "line"), "a \"q\"": "1", "日本": "2", "x\\y": "3"})
        );
    }

    #[test]
    fn csv_empty_and_header_only() {
        assert!(csv_records(b"").is_empty());
        assert!(csv_records(b"a,b\n").is_empty());
        assert!(csv_records(b"a,b").is_empty());
    }

    #[test]
    fn csv_gzip_and_zstd() {
        let plain = b"a,b\n1,2\n3,4\n";
        let expected = csv_records(plain);
        assert_eq!(
            records(&gzip(plain), "x.csv.gz", Format::Auto, Compression::Auto),
            expected
        );
        assert_eq!(
            records(&zstd(plain), "x.csv.zst", Format::Csv, Compression::Zstd),
            expected
        );
    }

    #[test]
    fn csv_ragged_rows() {
        let (position, message) = data_error(b"a,b\n1,2\n\"x\ny\",2,3\n", "x.csv");
        assert_eq!(position, Position::Line(3));
        assert!(
            message.ends_with("line 3: row has 3 fields but the header has 2"),
            "{message}"
        );
        let (position, _) = data_error(b"a,b\n1\n", "x.csv");
        assert_eq!(position, Position::Line(2));
    }

    #[test]
    fn csv_bad_headers() {
        let (position, message) = data_error(b"a,b,a\n1,2,3\n", "x.csv");
        assert_eq!(position, Position::Line(1));
        assert!(
            message.contains("\"a\" appears twice (columns 1 and 3)"),
            "{message}"
        );
        let (position, message) = data_error(b"a,,c\n", "x.csv");
        assert_eq!(position, Position::Line(1));
        assert!(message.contains("header column 2 has no name"), "{message}");
        let (position, _) = data_error(b"a,\xff\n", "x.csv");
        assert_eq!(position, Position::Line(1));
    }

    #[test]
    fn csv_sluice_column_is_dropped() {
        let lines = csv_records(b"a,_sluice,b\n1,forged,2\n");
        assert_eq!(
            lines,
            vec![json!({"_sluice": meta(2, "line"), "a": "1", "b": "2"})]
        );
    }

    #[test]
    fn csv_invalid_utf8() {
        let (position, message) = data_error(b"a,b\n1,2\n3,\"\xff\n\"\n", "x.csv");
        assert_eq!(position, Position::Line(3));
        assert!(
            message.ends_with("line 3: field 2 is not valid UTF-8"),
            "{message}"
        );
    }

    #[test]
    fn csv_row_limit() {
        let input = b"a,b\n0123,4567\n01234,5678\n"; // rows of 10 and 11 bytes with newline
        let (result, _) = run_with(&input[..14], "x.csv", Format::Auto, Compression::Auto, 10);
        assert_eq!(result.unwrap().records, 1);
        let (position, _) = data_error_with(input, "x.csv", Format::Auto, Compression::Auto, 10);
        assert_eq!(position, Position::Line(3));
    }

    #[test]
    fn csv_huge_field_stops_early() {
        let mut reader = Lazy::new(b"a,b\n1,\"", 50 << 20, b'x');
        let mut out = Vec::new();
        let limits = Limits {
            max_record_bytes: 1 << 20,
        };
        let err = decode(
            &mut reader,
            &origin("x.csv"),
            Format::Auto,
            Compression::Auto,
            &limits,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DecodeError::Data {
                    position: Position::Line(2),
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            reader.served < (1 << 20) + 2 * GUARD_SLACK,
            "read {} bytes",
            reader.served
        );
    }

    // ---- compression errors ----

    #[test]
    fn truncated_gzip_reports_the_compressed_byte() {
        let plain: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        let data = gzip(&plain);
        let cut = data.len() - 20;
        let (position, message) = data_error(&data[..cut], "x.ndjson.gz");
        assert_eq!(position, Position::Byte(cut as u64));
        assert!(
            message.ends_with(&format!(
                "byte {cut} of the compressed input: gzip stream is truncated"
            )),
            "{message}"
        );
    }

    #[test]
    fn truncated_zstd_reports_the_compressed_byte() {
        let plain: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        let data = zstd(&plain);
        let cut = data.len() / 2;
        let (position, message) = data_error(&data[..cut], "x.ndjson.zst");
        assert_eq!(position, Position::Byte(cut as u64));
        assert!(message.contains("zstd"), "{message}");
    }

    #[test]
    fn corrupt_gzip_checksum_reports_the_compressed_byte() {
        let mut data = gzip(b"{\"a\":1}\n");
        let crc = data.len() - 8;
        data[crc] ^= 0xff;
        let (position, message) = data_error(&data, "x.ndjson");
        assert_eq!(position, Position::Byte(data.len() as u64));
        assert!(message.contains("gzip data is corrupt"), "{message}");
    }

    #[test]
    fn corrupt_compressed_data_is_a_data_error() {
        // Damage may decompress into garbage that the parser trips over before the
        // decompressor notices; either way it is a data error, not a read error.
        let plain: Vec<u8> = (0..5000)
            .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
            .collect();
        for mut data in [gzip(&plain), zstd(&plain)] {
            let middle = data.len() / 2;
            for b in &mut data[middle..middle + 16] {
                *b ^= 0x5a;
            }
            data_error(&data, "x.ndjson");
        }
        let mut data = zstd(&plain);
        data[5] ^= 0xff; // the frame header descriptor
        let (position, message) = data_error(&data, "x.ndjson");
        assert!(matches!(position, Position::Byte(_)), "{message}");
    }

    #[test]
    fn gzip_followed_by_garbage_is_a_data_error() {
        let mut data = gzip(b"{}\n");
        data.extend_from_slice(b"garbage");
        let (position, _) = data_error(&data, "x.ndjson");
        assert!(matches!(position, Position::Byte(_)));
    }

    #[test]
    fn wrong_explicit_compression() {
        let plain = b"{\"a\":1}\n";
        let (position, message) =
            data_error_with(plain, "x.ndjson", Format::Auto, Compression::Gzip, 1 << 20);
        assert_eq!(position, Position::Byte(0));
        assert!(
            message.contains("compression is gzip")
                && message.contains("1f 8b")
                && message.contains("looks uncompressed"),
            "{message}"
        );
        let (_, message) = data_error_with(
            &gzip(plain),
            "x.ndjson",
            Format::Auto,
            Compression::Zstd,
            1 << 20,
        );
        assert!(
            message.contains("compression is zstd") && message.contains("looks gzip"),
            "{message}"
        );
        let (_, message) = data_error_with(
            &zstd(plain),
            "x.ndjson",
            Format::Auto,
            Compression::None,
            1 << 20,
        );
        assert!(
            message.contains("looks zstd-compressed but spec.source.compression is none"),
            "{message}"
        );
        let (_, message) = data_error(&gzip(b"[1]\n"), "x.ndjson");
        assert!(!message.contains("spec.source.compression"), "{message}");
    }

    #[test]
    fn empty_objects_are_empty_for_every_format_and_compression() {
        for key in ["x.ndjson", "x.json", "x.csv"] {
            for compression in [
                Compression::Auto,
                Compression::None,
                Compression::Gzip,
                Compression::Zstd,
            ] {
                let (result, out) = run_with(b"", key, Format::Auto, compression, 1 << 20);
                assert_eq!(result.unwrap(), Decoded::default());
                assert!(out.is_empty());
            }
            for data in [gzip(b""), zstd(b"")] {
                let (result, out) = run_with(&data, key, Format::Auto, Compression::Auto, 1 << 20);
                let decoded = result.unwrap();
                assert_eq!((decoded.records, decoded.bytes_decoded), (0, 0));
                assert_eq!(decoded.bytes_in, data.len() as u64);
                assert!(out.is_empty());
            }
        }
    }

    // ---- read and write errors ----

    #[test]
    fn source_errors_are_read_errors() {
        let plain = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n".to_vec();
        for (data, key) in [
            (plain.clone(), "x.ndjson"),
            (gzip(&plain), "x.ndjson"),
            (zstd(&plain), "x.ndjson"),
            (b"[{\"a\":1},{\"a\":2}".to_vec(), "x.json"),
            (b"a,b\n1,2\n3,".to_vec(), "x.csv"),
            (b"".to_vec(), "x.csv"),
        ] {
            let reader = Flaky {
                data,
                at: 0,
                interrupt: false,
                calls: 0,
            };
            let mut out = Vec::new();
            let err = decode(
                reader,
                &origin(key),
                Format::Auto,
                Compression::Auto,
                &Limits::default(),
                &mut out,
            )
            .unwrap_err();
            let DecodeError::Read { key: k, source } = &err else {
                panic!("expected a read error, got {err}")
            };
            assert_eq!(k, key);
            assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
            assert!(
                err.to_string()
                    .starts_with(&format!("s3 object \"{key}\": reading failed")),
                "{err}"
            );
        }
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let plain = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
        for data in [plain.clone(), gzip(&plain), zstd(&plain)] {
            let reader = Flaky {
                data,
                at: 0,
                interrupt: true,
                calls: 0,
            };
            let mut out = Vec::new();
            let decoded = decode(
                reader,
                &origin("x.ndjson"),
                Format::Auto,
                Compression::Auto,
                &Limits::default(),
                &mut out,
            )
            .unwrap();
            assert_eq!(decoded.records, 2);
        }
    }

    #[test]
    fn write_errors_are_write_errors() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let err = decode(
            &b"{}\n"[..],
            &origin("x.ndjson"),
            Format::Auto,
            Compression::Auto,
            &Limits::default(),
            &mut Broken,
        )
        .unwrap_err();
        assert!(
            matches!(&err, DecodeError::Write(e) if e.to_string() == "disk full"),
            "{err}"
        );
    }

    #[test]
    fn explicit_format_overrides_the_extension() {
        let lines = records(b"a\n1\n", "x.json", Format::Csv, Compression::Auto);
        assert_eq!(lines[0]["a"], "1");
        let lines = records(
            b"{\"a\":1}\n{\"a\":2}",
            "noext",
            Format::Ndjson,
            Compression::None,
        );
        assert_eq!(lines.len(), 2);
    }
}
