use std::io::{BufReader, Write};

use super::input::{GUARD_SLACK, READ_BUFFER};
use super::*;
use serde_json::{Value, json};

const ORIGIN: Origin<'static> = Origin {
    key: "logs/a.ndjson",
    etag: "\"abc123\"",
    task: "task-1",
    ingested: "2024-05-01T12:00:00Z",
};

fn origin(key: &str) -> Origin<'_> {
    Origin { key, ..ORIGIN }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// Serves `data` a chunk of `size` bytes at a time, as a connection does, counting how
/// often it is asked for bytes.
struct Chunks<'a> {
    data: &'a [u8],
    size: usize,
    fills: usize,
}

impl<'a> Chunks<'a> {
    fn new(data: &'a [u8], size: usize) -> Self {
        Self {
            data,
            size,
            fills: 0,
        }
    }
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_buffered(self, buf)
    }
}

impl BufRead for Chunks<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fills += 1;
        Ok(&self.data[..self.size.min(self.data.len())])
    }

    fn consume(&mut self, n: usize) {
        self.data = &self.data[n..];
    }
}

/// Decodes `input`, served in chunks of the size of a decompressor's buffer, and
/// returns the outcome and the raw output.
fn run_with(
    input: &[u8],
    key: &str,
    format: Format,
    compression: Compression,
    max: usize,
) -> (Result<Decoded, DecodeError>, String) {
    let mut out = Vec::new();
    let limits = Limits {
        max_record_bytes: max,
    };
    let chunks = Chunks::new(input, READ_BUFFER);
    let result = decode(chunks, &origin(key), format, compression, &limits, &mut out);
    (result, String::from_utf8(out).expect("output is UTF-8"))
}

/// Decodes what `reader` serves as the object `key`, with the default format,
/// compression and limits; the output is dropped.
fn decode_reader(reader: impl BufRead, key: &str) -> Result<Decoded, DecodeError> {
    decode(
        reader,
        &origin(key),
        Format::Auto,
        Compression::Auto,
        &Limits::default(),
        &mut Vec::new(),
    )
}

/// Decodes successfully and parses every output line.
fn records(input: &[u8], key: &str, format: Format, compression: Compression) -> Vec<Value> {
    let (result, out) = run_with(
        input,
        key,
        format,
        compression,
        Limits::default().max_record_bytes,
    );
    let decoded = result.unwrap_or_else(|err| panic!("decode failed: {err}"));
    let lines: Vec<Value> = out
        .lines()
        .map(|line| {
            let mut v: Value =
                serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
            // Compared against `meta`, which uses ORIGIN's key.
            assert_eq!(v["_sluice"]["key"], key);
            v["_sluice"]["key"] = json!(ORIGIN.key);
            v
        })
        .collect();
    assert_eq!(decoded.records, lines.len() as u64);
    assert!(out.is_empty() || out.ends_with('\n'));
    lines
}

fn ndjson(input: &[u8]) -> Vec<Value> {
    records(input, "logs/a.ndjson", Format::Auto, Compression::Auto)
}

/// Decodes expecting a data error; returns its position and its whole message.
fn data_error_with(
    input: &[u8],
    key: &str,
    format: Format,
    compression: Compression,
    max: usize,
) -> (Position, String) {
    match run_with(input, key, format, compression, max).0 {
        Err(err @ DecodeError::Data { .. }) => {
            let message = err.to_string();
            let DecodeError::Data {
                key: k, position, ..
            } = err
            else {
                unreachable!()
            };
            assert_eq!(k, key);
            assert!(
                message.starts_with(&format!("s3 object {key:?}: {position}: ")),
                "{message}"
            );
            (position, message)
        }
        other => panic!("expected a data error, got {other:?}"),
    }
}

fn data_error(input: &[u8], key: &str) -> (Position, String) {
    data_error_with(
        input,
        key,
        Format::Auto,
        Compression::Auto,
        Limits::default().max_record_bytes,
    )
}

fn meta(n: u64, counter: &str) -> Value {
    json!({"key": ORIGIN.key, "etag": ORIGIN.etag, counter: n, "task": ORIGIN.task, "ingested": ORIGIN.ingested})
}

/// Produces `head`, then `len` copies of `fill`, lazily, counting what was served.
struct Lazy {
    head: Vec<u8>,
    len: u64,
    fill: u8,
    served: u64,
}

impl Lazy {
    fn new(head: &[u8], len: u64, fill: u8) -> Self {
        Self {
            head: head.to_vec(),
            len,
            fill,
            served: 0,
        }
    }
}

impl Read for &mut Lazy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let total = self.head.len() as u64 + self.len;
        let left = total - self.served;
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        for (i, b) in buf[..n].iter_mut().enumerate() {
            let at = self.served + i as u64;
            *b = self.head.get(at as usize).copied().unwrap_or(self.fill);
        }
        self.served += n as u64;
        Ok(n)
    }
}

