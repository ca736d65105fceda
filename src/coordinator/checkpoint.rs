//! The coordinator's checkpoint in S3, fenced so that two coordinators of
//! one source can never both advance it.
//!
//! Under `<archive prefix>/checkpoints/<namespace>.<name>/`:
//! - `manifest.json.zst`: the epoch, the finished-key segments, the tasks
//!   not yet archived (with their objects, so a restart recreates the same
//!   tasks and output names), the archive batches not yet known written,
//!   and the totals. zstd-compressed JSON.
//! - `segments/<sha256>.fst`: immutable sets of finished keys, named by
//!   their content, referenced by the manifest.
//!
//! Fencing: a coordinator that starts reads the manifest and rewrites it
//! with the next epoch, on condition that it is unchanged (`If-Match` its
//! ETag, or `If-None-Match: *` when there is none). Every later write is
//! conditional on the ETag of its own previous write, so once another
//! coordinator has claimed a newer epoch, the older one's next write fails
//! with 412 and it stops.
//!
//! That holds only on a store that refuses a PUT whose condition fails.
//! Some do not (moto 4, gateways that drop the headers), so a claim first
//! proves it on a probe object, and refuses to start on a store that
//! accepts either kind of failing condition.

use std::collections::HashSet;

use aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use sluice_core::archive::Batch;
use sluice_core::layout;
use sluice_core::location::S3Location;

use super::finished::Segment;
use super::tasks::{Planned, Totals};
use crate::s3;

/// Segment downloads in flight while resuming.
const PARALLEL_LOADS: usize = 8;

/// What the checkpoint keeps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub epoch: u64,
    /// Set when a start found no checkpoint and began from zero; it goes
    /// into every output name (see [`sluice_core::layout::Sink`]). None in
    /// checkpoints from before lineages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<Timestamp>,
    /// Finished-key segments, oldest first.
    pub segments: Vec<SegmentRef>,
    /// Tasks planned and not yet archived.
    pub tasks: Vec<Planned>,
    /// Archive batches that may not have been written yet.
    pub outbox: Vec<Batch>,
    pub totals: Totals,
    /// The latest redrives done, so that none is done twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redrives: Vec<crate::crd::Redriven>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SegmentRef {
    pub name: String,
    pub keys: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "checkpoint s3://{bucket}/{key} was taken over by another coordinator of this source \
         (epoch {theirs}, this one is epoch {ours}); this coordinator stops"
    )]
    Fenced {
        bucket: String,
        key: String,
        ours: u64,
        theirs: String,
    },
    #[error(
        "checkpoint s3://{bucket}/{key} cannot be read: {reason}. Refusing to start from zero, \
         which would ingest everything again: restore the object (or an older version of it), \
         or delete the checkpoint's manifest s3://{bucket}/{manifest} to start over deliberately \
         (in a new lineage, beside the earlier output)"
    )]
    Corrupt {
        bucket: String,
        key: String,
        reason: String,
        manifest: String,
    },
    #[error(
        "the S3 store at {endpoint} accepted a PUT of s3://{bucket}/{key} with `{condition}` \
         that should have failed: it ignores conditional writes, so nothing would keep two \
         coordinators of this source from both writing its checkpoint (lost or duplicated \
         records). This coordinator refuses to start: use a store that refuses a PUT whose \
         If-None-Match or If-Match fails (AWS S3, MinIO, moto 5)"
    )]
    Unfenced {
        endpoint: String,
        bucket: String,
        key: String,
        condition: &'static str,
    },
    #[error("checkpoint s3://{bucket}/{key}: {reason}")]
    S3 {
        bucket: String,
        key: String,
        reason: String,
    },
}

/// The checkpoint of one source, as held by the coordinator of one epoch.
pub struct Checkpoint {
    client: aws_sdk_s3::Client,
    bucket: String,
    dir: String,
    epoch: u64,
    /// The ETag of this coordinator's last write: the fence.
    etag: String,
    uploaded: HashSet<String>,
}

/// What a starting coordinator resumes from.
pub struct Resumed {
    pub manifest: Manifest,
    pub segments: Vec<Segment>,
}

