//! Whether a line is JSON, decided without building anything, for the NDJSON hot path.
//!
//! [`Syntax::scan`] accepts exactly what `serde_json::from_str::<IgnoredAny>` accepts
//! (serde_json's grammar: no depth limit, lone surrogate escapes allowed, only space,
//! tab, CR and LF as whitespace), and is faster because it only has to say yes or no.
//! For a line it rejects, serde_json is asked again to say where and why. The fuzz
//! target `json_syntax` checks that the two agree.
//!
//! On the way it notes what the writer of the record needs to know (a [`Shape`]), so
//! that nothing reads the line again to find it out, and [`Syntax::line`] finds the
//! LF that ends an NDJSON line as it checks it. On the benchmark's records
//! (BENCHMARKS.md, Workers), 64 MiB, in one run (the best of 15 each): serde_json
//! takes 64 ms; the scan 46 ms, 49 ms before `Syntax::element` was inlined into it;
//! finding each line's LF with `memchr`, scanning the line and searching it for
//! `"_sluice"` 51 ms, and `line` 45 ms. Before the `Shape` noted escapes and line
//! breaks, searches for them took 6 ms more.

use super::sink::META_KEY;

/// A reusable checker: it keeps the stack of open arrays and objects between lines.
#[derive(Debug, Default)]
pub struct Syntax {
    /// The closing bracket each open array or object expects.
    open: Vec<u8>,
}

/// What [`Syntax::scan`] noted about JSON text it accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shape {
    /// A byte outside ASCII is in a string (anywhere else it is not JSON): whether
    /// the text is UTF-8 is still to be checked.
    pub non_ascii: bool,
    /// A `\u` escape is in a string: the text may say more than its bytes spell.
    pub unicode_escape: bool,
    /// A raw CR or LF is in the text: whitespace, as strings cannot hold one.
    pub line_break: bool,
    /// The text is an object with a member whose key is spelled `_sluice` without
    /// escapes (a key spelled with a `\u` escape sets `unicode_escape`).
    pub sluice_key: bool,
}

impl Shape {
    /// What to assume of JSON text the check did not accept: everything.
    pub const UNKNOWN: Shape = Shape {
        non_ascii: true,
        unicode_escape: true,
        line_break: true,
        sluice_key: true,
    };
}

impl Syntax {
    /// What `text` is like, if it is one JSON value with only JSON whitespace around
    /// it; `None` if it is not.
    pub fn scan(&mut self, text: &[u8]) -> Option<Shape> {
        let (shape, end) = self.value::<false>(text)?;
        (end == text.len()).then_some(shape)
    }

    /// The first line of `text`, if it is one JSON value with only spaces, tabs and
    /// CRs around it: what the value is like, and where the LF that ends the line
    /// is. `None` if it is not, and if `text` has no LF after the value; [`Self::scan`]
    /// then decides. This is the NDJSON hot path: it reads the line once, where
    /// finding the LF first and checking the line after would read it twice.
    pub fn line(&mut self, text: &[u8]) -> Option<(Shape, usize)> {
        let (shape, end) = self.value::<true>(text)?;
        (text.get(end) == Some(&b'\n')).then_some((shape, end))
    }

    /// What the value at the start of `b` is like, after leading whitespace, and where
    /// the whitespace after it ends. Within a `LINE`, an LF is not whitespace.
    fn value<const LINE: bool>(&mut self, b: &[u8]) -> Option<(Shape, usize)> {
        self.open.clear();
        let mut shape = Shape::default();
        let end = self.check::<LINE>(b, &mut shape)?;
        Some((shape, end))
    }

