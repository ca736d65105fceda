//! The archive of finished tasks: one record per task that ended, kept in
//! S3 as zstd-compressed NDJSON objects partitioned by time and source:
//!
//! ```text
//! <prefix>/tasks/dt=2026-11-24/hour=13/account=acme/collection=orders/source=<namespace>%2F<name>/<epoch>-<seq>.ndjson.zst
//! ```
//!
//! Every directory is a Hive partition, so DuckDB, Athena, Trino or Spark
//! read the layout directly, for example
//! `SELECT * FROM read_json('s3://bucket/prefix/tasks/**/*.ndjson.zst', hive_partitioning = true)`,
//! and a reader that filters by time, account, collection or source reads
//! only the objects whose key can hold a match ([`ObjectKey`]). Each
//! partition holds the value of the record's field of the same name, since
//! such readers show the partition's value in place of the field's: the
//! source's `/` is written `%2F`, as Hive escapes it and as they unescape
//! it.
//!
//! Few objects, so that reading a day of them is fast: the coordinator
//! appends each flush's records to one open object per hour partition,
//! rewriting it whole ([`Appender`]), until it holds [`MAX_OBJECT_BYTES`] or
//! its hour is over. An object's name is fixed before its records are
//! written (the coordinator's epoch and a sequence number, both in its
//! checkpoint), and every write holds the records written before, so
//! writing it again after a crash overwrites it instead of adding a copy.
//!
//! Inside an object, records are grouped by state, one zstd frame per
//! state, and the object's metadata holds the [`Index`] of its frames: any
//! zstd reader sees one NDJSON stream, and a reader of the failed tasks
//! only fetches theirs. Objects written before (with the source directory
//! `<namespace>.<name>` and the index in a zstd skippable frame at the
//! start, which zstd readers in Java refuse) are still read
//! ([`legacy_index`]).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::api::{ObjectRef, TaskState};
use crate::id::{SourceId, TaskId};

/// Everything known about one task once it ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: TaskId,
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

/// Records that belong in one archive object.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Batch {
    /// The object key, relative to the archive location's bucket.
    pub key: String,
    /// Records the object must hold, after those it already holds (a
    /// record already in it, by task id, is not added again).
    pub records: Vec<TaskRecord>,
}

/// An archive object takes no more records once its NDJSON (before
/// compression) is this large: it bounds what a flush rewrites and what the
/// coordinator holds, and still makes objects large enough that reading a
/// busy day takes few requests.
pub const MAX_OBJECT_BYTES: usize = 8 << 20;

/// An hour's open object still takes records that finished in that hour
/// this long after it ended (tasks are archived at the next flush, seconds
/// later); later ones start a new object.
const LATE: SignedDuration = SignedDuration::from_mins(10);

/// Where the task records live under the archive prefix.
pub fn tasks_prefix(prefix: Option<&str>) -> String {
    crate::layout::join(prefix, "tasks/")
}

/// The start of the hour `at` falls in (UTC).
pub fn hour_of(at: Timestamp) -> Timestamp {
    let second = at.as_second();
    Timestamp::from_second(second - second.rem_euclid(3600)).expect("an hour start is in range")
}

/// The time partition of the hour starting at `hour`: `dt=YYYY-MM-DD/hour=HH`.
pub fn partition(hour: Timestamp) -> String {
    format!("{}/{}", day_partition(hour), hour.strftime("hour=%H"))
}

/// The day's partition `at` falls in (UTC): `dt=YYYY-MM-DD`.
pub fn day_partition(at: Timestamp) -> String {
    at.strftime("dt=%Y-%m-%d").to_string()
}

/// The start (UTC) of the day a partition directory (`dt=YYYY-MM-DD/`)
/// stands for, or `None` for another name.
pub fn day_of_partition(directory: &str) -> Option<Timestamp> {
    let date: jiff::civil::Date = directory
        .strip_prefix("dt=")?
        .strip_suffix('/')?
        .parse()
        .ok()?;
    Some(date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp())
}

/// `account=A/collection=C/source=NAMESPACE%2FNAME`: the directory of
/// `source`'s objects below a time partition.
fn source_dir(source: &SourceId) -> String {
    format!(
        "account={}/collection={}/source={}%2F{}",
        source.account, source.collection, source.namespace, source.name
    )
}