/// Serves `data`, then fails (or, with `interrupt`, interrupts every other read).
struct Flaky {
    data: Vec<u8>,
    at: usize,
    interrupt: bool,
    calls: usize,
}

impl Read for Flaky {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        if self.interrupt && self.calls % 2 == 1 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        if self.at == self.data.len() {
            if self.interrupt {
                return Ok(0);
            }
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            ));
        }
        let n = buf.len().min(self.data.len() - self.at).min(7);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

// ---- format_of and Display ----

#[test]
fn format_of_extensions() {
    assert_eq!(format_of("a/b.ndjson"), Some(Format::Ndjson));
    assert_eq!(format_of("a/b.jsonl.gz"), Some(Format::Ndjson));
    assert_eq!(format_of("b.JSONL.ZST"), Some(Format::Ndjson));
    assert_eq!(format_of("b.json"), Some(Format::Json));
    assert_eq!(format_of("b.json.gzip"), Some(Format::Json));
    assert_eq!(format_of("b.csv.zstd"), Some(Format::Csv));
    assert_eq!(format_of("b.txt"), None);
    assert_eq!(format_of("b.gz"), None);
    assert_eq!(format_of("dir.json/b"), None);
    assert_eq!(format_of("b"), None);
    assert_eq!(format_of(""), None);
}

#[test]
fn default_limit_is_16_mib() {
    assert_eq!(Limits::default().max_record_bytes, 16 << 20);
}

#[test]
fn position_display() {
    assert_eq!(Position::Line(12).to_string(), "line 12");
    assert_eq!(Position::Record(3).to_string(), "record 3");
    assert_eq!(
        Position::Byte(1048576).to_string(),
        "byte 1048576 of the compressed input"
    );
}

#[test]
fn unknown_extension_is_a_data_error_before_reading() {
    let mut reader = Lazy::new(b"", 10, b'x');
    let err = decode_reader(BufReader::new(&mut reader), "a.txt").unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, DecodeError::Data { .. }));
    assert!(
        message.contains("\"a.txt\"")
            && message.contains("unknown")
            && message.contains("spec.source.format"),
        "{message}"
    );
    assert_eq!(reader.served, 0);
}

// ---- NDJSON ----

#[test]
fn ndjson_splices_metadata_in_front() {
    let input = b"{\"a\":1,\"b\":\"x\"}\n{\"c\":[1,{\"d\":null}]}\n";
    let (result, out) = run_with(
        input,
        "logs/a.ndjson",
        Format::Auto,
        Compression::Auto,
        1 << 20,
    );
    let decoded = result.unwrap();
    let prefix = r#"{"_sluice":{"key":"logs/a.ndjson","etag":"\"abc123\"","line":"#;
    let suffix = r#","task":"task-1","ingested":"2024-05-01T12:00:00Z"},"#;
    assert_eq!(
        out,
        format!(
            "{prefix}1{suffix}\"a\":1,\"b\":\"x\"}}\n{prefix}2{suffix}\"c\":[1,{{\"d\":null}}]}}\n"
        )
    );
    let len = input.len() as u64;
    assert_eq!(
        decoded,
        Decoded {
            records: 2,
            bytes_in: len,
            bytes_decoded: len
        }
    );
}

#[test]
fn ndjson_records_keep_their_fields() {
    let lines = ndjson(b"{\"a\":1,\"nested\":{\"x\":[true,false,null]},\"s\":\"\\u00e9\\\"q\"}\n");
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(1, "line"), "a": 1, "nested": {"x": [true, false, null]}, "s": "\u{e9}\"q"})
        ]
    );
}

#[test]
fn ndjson_empty_objects() {
    let lines = ndjson(b"{}\n{ }\n  {\t}  \n");
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(1, "line")}),
            json!({"_sluice": meta(2, "line")}),
            json!({"_sluice": meta(3, "line")}),
        ]
    );
}

#[test]
fn ndjson_blank_lines_crlf_and_whitespace() {
    let lines = ndjson(b"\r\n  \n{\"a\":1}\r\n\t{\"a\":2}  \r\n\n{\"a\":3}");
    let got: Vec<(u64, i64)> = lines
        .iter()
        .map(|v| {
            (
                v["_sluice"]["line"].as_u64().unwrap(),
                v["a"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![(3, 1), (4, 2), (6, 3)]);
}

#[test]
fn ndjson_only_blank_lines_is_empty() {
    assert!(ndjson(b"\n\n  \r\n").is_empty());
}

#[test]
fn ndjson_byte_order_mark_is_skipped() {
    let lines = ndjson(b"\xef\xbb\xbf{\"a\":1}\n");
    assert_eq!(lines[0]["a"], 1);
}

#[test]
fn metadata_strings_are_escaped() {
    let key = "dir/\"quoted\"\\ é 日本 \u{1}\n.ndjson";
    let o = Origin {
        key,
        etag: "\"e\\t\"",
        task: "t\u{7f}",
        ingested: "i\u{2028}",
    };
    let mut out = Vec::new();
    decode(
        &b"{\"a\":1}\n"[..],
        &o,
        Format::Auto,
        Compression::Auto,
        &Limits::default(),
        &mut out,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["_sluice"],
        json!({"key": key, "etag": "\"e\\t\"", "line": 1, "task": "t\u{7f}", "ingested": "i\u{2028}"})
    );
    assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
}

#[test]
fn record_keys_with_quotes_and_unicode_are_kept_verbatim() {
    let line = "{\"we\\\"ird\":1,\"日本\":\"語\",\"e\\u0301\":2,\"\\\\\":3}\n";
    let lines = ndjson(line.as_bytes());
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(1, "line"), "we\"ird": 1, "日本": "語", "e\u{301}": 2, "\\": 3})
        ]
    );
}

