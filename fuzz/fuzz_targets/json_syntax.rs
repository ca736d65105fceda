#![no_main]
//! The NDJSON hot path's JSON check against serde_json, its reference: for
//! any text, `Syntax::scan` must accept what `from_str::<IgnoredAny>`
//! accepts, and what it notes of the text must be true; `Syntax::line` must
//! say the same of text without an LF, as a line of its own.

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use sluice::worker::decode::syntax::Syntax;

fuzz_target!(|text: &str| {
    let serde_json = serde_json::from_str::<IgnoredAny>(text).is_ok();
    let mut syntax = Syntax::default();
    let scanned = syntax.scan(text.as_bytes());
    assert_eq!(scanned.is_some(), serde_json, "{text:?}");
    if !text.contains('\n') {
        let line = syntax.line(format!("{text}\n").as_bytes());
        assert_eq!(line, scanned.map(|shape| (shape, text.len())), "{text:?}");
    }
    if let Some(shape) = scanned {
        assert_eq!(shape.non_ascii, !text.is_ascii(), "{text:?}");
        assert_eq!(shape.line_break, text.contains(['\r', '\n']), "{text:?}");
        // Backslashes pair off from the left in valid JSON: `\\u` is no escape.
        let escapes = text.replace("\\\\", "");
        assert_eq!(shape.unicode_escape, escapes.contains("\\u"), "{text:?}");
    }
});