impl Checkpoint {
    /// Claims the next epoch of the checkpoint of `namespace/name` under
    /// `location`, and loads what it holds, once the store has shown that
    /// it honours the conditions the fence relies on.
    pub async fn claim(
        client: aws_sdk_s3::Client,
        location: &S3Location,
        namespace: &str,
        name: &str,
    ) -> Result<(Checkpoint, Resumed), CheckpointError> {
        let dir = layout::checkpoint_dir(location.prefix.as_deref(), namespace, name);
        let mut checkpoint = Checkpoint {
            client,
            bucket: location.bucket.clone(),
            dir,
            epoch: 0,
            etag: String::new(),
            uploaded: HashSet::new(),
        };
        checkpoint.prove_fencing(location).await?;
        loop {
            let (mut manifest, condition) = match checkpoint.read_manifest().await? {
                Some((manifest, etag)) => (manifest, Condition::Matches(etag)),
                None => (
                    Manifest {
                        lineage: Some(format!("{:08x}", rand::random::<u32>())),
                        ..Manifest::default()
                    },
                    Condition::Absent,
                ),
            };
            // Everything is read before the claim: a damaged checkpoint is
            // refused with nothing written to it.
            let segments = checkpoint.load_segments(&manifest.segments).await?;
            manifest.epoch += 1;
            checkpoint.epoch = manifest.epoch;
            match checkpoint.put_manifest(&manifest, condition).await {
                Ok(etag) => {
                    checkpoint.etag = etag;
                    checkpoint
                        .uploaded
                        .extend(manifest.segments.iter().map(|s| s.name.clone()));
                    return Ok((checkpoint, Resumed { manifest, segments }));
                }
                // Another coordinator wrote in between: read again.
                Err(CheckpointError::Fenced { .. }) => continue,
                Err(err) => return Err(err),
            }
        }
    }