#[test]
fn own_sluice_key_is_replaced_keeping_order() {
    let (result, out) = run_with(
        b"{\"z\":1,\"_sluice\":{\"key\":\"forged\"},\"a\":[1, 2],\"_sluice\":0,\"m\":\"x\"}\n",
        "logs/a.ndjson",
        Format::Auto,
        Compression::Auto,
        1 << 20,
    );
    result.unwrap();
    assert_eq!(out.matches("\"_sluice\"").count(), 1, "{out}");
    assert!(out.ends_with(r#"},"z":1,"a":[1, 2],"m":"x"}"#.to_owned().as_str().to_owned().as_str().to_owned().as_str().trim_end()) || out.trim_end().ends_with(r#"},"z":1,"a":[1, 2],"m":"x"}"#), "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v,
        json!({"_sluice": meta(1, "line"), "z": 1, "a": [1, 2], "m": "x"})
    );
}

#[test]
fn escaped_sluice_key_is_replaced_too() {
    let lines = ndjson(b"{\"\\u005fsluice\":\"forged\",\"a\":1}\n");
    assert_eq!(lines, vec![json!({"_sluice": meta(1, "line"), "a": 1})]);
}

#[test]
fn sluice_elsewhere_is_kept() {
    let lines = ndjson(b"{\"a\":\"_sluice\",\"n\":{\"_sluice\":1},\"u\":\"\\u00e9\"}\n");
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(1, "line"), "a": "_sluice", "n": {"_sluice": 1}, "u": "\u{e9}"})
        ]
    );
}

#[test]
fn ndjson_gzip_zstd_explicit_and_auto() {
    let plain = b"{\"a\":1}\n{\"a\":2}\n";
    let expected = ndjson(plain);
    for (data, compression) in [
        (gzip(plain), Compression::Auto),
        (gzip(plain), Compression::Gzip),
        (zstd(plain), Compression::Auto),
        (zstd(plain), Compression::Zstd),
        (plain.to_vec(), Compression::None),
    ] {
        // The key says nothing about compression: magic bytes decide.
        assert_eq!(
            records(&data, "logs/a.ndjson", Format::Auto, compression),
            expected
        );
    }
}

#[test]
fn counts_compressed_and_decoded_bytes() {
    let plain: Vec<u8> = (0..1000)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    for data in [gzip(&plain), zstd(&plain)] {
        let (result, _) = run_with(
            &data,
            "x.jsonl.gz",
            Format::Auto,
            Compression::Auto,
            1 << 20,
        );
        assert_eq!(
            result.unwrap(),
            Decoded {
                records: 1000,
                bytes_in: data.len() as u64,
                bytes_decoded: plain.len() as u64
            }
        );
    }
}

