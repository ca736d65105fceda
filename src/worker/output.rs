//! Writes a task's records to its sink object as zstd-compressed NDJSON,
//! streaming: the compressed bytes are cut into parts and uploaded while
//! the records are still being decoded, so no whole output is held in
//! memory. A small output is one PUT; a large one a multipart upload.
//! Either becomes visible only after the worker has confirmed, right
//! before, that it still holds the task.
//!
//! Parquet can follow by putting another encoder in front of [`Parts`].

use std::io::Write;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::s3;

/// The size of an upload part (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Parts buffered between the encoder and the uploader, and parts in
/// flight: together they bound a task's output memory.
const PARTS_QUEUED: usize = 2;
const PARTS_IN_FLIGHT: usize = 4;
/// Level 1, not zstd's default 3: compression was most of a worker's CPU
/// (a profile of 64 MiB NDJSON objects: 65 % in zstd at level 3), and on
/// records readied for indexing level 1 compresses about twice as fast for
/// an output about 1.5 % larger (BENCHMARKS.md, Workers).
pub const ZSTD_LEVEL: i32 = 1;

/// The writing end, used from the blocking thread that decodes: records
/// go in as NDJSON and come out as compressed parts.
pub type Encoder = zstd::Encoder<'static, Parts>;

/// What the encoder hands the uploader.
pub enum Chunk {
    Part(Bytes),
    /// The output is complete. When the channel closes without it, the
    /// task failed and the upload is abandoned.
    End,
}

/// Creates an encoder whose parts reach the returned receiver.
pub fn encoder() -> (Encoder, mpsc::Receiver<Chunk>) {
    let (sender, receiver) = mpsc::channel(PARTS_QUEUED);
    let parts = Parts {
        buffer: Vec::with_capacity(PART_SIZE),
        sender,
        written: 0,
    };
    let encoder = zstd::Encoder::new(parts, ZSTD_LEVEL).expect("zstd level 1 is valid");
    (encoder, receiver)
}

/// Cuts the compressed stream into parts and hands them to the uploader.
pub struct Parts {
    buffer: Vec<u8>,
    sender: mpsc::Sender<Chunk>,
    written: u64,
}

impl Parts {
    fn send(&mut self, chunk: Chunk) -> std::io::Result<()> {
        self.sender
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the upload of the output stopped"))
    }

    fn send_part(&mut self) -> std::io::Result<()> {
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(PART_SIZE));
        self.send(Chunk::Part(Bytes::from(part)))
    }

    /// Ends an output that got no records: the uploader writes nothing.
    /// Callable from async code, as nothing was sent before it.
    pub fn end_empty(&mut self) -> std::io::Result<()> {
        self.buffer.clear();
        self.sender
            .try_send(Chunk::End)
            .map_err(|_| std::io::Error::other("the upload of the output stopped"))
    }

    /// Sends the last part and the end; the uploader then completes the
    /// object. Returns the bytes written.
    pub fn finish(mut self) -> std::io::Result<u64> {
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        self.send(Chunk::End)?;
        Ok(self.written)
    }
}

impl Write for Parts {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buffer.len() >= PART_SIZE {
            self.send_part()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why an output was not written.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The sink was unavailable ([`s3::unavailable`]): trying again later
    /// may succeed.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
    /// The worker no longer held the task when the output was ready, so
    /// it was not written.
    #[error("the lease was lost before the output was written; nothing was written")]
    Lost,
}

impl UploadError {
    fn stopped() -> Self {
        UploadError::Failed("the task stopped".into())
    }

