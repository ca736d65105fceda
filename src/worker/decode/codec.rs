//! Which compression an object uses: sniffed from its magic bytes, checked against
//! the source's setting.

use sluice_core::encoding::Compression;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How the object is compressed, once decided.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Codec {
    Plain,
    Gzip,
    Zstd,
}

impl Codec {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Plain => "uncompressed",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

/// The codec the first bytes announce, if any.
pub(super) fn sniff(magic: &[u8]) -> Option<Codec> {
    // zstd skippable frames (magic 0x184D2A5?) may open a zstd stream too.
    let skippable = magic.len() == 4 && magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18];
    if magic.starts_with(&GZIP_MAGIC) {
        Some(Codec::Gzip)
    } else if magic.starts_with(&ZSTD_MAGIC) || skippable {
        Some(Codec::Zstd)
    } else {
        None
    }
}

/// Obeys an explicit choice, but checks the magic bytes so that a wrong choice gives a
/// clear message instead of the decompressor's.
pub(super) fn choose_codec(
    compression: Compression,
    looks_like: Option<Codec>,
) -> Result<Codec, String> {
    let wanted = match compression {
        Compression::Auto => return Ok(looks_like.unwrap_or(Codec::Plain)),
        Compression::None => return Ok(Codec::Plain),
        Compression::Gzip => Codec::Gzip,
        Compression::Zstd => Codec::Zstd,
    };
    if looks_like == Some(wanted) {
        return Ok(wanted);
    }
    let magic = if wanted == Codec::Gzip {
        "1f 8b"
    } else {
        "28 b5 2f fd"
    };
    Err(format!(
        "spec.source.compression is {} but the object does not start with its magic bytes {magic} \
         (it looks {})",
        wanted.name(),
        looks_like.unwrap_or(Codec::Plain).name()
    ))
}
