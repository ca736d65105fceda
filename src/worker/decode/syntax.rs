//! Whether a line is JSON, decided without building anything, for the NDJSON hot path.
//!
//! [`Syntax::is_json`] accepts exactly what `serde_json::from_str::<IgnoredAny>` accepts
//! (serde_json's grammar: no depth limit, lone surrogate escapes allowed, only space,
//! tab, CR and LF as whitespace), about 1.6 times as fast on records like the
//! benchmark's (BENCHMARKS.md, Workers), because it only has to say yes or no. For a
//! line it rejects, serde_json is asked again to say where and why. The fuzz target
//! `json_syntax` checks that the two agree.

/// A reusable checker: it keeps the stack of open arrays and objects between lines.
#[derive(Debug, Default)]
pub struct Syntax {
    /// The closing bracket each open array or object expects.
    open: Vec<u8>,
}

impl Syntax {
    /// Whether `text` is one JSON value, with only JSON whitespace around it.
    pub fn is_json(&mut self, text: &[u8]) -> bool {
        self.open.clear();
        self.check(text).is_some()
    }

    /// `None` at the first byte that cannot be JSON.
    fn check(&mut self, b: &[u8]) -> Option<()> {
        let mut i = whitespace(b, 0);
        loop {
            // A value starts at `i`.
            i = match *b.get(i)? {
                b'"' => string(b, i + 1)?,
                b'-' | b'0'..=b'9' => number(b, i)?,
                open @ (b'{' | b'[') => {
                    let close = if open == b'{' { b'}' } else { b']' };
                    let next = whitespace(b, i + 1);
                    if b.get(next) != Some(&close) {
                        self.open.push(close);
                        i = element(b, next, close)?;
                        continue;
                    }
                    next + 1
                }
                b't' if b[i..].starts_with(b"true") => i + 4,
                b'f' if b[i..].starts_with(b"false") => i + 5,
                b'n' if b[i..].starts_with(b"null") => i + 4,
                _ => return None,
            };
            // A value ended before `i`: close what it ends, up to a comma.
            loop {
                i = whitespace(b, i);
                let Some(&close) = self.open.last() else {
                    return (i == b.len()).then_some(());
                };
                match *b.get(i)? {
                    b',' => {
                        i = element(b, whitespace(b, i + 1), close)?;
                        break;
                    }
                    c if c == close => {
                        self.open.pop();
                        i += 1;
                    }
                    _ => return None,
                }
            }
        }
    }
}

/// Where the next element's value starts, at `i` after the opening bracket or a comma
/// (and whitespace) in the array or object that `close` ends: past the key and its colon
/// in an object.
fn element(b: &[u8], i: usize, close: u8) -> Option<usize> {
    if close == b']' {
        return Some(i);
    }
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = whitespace(b, string(b, i + 1)?);
    if b.get(i) != Some(&b':') {
        return None;
    }
    Some(whitespace(b, i + 1))
}

fn whitespace(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\n' | b'\t' | b'\r')) {
        i += 1;
    }
    i
}

/// Past the string whose opening quote is just before `i`.
fn string(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i = plain(b, i);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            // A control character.
            _ => return None,
        }
    }
}

