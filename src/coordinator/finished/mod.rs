//! The set of finished object keys of one S3 source, with what was finished:
//! a small log-structured merge tree (this file), its immutable segments
//! (`segment.rs`) and the merging of segments (`compaction.rs`).
//!
//! The coordinator relists its bucket again and again; every key it has already
//! ingested (or given up on) must be skipped, unless the object changed since,
//! in which case it is ingested again. A bucket can hold tens of millions of
//! keys, so a `HashMap<String, _>` (about 100 bytes per key) is too big, and
//! the set must survive restarts without rewriting all of it on every
//! checkpoint.
//!
//! The design is a small log-structured merge tree:
//!
//! * Keys finished since the last checkpoint sit in a sorted in-memory
//!   **delta** (`BTreeMap`), cheap to insert into.
//! * [`FinishedKeys::seal`] turns the delta into an immutable [`Segment`]: an
//!   FST map (`fst::Map`) from key bytes to a `u64` [`Finished`] value. FSTs
//!   share both prefixes and suffixes of keys, which for bucket keys such as
//!   `data/2026/11/24/part-000123.ndjson.gz` costs about 14 bytes per key, 8 of
//!   them the random-looking fingerprint, which no FST can compress. A
//!   segment's name is the hex SHA-256 of its bytes, so it can be uploaded
//!   once under that name and never changes: a checkpoint is a manifest
//!   listing segment names, oldest first.
//! * Segments are merged in the background ([`FinishedKeys::compaction`],
//!   [`Compaction::run`], [`FinishedKeys::apply`]) with a size-tiered policy,
//!   which keeps their number logarithmic in the number of keys (every lookup
//!   probes each segment) and the total merge work `O(n log n)`.
//!
//! Lookups take the newest entry: the delta first, then the segments from
//! newest to oldest, so re-inserting a key (an object that changed, or a retry
//! that succeeded after all) simply shadows the older entry until a merge
//! drops it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use fst::MapBuilder;
use sha2::{Digest, Sha256};

/// The top bit of a stored value; set when the key failed for good.
const FAILED_BIT: u64 = 1 << 63;

/// The 63 bits of a stored value that hold the fingerprint.
const FINGERPRINT_MASK: u64 = !FAILED_BIT;

/// What the coordinator remembers of a finished key.
///
/// The fingerprint of the object's ETag and size tells whether a relisted
/// object is the one that was finished or a new version of it; `failed` says
/// whether it was ingested or given up on, so that a permanently failing
/// object is not retried on every relist (but is retried once it changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Finished {
    /// See [`fingerprint`]; only the low 63 bits are kept.
    pub fingerprint: u64,
    /// The object failed for good rather than being ingested.
    pub failed: bool,
}

impl Finished {
    /// Packs the entry into the `u64` an FST stores: the fingerprint in the
    /// low 63 bits and `failed` in the top bit. A fingerprint with its top bit
    /// set (not one made by [`fingerprint`]) loses that bit.
    pub(crate) fn to_value(self) -> u64 {
        (self.fingerprint & FINGERPRINT_MASK) | if self.failed { FAILED_BIT } else { 0 }
    }

    /// The inverse of [`Finished::to_value`]; every `u64` is a valid value.
    pub(crate) fn from_value(value: u64) -> Self {
        Finished {
            fingerprint: value & FINGERPRINT_MASK,
            failed: value & FAILED_BIT != 0,
        }
    }
}

/// A 63-bit fingerprint of an object version: the first 8 bytes (big endian)
/// of `sha256(etag || 0x00 || size as u64 little endian)`, top bit cleared.
///
/// It is persisted in checkpoints, so it must never change across versions of
/// sluice or platforms: hence a fixed cryptographic hash rather than `std`'s
/// `Hash`, which is neither stable nor portable. The size is hashed along with
/// the ETag as a cheap second witness of change: ETags are opaque (not an MD5
/// for multipart or KMS-encrypted objects) and S3-compatible stores vary in
/// how carefully they derive them. One pair of surrounding double quotes is
/// stripped from the ETag first, because S3 APIs and SDKs disagree on whether
/// they are part of it, and a change of API must not re-ingest every object.
/// With 63 bits, a changed object goes unnoticed with probability 2^-63.
pub fn fingerprint(etag: &str, size: u64) -> u64 {
    let etag = etag
        .strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag);
    let digest = Sha256::new()
        .chain_update(etag.as_bytes())
        .chain_update([0u8])
        .chain_update(size.to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first) & FINGERPRINT_MASK
}

