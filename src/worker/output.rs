//! Writes a task's records to its sink object as zstd-compressed NDJSON,
//! streaming: the records are compressed a frame at a time, and the
//! compressed bytes are cut into parts and uploaded while the records are
//! still being decoded, so no whole output is held in memory. A small
//! output is one PUT; a large one a multipart upload. Either becomes
//! visible only after the worker has confirmed, right before, that it
//! still holds the task.
//!
//! Parquet can follow by putting another encoder in front of the parts.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use crate::s3;
use crate::worker::decode::Lines;

/// The size of an upload part (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
/// Records compressed together into one zstd frame. The output is a
/// sequence of such frames, which every zstd reader reads as one stream.
/// Compressing a whole frame from one buffer is about a sixth cheaper than
/// streaming the same bytes through one frame (whose window then wraps
/// around zstd's buffer: BENCHMARKS.md, Workers), and a frame of 4 MiB
/// compresses as well as one stream.
pub const FRAME_SIZE: usize = 4 << 20;
/// Room for a frame: [`FRAME_SIZE`] and the line that crosses it (a longer
/// line makes the frame grow).
const FRAME_CAPACITY: usize = FRAME_SIZE + (1 << 20);
/// Parts buffered between the encoder and the uploader, and parts in
/// flight: together they bound a task's output memory.
const PARTS_QUEUED: usize = 2;
const PARTS_IN_FLIGHT: usize = 4;
/// Level 1, not zstd's default 3: compression was most of a worker's CPU
/// (a profile of 64 MiB NDJSON objects: 65 % in zstd at level 3), and on
/// records readied for indexing level 1 compresses about twice as fast for
/// an output about 1.5 % larger (BENCHMARKS.md, Workers).
pub const ZSTD_LEVEL: i32 = 1;

/// What the encoder hands the uploader.
pub enum Chunk {
    Part(Bytes),
    /// The output is complete. When the channel closes without it, the
    /// task failed and the upload is abandoned.
    End,
}

/// The writing end, used from the blocking thread that decodes: records
/// go in as NDJSON and come out as compressed parts.
pub struct Encoder {
    /// Records not compressed yet, up to [`FRAME_SIZE`], and how many.
    frame: Vec<u8>,
    frame_records: u64,
    compressor: zstd::bulk::Compressor<'static>,
    /// The last frame compressed.
    compressed: Vec<u8>,
    /// Compressed frames not sent yet, up to [`PART_SIZE`].
    part: Vec<u8>,
    sender: mpsc::Sender<Chunk>,
    written: u64,
    /// Records (lines) compressed so far, for the task's heartbeats.
    records: Arc<AtomicU64>,
}

/// Creates an encoder whose parts reach the returned receiver, and which
/// adds the records (lines) it compresses to `records`, a frame at a time.
pub fn encoder(records: Arc<AtomicU64>) -> (Encoder, mpsc::Receiver<Chunk>) {
    let (sender, receiver) = mpsc::channel(PARTS_QUEUED);
    let encoder = Encoder {
        frame: Vec::with_capacity(FRAME_CAPACITY),
        frame_records: 0,
        compressor: zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level 1 is valid"),
        compressed: Vec::with_capacity(compressed_capacity()),
        part: Vec::with_capacity(part_capacity()),
        sender,
        written: 0,
        records,
    };
    (encoder, receiver)
}

/// Room for a frame compressed.
fn compressed_capacity() -> usize {
    zstd::zstd_safe::compress_bound(FRAME_CAPACITY)
}

/// Room for a part: it is sent once it holds [`PART_SIZE`] bytes, so the
/// compressed frame that fills it is the most it can hold beyond. Each
/// buffer of the encoder is allocated at its full size at once: growing
/// a part by doubling copied it and faulted its pages in again, several
/// times per part (BENCHMARKS.md, Workers).
fn part_capacity() -> usize {
    PART_SIZE + compressed_capacity()
}

impl Encoder {
    fn send(&mut self, chunk: Chunk) -> io::Result<()> {
        self.sender
            .blocking_send(chunk)
            .map_err(|_| io::Error::other("the upload of the output stopped"))
    }