/// The first byte at or after `i` that is not plain string content: a quote, a
/// backslash or a control character (`b.len()` if none). Eight bytes at a time, by
/// the bit trick serde_json uses too: in each byte of `found`, the top bit is set
/// for the first such byte, and can be set wrongly only in bytes after it.
fn plain(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const TOPS: u64 = ONES << 7;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let found =
            (control | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\'))))
                & TOPS;
        if found != 0 {
            return i + found.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(b.len() - i)
}

/// Past the number that starts at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number(b: &[u8], mut i: usize) -> Option<usize> {
    if b[i] == b'-' {
        i += 1;
    }
    i = match *b.get(i)? {
        b'0' => i + 1,
        b'1'..=b'9' => digits(b, i + 1),
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = some_digits(b, i + 1)?;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        i = some_digits(b, i)?;
    }
    Some(i)
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Past at least one digit.
fn some_digits(b: &[u8], i: usize) -> Option<usize> {
    let end = digits(b, i);
    (end > i).then_some(end)
}

#[cfg(test)]
mod tests {
    use serde::de::IgnoredAny;

    use super::*;

    fn serde_json_accepts(text: &str) -> bool {
        serde_json::from_str::<IgnoredAny>(text).is_ok()
    }

    #[track_caller]
    fn agrees(text: &str) {
        assert_eq!(
            Syntax::default().is_json(text.as_bytes()),
            serde_json_accepts(text),
            "{text:?}"
        );
    }

    #[test]
    fn accepts_what_serde_json_accepts() {
        for text in [
            r#"{"id":"o1-r2","amount":12.50,"items":[{"sku":"red-1","qty":3}],"paid":true}"#,
            " \t\r\n{ \"a\" : [ 1 , -0 , 0.5 , 1e9 , 1E+9 , 2e-3 , -12.5e01 ] } \n",
            r#"{"a":{},"b":[],"c":[[[]]],"d":null,"e":false,"f":"","g":{"h":{"i":{}}}}"#,
            r#"{"esc":"\" \\ \/ \b \f \n \r \t \u00e9 \uD800 \uDFFF é 😀 \u2028"}"#,
            r#"{"a":1,"a":2}"#,
            "[1,[2,[3]],{\"x\":[]}]",
            "\"a string\"",
            "-1.5e-7",
            "0",
            "true",
            "null",
            "{\"\x7f\":\"\u{80}\"}",
        ] {
            assert!(serde_json_accepts(text), "{text:?}");
            agrees(text);
        }
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in [
            "",
            " ",
            "{",
            "}",
            "[",
            "]",
            "{]",
            "[}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\" 1}",
            "{a:1}",
            "{'a':1}",
            "{\"a\":1,}",
            "[1,]",
            "[,1]",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "{}{}",
            "{} x",
            "01",
            "-",
            "-01",
            "1.",
            ".5",
            "+1",
            "1e",
            "1e+",
            "1.e5",
            "0x10",
            "tru",
            "truex",
            "nul",
            "False",
            "NaN",
            "Infinity",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\\u12g4\"",
            "\"a\tb\"",
            "\"a\nb\"",
            "\"\x00\"",
            "\"\x1f\"",
            "{\"a\":1}\x0c",
            "\x0c{}",
            "[1,2",
        ] {
            assert!(!serde_json_accepts(text), "{text:?}");
            agrees(text);
        }
    }

    #[test]
    fn deep_nesting_agrees() {
        for depth in [127, 128, 129, 1000] {
            agrees(&format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&format!("{}1{}", "[".repeat(depth), "]".repeat(depth)));
            agrees(&"{\"a\":".repeat(depth));
        }
    }

    /// Every line one edit away from some valid lines: each byte deleted, and each
    /// byte replaced by each byte that matters to the grammar.
    #[test]
    fn every_single_byte_edit_agrees() {
        let lines = [
            r#"{"id":"o1-r2","ts":"2026-03-05T01:02:03.004Z","amount":-12.50e+1,"items":[{"qty":3},[]],"ok":true,"no":null,"x":false}"#,
            r#"[0,"\u00e9\n",{"a":{"b":[1.5]}}]"#,
        ];
        let bytes = b"{}[],:\"\\ \t\n0123456789-+.eEtrufalsn/bx\x00\x1f";
        let mut syntax = Syntax::default();
        for line in lines {
            for at in 0..line.len() {
                let mut edited = line.as_bytes().to_vec();
                edited.remove(at);
                let candidates = std::iter::once(edited).chain(bytes.iter().map(|&b| {
                    let mut edited = line.as_bytes().to_vec();
                    edited[at] = b;
                    edited
                }));
                for edited in candidates {
                    let Ok(text) = std::str::from_utf8(&edited) else {
                        continue;
                    };
                    assert_eq!(
                        syntax.is_json(text.as_bytes()),
                        serde_json_accepts(text),
                        "{text:?}"
                    );
                }
            }
        }
    }
}
