//! The archive of finished tasks: one record per task that ended, kept in
//! S3 as zstd-compressed NDJSON objects partitioned by time and source:
//!
//! ```text
//! <prefix>/tasks/dt=2026-11-24/hour=13/<namespace>.<name>/<epoch>-<seq>.ndjson.zst
//! ```
//!
//! The `dt=`/`hour=` directories are Hive partitions, so DuckDB, Athena or
//! Spark read the layout directly, for example
//! `SELECT * FROM read_json('s3://bucket/prefix/tasks/*/*/*/*.ndjson.zst', hive_partitioning = true)`.
//! A batch's name is fixed before it is written (the coordinator's epoch and
//! a sequence number, both in its checkpoint), so writing it again after a
//! crash overwrites it instead of adding a copy.

use std::io::Write;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::{ObjectRef, TaskState};

/// Everything known about one task once it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: String,
    pub account: String,
    pub collection: String,
    /// The IngestSource, as `namespace/name`.
    pub source: String,
    /// `succeeded` or `failed` (for good).
    pub state: TaskState,
    /// The worker (pod) of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The last attempt (1 when the first succeeded).
    pub attempt: u32,
    pub objects: Vec<ObjectRef>,
    pub records: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub outputs: Vec<String>,
    pub created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<Timestamp>,
    pub finished: Timestamp,
    /// From the start of the last attempt to the end.
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Records to be written as one archive object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The object key, relative to the archive location's bucket.
    pub key: String,
    pub records: Vec<TaskRecord>,
}

/// Where the task records of one source live under the archive prefix.
pub fn tasks_prefix(prefix: Option<&str>) -> String {
    crate::s3::join(prefix, "tasks/")
}

/// Splits `records` into batches, one per hour partition, named
/// `<epoch>-<seq>` with `seq` counting up from `*next_seq`.
pub fn batches(
    prefix: Option<&str>,
    source: (&str, &str),
    epoch: u64,
    next_seq: &mut u64,
    records: Vec<TaskRecord>,
) -> Vec<Batch> {
    let mut by_hour: std::collections::BTreeMap<String, Vec<TaskRecord>> = Default::default();
    for record in records {
        let hour = record.finished.strftime("dt=%Y-%m-%d/hour=%H").to_string();
        by_hour.entry(hour).or_default().push(record);
    }
    let (namespace, name) = source;
    by_hour
        .into_iter()
        .map(|(partition, records)| {
            let seq = *next_seq;
            *next_seq += 1;
            Batch {
                key: format!(
                    "{}{partition}/{namespace}.{name}/{epoch:010}-{seq:08}.ndjson.zst",
                    tasks_prefix(prefix)
                ),
                records,
            }
        })
        .collect()
}

/// The bytes of an archive object: one JSON record per line, zstd-compressed.
pub fn encode(records: &[TaskRecord]) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 3).expect("zstd level 3 is valid");
    for record in records {
        serde_json::to_writer(&mut encoder, record).expect("a record always serializes");
        encoder
            .write_all(b"\n")
            .expect("writing to memory succeeds");
    }
    encoder.finish().expect("writing to memory succeeds")
}

/// Reads an archive object back.
pub fn decode(bytes: &[u8]) -> Result<Vec<TaskRecord>, String> {
    let text = zstd::decode_all(bytes).map_err(|err| format!("not zstd: {err}"))?;
    text.split(|byte| *byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            serde_json::from_slice(line).map_err(|err| format!("line {}: {err}", index + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, finished: &str) -> TaskRecord {
        TaskRecord {
            id: id.into(),
            account: "acme".into(),
            collection: "orders".into(),
            source: "shop/orders".into(),
            state: TaskState::Succeeded,
            worker: Some("orders-worker-0".into()),
            attempt: 1,
            objects: vec![ObjectRef {
                key: "in/a.ndjson".into(),
                size: 10,
                etag: "\"e\"".into(),
            }],
            records: 2,
            bytes_read: 10,
            bytes_written: 5,
            outputs: vec!["out/a.ndjson.zst".into()],
            created: "2026-11-24T12:59:00Z".parse().unwrap(),
            started: Some("2026-11-24T12:59:01Z".parse().unwrap()),
            finished: finished.parse().unwrap(),
            duration_ms: 1000,
            error: None,
        }
    }

    #[test]
    fn batches_are_partitioned_by_hour_and_named_by_epoch_and_sequence() {
        let mut seq = 7;
        let batches = batches(
            Some("archive/"),
            ("shop", "orders"),
            3,
            &mut seq,
            vec![
                record("3-1", "2026-11-24T13:00:01Z"),
                record("3-2", "2026-11-24T12:59:59Z"),
                record("3-3", "2026-11-24T13:30:00Z"),
            ],
        );
        let keys: Vec<_> = batches.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "archive/tasks/dt=2026-11-24/hour=12/shop.orders/0000000003-00000007.ndjson.zst",
                "archive/tasks/dt=2026-11-24/hour=13/shop.orders/0000000003-00000008.ndjson.zst",
            ]
        );
        assert_eq!(batches[1].records.len(), 2);
        assert_eq!(seq, 9);
    }

    #[test]
    fn records_round_trip_through_the_archive_format() {
        let records = vec![
            record("1-1", "2026-11-24T13:00:01Z"),
            record("1-2", "2026-11-24T13:00:02Z"),
        ];
        assert_eq!(decode(&encode(&records)).unwrap(), records);
        let text = String::from_utf8(zstd::decode_all(&encode(&records)[..]).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.contains("\"bytesRead\":10"), "{text}");
    }

    #[test]
    fn a_damaged_archive_object_names_the_line() {
        let bytes = zstd::encode_all(&b"{}\n"[..], 1).unwrap();
        assert!(decode(&bytes).unwrap_err().starts_with("line 1:"));
        assert!(decode(b"plain").unwrap_err().starts_with("not zstd"));
    }
}
