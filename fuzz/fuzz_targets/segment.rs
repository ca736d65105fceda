#![no_main]
//! A checkpoint segment read back from S3. Its name is the SHA-256 of its
//! bytes, so the input is named that way to get past the hash check to the
//! FST parsing; a wrong name must be refused.

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use sluice::coordinator::finished::{FinishedKeys, Segment};

fuzz_target!(|data: &[u8]| {
    let name: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(Segment::from_bytes("0", data.to_vec()).is_err());
    let Ok(segment) = Segment::from_bytes(&name, data.to_vec()) else {
        return;
    };
    assert_eq!(segment.name(), name);
    assert_eq!(segment.bytes(), data);
    // A segment that loaded is usable: its keys can be looked up and merged.
    let keys = FinishedKeys::from_segments(vec![segment]);
    let _ = keys.memory_bytes();
    for key in ["", "in/0.ndjson", "\u{ff}"] {
        let _ = keys.get(key);
    }
});