#[test]
fn multi_member_gzip() {
    let mut data = gzip(b"{\"a\":1}\n");
    data.extend(gzip(b"{\"a\":2}\n{\"a\":3}"));
    let lines = records(&data, "x.ndjson.gz", Format::Auto, Compression::Auto);
    assert_eq!(
        lines
            .iter()
            .map(|v| v["a"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn multi_frame_zstd() {
    let mut data = zstd(b"{\"a\":1}\n");
    data.extend(zstd(b"{\"a\":2}\n"));
    assert_eq!(
        records(&data, "x.ndjson.zst", Format::Auto, Compression::Auto).len(),
        2
    );
}

#[test]
fn lines_longer_than_the_read_buffer_are_joined() {
    let big = "x".repeat(READ_BUFFER * 2 + 17);
    let input = format!("{{\"a\":\"{big}\"}}\n{{\"b\":1}}\n{{\"c\":\"{big}\"}}");
    let lines = ndjson(input.as_bytes());
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["a"].as_str().unwrap().len(), big.len());
    assert_eq!(lines[2]["_sluice"]["line"], 3);
    assert_eq!(lines[2]["c"].as_str().unwrap(), big);
}

/// A fill reaches through the reader layers down to the connection (a round trip into
/// its runtime), so it is made once per chunk, not once per line.
#[test]
fn every_line_of_a_chunk_is_handled_before_the_next_fill() {
    let input: String = (0..1000).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let mut chunks = Chunks::new(input.as_bytes(), 4096);
    let decoded = decode_reader(&mut chunks, "x.ndjson").unwrap();
    assert_eq!(decoded.records, 1000);
    let filled = input.len().div_ceil(4096);
    assert!(chunks.fills <= 3 * filled + 3, "{} fills", chunks.fills);
}

#[test]
fn ndjson_not_an_object() {
    for (line, found) in [
        ("[1,2]", "an array"),
        ("\"s\"", "a string"),
        ("3", "a number"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let input = format!("{{\"a\":1}}\n\n{line}\n");
        let (position, message) = data_error(input.as_bytes(), "logs/a.ndjson");
        assert_eq!(position, Position::Line(3));
        assert!(
            message.ends_with(&format!("line 3: not a JSON object (found {found})")),
            "{message}"
        );
    }
}

#[test]
fn ndjson_syntax_error_names_line_and_column() {
    let (position, message) = data_error(b"{\"a\":1}\n{\"a\":1 x}\n", "logs/a.ndjson");
    assert_eq!(position, Position::Line(2));
    assert_eq!(
        message,
        "s3 object \"logs/a.ndjson\": line 2: expected `,` or `}` at column 8"
    );
    // Columns count from the start of the untrimmed line.
    let (_, message) = data_error(b"   {\"a\" 1}", "logs/a.ndjson");
    assert!(
        message.ends_with("line 1: expected `:` at column 9"),
        "{message}"
    );
}

#[test]
fn ndjson_truncated_and_trailing() {
    let (position, message) = data_error(b"{\"a\":1", "logs/a.ndjson");
    assert_eq!(position, Position::Line(1));
    assert!(message.contains("EOF while parsing an object"), "{message}");
    let (position, message) = data_error(b"{}\n{\"a\":1} {\"b\":2}\n", "logs/a.ndjson");
    assert_eq!(position, Position::Line(2));
    assert!(
        message.contains("trailing characters at column 9"),
        "{message}"
    );
}

#[test]
fn ndjson_invalid_utf8() {
    let (position, message) = data_error(b"{\"a\":1}\n{\"a\":\"\xff\"}\n", "logs/a.ndjson");
    assert_eq!(position, Position::Line(2));
    assert!(
        message.ends_with("line 2: invalid UTF-8 at column 7"),
        "{message}"
    );
    // Also outside strings, and in a key.
    let (position, _) = data_error(b"{\"\xc3\":1}", "logs/a.ndjson");
    assert_eq!(position, Position::Line(1));
}

#[test]
fn ndjson_line_limit() {
    let line = b"{\"a\":\"0123456789\"}"; // 18 bytes
    let ok = [&line[..], b"\n"].concat();
    let (result, _) = run_with(&ok, "a.ndjson", Format::Auto, Compression::Auto, 18);
    assert_eq!(result.unwrap().records, 1);
    let input = [&b"{}\n"[..], &ok, b"{\"a\":\"01234567890\"}\n"].concat();
    let (position, message) =
        data_error_with(&input, "a.ndjson", Format::Auto, Compression::Auto, 18);
    assert_eq!(position, Position::Line(3));
    assert!(
        message.ends_with("record is longer than the limit of 18 bytes"),
        "{message}"
    );
}

#[test]
fn ndjson_huge_line_stops_early() {
    let mut reader = Lazy::new(b"{}\n{\"a\":\"", 50 << 20, b'x');
    let mut out = Vec::new();
    let limits = Limits {
        max_record_bytes: 1 << 20,
    };
    let err = decode(
        BufReader::new(&mut reader),
        &origin("a.ndjson"),
        Format::Auto,
        Compression::Auto,
        &limits,
        &mut out,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Data {
                position: Position::Line(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        reader.served < (1 << 20) + 2 * READ_BUFFER as u64,
        "read {} bytes",
        reader.served
    );
}

#[test]
fn ndjson_huge_compressed_line_stops_early() {
    let plain = [&b"{\"a\":\""[..], &vec![b'x'; 8 << 20]].concat();
    let data = zstd(&plain);
    let (position, _) =
        data_error_with(&data, "a.ndjson", Format::Auto, Compression::Auto, 1 << 20);
    assert_eq!(position, Position::Line(1));
}

#[test]
fn ndjson_deep_nesting_is_not_a_stack_overflow() {
    let deep = [&b"{\"a\":"[..], &vec![b'['; 100_000]].concat();
    let (position, message) = data_error(&deep, "a.ndjson");
    assert_eq!(position, Position::Line(1));
    assert!(message.contains("EOF while parsing"), "{message}");
    // Well-formed deep nesting within the size limit is valid JSON and passes through.
    let closed = [&deep[..], &vec![b']'; 100_000], b"}\n"].concat();
    let (result, out) = run_with(
        &closed,
        "a.ndjson",
        Format::Auto,
        Compression::Auto,
        1 << 20,
    );
    assert_eq!(result.unwrap().records, 1);
    assert_eq!(out.matches('[').count(), 100_000);
}

// ---- JSON ----

fn json_records(input: &[u8]) -> Vec<Value> {
    records(input, "data/x.json", Format::Auto, Compression::Auto)
}

#[test]
fn json_single_object() {
    let lines = json_records(b"  {\"a\": 1,\n \"b\": {\"c\": \"d\"}}\n");
    assert_eq!(
        lines,
        vec![json!({"_sluice": meta(1, "record"), "a": 1, "b": {"c": "d"}})]
    );
}

#[test]
fn json_array_streams_elements_and_joins_pretty_printing() {
    let input = b"\n[\n  {\"a\": 1},\r\n  {\n    \"b\": [1,\n 2]\n  }\n  , {}\n]\n\n";
    let (_, out) = run_with(input, "x.json", Format::Auto, Compression::Auto, 1 << 20);
    assert!(!out.contains('\r'));
    let lines = records(input, "x.json", Format::Auto, Compression::Auto);
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(1, "record"), "a": 1}),
            json!({"_sluice": meta(2, "record"), "b": [1, 2]}),
            json!({"_sluice": meta(3, "record")}),
        ]
    );
}

#[test]
fn json_empty_inputs() {
    assert!(json_records(b"").is_empty());
    assert!(json_records(b"  \n ").is_empty());
    assert!(json_records(b"[]").is_empty());
    assert!(json_records(b" [ \n ] ").is_empty());
}

#[test]
fn json_gzip_and_zstd() {
    let plain = b"[{\"a\":1},{\"a\":2}]";
    let expected = json_records(plain);
    assert_eq!(
        records(&gzip(plain), "x.json.gz", Format::Auto, Compression::Auto),
        expected
    );
    assert_eq!(
        records(&zstd(plain), "x", Format::Json, Compression::Zstd),
        expected
    );
}

#[test]
fn json_sluice_collision_in_an_element() {
    let lines = json_records(b"[{\"a\":1},{\"_sluice\":\"x\",\"b\":2}]");
    assert_eq!(lines[1], json!({"_sluice": meta(2, "record"), "b": 2}));
}

#[test]
fn json_element_that_is_not_an_object() {
    let (position, message) = data_error(b"[{}, {}, [1], {}]", "x.json");
    assert_eq!(position, Position::Record(3));
    assert!(
        message.ends_with("record 3: not a JSON object (found an array)"),
        "{message}"
    );
}

#[test]
fn json_top_level_scalar() {
    let (position, message) = data_error(b"\"just a string\"", "x.json");
    assert_eq!(position, Position::Record(1));
    assert!(message.contains("found a string"), "{message}");
    let (position, message) = data_error(b"\n  nope", "x.json");
    assert_eq!(position, Position::Line(2));
    assert!(
        message.ends_with("line 2: expected ident at column 4"),
        "{message}"
    );
}

#[test]
fn json_syntax_error_in_array_names_line_column_and_record() {
    let (position, message) = data_error(b"\n\n[{\"a\":1},\n {\"a\" 2}]", "x.json");
    assert_eq!(position, Position::Line(4));
    assert!(
        message.ends_with("line 4: expected `:` at column 7 (in record 2)"),
        "{message}"
    );
    // Whitespace skipped on the first line shifts the column.
    let (_, message) = data_error(b"   {\"a\" 2}", "x.json");
    assert!(
        message.ends_with("line 1: expected `:` at column 9"),
        "{message}"
    );
}

#[test]
fn json_trailing_garbage() {
    let (position, message) = data_error(b"[{}]\n x", "x.json");
    assert_eq!(position, Position::Line(2));
    assert!(
        message.contains("trailing characters at column 2"),
        "{message}"
    );
    let (position, message) = data_error(b"{\"a\":1}\n{\"a\":2}\n", "x.json");
    assert_eq!(position, Position::Line(2));
    assert!(
        message.contains("set spec.source.format to ndjson"),
        "{message}"
    );
}

#[test]
fn json_truncated_array() {
    let (_, message) = data_error(b"[{\"a\":1},{\"a\"", "x.json");
    assert!(message.contains("EOF while parsing"), "{message}");
}

#[test]
fn json_invalid_utf8() {
    let (position, _) = data_error(b"[{\"a\":\"\xff\"}]", "x.json");
    assert_eq!(position, Position::Line(1));
}

#[test]
fn json_deep_nesting_is_not_a_stack_overflow() {
    let (_, message) = data_error(&vec![b'['; 100_000], "x.json");
    assert!(message.contains("EOF while parsing"), "{message}");
    let deep = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
    let (position, message) = data_error(&deep, "x.json");
    assert_eq!(position, Position::Record(1));
    assert!(
        message.contains("not a JSON object (found an array)"),
        "{message}"
    );
    // Well-formed deep nesting within the size limit is valid JSON and passes through
    // (serde_json's own parser would refuse to read it back beyond depth 128).
    let nested = [
        &b"{\"a\":"[..],
        &vec![b'['; 100_000],
        &vec![b']'; 100_000],
        b"}",
    ]
    .concat();
    let (result, out) = run_with(&nested, "x.json", Format::Auto, Compression::Auto, 1 << 20);
    assert_eq!(result.unwrap().records, 1);
    let (_, small) = run_with(
        b"{\"a\":1}",
        "x.json",
        Format::Auto,
        Compression::Auto,
        1 << 20,
    );
    let overhead = small.len() - 7;
    assert!(
        out.ends_with("]}\n") && out.len() == nested.len() + overhead,
        "unexpected output length {}",
        out.len()
    );
}

#[test]
fn json_element_limit() {
    let input = b"[{\"a\":\"0123456789\"},{\"a\":\"01234567890\"}]"; // 18 and 19 bytes
    let (position, message) = data_error_with(input, "x.json", Format::Auto, Compression::Auto, 18);
    assert_eq!(position, Position::Record(2));
    assert!(
        message.ends_with("record 2: record is longer than the limit of 18 bytes"),
        "{message}"
    );
    let (position, _) = data_error_with(
        b"{\"a\":\"01234567890\"}",
        "x.json",
        Format::Auto,
        Compression::Auto,
        18,
    );
    assert_eq!(position, Position::Record(1));
}

#[test]
fn json_huge_element_stops_early() {
    for head in [&b"[{}, {\"a\":\""[..], b"{\"a\":\""] {
        let mut reader = Lazy::new(head, 50 << 20, b'x');
        let mut out = Vec::new();
        let limits = Limits {
            max_record_bytes: 1 << 20,
        };
        let err = decode(
            BufReader::new(&mut reader),
            &origin("x.json"),
            Format::Auto,
            Compression::Auto,
            &limits,
            &mut out,
        )
        .unwrap_err();
        let expected = if head[0] == b'[' { 2 } else { 1 };
        assert!(
            matches!(err, DecodeError::Data { position: Position::Record(n), .. } if n == expected),
            "{err}"
        );
        assert!(err.to_string().contains("longer than the limit"), "{err}");
        // The record guard stops the read within its slack of the limit.
        assert!(
            reader.served < (1 << 20) + 2 * GUARD_SLACK,
            "read {} bytes",
            reader.served
        );
    }
}

// ---- CSV ----

fn csv_records(input: &[u8]) -> Vec<Value> {
    records(input, "t/x.csv", Format::Auto, Compression::Auto)
}

#[test]
fn csv_rows_become_string_objects_in_header_order() {
    let (result, out) = run_with(
        b"id,name\n1,x\n2,\"y, z\"\n",
        "t/x.csv",
        Format::Auto,
        Compression::Auto,
        1 << 20,
    );
    assert_eq!(result.unwrap().records, 2);
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with(r#"{"_sluice":{"key":"t/x.csv","etag":"\"abc123\"","line":2,"#),
        "{first}"
    );
    assert!(first.ends_with(r#"},"id":"1","name":"x"}"#), "{first}");
    let lines = csv_records(b"id,name\n1,x\n2,\"y, z\"\n");
    assert_eq!(
        lines[1],
        json!({"_sluice": meta(3, "line"), "id": "2", "name": "y, z"})
    );
}

#[test]
fn csv_quoted_newlines_name_the_row_start() {
    let input =
        b"id,text\r\n1,\"multi\r\nline\nvalue\"\r\n2,\"say \"\"hi\"\"\"\r\n3,\xc3\xa9\\\t\n";
    let lines = csv_records(input);
    assert_eq!(
        lines,
        vec![
            json!({"_sluice": meta(2, "line"), "id": "1", "text": "multi\r\nline\nvalue"}),
            json!({"_sluice": meta(5, "line"), "id": "2", "text": "say \"hi\""}),
            json!({"_sluice": meta(6, "line"), "id": "3", "text": "é\\\t"}),
        ]
    );
}

#[test]
fn csv_blank_lines_are_skipped_and_counted() {
    let lines = csv_records(b"\na\n\n1\n\r\n\n2\n\n");
    let at: Vec<_> = lines
        .iter()
        .map(|v| (v["_sluice"]["line"].clone(), v["a"].clone()))
        .collect();
    assert_eq!(at, vec![(json!(4), json!("1")), (json!(7), json!("2"))]);
    let (position, _) = data_error(b"a,b\r\n1,2\r\n\r\n3\r\n", "x.csv");
    assert_eq!(position, Position::Line(4));
}

#[test]
fn csv_header_names_are_escaped() {
    let lines = csv_records("\"a \"\"q\"\"\",日本,\"x\\y\"\n1,2,3\n".as_bytes());
    assert_eq!(
        lines[0],
        json!({"_sluice": meta(2, "line"), "a \"q\"": "1", "日本": "2", "x\\y": "3"})
    );
}

#[test]
fn csv_empty_and_header_only() {
    assert!(csv_records(b"").is_empty());
    assert!(csv_records(b"a,b\n").is_empty());
    assert!(csv_records(b"a,b").is_empty());
}

#[test]
fn csv_gzip_and_zstd() {
    let plain = b"a,b\n1,2\n3,4\n";
    let expected = csv_records(plain);
    assert_eq!(
        records(&gzip(plain), "x.csv.gz", Format::Auto, Compression::Auto),
        expected
    );
    assert_eq!(
        records(&zstd(plain), "x.csv.zst", Format::Csv, Compression::Zstd),
        expected
    );
}

#[test]
fn csv_ragged_rows() {
    let (position, message) = data_error(b"a,b\n1,2\n\"x\ny\",2,3\n", "x.csv");
    assert_eq!(position, Position::Line(3));
    assert!(
        message.ends_with("line 3: row has 3 fields but the header has 2"),
        "{message}"
    );
    let (position, _) = data_error(b"a,b\n1\n", "x.csv");
    assert_eq!(position, Position::Line(2));
}

#[test]
fn csv_bad_headers() {
    let (position, message) = data_error(b"a,b,a\n1,2,3\n", "x.csv");
    assert_eq!(position, Position::Line(1));
    assert!(
        message.contains("\"a\" appears twice (columns 1 and 3)"),
        "{message}"
    );
    let (position, message) = data_error(b"a,,c\n", "x.csv");
    assert_eq!(position, Position::Line(1));
    assert!(message.contains("header column 2 has no name"), "{message}");
    let (position, _) = data_error(b"a,\xff\n", "x.csv");
    assert_eq!(position, Position::Line(1));
}

#[test]
fn csv_sluice_column_is_dropped() {
    let lines = csv_records(b"a,_sluice,b\n1,forged,2\n");
    assert_eq!(
        lines,
        vec![json!({"_sluice": meta(2, "line"), "a": "1", "b": "2"})]
    );
}

#[test]
fn csv_invalid_utf8() {
    let (position, message) = data_error(b"a,b\n1,2\n3,\"\xff\n\"\n", "x.csv");
    assert_eq!(position, Position::Line(3));
    assert!(
        message.ends_with("line 3: field 2 is not valid UTF-8"),
        "{message}"
    );
}

#[test]
fn csv_row_limit() {
    let input = b"a,b\n0123,4567\n01234,5678\n"; // rows of 10 and 11 bytes with newline
    let (result, _) = run_with(&input[..14], "x.csv", Format::Auto, Compression::Auto, 10);
    assert_eq!(result.unwrap().records, 1);
    let (position, _) = data_error_with(input, "x.csv", Format::Auto, Compression::Auto, 10);
    assert_eq!(position, Position::Line(3));
}

#[test]
fn csv_huge_field_stops_early() {
    let mut reader = Lazy::new(b"a,b\n1,\"", 50 << 20, b'x');
    let mut out = Vec::new();
    let limits = Limits {
        max_record_bytes: 1 << 20,
    };
    let err = decode(
        BufReader::new(&mut reader),
        &origin("x.csv"),
        Format::Auto,
        Compression::Auto,
        &limits,
        &mut out,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::Data {
                position: Position::Line(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        reader.served < (1 << 20) + 2 * GUARD_SLACK,
        "read {} bytes",
        reader.served
    );
}

// ---- compression errors ----

#[test]
fn truncated_gzip_reports_the_compressed_byte() {
    let plain: Vec<u8> = (0..5000)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    let data = gzip(&plain);
    let cut = data.len() - 20;
    let (position, message) = data_error(&data[..cut], "x.ndjson.gz");
    assert_eq!(position, Position::Byte(cut as u64));
    assert!(
        message.ends_with(&format!(
            "byte {cut} of the compressed input: gzip stream is truncated"
        )),
        "{message}"
    );
}

#[test]
fn truncated_zstd_reports_the_compressed_byte() {
    let plain: Vec<u8> = (0..5000)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    let data = zstd(&plain);
    let cut = data.len() / 2;
    let (position, message) = data_error(&data[..cut], "x.ndjson.zst");
    assert_eq!(position, Position::Byte(cut as u64));
    assert!(message.contains("zstd"), "{message}");
}

#[test]
fn corrupt_gzip_checksum_reports_the_compressed_byte() {
    let mut data = gzip(b"{\"a\":1}\n");
    let crc = data.len() - 8;
    data[crc] ^= 0xff;
    let (position, message) = data_error(&data, "x.ndjson");
    assert_eq!(position, Position::Byte(data.len() as u64));
    assert!(message.contains("gzip data is corrupt"), "{message}");
}

#[test]
fn corrupt_compressed_data_is_a_data_error() {
    // Damage may decompress into garbage that the parser trips over before the
    // decompressor notices; either way it is a data error, not a read error.
    let plain: Vec<u8> = (0..5000)
        .flat_map(|i| format!("{{\"i\":{i}}}\n").into_bytes())
        .collect();
    for mut data in [gzip(&plain), zstd(&plain)] {
        let middle = data.len() / 2;
        for b in &mut data[middle..middle + 16] {
            *b ^= 0x5a;
        }
        data_error(&data, "x.ndjson");
    }
    let mut data = zstd(&plain);
    data[5] ^= 0xff; // the frame header descriptor
    let (position, message) = data_error(&data, "x.ndjson");
    assert!(matches!(position, Position::Byte(_)), "{message}");
}

#[test]
fn gzip_followed_by_garbage_is_a_data_error() {
    let mut data = gzip(b"{}\n");
    data.extend_from_slice(b"garbage");
    let (position, _) = data_error(&data, "x.ndjson");
    assert!(matches!(position, Position::Byte(_)));
}

#[test]
fn wrong_explicit_compression() {
    let plain = b"{\"a\":1}\n";
    let (position, message) =
        data_error_with(plain, "x.ndjson", Format::Auto, Compression::Gzip, 1 << 20);
    assert_eq!(position, Position::Byte(0));
    assert!(
        message.contains("compression is gzip")
            && message.contains("1f 8b")
            && message.contains("looks uncompressed"),
        "{message}"
    );
    let (_, message) = data_error_with(
        &gzip(plain),
        "x.ndjson",
        Format::Auto,
        Compression::Zstd,
        1 << 20,
    );
    assert!(
        message.contains("compression is zstd") && message.contains("looks gzip"),
        "{message}"
    );
    let (_, message) = data_error_with(
        &zstd(plain),
        "x.ndjson",
        Format::Auto,
        Compression::None,
        1 << 20,
    );
    assert!(
        message.contains("looks zstd-compressed but spec.source.compression is none"),
        "{message}"
    );
    let (_, message) = data_error(&gzip(b"[1]\n"), "x.ndjson");
    assert!(!message.contains("spec.source.compression"), "{message}");
}

#[test]
fn empty_objects_are_empty_for_every_format_and_compression() {
    for key in ["x.ndjson", "x.json", "x.csv"] {
        for compression in [
            Compression::Auto,
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
        ] {
            let (result, out) = run_with(b"", key, Format::Auto, compression, 1 << 20);
            assert_eq!(result.unwrap(), Decoded::default());
            assert!(out.is_empty());
        }
        for data in [gzip(b""), zstd(b"")] {
            let (result, out) = run_with(&data, key, Format::Auto, Compression::Auto, 1 << 20);
            let decoded = result.unwrap();
            assert_eq!((decoded.records, decoded.bytes_decoded), (0, 0));
            assert_eq!(decoded.bytes_in, data.len() as u64);
            assert!(out.is_empty());
        }
    }
}

// ---- read and write errors ----

#[test]
fn source_errors_are_read_errors() {
    let plain = b"{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n".to_vec();
    for (data, key) in [
        (plain.clone(), "x.ndjson"),
        (gzip(&plain), "x.ndjson"),
        (zstd(&plain), "x.ndjson"),
        (b"[{\"a\":1},{\"a\":2}".to_vec(), "x.json"),
        (b"a,b\n1,2\n3,".to_vec(), "x.csv"),
        (b"".to_vec(), "x.csv"),
    ] {
        let reader = Flaky {
            data,
            at: 0,
            interrupt: false,
            calls: 0,
        };
        let err = decode_reader(BufReader::new(reader), key).unwrap_err();
        let DecodeError::Read { key: k, source } = &err else {
            panic!("expected a read error, got {err}")
        };
        assert_eq!(k, key);
        assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
        assert!(
            err.to_string()
                .starts_with(&format!("s3 object \"{key}\": reading failed")),
            "{err}"
        );
    }
}

#[test]
fn interrupted_reads_are_retried() {
    let plain = b"{\"a\":1}\n{\"a\":2}\n".to_vec();
    for data in [plain.clone(), gzip(&plain), zstd(&plain)] {
        let reader = Flaky {
            data,
            at: 0,
            interrupt: true,
            calls: 0,
        };
        let decoded = decode_reader(BufReader::new(reader), "x.ndjson").unwrap();
        assert_eq!(decoded.records, 2);
    }
}

#[test]
fn write_errors_are_write_errors() {
    struct Broken;
    impl Lines for Broken {
        fn line(&mut self, _: &[&[u8]]) -> io::Result<()> {
            Err(io::Error::other("disk full"))
        }
    }
    let err = decode(
        &b"{}\n"[..],
        &origin("x.ndjson"),
        Format::Auto,
        Compression::Auto,
        &Limits::default(),
        &mut Broken,
    )
    .unwrap_err();
    assert!(
        matches!(&err, DecodeError::Write(e) if e.to_string() == "disk full"),
        "{err}"
    );
}

#[test]
fn explicit_format_overrides_the_extension() {
    let lines = records(b"a\n1\n", "x.json", Format::Csv, Compression::Auto);
    assert_eq!(lines[0]["a"], "1");
    let lines = records(
        b"{\"a\":1}\n{\"a\":2}",
        "noext",
        Format::Ndjson,
        Compression::None,
    );
    assert_eq!(lines.len(), 2);
}