    /// Compresses the records held into a frame, and sends the part when
    /// it is full.
    fn compress_frame(&mut self) -> io::Result<()> {
        self.compressed.clear();
        self.compressed
            .reserve(zstd::zstd_safe::compress_bound(self.frame.len()));
        self.compressor
            .compress_to_buffer(&self.frame, &mut self.compressed)?;
        self.records
            .fetch_add(self.frame_records, Ordering::Relaxed);
        self.frame.clear();
        self.frame_records = 0;
        self.part.extend_from_slice(&self.compressed);
        self.written += self.compressed.len() as u64;
        if self.part.len() >= PART_SIZE {
            let part = std::mem::replace(&mut self.part, Vec::with_capacity(part_capacity()));
            self.send(Chunk::Part(Bytes::from(part)))?;
        }
        Ok(())
    }

    /// Ends an output that got no records: the uploader writes nothing.
    /// Callable from async code, as nothing was sent before it.
    pub fn end_empty(&mut self) -> io::Result<()> {
        self.frame.clear();
        self.sender
            .try_send(Chunk::End)
            .map_err(|_| io::Error::other("the upload of the output stopped"))
    }

    /// Compresses what is left, sends the last part and the end; the
    /// uploader then completes the object. Returns the bytes written.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.frame.is_empty() {
            self.compress_frame()?;
        }
        if !self.part.is_empty() {
            let part = std::mem::take(&mut self.part);
            self.send(Chunk::Part(Bytes::from(part)))?;
        }
        self.send(Chunk::End)?;
        Ok(self.written)
    }
}

impl Lines for Encoder {
    fn line(&mut self, pieces: &[&[u8]]) -> io::Result<()> {
        for piece in pieces {
            self.frame.extend_from_slice(piece);
        }
        self.frame_records += 1;
        if self.frame.len() >= FRAME_SIZE {
            self.compress_frame()?;
        }
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

    /// An output longer than a frame is several zstd frames, cut after the
    /// line that fills a frame, which a zstd reader reads back as the
    /// records written, in order; the records are counted as each frame is
    /// compressed.
    #[test]
    fn a_long_output_is_frames_that_read_back_as_one_stream() {
        let counted = Arc::new(AtomicU64::new(0));
        let (mut encoder, mut parts) = encoder(counted.clone());
        let uploader = std::thread::spawn(move || {
            let (mut object, mut ended) = (Vec::new(), false);
            while let Some(chunk) = parts.blocking_recv() {
                match chunk {
                    Chunk::Part(part) => object.extend_from_slice(&part),
                    Chunk::End => ended = true,
                }
            }
            assert!(ended, "the output ends with its end");
            object
        });
        let records: String = (0..300_000)
            .map(|n| format!("{{\"n\":{n},\"pad\":\"{}\"}}\n", "x".repeat(n % 50)))
            .collect();
        assert!(records.len() > 2 * FRAME_SIZE);
        for line in records.split_inclusive('\n') {
            let (key, rest) = line.split_at(5);
            encoder.line(&[key.as_bytes(), rest.as_bytes()]).unwrap();
        }
        // The frames compressed so far, not the last one being gathered.
        let so_far = counted.load(Ordering::Relaxed);
        assert!(so_far > 0 && so_far < 300_000, "{so_far}");
        let written = encoder.finish().unwrap();
        assert_eq!(counted.load(Ordering::Relaxed), 300_000);
        let object = uploader.join().unwrap();
        assert_eq!(written, object.len() as u64);
        // Every frame but the last is the first lines that reach FRAME_SIZE.
        let mut frames = Vec::new();
        let mut rest = &object[..];
        while !rest.is_empty() {
            let frame = zstd::zstd_safe::find_frame_compressed_size(rest).unwrap();
            frames.push(zstd::decode_all(&rest[..frame]).unwrap());
            rest = &rest[frame..];
        }
        let (last, full) = frames.split_last().unwrap();
        assert!(full.len() >= 2);
        for frame in full {
            let without_its_last_line = frame[..frame.len() - 1]
                .iter()
                .rposition(|&b| b == b'\n')
                .unwrap();
            assert!(frame.len() >= FRAME_SIZE && without_its_last_line < FRAME_SIZE);
            assert_eq!(frame.last(), Some(&b'\n'));
        }
        assert!(!last.is_empty() && last.len() < FRAME_SIZE);
        assert_eq!(zstd::decode_all(&object[..]).unwrap(), records.as_bytes());
    }

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
        let (mut empty, parts) = encoder(Arc::default());
        empty.end_empty().unwrap();
        drop(empty);
        assert!(matches!(
            upload(&offline, "sink", "out", parts, async { true }).await,
            Ok(false)
        ));

        let (failed, parts) = encoder(Arc::default());
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