    /// Fails with [`CheckpointError::Unfenced`] unless the store refuses
    /// both a PUT with `If-None-Match: *` over an existing object and one
    /// with a wrong `If-Match`. The probe object has a name of its own, so
    /// coordinators starting at once do not disturb each other's proof.
    async fn prove_fencing(&self, location: &S3Location) -> Result<(), CheckpointError> {
        let key = format!("{}probes/{:016x}", self.dir, rand::random::<u64>());
        let proof = self.refuses_failed_conditions(&key, location).await;
        if let Err(err) = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            tracing::warn!(object = %key, error = %s3::describe(&err), "cannot delete the fencing probe; it is only garbage");
        }
        proof
    }

    async fn refuses_failed_conditions(
        &self,
        key: &str,
        location: &S3Location,
    ) -> Result<(), CheckpointError> {
        let put = |condition: Option<Condition>| {
            let request = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .body(ByteStream::from_static(b"sluice fencing probe"));
            match condition {
                Some(condition) => condition.on(request),
                None => request,
            }
            .send()
        };
        put(None)
            .await
            .map_err(|err| self.s3_error(key, s3::describe(&err)))?;
        let failing = [
            (Condition::Absent, "If-None-Match: *"),
            (Condition::Matches("\"0\"".into()), "If-Match: \"0\""),
        ];
        for (condition, written) in failing {
            match put(Some(condition)).await {
                Err(err) if matches!(s3::status(&err), Some(412 | 409)) => {}
                Err(err) => return Err(self.s3_error(key, s3::describe(&err))),
                Ok(_) => {
                    return Err(CheckpointError::Unfenced {
                        endpoint: location.endpoint.clone().unwrap_or_else(|| "AWS".into()),
                        bucket: self.bucket.clone(),
                        key: key.to_owned(),
                        condition: written,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `s3://bucket/key` of the manifest, for messages.
    pub fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.manifest_key())
    }

    /// Writes `manifest` (after uploading any segment it names that is not
    /// in S3 yet). Fails with [`CheckpointError::Fenced`] once another
    /// coordinator has claimed the checkpoint.
    pub async fn write(
        &mut self,
        manifest: &Manifest,
        segments: &[&Segment],
    ) -> Result<(), CheckpointError> {
        for segment in segments {
            if !self.uploaded.contains(segment.name()) {
                let key = self.segment_key(segment.name());
                self.client
                    .put_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    // The segment's own bytes, not a copy: a merged segment
                    // can be a large share of the coordinator's memory.
                    .body(ByteStream::from(Bytes::from_owner((*segment).clone())))
                    .send()
                    .await
                    .map_err(|err| self.s3_error(&key, s3::describe(&err)))?;
                self.uploaded.insert(segment.name().to_owned());
            }
        }
        let etag = match self
            .put_manifest(manifest, Condition::Matches(self.etag.clone()))
            .await
        {
            Err(fenced @ CheckpointError::Fenced { .. }) => match self.own_lost_write().await {
                Some(etag) => {
                    self.put_manifest(manifest, Condition::Matches(etag))
                        .await?
                }
                None => return Err(fenced),
            },
            written => written?,
        };
        self.etag = etag;
        Ok(())
    }

    /// The ETag of the manifest when it is still of this coordinator's
    /// epoch although not the one it last knew: a write of its own landed
    /// but the answer was lost (S3 restarted, the connection broke). A
    /// claim always raises the epoch, so no other coordinator wrote it.
    async fn own_lost_write(&self) -> Option<String> {
        match self.read_manifest().await {
            Ok(Some((manifest, etag))) if manifest.epoch == self.epoch => {
                tracing::info!(
                    checkpoint = %self.location(),
                    "the checkpoint holds a write of this coordinator whose answer was lost"
                );
                Some(etag)
            }
            _ => None,
        }
    }

    /// Checks, without writing, that no other coordinator has claimed the
    /// checkpoint since this one's last write (a conditional HEAD). Fails
    /// with [`CheckpointError::Fenced`] once one has.
    pub async fn verify(&mut self) -> Result<(), CheckpointError> {
        let key = self.manifest_key();
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .if_match(&self.etag)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if s3::status(&err) == Some(412) => match self.own_lost_write().await {
                Some(etag) => {
                    self.etag = etag;
                    Ok(())
                }
                None => Err(self.fenced(key).await),
            },
            Err(err) => Err(self.s3_error(&key, s3::describe(&err))),
        }
    }

    async fn fenced(&self, key: String) -> CheckpointError {
        let theirs = match self.read_manifest().await {
            Ok(Some((theirs, _))) => theirs.epoch.to_string(),
            _ => "unknown".to_owned(),
        };
        CheckpointError::Fenced {
            bucket: self.bucket.clone(),
            key,
            ours: self.epoch,
            theirs,
        }
    }

    /// Deletes segments no manifest refers to any more. Only called after a
    /// manifest without them was written, so no coordinator can need them.
    pub async fn delete_segments(&mut self, names: &[String]) {
        for name in names {
            let key = self.segment_key(name);
            if let Err(err) = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                tracing::warn!(object = %key, error = %s3::describe(&err), "cannot delete an old checkpoint segment; it is only garbage");
            }
            self.uploaded.remove(name);
        }
    }

    fn manifest_key(&self) -> String {
        layout::checkpoint_manifest(&self.dir)
    }

    fn segment_key(&self, name: &str) -> String {
        format!("{}segments/{name}.fst", self.dir)
    }

    fn s3_error(&self, key: &str, reason: String) -> CheckpointError {
        CheckpointError::S3 {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason,
        }
    }

    fn corrupt(&self, key: &str, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            bucket: self.bucket.clone(),
            key: key.to_owned(),
            reason,
            manifest: self.manifest_key(),
        }
    }

    /// The bytes and ETag of `key`, or None when there is no such object.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, CheckpointError> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(response) => response,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Ok(None);
            }
            Err(err) => return Err(self.s3_error(key, s3::describe(&err))),
        };
        let etag = response.e_tag().unwrap_or_default().to_owned();
        let length = response.content_length().unwrap_or(0);
        let bytes = read_body(response.body, length)
            .await
            .map_err(|err| self.s3_error(key, err.to_string()))?;
        Ok(Some((bytes, etag)))
    }

    async fn read_manifest(&self) -> Result<Option<(Manifest, String)>, CheckpointError> {
        let key = self.manifest_key();
        let Some((bytes, etag)) = self.get(&key).await? else {
            return Ok(None);
        };
        let manifest = decode_manifest(&bytes).map_err(|reason| self.corrupt(&key, reason))?;
        Ok(Some((manifest, etag)))
    }

    async fn put_manifest(
        &self,
        manifest: &Manifest,
        condition: Condition,
    ) -> Result<String, CheckpointError> {
        let key = self.manifest_key();
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .content_encoding("zstd")
            .body(ByteStream::from(encode_manifest(manifest)));
        match condition.on(request).send().await {
            Ok(response) => Ok(response.e_tag().unwrap_or_default().to_owned()),
            // 412: the condition failed; 409: a concurrent conditional
            // write won (AWS).
            Err(err) if matches!(s3::status(&err), Some(412 | 409)) => Err(self.fenced(key).await),
            Err(err) => Err(self.s3_error(&key, s3::describe(&err))),
        }
    }

    async fn load_segments(&self, refs: &[SegmentRef]) -> Result<Vec<Segment>, CheckpointError> {
        futures::stream::iter(refs)
            .map(|segment| async move {
                let key = self.segment_key(&segment.name);
                let (bytes, _) = self.get(&key).await?.ok_or_else(|| {
                    self.corrupt(&key, "the manifest names it but it does not exist".into())
                })?;
                Segment::from_bytes(&segment.name, bytes)
                    .map_err(|err| self.corrupt(&key, err.to_string()))
            })
            .buffered(PARALLEL_LOADS)
            .try_collect()
            .await
    }
}

