#![no_main]
//! Archive objects as `sluice history` reads them from S3: the index in
//! their metadata (or at the start, in the legacy layout), the zstd frames,
//! the NDJSON task records, and the object keys.

use libfuzzer_sys::fuzz_target;
use sluice_core::archive;

fuzz_target!(|data: &[u8]| {
    if let Some((_, start)) = archive::legacy_index(data) {
        assert!(start <= data.len());
    }
    if let Ok(lines) = archive::decompress(data) {
        let _ = archive::ids(&lines);
        if let Some(records) = records(&lines) {
            // What was read writes back and reads back the same.
            let mut again = Vec::new();
            archive::encode_lines(&records, &mut again);
            let again =
                archive::decompress(&archive::compress(&again).0).expect("re-encoded lines");
            assert_eq!(self::records(&again), Some(records));
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = archive::ObjectKey::parse(text);
        if let Ok(index) = text.parse::<archive::Index>() {
            // An index that reads writes back as one that reads the same.
            assert_eq!(index.to_string().parse(), Ok(index.clone()));
            let _ = index.range_of(sluice_core::api::TaskState::Failed, 0, data.len() as u64);
        }
    }
});

/// The records of NDJSON lines, if every line is one.
fn records(lines: &[u8]) -> Option<Vec<archive::TaskRecord>> {
    lines
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).ok())
        .collect()
}
