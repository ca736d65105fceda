//! How source objects are encoded and compressed: what a user sets in an
//! IngestSource and what the worker's decoder reads.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How the source objects are encoded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Ndjson,
    Json,
    Csv,
    #[default]
    Auto,
}

/// How the source objects are compressed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Auto,
    None,
    Gzip,
    Zstd,
}