/// Decides which archive object each finished task's record goes to: one
/// open object per hour partition, named `<epoch>-<seq>` with `seq` counting
/// up, that each flush appends to until it holds [`MAX_OBJECT_BYTES`] or
/// its hour is over. Plain state: the coordinator does the writing.
#[derive(Debug)]
pub struct Appender {
    tasks_prefix: String,
    source_dir: String,
    epoch: u64,
    next_seq: u64,
    /// By hour start.
    open: BTreeMap<Timestamp, Open>,
}

#[derive(Debug)]
struct Open {
    key: String,
    /// NDJSON bytes assigned to it so far.
    bytes: usize,
}

impl Appender {
    /// An appender of `source`'s records for the coordinator of `epoch`,
    /// under the archive `prefix`. Objects of earlier epochs are never
    /// appended to.
    pub fn new(prefix: Option<&str>, source: &SourceId, epoch: u64) -> Self {
        Self {
            tasks_prefix: tasks_prefix(prefix),
            source_dir: source_dir(source),
            epoch,
            next_seq: 1,
            open: BTreeMap::new(),
        }
    }

    /// Assigns `records` to objects (by the hour they finished in) and
    /// returns one batch per object that takes some, in key order. At
    /// `now`, hours long over are closed first.
    pub fn append(&mut self, records: Vec<TaskRecord>, now: Timestamp) -> Vec<Batch> {
        self.open
            .retain(|hour, _| *hour + SignedDuration::from_hours(1) + LATE > now);
        let mut batches: BTreeMap<String, Vec<TaskRecord>> = BTreeMap::new();
        for record in records {
            let size = line_len(&record);
            let hour = hour_of(record.finished);
            let full = self
                .open
                .get(&hour)
                .is_some_and(|open| open.bytes > 0 && open.bytes + size > MAX_OBJECT_BYTES);
            if full || !self.open.contains_key(&hour) {
                let key = format!(
                    "{}{}/{}/{:010}-{:08}.ndjson.zst",
                    self.tasks_prefix,
                    partition(hour),
                    self.source_dir,
                    self.epoch,
                    self.next_seq
                );
                self.next_seq += 1;
                self.open.insert(hour, Open { key, bytes: 0 });
            }
            let open = self.open.get_mut(&hour).expect("inserted above");
            open.bytes += size;
            batches.entry(open.key.clone()).or_default().push(record);
        }
        batches
            .into_iter()
            .map(|(key, records)| Batch { key, records })
            .collect()
    }

    /// Whether later records may still be appended to `key`.
    pub fn is_open(&self, key: &str) -> bool {
        self.open.values().any(|open| open.key == key)
    }
}

/// The length of `record`'s NDJSON line, newline included.
fn line_len(record: &TaskRecord) -> usize {
    struct Count(usize);
    impl Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(1);
    serde_json::to_writer(&mut count, record).expect("a record always serializes");
    count.0
}

/// Appends `records` to `lines` as NDJSON, one record per line.
pub fn encode_lines(records: &[TaskRecord], lines: &mut Vec<u8>) {
    for record in records {
        serde_json::to_writer(&mut *lines, record).expect("a record always serializes");
        lines.push(b'\n');
    }
}

/// The user metadata key (`x-amz-meta-sluice-frames`) that holds an
/// archive object's [`Index`].
pub const INDEX_METADATA: &str = "sluice-frames";

/// What an archive object holds, frame by frame: its records are grouped
/// by state, one zstd frame per state, so a reader that wants only the
/// failed tasks fetches only their frame (a ranged GET). Kept in the
/// object's metadata as `STATE:RECORDS:BYTES` per frame, comma-separated
/// (`failed:2:310,succeeded:98:9120`; `unknown` for a frame of mixed state).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Index {
    pub frames: Vec<Frame>,
}

impl Index {
    /// The bytes to read for the records of `state`: from the first to the
    /// end of the last frame that holds them (or records of unknown state),
    /// for an object of `size` bytes whose frames start at `start`. `None`
    /// when no frame does; an error when the index does not fit the object
    /// (damaged or crafted), so the reader reads it whole instead.
    pub fn range_of(
        &self,
        state: TaskState,
        start: u64,
        size: u64,
    ) -> Result<Option<std::ops::Range<u64>>, String> {
        let mut offset = start;
        let mut wanted: Option<std::ops::Range<u64>> = None;
        for frame in &self.frames {
            let end = offset
                .checked_add(frame.bytes)
                .filter(|end| *end <= size)
                .ok_or_else(|| format!("its index names frames past its end ({size} bytes)"))?;
            if frame.state.is_none_or(|frame_state| frame_state == state) {
                wanted = Some(wanted.map_or(offset, |range| range.start)..end);
            }
            offset = end;
        }
        Ok(wanted.filter(|range| !range.is_empty()))
    }
}

