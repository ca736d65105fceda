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
//!
//! The layers, from the bytes in to the lines out: `codec` (which decompressor),
//! `input` (counting and guarding readers, and the context errors are placed by),
//! one parser per format (`ndjson`, `json`, `csv`; `syntax` checks NDJSON lines), and
//! `sink` (a record with its metadata, as one line).

use std::fmt::{self, Write as _};
use std::io::{self, BufRead, BufReader, Read};

use sluice_core::encoding::{Compression, Format};

use codec::{Codec, choose_codec, sniff};
pub use input::read_buffered;
use input::{Ctx, READ_BUFFER, Source, Stats, Tally, read_prefix};
use sink::Sink;

mod codec;
mod csv;
mod input;
mod json;
mod ndjson;
mod sink;
pub mod syntax;
#[cfg(test)]
mod tests;

/// Where decoded records go: one NDJSON line at a time.
pub trait Lines {
    /// Writes one whole line, given in pieces, the last of which ends with its LF.
    fn line(&mut self, pieces: &[&[u8]]) -> io::Result<()>;
}

impl Lines for Vec<u8> {
    fn line(&mut self, pieces: &[&[u8]]) -> io::Result<()> {
        for piece in pieces {
            self.extend_from_slice(piece);
        }
        Ok(())
    }
}

impl<L: Lines + ?Sized> Lines for &mut L {
    fn line(&mut self, pieces: &[&[u8]]) -> io::Result<()> {
        (**self).line(pieces)
    }
}

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
    input: impl BufRead,
    origin: &Origin,
    format: Format,
    compression: Compression,
    limits: &Limits,
    out: &mut impl Lines,
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

fn decode_stream<W: Lines>(
    raw: impl BufRead,
    ctx: &Ctx,
    kind: Kind,
    origin: &Origin,
    out: W,
) -> Result<u64, DecodeError> {
    // Plain text is parsed where the source holds it; decompressed text from a buffer.
    let decompressed: Box<dyn BufRead + '_> = match ctx.codec {
        Codec::Plain => Box::new(raw),
        Codec::Gzip => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            flate2::bufread::MultiGzDecoder::new(raw),
        )),
        Codec::Zstd => Box::new(BufReader::with_capacity(
            READ_BUFFER,
            zstd::Decoder::with_buffer(raw).map_err(|source| DecodeError::Read {
                key: ctx.key.to_owned(),
                source,
            })?,
        )),
    };
    let decoded = Tally {
        inner: decompressed,
        count: &ctx.stats.decoded,
    };
    let counter = if kind == Kind::Json { "record" } else { "line" };
    let mut sink = Sink::new(origin, counter, out);
    match kind {
        Kind::Ndjson => ndjson::records(decoded, ctx, &mut sink),
        Kind::Json => json::records(decoded, ctx, &mut sink),
        Kind::Csv => csv::records(decoded, ctx, &mut sink),
    }
}
