#![no_main]
//! The ndjson decoder with each compression: see `decode.rs`.

use libfuzzer_sys::fuzz_target;
use sluice_core::encoding::Format;

mod decode;

fuzz_target!(|data: &[u8]| decode::run(Format::Ndjson, "ndjson", data));