/// One zstd frame of an archive object (deserialized from the legacy
/// layout's JSON index).
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The state of every record in it; None when it is not known.
    #[serde(default)]
    pub state: Option<TaskState>,
    pub records: u64,
    /// Its compressed length.
    pub bytes: u64,
}

impl std::fmt::Display for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, frame) in self.frames.iter().enumerate() {
            let state = frame.state.map_or("unknown", TaskState::as_str);
            let comma = if i == 0 { "" } else { "," };
            write!(f, "{comma}{state}:{}:{}", frame.records, frame.bytes)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Index {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let frame = |part: &str| -> Option<Frame> {
            let mut fields = part.split(':');
            let state = match fields.next()? {
                "unknown" => None,
                state => Some(state.parse().ok()?),
            };
            let frame = Frame {
                state,
                records: fields.next()?.parse().ok()?,
                bytes: fields.next()?.parse().ok()?,
            };
            fields.next().is_none().then_some(frame)
        };
        let frames = text
            .split(',')
            .filter(|part| !part.is_empty())
            .map(|part| frame(part).ok_or_else(|| format!("not a frame: {part:?}")))
            .collect::<Result<_, _>>()?;
        Ok(Self { frames })
    }
}

/// The index archive objects held before it moved to their metadata: a
/// zstd skippable frame at the start, JSON inside.
#[derive(Deserialize)]
struct LegacyIndex {
    frames: Vec<Frame>,
}

/// The magic number of the skippable frame that opened archive objects
/// written before their index moved to their metadata.
const LEGACY_INDEX_MAGIC: u32 = 0x184D_2A50;

/// The state a line's record has, read without parsing it (the writer puts
/// `"state":"…"` there; a JSON string cannot hold an unescaped quote, so
/// the first one is the field).
fn line_state(line: &[u8]) -> Option<TaskState> {
    const FIELD: &[u8] = b"\"state\":\"";
    let start = memchr::memmem::find(line, FIELD)? + FIELD.len();
    let length = memchr::memchr(b'"', &line[start..])?;
    std::str::from_utf8(&line[start..start + length])
        .ok()?
        .parse()
        .ok()
}

/// The zstd level of archive objects. Task records are rich in ids and
/// ETags that repeat only in short runs; level 3 matches those runs, level 1
/// does not: on the history benchmark's records, level 1 writes objects 10 %
/// smaller, twice as fast, that decompress 12-24 % faster (`zstd -b`, four
/// objects of 0.8-5 MB).
const LEVEL: i32 = 1;

/// The bytes of an archive object holding the NDJSON `lines`, one frame per
/// state (failed first; each states its size, so a reader allocates once),
/// and their [`Index`], for the object's metadata.
pub fn compress(lines: &[u8]) -> (Vec<u8>, Index) {
    let mut groups: BTreeMap<std::cmp::Reverse<Option<TaskState>>, (Vec<u8>, u64)> =
        BTreeMap::new();
    for line in lines
        .split(|byte| *byte == b'\n')
        .filter(|line| !line.is_empty())
    {
        let (group, records) = groups
            .entry(std::cmp::Reverse(line_state(line)))
            .or_default();
        group.extend_from_slice(line);
        group.push(b'\n');
        *records += 1;
    }
    let mut index = Index::default();
    let mut frames = Vec::new();
    for (std::cmp::Reverse(state), (group, records)) in groups {
        let frame = zstd::bulk::compress(&group, LEVEL).expect("compressing in memory succeeds");
        index.frames.push(Frame {
            state,
            records,
            bytes: frame.len() as u64,
        });
        frames.extend(frame);
    }
    (frames, index)
}

