//! What every decoder target checks, shared by `decode_*.rs`.
//!
//! The first byte of the input picks the compression (and whether the format
//! comes from the key's extension); the rest is the object. The record limit
//! is small so the fuzzer reaches it. Whatever the object, `decode` must
//! return (no panic, no hang, bounded memory); when it succeeds, it must have
//! written exactly one JSON object per record, each starting with the
//! `_sluice` metadata.

use serde::de::IgnoredAny;
use sluice::worker::decode::{Decoded, Limits, Origin, decode};
use sluice_core::encoding::{Compression, Format};

pub fn run(format: Format, extension: &str, data: &[u8]) {
    let Some((&choice, object)) = data.split_first() else {
        return;
    };
    let compression = match choice & 3 {
        0 => Compression::Auto,
        1 => Compression::None,
        2 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let format = if choice & 4 == 0 {
        format
    } else {
        Format::Auto
    };
    let key = format!("fuzz/object.{extension}");
    let origin = Origin {
        key: &key,
        etag: "\"etag\"",
        task: "1-1",
        ingested: "2026-11-24T13:00:00Z",
    };
    let limits = Limits {
        max_record_bytes: 4096,
    };
    let mut out = Vec::new();
    let Ok(Decoded { records, .. }) =
        decode(object, &origin, format, compression, &limits, &mut out)
    else {
        return;
    };
    let lines: Vec<&[u8]> = out.split(|b| *b == b'\n').collect();
    assert_eq!(lines.last(), Some(&&b""[..]), "output ends with a newline");
    assert_eq!(lines.len() as u64 - 1, records, "one line per record");
    for line in &lines[..lines.len() - 1] {
        assert!(
            line.starts_with(b"{\"_sluice\":{\"key\":\"fuzz/object."),
            "{}",
            String::from_utf8_lossy(line)
        );
        // Checked, not built: valid JSON can be nested deeper than serde_json
        // builds a tree of, or hold numbers too large for an f64.
        if let Err(err) = serde_json::from_slice::<IgnoredAny>(line) {
            panic!("{err}: {}", String::from_utf8_lossy(line));
        }
    }
}