/// Reads a body of (announced) `length` bytes into one buffer, chunk by
/// chunk: collecting it first and copying it out would hold a large segment
/// twice.
async fn read_body(
    mut body: ByteStream,
    length: i64,
) -> Result<Vec<u8>, aws_sdk_s3::primitives::ByteStreamError> {
    let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    while let Some(chunk) = body.try_next().await? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What a conditional PUT requires of the object it replaces.
enum Condition {
    /// There is none (`If-None-Match: *`).
    Absent,
    /// It has this ETag (`If-Match`).
    Matches(String),
}

impl Condition {
    fn on(self, request: PutObjectFluentBuilder) -> PutObjectFluentBuilder {
        match self {
            Condition::Absent => request.if_none_match("*"),
            Condition::Matches(etag) => request.if_match(etag),
        }
    }
}

fn encode_manifest(manifest: &Manifest) -> Vec<u8> {
    let json = serde_json::to_vec(manifest).expect("a manifest always serializes");
    zstd::encode_all(&json[..], 3).expect("compressing in memory succeeds")
}

fn decode_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let json = zstd::decode_all(bytes).map_err(|err| format!("not zstd-compressed: {err}"))?;
    serde_json::from_slice(&json).map_err(|err| format!("not a sluice checkpoint manifest: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_round_trip() {
        let manifest = Manifest {
            epoch: 4,
            written: Some("2026-11-24T13:00:00Z".parse().unwrap()),
            segments: vec![SegmentRef {
                name: "ab".into(),
                keys: 2,
            }],
            ..Manifest::default()
        };
        assert_eq!(
            decode_manifest(&encode_manifest(&manifest)).unwrap(),
            manifest
        );
    }

    #[tokio::test]
    async fn a_body_is_read_whole_whatever_length_was_announced() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        for announced in [data.len() as i64, 0, -1, 10] {
            let read = read_body(ByteStream::from(data.clone()), announced)
                .await
                .unwrap();
            assert_eq!(read, data, "announced {announced}");
        }
    }

    #[test]
    fn an_uploaded_segment_is_its_own_bytes() {
        let mut keys = super::super::finished::FinishedKeys::default();
        keys.insert(
            "logs/a",
            super::super::finished::Finished {
                fingerprint: 7,
                failed: false,
            },
        );
        let segment = keys.seal().unwrap().clone();
        let body = Bytes::from_owner(segment.clone());
        assert_eq!(&body[..], segment.bytes());
        assert_eq!(body.as_ptr(), segment.bytes().as_ptr(), "not a copy");
    }

    #[test]
    fn damaged_manifests_say_what_is_wrong() {
        assert!(decode_manifest(b"{}").unwrap_err().contains("not zstd"));
        let bytes = zstd::encode_all(&b"{\"epoch\": \"x\"}"[..], 1).unwrap();
        let err = decode_manifest(&bytes).unwrap_err();
        assert!(err.contains("not a sluice checkpoint manifest"), "{err}");
    }
}