/// The index at the start of an archive object in the layout written
/// before the index moved to the metadata (`head` may be only its first
/// bytes), and where its first frame starts; None when there is none or
/// `head` is too short to hold it.
pub fn legacy_index(head: &[u8]) -> Option<(Index, usize)> {
    let magic = u32::from_le_bytes(head.get(..4)?.try_into().ok()?);
    let length = u32::from_le_bytes(head.get(4..8)?.try_into().ok()?) as usize;
    if magic != LEGACY_INDEX_MAGIC {
        return None;
    }
    let legacy: LegacyIndex = serde_json::from_slice(head.get(8..8 + length)?).ok()?;
    Some((
        Index {
            frames: legacy.frames,
        },
        8 + length,
    ))
}

/// The most NDJSON one archive object decompresses to. sluice writes at
/// most [`MAX_OBJECT_BYTES`] (and one record more); an object that
/// decompresses to far more is not one it wrote, and reading it would only
/// take the reader's memory.
pub const MAX_DECOMPRESSED: usize = 8 * MAX_OBJECT_BYTES;
/// The most a zstd frame expands: a 4-byte RLE block stands for a 128 KiB
/// block at best.
const MAX_RATIO: u64 = 32 * 1024;

/// The room to decompress a frame of `compressed` bytes into, from the size
/// its header `declared`: none when the header claims more than such a frame
/// can hold (a damaged or hostile object), so that a 20-byte object cannot
/// make a reader reserve a GiB; such frames go to the streaming decoder,
/// which grows with what it really decodes.
fn room(compressed: usize, declared: u64) -> Option<usize> {
    (declared <= (MAX_DECOMPRESSED as u64).min(compressed as u64 * MAX_RATIO))
        .then_some(declared as usize)
}

/// The NDJSON lines of zstd `bytes`: an archive object, or some of its
/// frames one after another; an error past [`MAX_DECOMPRESSED`] bytes.
pub fn decompress(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use zstd::zstd_safe;
    let too_large = || {
        format!(
            "it decompresses to more than {} MiB, more than sluice writes to one object",
            MAX_DECOMPRESSED >> 20
        )
    };
    let mut rest = bytes;
    if let Some((_, start)) = legacy_index(rest) {
        rest = &rest[start..];
    }
    // The frames that state their size, as far as they go, are decompressed
    // in one call into room of the sum of their sizes.
    let (mut sized, mut total) = (0, 0);
    while sized < rest.len() {
        let Ok(length) = zstd_safe::find_frame_compressed_size(&rest[sized..]) else {
            break;
        };
        let frame = &rest[sized..(sized + length).min(rest.len())];
        let Some(size) = zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten()
            .and_then(|declared| room(frame.len(), declared))
        else {
            break;
        };
        total += size;
        if total > MAX_DECOMPRESSED {
            return Err(too_large());
        }
        sized += frame.len();
    }
    let (frames, rest) = rest.split_at(sized);
    let mut lines = Vec::with_capacity(total);
    if !frames.is_empty() {
        thread_local! {
            /// Creating a context costs about as much as decompressing a
            /// small object: a thread keeps one.
            static CONTEXT: RefCell<zstd_safe::DCtx<'static>> =
                RefCell::new(zstd_safe::DCtx::create());
        }
        CONTEXT
            .with_borrow_mut(|context| context.decompress(&mut lines, frames))
            .map_err(|code| format!("not zstd: {}", zstd_safe::get_error_name(code)))?;
    }
    if !rest.is_empty() {
        // What else the streaming decoder reads, or it names what is wrong;
        // never more than the cap.
        let room = (MAX_DECOMPRESSED - lines.len()) as u64;
        let decoder = zstd::Decoder::new(rest).map_err(|err| format!("not zstd: {err}"))?;
        decoder
            .take(room + 1)
            .read_to_end(&mut lines)
            .map_err(|err| format!("not zstd: {err}"))?;
        if lines.len() > MAX_DECOMPRESSED {
            return Err(too_large());
        }
    }
    Ok(lines)
}

/// The task ids in an archive object's NDJSON lines.
pub fn ids(lines: &[u8]) -> std::collections::HashSet<TaskId> {
    #[derive(Deserialize)]
    struct Id {
        id: TaskId,
    }
    lines
        .split(|byte| *byte == b'\n')
        .filter_map(|line| serde_json::from_slice::<Id>(line).ok())
        .map(|record| record.id)
        .collect()
}