/// Why a merged segment could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Another compaction replaced some of the inputs since this one was
    /// planned (only one should run at a time). The merged segment holds
    /// nothing that is lost by dropping it.
    #[error(
        "stale compaction: segments [{}] are no longer a contiguous run of the current segments",
        .replaces.join(", ")
    )]
    Stale {
        /// The names of the segments the merge was meant to replace.
        replaces: Vec<String>,
    },
    /// A merge spilled to a file could not be read back after its inputs
    /// were dropped: the finished keys now lack what those held. The
    /// coordinator must stop and resume from its checkpoint, which still
    /// names the inputs.
    #[error("cannot read back merged finished keys {name}: {reason}; resume from the checkpoint")]
    Unreadable {
        /// The merged segment's name.
        name: String,
        reason: String,
    },
}

/// All finished keys of one source: immutable segments (oldest first) plus a
/// delta of the keys finished since the last [`FinishedKeys::seal`].
#[derive(Default)]
pub struct FinishedKeys {
    /// Oldest first; a key's newest entry is in the last segment holding it.
    segments: Vec<Segment>,
    /// Key to [`Finished::to_value`]; sorted, so sealing is a single pass.
    delta: BTreeMap<String, u64>,
    /// Sum of the delta's key lengths, for [`FinishedKeys::memory_bytes`].
    delta_key_bytes: usize,
}

impl FinishedKeys {
    /// Restores the keys of a checkpoint from its segments, oldest first.
    pub fn from_segments(segments: Vec<Segment>) -> Self {
        FinishedKeys {
            segments,
            ..FinishedKeys::default()
        }
    }

    /// The newest entry for `key`: the delta's, else that of the newest
    /// segment holding it.
    pub fn get(&self, key: &str) -> Option<Finished> {
        if let Some(&value) = self.delta.get(key) {
            return Some(Finished::from_value(value));
        }
        self.segments.iter().rev().find_map(|s| s.get(key))
    }

    /// Every key whose newest entry says it failed for good, sorted: a
    /// pass over every segment, for a redrive of all dead letters.
    pub fn failed_keys(&self) -> Vec<String> {
        use fst::Streamer;
        let mut failed = BTreeSet::new();
        for segment in &self.segments {
            let mut stream = segment.map().stream();
            while let Some((key, value)) = stream.next() {
                if Finished::from_value(value).failed {
                    failed.insert(String::from_utf8_lossy(key).into_owned());
                }
            }
        }
        let delta = self.delta.iter();
        failed.extend(
            delta
                .filter(|(_, value)| Finished::from_value(**value).failed)
                .map(|(key, _)| key.clone()),
        );
        failed
            .into_iter()
            .filter(|key| self.get(key).is_some_and(|finished| finished.failed))
            .collect()
    }

    /// Records a finished key, shadowing any older entry for it.
    pub fn insert(&mut self, key: &str, finished: Finished) {
        let value = finished.to_value();
        // Look up first so that overriding a key does not allocate.
        if let Some(slot) = self.delta.get_mut(key) {
            *slot = value;
        } else {
            self.delta_key_bytes += key.len();
            self.delta.insert(key.to_owned(), value);
        }
    }

    /// Moves the delta into a new segment, appended as the newest, and returns
    /// it so the caller can upload its bytes before writing a manifest that
    /// names it; `None` when the delta is empty. The cost is linear in the
    /// delta alone; merging is left to [`FinishedKeys::compaction`].
    pub fn seal(&mut self) -> Option<&Segment> {
        if self.delta.is_empty() {
            return None;
        }
        let delta = std::mem::take(&mut self.delta);
        self.delta_key_bytes = 0;
        let mut builder = MapBuilder::memory();
        for (key, &value) in &delta {
            // BTreeMap<String, _> iterates in byte order without duplicates,
            // which is exactly the order an FST builder requires.
            builder
                .insert(key, value)
                .expect("delta keys are strictly increasing");
        }
        drop(delta);
        self.segments.push(Segment::finish(builder));
        self.segments.last()
    }

