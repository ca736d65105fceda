//! How the commands print: kubectl-like tables, or JSON, YAML and NDJSON
//! for programs.

use std::io::Write;

use clap::ValueEnum;
use serde::Serialize;

/// `-o/--output` and `--no-headers`, as kubectl takes them.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct OutputArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: Format,

    /// Print tables without their header row.
    #[arg(long)]
    pub no_headers: bool,
}

impl OutputArgs {
    /// Whether the output is a table (for people, with notes on stderr).
    pub fn is_table(self) -> bool {
        matches!(self.format, Format::Table | Format::Wide)
    }
}

/// `-o/--output`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns, like `kubectl get`.
    #[default]
    Table,
    /// The table with more columns.
    Wide,
    /// `task/ID`, one per line, like `kubectl get -o name`.
    Name,
    /// `{"items": [...]}`, indented.
    Json,
    /// `items:` as YAML.
    Yaml,
    /// One JSON object per line, for `jq` and DuckDB.
    Ndjson,
}

/// Something printed as one row of a table.
pub trait Row: Serialize {
    /// The column titles; `wide` adds some.
    fn headers(wide: bool) -> Vec<&'static str>;
    /// The cells, in the order of [`Row::headers`]; `now` is for ages.
    fn cells(&self, wide: bool, now: jiff::Timestamp) -> Vec<String>;
    /// `TYPE/ID`, as `-o name` prints it.
    fn name(&self) -> String;
}

/// `items` as `output` asks, ending in a newline; an empty table is no
/// text.
pub fn render<T: Row>(output: OutputArgs, items: &[T], now: jiff::Timestamp) -> String {
    #[derive(Serialize)]
    struct Items<'a, T> {
        items: &'a [T],
    }
    match output.format {
        Format::Table | Format::Wide => {
            let wide = output.format == Format::Wide;
            let rows: Vec<Vec<String>> = items.iter().map(|item| item.cells(wide, now)).collect();
            let text = table(&T::headers(wide), &rows);
            match text.split_once('\n') {
                _ if rows.is_empty() => String::new(),
                Some((_, rows)) if output.no_headers => rows.to_owned(),
                _ => text,
            }
        }
        Format::Name => items.iter().map(|item| item.name() + "\n").collect(),
        Format::Json | Format::Yaml => document(output.format, &Items { items }, String::new),
        Format::Ndjson => items
            .iter()
            .map(|item| {
                let mut line =
                    serde_json::to_string(item).expect("serializing plain data cannot fail");
                line.push('\n');
                line
            })
            .collect(),
    }
}

/// One value as a JSON, YAML or NDJSON document, ending in a newline; in
/// the other formats, what `text` makes of it.
pub fn document<T: Serialize>(format: Format, value: &T, text: impl FnOnce() -> String) -> String {
    let text = match format {
        Format::Json => serde_json::to_string_pretty(value),
        Format::Ndjson => serde_json::to_string(value),
        Format::Yaml => {
            return serde_yaml::to_string(value).expect("serializing plain data cannot fail");
        }
        Format::Table | Format::Wide | Format::Name => return text(),
    };
    text.expect("serializing plain data cannot fail") + "\n"
}

/// Columns as kubectl aligns them: upper-case titles, three spaces apart,
/// the last column not padded. Control characters in a cell (an S3 key or
/// an error can hold any) print escaped, `\u{1b}`, so that no cell moves
/// the cursor, rings or recolours the terminal.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| visible(cell)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let headers: Vec<String> = headers.iter().map(|h| h.to_uppercase()).collect();
    let mut text = String::new();
    for row in std::iter::once(&headers).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            text.push_str(cell);
            if i < last {
                let pad = width - cell.chars().count() + 3;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push('\n');
    }
    text
}

/// `text` with its control characters escaped.
fn visible(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    shown
}

/// Writes to stdout; a closed pipe (`sluice history | head`) is not an
/// error.
pub fn print(text: &str) -> std::io::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        result => result,
    }
}

