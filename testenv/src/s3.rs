//! Reading back what a test or benchmark had written to S3.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::Error;

/// Every key under `prefix` in `bucket`, in order.
pub async fn keys(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<Vec<String>, Error> {
    let pages: Vec<_> = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .map_err(|err| Error::Command {
            what: format!("listing s3://{bucket}/{prefix}"),
            stderr: sluice::s3::describe(&err),
        })?;
    Ok(pages
        .into_iter()
        .flat_map(|page| page.contents.unwrap_or_default())
        .filter_map(|object| object.key)
        .collect())
}

/// The bytes of the object `key` in `bucket`.
pub async fn object(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Result<Bytes, Error> {
    let fail = |why: String| Error::Command {
        what: format!("reading s3://{bucket}/{key}"),
        stderr: why,
    };
    Ok(s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|err| fail(sluice::s3::describe(&err)))?
        .body
        .collect()
        .await
        .map_err(|err| fail(err.to_string()))?
        .into_bytes())
}

/// The records (lines) in the objects under `prefix` of a sink bucket (zstd
/// NDJSON), two objects at a time, each decompressed as a stream: an
/// object may decompress to far more than it is.
pub async fn sink_records(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<u64, Error> {
    futures::stream::iter(keys(s3, bucket, prefix).await?)
        .map(|key| async move {
            let body = object(s3, bucket, &key).await?;
            let fail = |why: String| Error::Command {
                what: format!("counting the records of s3://{bucket}/{key}"),
                stderr: why,
            };
            tokio::task::spawn_blocking(move || lines_in_zstd(&body))
                .await
                .map_err(|err| fail(err.to_string()))?
                .map_err(|err| fail(err.to_string()))
        })
        .buffer_unordered(2)
        .try_fold(0, |total, lines| async move { Ok(total + lines) })
        .await
}

/// The LFs in what the zstd stream `compressed` decompresses to.
fn lines_in_zstd(compressed: &[u8]) -> std::io::Result<u64> {
    use std::io::Read;
    let mut decoder = zstd::stream::read::Decoder::new(compressed)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0;
    loop {
        match decoder.read(&mut buffer)? {
            0 => return Ok(lines),
            read => lines += memchr::memchr_iter(b'\n', &buffer[..read]).count() as u64,
        }
    }
}
