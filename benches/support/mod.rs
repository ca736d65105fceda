//! What every benchmark shares: a deterministic generator, medians and
//! percentiles, and the Markdown table each one prints to stdout.
//!
//! A benchmark prints its section of BENCHMARKS.md (a short paragraph of
//! what was measured and how, then a table) on stdout and its progress on
//! stderr; `tools/bench.sh` puts the section in place.
#![allow(dead_code)] // each benchmark uses a part

use std::time::Duration;

/// A small deterministic generator (xorshift), so every run measures the
/// same data.
pub struct Random(pub u64);

impl Random {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

pub fn median(runs: Vec<Duration>) -> Duration {
    percentile(runs, 50)
}

/// The `p`th percentile (nearest rank) of `runs`.
pub fn percentile(mut runs: Vec<Duration>, p: usize) -> Duration {
    assert!(!runs.is_empty(), "no runs to take a percentile of");
    runs.sort();
    let rank = (runs.len() * p).div_ceil(100).max(1);
    runs[rank - 1]
}

pub fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}

pub fn seconds(duration: Duration) -> String {
    format!("{:.2} s", duration.as_secs_f64())
}

/// A Markdown table; the last column is conventionally the bar, and
/// `verdict` says whether the figure meets it.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: &[String]) {
        assert_eq!(cells.len(), self.headers.len(), "{cells:?}");
        self.rows.push(cells.to_vec());
    }

    pub fn print(&self) {
        println!("| {} |", self.headers.join(" | "));
        // Figures are right-aligned, the first column (what) left.
        let rule: Vec<&str> = (0..self.headers.len())
            .map(|i| if i == 0 { "---" } else { "---:" })
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &self.rows {
            println!("| {} |", row.join(" | "));
        }
        println!();
    }
}

/// "met" or "**missed**", for a bar column.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Criterion's median estimate for benchmark `id` (as given to
/// `bench_function`), read back from the estimates it saved under
/// `$CARGO_TARGET_DIR/criterion`, so a benchmark can put it in its table.
pub fn criterion_median(id: &str) -> Duration {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = std::path::Path::new(&target)
        .join("criterion")
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("criterion estimates {}: {err}", path.display()));
    let estimates: serde_json::Value = serde_json::from_str(&text).unwrap();
    let nanos = estimates["median"]["point_estimate"]
        .as_f64()
        .unwrap_or_else(|| panic!("no median in {}", path.display()));
    Duration::from_nanos(nanos as u64)
}

/// Requests (verb, resource, subresource, outcome) → how many the API
/// server has served. The outcome is empty for a request that succeeded
/// (2xx, not a dry run), else `dry run`, or `refused` and its code.
pub type Requests = std::collections::BTreeMap<(String, String, String, String), f64>;

/// The requests the API server has served since it started, from its
/// `apiserver_request_total` (which has no label for the client, so compare
/// two readings with nothing else asking in between).
pub async fn apiserver_requests(client: &kube::Client) -> Requests {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let body = client.request_text(request).await.unwrap();
    let mut requests = Requests::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|value| value.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let code = label("code");
        let outcome = if !label("dry_run").is_empty() {
            "dry run".to_owned()
        } else if !code.starts_with('2') {
            format!("refused {code}")
        } else {
            String::new()
        };
        *requests
            .entry((
                label("verb"),
                label("resource"),
                label("subresource"),
                outcome,
            ))
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    requests
}

/// The CPU time process `pid` has used so far (user and system), in
/// seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(pid, 2)
}

/// [`cpu_seconds`] with that of the children `pid` has waited for: a
/// benchmark that runs its peers as commands counts their CPU time so.
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    stat_cpu_seconds(pid, 4)
}

/// The first `fields` of the CPU times in `/proc/{pid}/stat` (utime, stime,
/// cutime, cstime) added up, in seconds.
fn stat_cpu_seconds(pid: u32, fields: usize) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|err| panic!("/proc/{pid}/stat: {err}"));
    // The fields after the command name, which is in parentheses: the CPU
    // times are the 12th to the 15th.
    let (_, after_name) = stat.rsplit_once(')').expect("a stat line");
    let ticks: f64 = after_name
        .split_whitespace()
        .skip(11)
        .take(fields)
        .map(|field| field.parse::<f64>().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