/// A byte count in binary units, at most four significant characters:
/// `512B`, `1.5KiB`, `20MiB`, `3.2GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// How long ago, the way `kubectl get` writes ages: `45s`, `3m20s`, `17m`,
/// `5h12m`, `30h`, `3d4h`, `12d`, `2y`.
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if s < 600 => match s % 60 {
            0 => format!("{m}m"),
            rest => format!("{m}m{rest}s"),
        },
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => match m % 60 {
            0 => format!("{h}h"),
            rest => format!("{h}h{rest}m"),
        },
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => match h % 24 {
            0 => format!("{d}d"),
            rest => format!("{d}d{rest}h"),
        },
        _ if d < 365 * 2 => format!("{d}d"),
        _ => format!("{}y", d / 365),
    }
}

/// The time from `then` to `now` as an [`age`], or `-` when there is none.
pub fn since(then: Option<jiff::Timestamp>, now: jiff::Timestamp) -> String {
    then.map(|t| age(now.as_second() - t.as_second()))
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Pet {
        name: &'static str,
        legs: u32,
    }

    impl Row for Pet {
        fn headers(wide: bool) -> Vec<&'static str> {
            if wide {
                vec!["name", "legs"]
            } else {
                vec!["name"]
            }
        }
        fn cells(&self, wide: bool, _: jiff::Timestamp) -> Vec<String> {
            let mut cells = vec![self.name.to_owned()];
            if wide {
                cells.push(self.legs.to_string());
            }
            cells
        }
        fn name(&self) -> String {
            format!("pet/{}", self.name)
        }
    }

    fn as_(format: Format) -> OutputArgs {
        OutputArgs {
            format,
            no_headers: false,
        }
    }

    const PETS: [Pet; 2] = [
        Pet {
            name: "centipede",
            legs: 100,
        },
        Pet {
            name: "cat",
            legs: 4,
        },
    ];

    #[test]
    fn a_table_aligns_columns_three_spaces_apart_without_trailing_blanks() {
        let text = render(as_(Format::Wide), &PETS, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(text, "NAME        LEGS\ncentipede   100\ncat         4\n");
    }

    #[test]
    fn no_headers_and_names_print_as_kubectl_does() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let bare = OutputArgs {
            format: Format::Wide,
            no_headers: true,
        };
        assert_eq!(render(bare, &PETS, now), "centipede   100\ncat         4\n");
        assert_eq!(
            render(as_(Format::Name), &PETS, now),
            "pet/centipede\npet/cat\n"
        );
    }

    #[test]
    fn control_characters_in_cells_print_escaped() {
        let rows = vec![vec![
            "in/\u{1b}[2Jx.ndjson".to_owned(),
            "a\tb\u{7}\u{9b}c".to_owned(),
        ]];
        let text = table(&["key", "error"], &rows);
        let row = text.lines().nth(1).unwrap();
        assert_eq!(
            row.split("   ").collect::<Vec<_>>(),
            ["in/\\u{1b}[2Jx.ndjson", "a\\u{9}b\\u{7}\\u{9b}c"]
        );
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
    }

    #[test]
    fn an_empty_table_prints_nothing_but_empty_json_is_an_empty_list() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        assert_eq!(render::<Pet>(as_(Format::Table), &[], now), "");
        assert_eq!(render::<Pet>(as_(Format::Ndjson), &[], now), "");
        assert_eq!(
            render::<Pet>(as_(Format::Json), &[], now),
            "{\n  \"items\": []\n}\n"
        );
        assert_eq!(render::<Pet>(as_(Format::Yaml), &[], now), "items: []\n");
    }

    #[test]
    fn ndjson_is_one_object_per_line() {
        let text = render(as_(Format::Ndjson), &PETS, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            text,
            "{\"name\":\"centipede\",\"legs\":100}\n{\"name\":\"cat\",\"legs\":4}\n"
        );
    }

    #[test]
    fn bytes_use_binary_units_with_few_digits() {
        let cases = [
            (0, "0B"),
            (1023, "1023B"),
            (1536, "1.5KiB"),
            (20 << 20, "20MiB"),
            (3_435_973_837, "3.2GiB"),
        ];
        for (n, text) in cases {
            assert_eq!(bytes(n), text, "{n}");
        }
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-5, "0s"),
            (45, "45s"),
            (119, "119s"),
            (200, "3m20s"),
            (240, "4m"),
            (1020, "17m"),
            (5 * 3600 + 12 * 60, "5h12m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (12 * 86400, "12d"),
            (800 * 86400, "2y"),
        ];
        for (seconds, text) in cases {
            assert_eq!(age(seconds), text, "{seconds}");
        }
    }
}