    /// `None` at the first byte that cannot be JSON.
    fn check<const LINE: bool>(&mut self, b: &[u8], shape: &mut Shape) -> Option<usize> {
        let mut i = whitespace::<LINE>(b, 0, shape);
        loop {
            // A value starts at `i`.
            i = match *b.get(i)? {
                b'"' => string(b, i + 1, shape)?,
                b'-' | b'0'..=b'9' => number(b, i)?,
                open @ (b'{' | b'[') => {
                    let close = if open == b'{' { b'}' } else { b']' };
                    let next = whitespace::<LINE>(b, i + 1, shape);
                    if b.get(next) != Some(&close) {
                        self.open.push(close);
                        i = self.element::<LINE>(b, next, shape)?;
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
                i = whitespace::<LINE>(b, i, shape);
                let Some(&close) = self.open.last() else {
                    return Some(i);
                };
                match *b.get(i)? {
                    b',' => {
                        i = self.element::<LINE>(b, whitespace::<LINE>(b, i + 1, shape), shape)?;
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

    /// Whether `key` is the key the sink owns, in the object itself (not in an object
    /// nested in it).
    #[cold]
    #[inline(never)]
    fn is_meta_key(&self, key: &[u8]) -> bool {
        self.open.len() == 1 && key == META_KEY.as_bytes()
    }

    /// Where the next element's value starts, at `i` after the opening bracket or a
    /// comma (and whitespace) in the innermost open array or object: past the key and
    /// its colon in an object.
    #[inline(always)]
    fn element<const LINE: bool>(&self, b: &[u8], i: usize, shape: &mut Shape) -> Option<usize> {
        if self.open.last() == Some(&b']') {
            return Some(i);
        }
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let end = string(b, i + 1, shape)?;
        // Only the length is compared on the hot path: comparing more there made the
        // whole check 3 ms per 64 MiB slower.
        if end - i == META_KEY.len() + 2 {
            shape.sluice_key |= self.is_meta_key(&b[i + 1..end - 1]);
        }
        let i = whitespace::<LINE>(b, end, shape);
        if b.get(i) != Some(&b':') {
            return None;
        }
        Some(whitespace::<LINE>(b, i + 1, shape))
    }
}

/// Trims JSON whitespace (not all ASCII whitespace: a form feed is not JSON whitespace).
pub fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Past the whitespace at `i`; within a `LINE`, up to an LF.
#[inline(always)]
fn whitespace<const LINE: bool>(b: &[u8], mut i: usize, shape: &mut Shape) -> usize {
    while let Some(&c @ (b' ' | b'\n' | b'\t' | b'\r')) = b.get(i) {
        if LINE && c == b'\n' {
            break;
        }
        shape.line_break |= c == b'\n' || c == b'\r';
        i += 1;
    }
    i
}

/// Past the string whose opening quote is just before `i`.
#[inline(always)]
fn string(b: &[u8], mut i: usize, shape: &mut Shape) -> Option<usize> {
    loop {
        i = plain(b, i, !shape.non_ascii);
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => {
                    shape.unicode_escape = true;
                    i += 6;
                }
                _ => return None,
            },
            0x80.. => {
                shape.non_ascii = true;
                i += 1;
            }
            // A control character.
            _ => return None,
        }
    }
}

/// The first byte at or after `i` that is not plain string content: a quote, a
/// backslash or a control character, and a byte outside ASCII too when `ascii` (the
/// first one is all a [`Shape`] needs); `b.len()` if none. Eight bytes at a time, by
/// the bit trick serde_json uses too: in each byte of `found`, the top bit is set
/// for the first such byte, and can be set wrongly only in bytes after it.
#[inline(always)]
fn plain(b: &[u8], mut i: usize, ascii: bool) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const TOPS: u64 = ONES << 7;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let high = if ascii { TOPS } else { 0 };
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let found = (control
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x & high))
            & TOPS;
        if found != 0 {
            return i + found.trailing_zeros() as usize / 8;
        }
        i += 8;
    }
    i + b[i..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20 || (ascii && c >= 0x80))
        .unwrap_or(b.len() - i)
}

/// Past the number that starts at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
#[inline(always)]
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

#[inline(always)]
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

    /// Whether `syntax` accepts what serde_json accepts, as text and as a line of its
    /// own when it has no LF, and notes about what it accepts what is true of it.
    #[track_caller]
    fn agrees_with(syntax: &mut Syntax, text: &str) {
        let scanned = syntax.scan(text.as_bytes());
        if !text.contains('\n') {
            let line = syntax.line(format!("{text}\n{{}}").as_bytes());
            assert_eq!(line, scanned.map(|shape| (shape, text.len())), "{text:?}");
        }
        assert_eq!(scanned.is_some(), serde_json_accepts(text), "{text:?}");
        if let Some(shape) = scanned {
            assert_eq!(shape.non_ascii, !text.is_ascii(), "{text:?}");
            assert_eq!(shape.line_break, text.contains(['\r', '\n']), "{text:?}");
            // Backslashes pair off from the left in valid JSON: `\\u` is no escape.
            let escapes = text.replace("\\\\", "");
            assert_eq!(shape.unicode_escape, escapes.contains("\\u"), "{text:?}");
        }
    }

    #[track_caller]
    fn agrees(text: &str) {
        agrees_with(&mut Syntax::default(), text);
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
                    agrees_with(&mut syntax, text);
                }
            }
        }
    }

    /// A line is what comes before the first LF: a value an LF splits is no line, and
    /// without an LF the line may go on (the next read of the object has the rest).
    #[test]
    fn a_line_ends_at_its_lf() {
        let mut syntax = Syntax::default();
        let mut line = |text: &str| syntax.line(text.as_bytes()).map(|(_, end)| end);
        assert_eq!(line("{\"a\":1}\n{\"b\":2}\n"), Some(7));
        assert_eq!(line(" {} \t\r\nnot json"), Some(6));
        assert_eq!(line("{\"a\":\"x\ny\"}\n"), None);
        for text in [
            "[1,\n2]\n",
            "{\"a\":\n1}\n",
            "\n{}\n",
            " \n",
            "{}",
            "{\"a\":1",
            "",
        ] {
            assert_eq!(line(text), None, "{text:?}");
        }
    }

    /// What a writer of records needs to know, noted on the way: whether the text
    /// must still be checked to be UTF-8, whether an escape may spell what its bytes
    /// do not, and whether it spans lines.
    #[test]
    fn the_shape_notes_what_a_writer_needs() {
        let shape = |text: &str| Syntax::default().scan(text.as_bytes()).unwrap();
        let plain = Shape::default();
        for text in [
            r#"{"a":"b","c":[1,{"_sluice":2}],"d":-1.5e3,"e":[true,false,null]}"#,
            r#"{"a":"\"\\\/\b\f\n\r\t","\\u":1}"#,
            " {\"a\" :\t1 } ",
        ] {
            assert_eq!(shape(text), plain, "{text:?}");
        }
        for text in [r#"{"\u005fsluice":1}"#, r#"["\u00e9"]"#] {
            let unicode_escape = Shape {
                unicode_escape: true,
                ..plain
            };
            assert_eq!(shape(text), unicode_escape, "{text:?}");
        }
        let non_ascii = Shape {
            non_ascii: true,
            ..plain
        };
        assert_eq!(shape(r#"{"é":"日本"}"#), non_ascii);
        let sluice_key = Shape {
            sluice_key: true,
            ..plain
        };
        assert_eq!(shape(r#"{"a":1,"_sluice":{"b":2}}"#), sluice_key);
        // Only a key of the object itself is the key the sink replaces.
        for text in [
            r#"{"a":{"_sluice":1}}"#,
            r#"{"a":"_sluice"}"#,
            r#"["_sluice"]"#,
            r#"{"_sluice_":1,"sluice":2}"#,
        ] {
            assert_eq!(shape(text), plain, "{text:?}");
        }
        for text in ["{\"a\":\r\n1}", "{\"a\":1}\r", "[1,\n2]"] {
            let line_break = Shape {
                line_break: true,
                ..plain
            };
            assert_eq!(shape(text), line_break, "{text:?}");
        }
    }
}
