#![no_main]
//! The small parsers of user-written values: Go durations (spec fields and
//! flags) and Kubernetes quantities of bytes.

use libfuzzer_sys::fuzz_target;
use sluice::config::parse_bytes;
use sluice_core::duration::Duration;

fuzz_target!(|text: &str| {
    if let Ok(duration) = Duration::parse(text) {
        // What is shown parses back to the same duration.
        let shown = duration.to_string();
        assert_eq!(
            Duration::parse(&shown),
            Ok(duration),
            "{text:?} shown as {shown:?}"
        );
    }
    if let Ok(bytes) = parse_bytes(text) {
        assert!(bytes >= 1, "{text:?}");
    }
});
