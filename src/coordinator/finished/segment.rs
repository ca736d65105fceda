//! One immutable segment of finished keys: an FST map named by the SHA-256
//! of its bytes.

use std::fmt;
use std::sync::Arc;

use fst::{Map, MapBuilder};
use sha2::{Digest, Sha256};
use sluice_core::hex::hex;

use super::Finished;

/// Why a segment read back from S3 was rejected.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// The bytes do not hash to the segment's name: the object is corrupt,
    /// truncated, or not the one the manifest meant.
    #[error(
        "segment {name}: its bytes hash to {actual}, not to its name (corrupt, truncated or misnamed object)"
    )]
    HashMismatch {
        /// The name the segment was loaded under (from the manifest).
        name: String,
        /// The hex SHA-256 of the bytes actually read.
        actual: String,
    },
    /// The bytes hash to the name but are not an FST map this version can read.
    #[error("segment {name}: its hash matches but it is not a valid FST map: {reason}")]
    Malformed {
        /// The segment's name.
        name: String,
        /// What the FST parser or its checksum found.
        reason: String,
    },
}

/// One immutable, sorted FST map from key to [`Finished`] value.
///
/// Its name is the lowercase hex SHA-256 of its bytes: it is stored in S3
/// under that name, so an upload is idempotent and a checkpoint can verify
/// what it reads back. Cloning is cheap (an `Arc`), so a background merge can
/// hold the segments it reads while the coordinator keeps using them.
#[derive(Clone)]
pub struct Segment {
    pub(super) inner: Arc<SegmentInner>,
}

pub(super) struct SegmentInner {
    map: Map<Vec<u8>>,
    name: String,
}

impl Segment {
    /// The hex SHA-256 of [`Segment::bytes`], the segment's S3 object name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The number of keys in this segment.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the segment holds no key (only a segment read back from S3 can).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The serialized FST: what is uploaded, and what [`Segment::from_bytes`]
    /// takes back.
    pub fn bytes(&self) -> &[u8] {
        self.inner.map.as_fst().as_bytes()
    }

    /// Loads a segment read back from S3 under `name`.
    ///
    /// Verifies that the bytes hash to `name` (which catches any corruption or
    /// mix-up of objects), then that they parse as an FST map and that the
    /// FST's own CRC32C checksum holds. No copy of the bytes is made. This is
    /// linear in the size of the segment but fast (hashing runs at hundreds of
    /// MB/s or more), so a checkpoint of millions of keys loads in well under a
    /// second; the FST is not otherwise walked.
    pub fn from_bytes(name: &str, mut bytes: Vec<u8>) -> Result<Segment, SegmentError> {
        let actual = sha256_hex(&bytes);
        if actual != name {
            return Err(SegmentError::HashMismatch {
                name: name.to_owned(),
                actual,
            });
        }
        let malformed = |e: fst::Error| SegmentError::Malformed {
            name: name.to_owned(),
            // fst::Error's own message is just "FST error"; the detail
            // (bad version, size, checksum) is in the wrapped error.
            reason: match e {
                fst::Error::Fst(e) => e.to_string(),
                fst::Error::Io(e) => e.to_string(),
            },
        };
        // The buffer is kept for the life of the segment: drop spare capacity.
        bytes.shrink_to_fit();
        let map = Map::new(bytes).map_err(malformed)?;
        map.as_fst().verify().map_err(malformed)?;
        Ok(Segment {
            inner: Arc::new(SegmentInner { map, name: actual }),
        })
    }

    /// The entry for `key` in this segment alone.
    pub(crate) fn get(&self, key: &str) -> Option<Finished> {
        self.inner.map.get(key).map(Finished::from_value)
    }

    pub(super) fn map(&self) -> &Map<Vec<u8>> {
        &self.inner.map
    }

    /// Finishes a builder that was fed strictly increasing keys.
    pub(super) fn finish(builder: MapBuilder<Vec<u8>>) -> Segment {
        // Writing to a Vec cannot fail, and MapBuilder's output always parses.
        Segment::built(
            builder
                .into_inner()
                .expect("finishing an FST in memory cannot fail"),
        )
    }

    /// The segment of the bytes of a finished builder.
    pub(super) fn built(mut bytes: Vec<u8>) -> Segment {
        bytes.shrink_to_fit();
        let name = sha256_hex(&bytes);
        let map = Map::new(bytes).expect("a freshly built FST parses");
        Segment::named(name, map)
    }

    /// The segment of a map whose bytes were hashed to `name` as they were
    /// written.
    pub(super) fn named(name: String, map: Map<Vec<u8>>) -> Segment {
        Segment {
            inner: Arc::new(SegmentInner { map, name }),
        }
    }
}

/// The serialized FST, so a segment can be the owner of an upload's body.
impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("name", &self.name())
            .field("keys", &self.len())
            .field("bytes", &self.bytes().len())
            .finish()
    }
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}
