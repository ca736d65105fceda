//! The plain part of `sluice history`, without I/O: what a query asks
//! ([`Filter`]), which archive objects can hold a match (by their keys),
//! matching records line by line ([`Matcher`]), the order results are
//! printed in, the summary of `--stats`, and how a record prints as a row.

mod filter;
mod matcher;
mod rows;
mod stats;
#[cfg(test)]
mod tests;

pub use filter::{BadTime, Filter, parse_time};
pub use matcher::{Collected, Matcher, Scanned};
pub use rows::time;
pub use stats::{Stats, stats_tables};
