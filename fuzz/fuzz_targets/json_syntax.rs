#![no_main]
//! The NDJSON hot path's JSON check against serde_json, its reference: for
//! any text, `Syntax::is_json` must say what `from_str::<IgnoredAny>` says.

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use sluice::worker::decode::syntax::Syntax;

fuzz_target!(|text: &str| {
    let serde_json = serde_json::from_str::<IgnoredAny>(text).is_ok();
    assert_eq!(
        Syntax::default().is_json(text.as_bytes()),
        serde_json,
        "{text:?}"
    );
});