    /// The merge to run now, if any: a run of the newest segments.
    ///
    /// Size-tiered policy: walking from the newest segment to the oldest, a
    /// segment that holds at most twice the keys of all newer segments
    /// together is merged with all of them (the oldest such segment decides
    /// the run). Afterwards every segment holds more than twice the keys of
    /// all newer ones, so there are at most `log3(n) + 1` segments; and a
    /// merge reading a key (other than from a fresh seal) makes its segment
    /// grow by half or more, so each key is rewritten `O(log n)` times and the
    /// total merge work is `O(n log n)`. Beyond 12 segments the run is extended
    /// to bring the count back to 12, bounding the cost of a lookup miss.
    ///
    /// Start at most one compaction at a time: a second one planned while the
    /// first runs would overlap it, and one of the two would be stale.
    pub fn compaction(&self) -> Option<Compaction> {
        let lens: Vec<usize> = self.segments.iter().map(Segment::len).collect();
        let start = plan(&lens)?;
        Some(Compaction {
            inputs: self.segments[start..].to_vec(),
        })
    }

    /// Replaces the segments a [`Compaction`] merged with its result.
    ///
    /// The inputs are found by name as a contiguous run (the newest such run,
    /// should identical segments repeat), so keys inserted and segments sealed
    /// while the merge ran are kept, and stay newer than the merged segment.
    /// Upload the merged segment before writing a manifest without the inputs
    /// (a commit uploads every segment it names that is not in S3 yet).
    ///
    /// Returns the names of the inputs no longer referenced, which may be
    /// deleted from S3 once a manifest without them is durable. Fails, changing
    /// nothing, when the inputs are no longer all there as a run (a concurrent
    /// compaction replaced some of them).
    ///
    /// A merge spilled to a file ([`Compaction::spill`]) is read back only
    /// after its inputs are dropped, so the two are never in memory together;
    /// should that read fail, the inputs are gone too and
    /// [`ApplyError::Unreadable`] says to resume from the checkpoint.
    pub fn apply(&mut self, merged: Merged) -> Result<Vec<String>, ApplyError> {
        let Merged { replaces, output } = merged;
        let found = if replaces.is_empty() {
            None
        } else {
            self.segments.windows(replaces.len()).rposition(|run| {
                run.iter()
                    .map(Segment::name)
                    .eq(replaces.iter().map(String::as_str))
            })
        };
        let Some(start) = found else {
            return Err(ApplyError::Stale { replaces });
        };
        // Dropped here, which frees them unless a caller still holds one.
        self.segments.drain(start..start + replaces.len());
        let segment = match output {
            Output::Memory(segment) => segment,
            Output::Spilled(spill) => {
                let name = spill.name.clone();
                spill.load().map_err(|err| ApplyError::Unreadable {
                    name,
                    reason: err.to_string(),
                })?
            }
        };
        self.segments.insert(start, segment);
        let mut obsolete: Vec<String> = Vec::with_capacity(replaces.len());
        for name in replaces {
            if !obsolete.contains(&name) && !self.segments.iter().any(|s| s.name() == name) {
                obsolete.push(name);
            }
        }
        Ok(obsolete)
    }

    /// The segments, oldest first, as a checkpoint manifest lists them.
    pub fn segments(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter()
    }

    /// The number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The number of entries in the delta and all segments. A key finished
    /// again after its first entry was sealed counts once per entry until a
    /// merge drops the older one, so this is an upper bound on distinct keys.
    pub fn len(&self) -> usize {
        self.delta.len() + self.segments.iter().map(Segment::len).sum::<usize>()
    }

    /// Whether no key is recorded at all.
    pub fn is_empty(&self) -> bool {
        self.delta.is_empty() && self.segments.iter().all(Segment::is_empty)
    }

    /// The number of keys finished since the last [`FinishedKeys::seal`].
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }

    /// Approximate heap bytes held, for a metric: the segments' FST bytes plus
    /// an estimate of the delta (B-tree nodes about two-thirds full, plus each
    /// key's own allocation). A segment shared with a running compaction is
    /// counted once; the merge's output is not counted until applied.
    pub fn memory_bytes(&self) -> usize {
        const ENTRY: usize = size_of::<String>() + size_of::<u64>();
        const ALLOC_OVERHEAD: usize = 16;
        let segments: usize = self
            .segments
            .iter()
            .map(|s| s.bytes().len() + s.name().len() + size_of::<SegmentInner>())
            .sum();
        let delta = self.delta.len() * (ENTRY * 3 / 2 + ALLOC_OVERHEAD) + self.delta_key_bytes;
        segments + self.segments.capacity() * size_of::<Segment>() + delta
    }
}

impl fmt::Debug for FinishedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FinishedKeys")
            .field("segments", &self.segments)
            .field("delta_len", &self.delta.len())
            .finish()
    }
}

mod compaction;
mod segment;
#[cfg(test)]
mod tests;

use compaction::{Output, plan};
use segment::SegmentInner;

pub use compaction::{Compaction, Merged};
pub use segment::{Segment, SegmentError};
