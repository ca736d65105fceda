#![no_main]
//! Archive objects as `sluice history` reads them from S3: the index at the
//! start, the zstd frames, the NDJSON task records, and the object keys.

use libfuzzer_sys::fuzz_target;
use sluice_core::archive;

fuzz_target!(|data: &[u8]| {
    if let Some((_, start)) = archive::index(data) {
        assert!(start <= data.len());
    }
    if let Ok(records) = archive::decode(data) {
        // What was read writes back and reads back the same.
        let again = archive::decode(&archive::encode(&records)).expect("re-encoded records read");
        assert_eq!(again, records);
    }
    if let Ok(lines) = archive::decompress(data) {
        let _ = archive::ids(&lines);
    }
    if let Ok(key) = std::str::from_utf8(data) {
        let _ = archive::ObjectKey::parse(key);
    }
});