/// What an archive object's key says about the records in it, so a reader
/// skips objects that cannot hold a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectKey<'a> {
    /// The start of the hour every record in it finished in.
    pub hour: Timestamp,
    pub account: &'a str,
    pub collection: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    /// The epoch of the coordinator that wrote it: its tasks were planned
    /// in that epoch or an earlier one.
    pub epoch: u64,
    pub seq: u64,
}

impl<'a> ObjectKey<'a> {
    /// Parses a key relative to [`tasks_prefix`]:
    /// `dt=D/hour=H/account=A/collection=C/source=NS%2FNAME/EPOCH-SEQ.ndjson.zst`,
    /// or with the source directory `NS.NAME` of archives written before.
    /// None for anything else.
    pub fn parse(relative: &'a str) -> Option<Self> {
        let parts: Vec<&str> = relative.split('/').collect();
        let [dt, hour, account, collection, source, file] = parts[..] else {
            return None;
        };
        let account = account.strip_prefix("account=")?;
        let collection = collection.strip_prefix("collection=")?;
        let date: jiff::civil::Date = dt.strip_prefix("dt=")?.parse().ok()?;
        let hour = hour.strip_prefix("hour=")?;
        if hour.len() != 2 {
            return None;
        }
        let hour: i8 = hour.parse().ok().filter(|h| (0..24).contains(h))?;
        let hour = date
            .at(hour, 0, 0, 0)
            .to_zoned(jiff::tz::TimeZone::UTC)
            .ok()?
            .timestamp();
        // Neither a namespace nor a name has a `%`; a namespace has no dots,
        // a name may.
        let (namespace, name) = match source.strip_prefix("source=") {
            Some(escaped) => escaped
                .split_once("%2F")
                .or_else(|| escaped.split_once("%2f"))?,
            None => source.split_once('.')?,
        };
        let (epoch, seq) = file.strip_suffix(".ndjson.zst")?.split_once('-')?;
        Some(Self {
            hour,
            account,
            collection,
            namespace,
            name,
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes of an archive object: one JSON record per line, zstd-compressed.
    fn encode(records: &[TaskRecord]) -> Vec<u8> {
        let mut lines = Vec::new();
        encode_lines(records, &mut lines);
        compress(&lines).0
    }

    /// Reads an archive object back.
    fn decode(bytes: &[u8]) -> Result<Vec<TaskRecord>, String> {
        let text = decompress(bytes)?;
        text.split(|byte| *byte == b'\n')
            .enumerate()
            .filter(|(_, line)| !line.is_empty())
            .map(|(index, line)| {
                serde_json::from_slice(line).map_err(|err| format!("line {}: {err}", index + 1))
            })
            .collect()
    }

    #[test]
    fn a_day_partition_reads_back_as_the_start_of_its_day() {
        let at: Timestamp = "2026-11-24T13:45:00Z".parse().unwrap();
        assert_eq!(day_partition(at), "dt=2026-11-24");
        assert_eq!(partition(hour_of(at)), "dt=2026-11-24/hour=13");
        let day = day_of_partition(&format!("{}/", day_partition(at)));
        assert_eq!(day, Some("2026-11-24T00:00:00Z".parse().unwrap()));
        assert_eq!(day_of_partition("dt=2026-13-01/"), None);
        assert_eq!(day_of_partition("hour=13/"), None);
    }

    #[test]
    fn the_range_of_a_state_spans_its_frames_and_a_lying_index_is_an_error() {
        let frame = |state: Option<TaskState>, bytes| Frame {
            state,
            records: 1,
            bytes,
        };
        let index = Index {
            frames: vec![
                frame(Some(TaskState::Succeeded), 100),
                frame(Some(TaskState::Failed), 20),
                frame(None, 5),
            ],
        };
        assert_eq!(
            index.range_of(TaskState::Failed, 8, 133),
            Ok(Some(108..133))
        );
        assert_eq!(
            index.range_of(TaskState::Succeeded, 8, 133),
            Ok(Some(8..133))
        );
        let failed_only = Index {
            frames: vec![frame(Some(TaskState::Failed), 20)],
        };
        assert_eq!(failed_only.range_of(TaskState::Succeeded, 8, 28), Ok(None));
        // Lengths that wrap around or run past the object: read it whole.
        let wrapping = Index {
            frames: vec![
                frame(Some(TaskState::Failed), u64::MAX),
                frame(Some(TaskState::Failed), 10),
            ],
        };
        let err = wrapping.range_of(TaskState::Failed, 8, 100).unwrap_err();
        assert!(err.contains("past its end (100 bytes)"), "{err}");
        assert!(index.range_of(TaskState::Failed, 8, 132).is_err());
    }

    #[test]
    fn an_object_that_decompresses_past_the_cap_is_refused() {
        let zeros = vec![0u8; MAX_DECOMPRESSED + 1];
        // A frame that states its size, and a stream that does not.
        let framed = zstd::bulk::compress(&zeros, 1).unwrap();
        let mut streamed = Vec::new();
        let mut encoder = zstd::Encoder::new(&mut streamed, 1).unwrap();
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
        encoder.finish().unwrap();
        for (how, object) in [("framed", framed), ("streamed", streamed)] {
            let err = decompress(&object).unwrap_err();
            assert!(err.contains("more than 64 MiB"), "{how}: {err}");
        }
        assert_eq!(
            decompress(&zstd::bulk::compress(&zeros[1..], 1).unwrap())
                .unwrap()
                .len(),
            MAX_DECOMPRESSED
        );
    }

    #[test]
    fn a_frame_gets_the_room_its_header_states_only_when_it_can_hold_that() {
        assert_eq!(room(20, 1000), Some(1000));
        assert_eq!(room(20, 20 * MAX_RATIO), Some(20 * MAX_RATIO as usize));
        assert_eq!(room(20, 20 * MAX_RATIO + 1), None);
        assert_eq!(room(20, 1 << 30), None, "a 20-byte frame claiming a GiB");
        assert_eq!(room(1 << 20, MAX_DECOMPRESSED as u64 + 1), None);
    }

    #[test]
    fn a_frame_claiming_a_gib_is_refused_and_a_highly_compressed_one_is_read() {
        // magic, single segment with a 4-byte content size of 1 GiB, then
        // one raw last block of one byte.
        let hostile = [
            0x28, 0xB5, 0x2F, 0xFD, 0xA0, 0x00, 0x00, 0x00, 0x40, 0x09, 0x00, 0x00, b'x',
        ];
        let err = decompress(&hostile).unwrap_err();
        assert!(err.starts_with("not zstd"), "{err}");

        let zeros = vec![0u8; 8 << 20];
        let compressed = zstd::encode_all(&zeros[..], 3).unwrap();
        assert_eq!(decompress(&compressed).unwrap(), zeros);
    }

    fn record(id: &str, finished: &str) -> TaskRecord {
        TaskRecord {
            id: id.parse().unwrap(),
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

    fn source() -> SourceId {
        SourceId {
            account: "acme".into(),
            collection: "orders".into(),
            namespace: "shop".into(),
            name: "orders".into(),
        }
    }

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn keys(batches: &[Batch]) -> Vec<&str> {
        batches.iter().map(|b| b.key.as_str()).collect()
    }

    #[test]
    fn records_go_to_one_object_per_hour_named_by_epoch_and_sequence() {
        let mut appender = Appender::new(Some("archive/"), &source(), 3);
        let batches = appender.append(
            vec![
                record("3-1", "2026-11-24T13:00:01Z"),
                record("3-2", "2026-11-24T12:59:59Z"),
                record("3-3", "2026-11-24T13:30:00Z"),
            ],
            at("2026-11-24T13:30:05Z"),
        );
        assert_eq!(
            keys(&batches),
            [
                "archive/tasks/dt=2026-11-24/hour=12/account=acme/collection=orders/source=shop%2Forders/0000000003-00000002.ndjson.zst",
                "archive/tasks/dt=2026-11-24/hour=13/account=acme/collection=orders/source=shop%2Forders/0000000003-00000001.ndjson.zst",
            ]
        );
        assert_eq!(batches[1].records.len(), 2);
        assert!(appender.is_open(&batches[0].key) && appender.is_open(&batches[1].key));
    }

    #[test]
    fn later_flushes_append_to_the_open_object_of_their_hour() {
        let mut appender = Appender::new(None, &source(), 1);
        let first = appender.append(
            vec![record("1-1", "2026-11-24T13:00:01Z")],
            at("2026-11-24T13:00:05Z"),
        );
        let second = appender.append(
            vec![record("1-2", "2026-11-24T13:59:59Z")],
            at("2026-11-24T14:00:03Z"),
        );
        assert_eq!(keys(&first), keys(&second));
        assert_eq!(second[0].records[0].id.to_string(), "1-2");
    }

    #[test]
    fn an_hour_long_over_is_closed_and_a_late_record_starts_a_new_object() {
        let mut appender = Appender::new(None, &source(), 1);
        let first = appender.append(
            vec![record("1-1", "2026-11-24T13:00:01Z")],
            at("2026-11-24T13:00:05Z"),
        );
        let kept = appender.append(Vec::new(), at("2026-11-24T14:09:59Z"));
        assert!(kept.is_empty() && appender.is_open(&first[0].key));
        let late = appender.append(
            vec![record("1-2", "2026-11-24T13:59:59Z")],
            at("2026-11-24T14:10:00Z"),
        );
        assert!(!appender.is_open(&first[0].key));
        assert_ne!(keys(&first), keys(&late));
        assert!(late[0].key.contains("hour=13/"), "{}", late[0].key);
        assert!(late[0].key.ends_with("0000000001-00000002.ndjson.zst"));
    }

    #[test]
    fn a_full_object_is_closed_and_the_next_records_start_another() {
        let mut appender = Appender::new(None, &source(), 1);
        let size = line_len(&record("1-1000000", "2026-11-24T13:00:01Z"));
        let per_object = MAX_OBJECT_BYTES / size;
        let records: Vec<_> = (0..per_object + 1)
            .map(|i| record(&format!("1-{}", 1_000_000 + i), "2026-11-24T13:00:01Z"))
            .collect();
        let batches = appender.append(records, at("2026-11-24T13:00:05Z"));
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].records.len(), per_object);
        assert_eq!(batches[1].records.len(), 1);
        let mut lines = Vec::new();
        encode_lines(&batches[0].records, &mut lines);
        assert!(lines.len() <= MAX_OBJECT_BYTES);
        assert!(!appender.is_open(&batches[0].key) && appender.is_open(&batches[1].key));
    }

    #[test]
    fn keys_say_when_and_whose_their_records_are() {
        let mut appender = Appender::new(Some("p"), &source(), 12);
        let batch = appender
            .append(
                vec![record("12-1", "2026-11-24T07:15:00Z")],
                at("2026-11-24T07:15:01Z"),
            )
            .remove(0);
        let relative = batch.key.strip_prefix("p/tasks/").unwrap();
        assert_eq!(
            ObjectKey::parse(relative),
            Some(ObjectKey {
                hour: at("2026-11-24T07:00:00Z"),
                account: "acme",
                collection: "orders",
                namespace: "shop",
                name: "orders",
                epoch: 12,
                seq: 1,
            })
        );
        let dotted = ObjectKey::parse(
            "dt=2026-11-24/hour=23/account=a/collection=c/source=shop%2Forders.v2/0000000001-00000009.ndjson.zst",
        )
        .unwrap();
        assert_eq!(
            (dotted.hour, dotted.namespace, dotted.name, dotted.seq),
            (at("2026-11-24T23:00:00Z"), "shop", "orders.v2", 9)
        );
        // The source directory of archives written before it was a
        // partition.
        let legacy = ObjectKey::parse(
            "dt=2026-11-24/hour=23/account=a/collection=c/shop.orders.v2/0000000001-00000009.ndjson.zst",
        );
        assert_eq!(legacy, Some(dotted));
        for good in [
            "dt=2026-11-24/hour=07/account=a/collection=c/source=shop%2Forders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/account=a/collection=c/source=shop%2forders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/account=a/collection=c/shop.orders/1-1.ndjson.zst",
        ] {
            assert!(ObjectKey::parse(good).is_some(), "{good}");
        }
        for bad in [
            "dt=2026-11-24/hour=24/account=a/collection=c/source=shop%2Forders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=7/account=a/collection=c/source=shop%2Forders/1-1.ndjson.zst",
            "dt=2026-13-01/hour=07/account=a/collection=c/source=shop%2Forders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/account=a/collection=c/source=shop%2Forders/1-1.json",
            "dt=2026-11-24/hour=07/account=a/collection=c/source=shop.orders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/account=a/collection=c/orders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/account=a/collection=c/source=shop%2Forders/x-1.ndjson.zst",
            "dt=2026-11-24/hour=07/a/c/source=shop%2Forders/1-1.ndjson.zst",
            "dt=2026-11-24/hour=07/source=shop%2Forders/1-1.ndjson.zst",
            "checkpoints/shop.orders/manifest.json.zst",
        ] {
            assert_eq!(ObjectKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_index_reads_back_from_its_metadata_text() {
        let index = Index {
            frames: vec![
                Frame {
                    state: Some(TaskState::Failed),
                    records: 2,
                    bytes: 310,
                },
                Frame {
                    state: None,
                    records: 98,
                    bytes: 9120,
                },
            ],
        };
        assert_eq!(index.to_string(), "failed:2:310,unknown:98:9120");
        assert_eq!(index.to_string().parse(), Ok(index));
        assert_eq!("".parse(), Ok(Index::default()));
        for bad in [
            "failed:2",
            "failed:2:3:4",
            "done:1:2",
            "failed:-1:2",
            "failed:1:x",
        ] {
            let err = bad.parse::<Index>().unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn an_object_indexes_one_frame_per_state_and_reads_whole_with_plain_zstd() {
        let mut records: Vec<_> = (0..10)
            .map(|i| record(&format!("1-{i}"), "2026-11-24T13:00:01Z"))
            .collect();
        for failed in [2, 7] {
            records[failed].state = TaskState::Failed;
            records[failed].error = Some("line 3: \"state\":\"succeeded\"".into());
        }
        let mut lines = Vec::new();
        encode_lines(&records, &mut lines);
        let (bytes, index) = compress(&lines);
        let states: Vec<_> = index.frames.iter().map(|f| (f.state, f.records)).collect();
        assert_eq!(
            states,
            [
                (Some(TaskState::Failed), 2),
                (Some(TaskState::Succeeded), 8)
            ]
        );
        let failed_frame = &bytes[..index.frames[0].bytes as usize];
        let failed = String::from_utf8(decompress(failed_frame).unwrap()).unwrap();
        assert_eq!(failed.lines().count(), 2);
        assert!(
            failed
                .lines()
                .all(|l| l.starts_with("{\"id\":\"1-2\"") || l.starts_with("{\"id\":\"1-7\""))
        );
        assert_eq!(
            index.frames.iter().map(|f| f.bytes as usize).sum::<usize>(),
            bytes.len()
        );
        // Nothing but zstd frames: every zstd reader reads them all.
        assert_eq!(&bytes[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        let plain = zstd::decode_all(&bytes[..]).unwrap();
        assert_eq!(plain, decompress(&bytes).unwrap());
        let mut all = decode(&bytes).unwrap();
        all.sort_by_key(|r| r.id);
        records.sort_by_key(|r| r.id);
        assert_eq!(all, records);
    }

    #[test]
    fn an_object_of_the_legacy_layout_reads_with_its_index_in_a_skippable_frame() {
        let lines = b"{\"id\":\"1-1\",\"state\":\"failed\"}\n";
        let frame = zstd::bulk::compress(lines, 3).unwrap();
        let json = format!(
            "{{\"frames\":[{{\"state\":\"failed\",\"records\":1,\"bytes\":{}}}]}}",
            frame.len()
        );
        let mut bytes = 0x184D_2A50u32.to_le_bytes().to_vec();
        bytes.extend((json.len() as u32).to_le_bytes());
        bytes.extend(json.as_bytes());
        bytes.extend(&frame);
        let (index, start) = legacy_index(&bytes).unwrap();
        assert_eq!(start, 8 + json.len());
        assert_eq!(
            index.range_of(TaskState::Failed, start as u64, bytes.len() as u64),
            Ok(Some(start as u64..bytes.len() as u64))
        );
        assert_eq!(decompress(&bytes).unwrap(), lines);
        assert_eq!(legacy_index(&bytes[..start - 1]), None, "cut short");
        assert_eq!(legacy_index(&frame), None, "a zstd frame");
    }

    #[test]
    fn objects_of_several_zstd_frames_read_as_one() {
        let mut bytes = encode(&[record("1-1", "2026-11-24T13:00:01Z")]);
        bytes.extend(encode(&[record("1-2", "2026-11-24T13:00:02Z")]));
        assert_eq!(decode(&bytes).unwrap().len(), 2);
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