    fn s3<E>(err: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> Self
    where
        E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
    {
        let message = s3::describe(err);
        if s3::unavailable(err) {
            UploadError::Unavailable(message)
        } else {
            UploadError::Failed(message)
        }
    }

    /// The same error, saying which object was being written.
    fn writing(self, bucket: &str, key: &str) -> Self {
        let say = |message| format!("cannot write s3://{bucket}/{key}: {message}");
        match self {
            UploadError::Unavailable(message) => UploadError::Unavailable(say(message)),
            UploadError::Failed(message) => UploadError::Failed(say(message)),
            UploadError::Lost => UploadError::Lost,
        }
    }
}

/// Uploads the parts from `receiver` as `bucket/key` once the end comes,
/// if `holds` (awaited once, right before the object would become visible)
/// says the worker still holds the task. Nothing is written when the
/// channel closes before the end (a failed task), or when it ends without a
/// part (a task without records). Returns whether an object was written.
pub async fn upload(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    mut receiver: mpsc::Receiver<Chunk>,
    holds: impl Future<Output = bool>,
) -> Result<bool, UploadError> {
    let failed = |err: UploadError| err.writing(bucket, key);
    let first = match receiver.recv().await {
        Some(Chunk::Part(part)) => part,
        Some(Chunk::End) => return Ok(false),
        None => return Err(failed(UploadError::stopped())),
    };
    let second = match receiver.recv().await {
        Some(Chunk::Part(part)) => part,
        Some(Chunk::End) => {
            if !holds.await {
                return Err(UploadError::Lost);
            }
            client
                .put_object()
                .bucket(bucket)
                .key(key)
                .content_type("application/x-ndjson")
                .content_encoding("zstd")
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|err| failed(UploadError::s3(&err)))?;
            return Ok(true);
        }
        None => return Err(failed(UploadError::stopped())),
    };
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .content_type("application/x-ndjson")
        .content_encoding("zstd")
        .send()
        .await
        .map_err(|err| failed(UploadError::s3(&err)))?;
    let upload_id = created.upload_id().unwrap_or_default().to_owned();
    let completed = upload_parts(client, bucket, key, &upload_id, [first, second], receiver).await;
    let completed = match completed {
        Ok(parts) => {
            if holds.await {
                client
                    .complete_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|err| UploadError::s3(&err))
            } else {
                Err(UploadError::Lost)
            }
        }
        Err(err) => Err(err),
    };
    if let Err(err) = completed {
        let _ = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(&upload_id)
            .send()
            .await;
        return Err(failed(err));
    }
    Ok(true)
}

/// Uploads parts as they come, several at once, until the end; fails when
/// a part fails or the channel closes without the end.
async fn upload_parts(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    first: [Bytes; 2],
    receiver: mpsc::Receiver<Chunk>,
) -> Result<Vec<CompletedPart>, UploadError> {
    let rest = futures::stream::unfold(receiver, |mut receiver| async {
        match receiver.recv().await {
            Some(Chunk::Part(part)) => Some((Ok(part), receiver)),
            Some(Chunk::End) => None,
            None => Some((Err(UploadError::stopped()), receiver)),
        }
    });
    futures::stream::iter(first.map(Ok))
        .chain(rest)
        .enumerate()
        .map(|(index, part)| async move {
            let number = index as i32 + 1;
            let uploaded = client
                .upload_part()
                .bucket(bucket)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .body(ByteStream::from(part?))
                .send()
                .await
                .map_err(|err| UploadError::s3(&err))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(uploaded.e_tag)
                .build())
        })
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task whose objects hold no records (empty objects, CSV headers
    /// alone) succeeds without writing: once, dropping the encoder made the
    /// uploader fail the task with "the task stopped".
    #[tokio::test]
    async fn an_output_without_records_is_not_written_and_not_an_error() {
        let offline = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::Config::builder()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .build(),
        );
        let (mut empty, parts) = encoder();
        empty.get_mut().end_empty().unwrap();
        drop(empty);
        assert!(matches!(
            upload(&offline, "sink", "out", parts, async { true }).await,
            Ok(false)
        ));

        let (failed, parts) = encoder();
        drop(failed);
        let stopped = upload(&offline, "sink", "out", parts, async { true })
            .await
            .unwrap_err();
        assert!(
            matches!(&stopped, UploadError::Failed(message) if message.ends_with("the task stopped")),
            "{stopped}"
        );
    }
}
