//! Writing task records into the archive: each open archive object is
//! rewritten whole with the records it held and the new ones, on condition
//! that it did not change in between, and an object whose content is not
//! known (after a restart, or a write whose answer was lost) is read back
//! first so that no record is added twice.

use aws_sdk_s3::primitives::ByteStream;

use sluice_core::archive::{self, Batch, TaskRecord};

use crate::s3;

/// What an archive object holds.
pub struct Written {
    /// Its NDJSON lines.
    pub lines: Vec<u8>,
    /// Its ETag, None while it does not exist.
    pub etag: Option<String>,
}

/// A batch not written, and what its object is still known to hold
/// (None when that has to be read again).
pub struct Unwritten {
    pub reason: String,
    pub known: Option<Written>,
}

/// Writes the object of `batch` with the records it held before and those
/// of the batch, conditional on it being unchanged since it was read or
/// last written, so a write never loses records another one added.
/// Without `known`, reads the object first and adds only the records it
/// does not hold yet: after a restart, or when a write whose answer was lost
/// did land.
pub async fn append(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    batch: &Batch,
    known: Option<Written>,
) -> Result<Written, Unwritten> {
    let unwritten = |reason: String| Unwritten {
        reason,
        known: None,
    };
    let (mut object, fresh): (Written, Vec<&TaskRecord>) = match known {
        Some(object) => (object, batch.records.iter().collect()),
        None => {
            let object = read_object(client, bucket, &batch.key)
                .await
                .map_err(unwritten)?;
            let held = archive::ids(&object.lines);
            let fresh: Vec<_> = batch
                .records
                .iter()
                .filter(|record| !held.contains(&record.id))
                .collect();
            if fresh.is_empty() {
                return Ok(object);
            }
            (object, fresh)
        }
    };
    let before = object.lines.len();
    for record in fresh {
        archive::encode_lines(std::slice::from_ref(record), &mut object.lines);
    }
    let (bytes, index) = archive::compress(&object.lines);
    let mut request = client
        .put_object()
        .bucket(bucket)
        .key(&batch.key)
        .content_type("application/x-ndjson")
        .content_encoding("zstd")
        .metadata(archive::INDEX_METADATA, index.to_string())
        .body(ByteStream::from(bytes));
    request = match &object.etag {
        Some(etag) => request.if_match(etag),
        None => request.if_none_match("*"),
    };
    match request.send().await {
        Ok(response) => {
            object.etag = Some(response.e_tag().unwrap_or_default().to_owned());
            Ok(object)
        }
        // Changed since: read it again next time.
        Err(err) if matches!(s3::status(&err), Some(412 | 409)) => Err(unwritten(format!(
            "changed since it was last read ({})",
            s3::describe(&err)
        ))),
        Err(err) => {
            object.lines.truncate(before);
            Err(Unwritten {
                reason: s3::describe(&err),
                known: Some(object),
            })
        }
    }
}

/// The lines and ETag of an archive object; none when it does not exist.
async fn read_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Written, String> {
    let response = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(response) => response,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
            return Ok(Written {
                lines: Vec::new(),
                etag: None,
            });
        }
        Err(err) => return Err(s3::describe(&err)),
    };
    let etag = response.e_tag().map(str::to_owned);
    let bytes = response
        .body
        .collect()
        .await
        .map_err(|err| err.to_string())?
        .into_bytes();
    let mut lines = archive::decompress(&bytes)?;
    if lines.last().is_some_and(|last| *last != b'\n') {
        lines.push(b'\n');
    }
    Ok(Written { lines, etag })
}
