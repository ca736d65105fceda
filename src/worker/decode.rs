//! STUB: replaced by the real decoder.
use std::io::{Read, Write};

use crate::crd::{Compression, Format};

pub struct Origin<'a> {
    pub key: &'a str,
    pub etag: &'a str,
    pub task: &'a str,
    pub ingested: &'a str,
}

#[derive(Default)]
pub struct Limits {
    pub max_record_bytes: usize,
}

pub struct Decoded {
    pub records: u64,
    pub bytes_in: u64,
    pub bytes_decoded: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("s3 object {key:?}: {reason}")]
    Data { key: String, reason: String },
    #[error("read {key}: {source}")]
    Read { key: String, source: std::io::Error },
    #[error("write: {0}")]
    Write(std::io::Error),
}

pub fn decode(
    _input: impl Read,
    _origin: &Origin,
    _format: Format,
    _compression: Compression,
    _limits: &Limits,
    _out: &mut impl Write,
) -> Result<Decoded, DecodeError> {
    unimplemented!()
}
