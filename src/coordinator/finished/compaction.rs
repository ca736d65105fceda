//! Merging segments: which run to merge (a size-tiered policy), the merge
//! itself, in memory or spilled to a file, and its result.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fst::map::OpBuilder;
use fst::{Map, MapBuilder, Streamer};
use sha2::{Digest, Sha256};
use sluice_core::hex::hex;

use super::segment::Segment;

/// More segments than this are merged even when the size ratio does not ask
/// for it: each lookup probes every segment, so their number bounds the cost of
/// a miss, which is the common case when a relist finds new objects.
pub(super) const MAX_SEGMENTS: usize = 12;

/// A segment is merged with all newer ones once it holds no more than this
/// many times their total number of keys (see [`plan`]).
const SIZE_RATIO: usize = 2;

/// A planned merge of a run of the newest segments, made by
/// [`FinishedKeys::compaction`].
///
/// It owns shared handles to its inputs, so it is `Send + 'static` and can be
/// moved into `spawn_blocking` while the coordinator keeps inserting, sealing
/// and reading.
#[derive(Clone, Debug)]
pub struct Compaction {
    /// Oldest first; at least two.
    pub(super) inputs: Vec<Segment>,
}

impl Compaction {
    /// The segments to merge, oldest first.
    pub fn inputs(&self) -> &[Segment] {
        &self.inputs
    }

    /// Merges the inputs into one segment, keeping each key's newest entry.
    ///
    /// CPU-bound and linear in the inputs' keys: run it off the async runtime.
    /// The union of the inputs is streamed straight into the new FST, so
    /// besides the output only a few keys are held at a time.
    pub fn run(&self) -> Merged {
        // The output is rarely larger than the inputs together: reserving that
        // avoids regrowing (and transiently doubling) a buffer of up to
        // hundreds of MB. Spare capacity is released when finishing.
        let capacity = self.inputs.iter().map(|s| s.bytes().len()).sum();
        let bytes = self
            .merge_into(Vec::with_capacity(capacity))
            .expect("writing an FST to a Vec cannot fail");
        Merged {
            replaces: self.names(),
            output: Output::Memory(Segment::built(bytes)),
        }
    }

    /// Merges like [`Compaction::run`], but streams the output into an
    /// unnamed temporary file in `dir` instead of memory, so that the merge
    /// never holds its inputs and its output at once: [`FinishedKeys::apply`]
    /// reads it back after dropping the inputs. For the merge of millions of
    /// keys this halves the coordinator's peak memory.
    pub fn spill(&self, dir: &Path) -> io::Result<Merged> {
        let file = tempfile::tempfile_in(dir)?;
        let writer = self
            .merge_into(BufWriter::with_capacity(1 << 20, Hashing::new(file)))
            .map_err(|err| match err {
                fst::Error::Io(err) => err,
                other => io::Error::other(other),
            })?;
        let hashing = writer.into_inner().map_err(|err| err.into_error())?;
        let (file, len, name) = hashing.finish();
        Ok(Merged {
            replaces: self.names(),
            output: Output::Spilled(Spill { file, len, name }),
        })
    }

    pub(super) fn names(&self) -> Vec<String> {
        self.inputs.iter().map(|s| s.name().to_owned()).collect()
    }

    /// Streams the union of the inputs, newest entry per key, into `out`.
    fn merge_into<W: Write>(&self, out: W) -> Result<W, fst::Error> {
        let mut union = OpBuilder::new();
        for segment in &self.inputs {
            union.push(segment.map());
        }
        let mut union = union.union();
        let mut builder = MapBuilder::new(out)?;
        while let Some((key, values)) = union.next() {
            // Streams are numbered in the order they were pushed, oldest
            // first, so the highest index is the newest entry.
            let Some(newest) = values.iter().max_by_key(|v| v.index) else {
                continue;
            };
            builder.insert(key, newest.value)?;
        }
        builder.into_inner()
    }
}

/// A writer that hashes and counts what passes through, so a spilled
/// segment's name is known without reading it again.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    pub(super) fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The writer, the bytes written and their hex SHA-256.
    pub(super) fn finish(self) -> (W, u64, String) {
        (self.inner, self.len, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A merged segment in a temporary file (deleted when dropped).
#[derive(Debug)]
pub(super) struct Spill {
    pub(super) file: File,
    len: u64,
    pub(super) name: String,
}

impl Spill {
    /// Reads the segment into memory, checking the FST's own checksum (the
    /// name was hashed on the way out).
    pub(super) fn load(mut self) -> io::Result<Segment> {
        let len = usize::try_from(self.len).map_err(io::Error::other)?;
        self.file.seek(SeekFrom::Start(0))?;
        let mut bytes = Vec::with_capacity(len);
        (&mut self.file).take(self.len).read_to_end(&mut bytes)?;
        if bytes.len() != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} of {len} bytes", bytes.len()),
            ));
        }
        let map = Map::new(bytes).map_err(io::Error::other)?;
        map.as_fst().verify().map_err(io::Error::other)?;
        Ok(Segment::named(self.name, map))
    }
}

#[derive(Debug)]
pub(super) enum Output {
    Memory(Segment),
    Spilled(Spill),
}

/// The result of [`Compaction::run`] or [`Compaction::spill`], to hand to
/// [`FinishedKeys::apply`].
#[derive(Debug)]
pub struct Merged {
    /// Names of the merged inputs, oldest first.
    pub(super) replaces: Vec<String>,
    pub(super) output: Output,
}

impl Merged {
    /// The merged segment, when it is in memory ([`Compaction::run`]).
    pub fn segment(&self) -> Option<&Segment> {
        match &self.output {
            Output::Memory(segment) => Some(segment),
            Output::Spilled(_) => None,
        }
    }

    /// The merged segment's name.
    pub fn name(&self) -> &str {
        match &self.output {
            Output::Memory(segment) => segment.name(),
            Output::Spilled(spill) => &spill.name,
        }
    }

    /// The names of the segments it replaces, oldest first.
    pub fn replaces(&self) -> &[String] {
        &self.replaces
    }
}

/// Which run of the newest segments to merge, given segment key counts oldest
/// first: the index of the run's oldest segment, or `None`.
///
/// The run starts at the oldest segment holding at most [`SIZE_RATIO`] times
/// the keys of all newer segments; beyond [`MAX_SEGMENTS`] it starts no later
/// than where merging brings the count back to the maximum.
pub(super) fn plan(lens: &[usize]) -> Option<usize> {
    let count = lens.len();
    if count < 2 {
        return None;
    }
    let mut newer = 0usize;
    let mut start = None;
    for (index, &len) in lens.iter().enumerate().rev() {
        if index + 1 < count && len <= newer.saturating_mul(SIZE_RATIO) {
            start = Some(index);
        }
        newer = newer.saturating_add(len);
    }
    if count > MAX_SEGMENTS {
        let capped = MAX_SEGMENTS - 1;
        start = Some(start.map_or(capped, |s| s.min(capped)));
    }
    start
}
