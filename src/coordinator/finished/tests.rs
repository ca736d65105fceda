use fst::Map;

use std::sync::Arc;

use super::compaction::MAX_SEGMENTS;
use super::segment::sha256_hex;
use super::*;

fn ok(fingerprint: u64) -> Finished {
    Finished {
        fingerprint,
        failed: false,
    }
}

fn failed(fingerprint: u64) -> Finished {
    Finished {
        fingerprint,
        failed: true,
    }
}

/// Runs and applies compactions until the policy asks for none; returns
/// the number of entries the merges read.
fn compact_fully(keys: &mut FinishedKeys) -> usize {
    let mut work = 0;
    while let Some(compaction) = keys.compaction() {
        work += compaction.inputs().iter().map(Segment::len).sum::<usize>();
        let merged = compaction.run();
        keys.apply(merged)
            .expect("nothing else changed the segments");
    }
    work
}

fn reload(segment: &Segment) -> Segment {
    Segment::from_bytes(segment.name(), segment.bytes().to_vec()).expect("round trip")
}

// --- fingerprint and value encoding ---

#[test]
fn fingerprint_is_stable() {
    // sha256("9b2cf535f27731c974343645a3985328" 00 d204000000000000)
    //   = 75111abe220efd8e927392877a30692f...
    assert_eq!(
        fingerprint("9b2cf535f27731c974343645a3985328", 1234),
        0x7511_1abe_220e_fd8e
    );
}

#[test]
fn fingerprint_ignores_surrounding_quotes() {
    assert_eq!(
        fingerprint("\"9b2cf535f27731c974343645a3985328\"", 1234),
        fingerprint("9b2cf535f27731c974343645a3985328", 1234)
    );
    // A lone quote is part of the ETag.
    assert_ne!(fingerprint("\"abc", 1), fingerprint("abc", 1));
}

#[test]
fn fingerprint_differs_with_etag_or_size() {
    let base = fingerprint("abc-2", 100);
    assert_ne!(base, fingerprint("abc-3", 100));
    assert_ne!(base, fingerprint("abc-2", 101));
    assert_ne!(base, fingerprint("abc-2", 100 << 32));
    // The separator keeps ETag bytes from sliding into the size.
    assert_ne!(fingerprint("a", 0), fingerprint("", 0x61));
}

#[test]
fn fingerprint_fits_in_63_bits() {
    for size in 0..2000 {
        assert_eq!(fingerprint("etag", size) & FAILED_BIT, 0);
    }
}

#[test]
fn value_round_trips_with_failed_flag() {
    for fp in [0, 1, 0x1234_5678_9abc_def0, FINGERPRINT_MASK] {
        for entry in [ok(fp), failed(fp)] {
            assert_eq!(Finished::from_value(entry.to_value()), entry);
        }
    }
    assert_eq!(failed(0).to_value(), FAILED_BIT);
    assert_eq!(ok(5).to_value(), 5);
}

#[test]
fn to_value_drops_the_fingerprint_top_bit() {
    let entry = ok(u64::MAX);
    assert_eq!(Finished::from_value(entry.to_value()), ok(FINGERPRINT_MASK));
}

// --- get and insert ---

#[test]
fn empty_has_nothing() {
    let keys = FinishedKeys::default();
    assert_eq!(keys.get("a"), None);
    assert!(keys.is_empty());
    assert_eq!(keys.len(), 0);
    assert_eq!(keys.segment_count(), 0);
    assert!(keys.compaction().is_none());
}

#[test]
fn insert_then_get() {
    let mut keys = FinishedKeys::default();
    keys.insert("data/a.gz", ok(1));
    keys.insert("data/b.gz", failed(2));
    assert_eq!(keys.get("data/a.gz"), Some(ok(1)));
    assert_eq!(keys.get("data/b.gz"), Some(failed(2)));
    assert_eq!(keys.get("data/c.gz"), None);
    assert_eq!(keys.get("data/a"), None, "a prefix is not a key");
    assert_eq!(keys.len(), 2);
    assert_eq!(keys.delta_len(), 2);
    assert!(!keys.is_empty());
}

#[test]
fn insert_overrides_in_delta() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    keys.insert("k", failed(2));
    assert_eq!(keys.get("k"), Some(failed(2)));
    assert_eq!(keys.delta_len(), 1);
}

#[test]
fn empty_and_unicode_keys_work() {
    let mut keys = FinishedKeys::default();
    keys.insert("", ok(1));
    keys.insert("données/été/ü.json", ok(2));
    keys.insert("z", ok(3));
    keys.seal();
    assert_eq!(keys.get(""), Some(ok(1)));
    assert_eq!(keys.get("données/été/ü.json"), Some(ok(2)));
    assert_eq!(keys.get("z"), Some(ok(3)));
}

#[test]
fn delta_takes_precedence_over_segments() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    keys.seal();
    keys.insert("k", failed(2));
    assert_eq!(keys.get("k"), Some(failed(2)));
    assert_eq!(keys.len(), 2, "the shadowed entry still counts");
}

#[test]
fn newest_segment_wins_after_seal() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    keys.insert("only-old", ok(10));
    keys.seal();
    keys.insert("k", ok(2));
    keys.seal();
    keys.insert("k", ok(3));
    keys.insert("only-new", ok(30));
    keys.seal();
    assert_eq!(keys.segment_count(), 3);
    assert_eq!(keys.get("k"), Some(ok(3)));
    assert_eq!(keys.get("only-old"), Some(ok(10)));
    assert_eq!(keys.get("only-new"), Some(ok(30)));
}

// --- seal and segments ---

#[test]
fn seal_of_empty_delta_is_none() {
    let mut keys = FinishedKeys::default();
    assert!(keys.seal().is_none());
    keys.insert("k", ok(1));
    assert!(keys.seal().is_some());
    assert!(keys.seal().is_none(), "the delta was moved");
    assert_eq!(keys.segment_count(), 1);
}

#[test]
fn seal_moves_the_delta_into_the_newest_segment() {
    let mut keys = FinishedKeys::default();
    keys.insert("b", ok(2));
    keys.insert("a", ok(1));
    let segment = keys.seal().expect("delta not empty").clone();
    assert_eq!(segment.len(), 2);
    assert!(!segment.is_empty());
    assert_eq!(segment.get("a"), Some(ok(1)));
    assert_eq!(keys.delta_len(), 0);
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.segments().last().map(Segment::name),
        Some(segment.name())
    );
}

#[test]
fn segment_name_is_sha256_of_bytes() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    let segment = keys.seal().expect("delta not empty");
    let expected: String = Sha256::digest(segment.bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(segment.name(), expected);
    assert_eq!(segment.name().len(), 64);
}

#[test]
fn sha256_hex_matches_known_vector() {
    assert_eq!(
        sha256_hex(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn equal_content_gives_equal_names() {
    let mut a = FinishedKeys::default();
    let mut b = FinishedKeys::default();
    for keys in [&mut a, &mut b] {
        keys.insert("x", ok(1));
        keys.insert("y", failed(2));
    }
    let a = a.seal().expect("not empty").name().to_owned();
    let b = b.seal().expect("not empty").name().to_owned();
    assert_eq!(a, b);
}

#[test]
fn from_bytes_round_trips() {
    let mut keys = FinishedKeys::default();
    keys.insert("a", ok(1));
    keys.insert("b", failed(2));
    let segment = keys.seal().expect("not empty");
    let loaded = reload(segment);
    assert_eq!(loaded.name(), segment.name());
    assert_eq!(loaded.bytes(), segment.bytes());
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded.get("b"), Some(failed(2)));
}

#[test]
fn from_bytes_rejects_a_wrong_name() {
    let mut keys = FinishedKeys::default();
    keys.insert("a", ok(1));
    let segment = keys.seal().expect("not empty");
    let wrong = "0".repeat(64);
    let err = Segment::from_bytes(&wrong, segment.bytes().to_vec()).unwrap_err();
    assert!(matches!(err, SegmentError::HashMismatch { .. }));
    let message = err.to_string();
    assert!(message.contains(&wrong), "{message}");
    assert!(message.contains(segment.name()), "{message}");
    assert!(message.contains("not to its name"), "{message}");
}

#[test]
fn from_bytes_rejects_corrupt_and_truncated_bytes() {
    let mut keys = FinishedKeys::default();
    keys.insert("a", ok(1));
    let segment = keys.seal().expect("not empty");
    let mut flipped = segment.bytes().to_vec();
    flipped[10] ^= 0x40;
    let truncated = segment.bytes()[..segment.bytes().len() - 1].to_vec();
    for bytes in [flipped, truncated, Vec::new()] {
        let err = Segment::from_bytes(segment.name(), bytes).unwrap_err();
        assert!(matches!(err, SegmentError::HashMismatch { .. }), "{err}");
    }
}

#[test]
fn from_bytes_rejects_hash_matching_garbage() {
    for bytes in [Vec::new(), b"not an fst".to_vec(), vec![0xff; 100]] {
        let name = sha256_hex(&bytes);
        let err = Segment::from_bytes(&name, bytes).unwrap_err();
        assert!(matches!(err, SegmentError::Malformed { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("not a valid FST map"), "{message}");
        assert!(message.contains(&name), "{message}");
    }
}

#[test]
fn from_bytes_rejects_a_bad_fst_checksum() {
    // An FST changed after it was written, renamed to match its new hash:
    // only the FST's own checksum can tell.
    let mut keys = FinishedKeys::default();
    keys.insert("abc", ok(1));
    keys.insert("abd", ok(2));
    let segment = keys.seal().expect("not empty");
    let mut bytes = segment.bytes().to_vec();
    bytes[17] ^= 0x01;
    let name = sha256_hex(&bytes);
    let err = Segment::from_bytes(&name, bytes).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SegmentError::Malformed { .. }), "{message}");
    assert!(message.to_lowercase().contains("checksum"), "{message}");
}

#[test]
fn from_segments_restores_a_checkpoint() {
    let mut keys = FinishedKeys::default();
    for batch in 0..5u64 {
        for i in 0..20u64 {
            keys.insert(&format!("p/{batch}/{i}"), ok(batch * 100 + i));
        }
        keys.insert("changed", ok(batch));
        keys.seal();
    }
    let manifest: Vec<(String, Vec<u8>)> = keys
        .segments()
        .map(|s| (s.name().to_owned(), s.bytes().to_vec()))
        .collect();
    let loaded = FinishedKeys::from_segments(
        manifest
            .into_iter()
            .map(|(name, bytes)| Segment::from_bytes(&name, bytes).expect("valid"))
            .collect(),
    );
    assert_eq!(loaded.len(), keys.len());
    assert_eq!(loaded.delta_len(), 0);
    assert_eq!(loaded.get("changed"), Some(ok(4)));
    assert_eq!(loaded.get("p/3/7"), Some(ok(307)));
    assert_eq!(loaded.get("p/9/9"), None);
}

#[test]
fn an_empty_segment_from_s3_is_harmless() {
    let empty = Map::default().into_fst().into_inner();
    let name = sha256_hex(&empty);
    let empty = Segment::from_bytes(&name, empty).expect("an empty FST is valid");
    assert!(empty.is_empty());
    let mut keys = FinishedKeys::from_segments(vec![empty]);
    assert!(keys.is_empty());
    assert_eq!(keys.get("k"), None);
    keys.insert("k", ok(1));
    keys.seal();
    compact_fully(&mut keys);
    assert_eq!(keys.segment_count(), 1);
    assert_eq!(keys.get("k"), Some(ok(1)));
}

// --- memory ---

#[test]
fn memory_bytes_tracks_delta_and_segments() {
    let mut keys = FinishedKeys::default();
    let empty = keys.memory_bytes();
    for i in 0..1000 {
        keys.insert(&format!("acme/orders/part-{i:08}.ndjson.gz"), ok(i));
    }
    let with_delta = keys.memory_bytes();
    assert!(with_delta > empty + 1000 * 30, "{with_delta}");
    keys.seal();
    let sealed = keys.memory_bytes();
    let segment_bytes: usize = keys.segments().map(|s| s.bytes().len()).sum();
    assert!(sealed >= segment_bytes);
    assert!(sealed < with_delta, "a segment is smaller than the delta");
}

// --- compaction ---

#[test]
fn plan_follows_the_size_ratio() {
    assert_eq!(plan(&[]), None);
    assert_eq!(plan(&[5]), None);
    assert_eq!(plan(&[0]), None);
    assert_eq!(plan(&[100, 10, 1]), None, "geometric: nothing to do");
    assert_eq!(plan(&[10, 10]), Some(0));
    assert_eq!(plan(&[20, 10]), Some(0));
    assert_eq!(plan(&[21, 10]), None);
    assert_eq!(plan(&[100, 10, 5]), Some(1));
    assert_eq!(
        plan(&[100, 1, 60]),
        Some(0),
        "a big seal pulls older ones in"
    );
    assert_eq!(plan(&[1000, 30, 10, 5]), Some(1));
    assert_eq!(plan(&[5, 1000]), Some(0));
    assert_eq!(plan(&[1000, 0, 10]), Some(1), "empty segments are absorbed");
}

#[test]
fn plan_caps_the_segment_count() {
    // Each holds more than twice all newer ones together: no ratio merge.
    let lens: Vec<usize> = (0..14u32).rev().map(|i| 3usize.pow(i)).collect();
    assert_eq!(plan(&lens[..MAX_SEGMENTS]), None);
    assert_eq!(plan(&lens[..MAX_SEGMENTS + 1]), Some(MAX_SEGMENTS - 1));
    // Merging from index MAX_SEGMENTS - 1 leaves exactly MAX_SEGMENTS.
    assert_eq!(plan(&lens), Some(MAX_SEGMENTS - 1));
}

#[test]
fn compaction_is_none_for_a_single_segment() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    keys.seal();
    assert!(keys.compaction().is_none());
}

#[test]
fn compaction_merges_and_newest_wins() {
    let mut keys = FinishedKeys::default();
    keys.insert("a", ok(1));
    keys.insert("k", ok(1));
    keys.seal();
    keys.insert("k", failed(2));
    keys.insert("z", ok(3));
    keys.seal();
    let compaction = keys.compaction().expect("two equal segments merge");
    assert_eq!(compaction.inputs().len(), 2);
    let merged = compaction.run();
    assert_eq!(merged.segment().unwrap().len(), 3, "the older k is dropped");
    let inputs: Vec<String> = keys.segments().map(|s| s.name().to_owned()).collect();
    assert_eq!(merged.replaces(), inputs.as_slice());
    let obsolete = keys.apply(merged).expect("not stale");
    assert_eq!(obsolete, inputs);
    assert_eq!(keys.segment_count(), 1);
    assert_eq!(keys.len(), 3);
    assert_eq!(keys.get("k"), Some(failed(2)));
    assert_eq!(keys.get("a"), Some(ok(1)));
    assert_eq!(keys.get("z"), Some(ok(3)));
}

#[test]
fn merged_segment_reloads_and_is_deterministic() {
    let build = || {
        let mut keys = FinishedKeys::default();
        for i in 0..50u64 {
            keys.insert(&format!("k{i:03}"), ok(i));
        }
        keys.seal();
        for i in (0..100u64).step_by(2) {
            keys.insert(&format!("k{i:03}"), failed(i + 1000));
        }
        keys.seal();
        keys.compaction().expect("merge").run()
    };
    let (first, second) = (build(), build());
    assert_eq!(
        first.segment().unwrap().name(),
        second.segment().unwrap().name()
    );
    let loaded = reload(first.segment().unwrap());
    assert_eq!(loaded.len(), 75);
    assert_eq!(loaded.get("k010"), Some(failed(1010)));
    assert_eq!(loaded.get("k011"), Some(ok(11)));
    assert_eq!(loaded.get("k098"), Some(failed(1098)));
}

#[test]
fn compaction_runs_on_another_thread() {
    fn assert_send_static<T: Send + 'static>(_: &T) {}
    let mut keys = FinishedKeys::default();
    keys.insert("a", ok(1));
    keys.seal();
    keys.insert("b", ok(2));
    keys.seal();
    let compaction = keys.compaction().expect("merge");
    assert_send_static(&compaction);
    let merged = std::thread::spawn(move || compaction.run())
        .join()
        .expect("merge thread");
    assert_send_static(&merged);
    keys.apply(merged).expect("not stale");
    assert_eq!(keys.get("a"), Some(ok(1)));
    assert_eq!(keys.get("b"), Some(ok(2)));
}

fn two_segments() -> FinishedKeys {
    let mut keys = FinishedKeys::default();
    for i in 0..1000u64 {
        keys.insert(&format!("logs/part-{i:06}.gz"), ok(i));
    }
    keys.insert("logs/shadowed", ok(1));
    keys.seal();
    keys.insert("logs/shadowed", failed(2));
    keys.insert("logs/zz", ok(3));
    // Enough keys that the size-tiered policy merges the two.
    for i in 0..600u64 {
        keys.insert(&format!("logs/q-{i:06}.gz"), ok(i));
    }
    keys.seal();
    keys
}

#[test]
fn a_spilled_merge_is_the_same_segment_as_one_in_memory() {
    let keys = two_segments();
    let compaction = keys.compaction().expect("merge");
    let in_memory = compaction.run();
    let dir = tempfile::tempdir().unwrap();
    let spilled = compaction.spill(dir.path()).expect("spill");
    assert!(spilled.segment().is_none(), "not in memory");
    let expected = in_memory.segment().unwrap();
    assert_eq!(spilled.name(), expected.name());
    assert_eq!(spilled.replaces(), in_memory.replaces());

    let mut applied = two_segments();
    drop(compaction);
    let obsolete = applied.apply(spilled).expect("not stale");
    assert_eq!(obsolete.len(), 2);
    assert_eq!(applied.segment_count(), 1);
    let segment = applied.segments().next().unwrap();
    assert_eq!(segment.name(), expected.name());
    assert_eq!(segment.bytes(), expected.bytes());
    assert_eq!(applied.get("logs/shadowed"), Some(failed(2)));
    assert_eq!(applied.get("logs/part-000999.gz"), Some(ok(999)));
    assert_eq!(applied.get("logs/zz"), Some(ok(3)));
    // The unnamed file is gone with the merge: nothing left in the dir.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_spilled_merge_frees_its_inputs_before_it_is_read_back() {
    let mut keys = two_segments();
    let inputs: Vec<std::sync::Weak<SegmentInner>> =
        keys.segments().map(|s| Arc::downgrade(&s.inner)).collect();
    let merged = {
        let compaction = keys.compaction().expect("merge");
        compaction.spill(&std::env::temp_dir()).expect("spill")
    };
    keys.apply(merged).expect("not stale");
    assert!(inputs.iter().all(|input| input.upgrade().is_none()));
}

#[test]
fn a_spilled_merge_that_cannot_be_read_back_says_to_resume() {
    let mut keys = two_segments();
    let merged = keys
        .compaction()
        .expect("merge")
        .spill(&std::env::temp_dir())
        .expect("spill");
    let Output::Spilled(spill) = &merged.output else {
        panic!("spilled");
    };
    spill.file.set_len(10).unwrap();
    let err = keys.apply(merged).unwrap_err();
    assert!(matches!(err, ApplyError::Unreadable { .. }), "{err}");
    assert!(
        err.to_string().contains("resume from the checkpoint"),
        "{err}"
    );
}

#[test]
fn apply_keeps_concurrent_inserts_and_seals() {
    let mut keys = FinishedKeys::default();
    keys.insert("k", ok(1));
    keys.insert("old", ok(1));
    keys.seal();
    keys.insert("k", ok(2));
    keys.seal();
    let compaction = keys.compaction().expect("merge");

    // While the merge runs: a newer entry for k is sealed, another k sits
    // in the delta, and a new key arrives.
    keys.insert("k", ok(3));
    keys.insert("new", ok(3));
    let sealed = keys.seal().expect("not empty").name().to_owned();
    keys.insert("k", failed(4));
    keys.insert("newer", ok(4));

    let obsolete = keys.apply(compaction.run()).expect("inputs still there");
    assert_eq!(obsolete.len(), 2);
    assert_eq!(keys.segment_count(), 2);
    assert_eq!(
        keys.segments().last().map(Segment::name),
        Some(sealed.as_str())
    );
    assert_eq!(keys.get("k"), Some(failed(4)));
    assert_eq!(keys.get("old"), Some(ok(1)));
    assert_eq!(keys.get("new"), Some(ok(3)));
    assert_eq!(keys.get("newer"), Some(ok(4)));
    keys.seal();
    assert_eq!(
        keys.get("k"),
        Some(failed(4)),
        "delta entry sealed above merged"
    );
    compact_fully(&mut keys);
    assert_eq!(keys.get("k"), Some(failed(4)));
    assert_eq!(keys.get("old"), Some(ok(1)));
}

#[test]
fn apply_rejects_a_stale_compaction() {
    let mut keys = FinishedKeys::default();
    for i in 0..3u64 {
        keys.insert(&format!("k{i}"), ok(i));
        keys.seal();
    }
    let first = keys.compaction().expect("merge");
    let second = keys.compaction().expect("same plan");
    keys.apply(first.run()).expect("first applies");
    let before: Vec<String> = keys.segments().map(|s| s.name().to_owned()).collect();
    let err = keys.apply(second.run()).unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("stale compaction"), "{message}");
    assert!(
        message.contains(&second.inputs()[0].name()[..16]),
        "{message}"
    );
    let after: Vec<String> = keys.segments().map(|s| s.name().to_owned()).collect();
    assert_eq!(before, after, "a failed apply changes nothing");
}

#[test]
fn apply_does_not_report_names_still_in_use() {
    // Two seals of identical content make two segments with one name.
    let mut keys = FinishedKeys::default();
    keys.insert("big", ok(0));
    for i in 0..20u64 {
        keys.insert(&format!("b{i:02}"), ok(i));
    }
    keys.seal();
    keys.insert("same", ok(1));
    let name = keys.seal().expect("not empty").name().to_owned();
    keys.insert("same", ok(1));
    keys.seal();
    keys.insert("other", ok(2));
    keys.seal();
    let names: Vec<&str> = keys.segments().map(Segment::name).collect();
    assert_eq!(names[1], names[2]);
    // Merge only the newest two: the older copy of `name` stays.
    let compaction = Compaction {
        inputs: keys.segments().skip(2).cloned().collect(),
    };
    let obsolete = keys.apply(compaction.run()).expect("not stale");
    assert_eq!(obsolete.len(), 1);
    assert_ne!(obsolete[0], name);
    assert!(keys.segments().any(|s| s.name() == name));
    assert_eq!(keys.get("same"), Some(ok(1)));
    assert_eq!(keys.get("other"), Some(ok(2)));
}

#[test]
fn compaction_keeps_segment_count_logarithmic() {
    let mut keys = FinishedKeys::default();
    // The expected newest value per key, indexed by key number.
    let mut expected: Vec<Option<Finished>> = Vec::new();
    let mut work = 0usize;
    let mut entries = 0usize;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for batch in 0..1000usize {
        // Mostly small batches, a few large ones; some keys finished again.
        let size = match batch % 97 {
            0 => 500,
            n if n % 10 == 0 => 60,
            _ => 1 + (next() % 12) as usize,
        };
        for _ in 0..size {
            let index = if expected.len() > 10 && next().is_multiple_of(8) {
                (next() % expected.len() as u64) as usize
            } else {
                expected.push(None);
                expected.len() - 1
            };
            let entry = Finished::from_value(next());
            keys.insert(&format!("acme/{:03}/part-{index:06}.gz", index % 7), entry);
            expected[index] = Some(entry);
            entries += 1;
        }
        keys.seal();
        work += compact_fully(&mut keys);
        let total = keys.len().max(2) as f64;
        let bound = 2.0 * total.log2() + 2.0;
        assert!(
            keys.segment_count() as f64 <= bound,
            "{} segments for {} entries",
            keys.segment_count(),
            keys.len()
        );
        assert!(keys.segment_count() <= MAX_SEGMENTS);
    }
    // Amortized O(n log n): each entry is rewritten O(log n) times.
    let bound = 3.0 * entries as f64 * (entries as f64).log2();
    assert!((work as f64) < bound, "{work} merged for {entries} entries");
    assert!(keys.len() >= expected.len());
    for (index, entry) in expected.iter().enumerate() {
        let key = format!("acme/{:03}/part-{index:06}.gz", index % 7);
        assert_eq!(keys.get(&key), *entry, "{key}");
    }
    assert_eq!(keys.get("acme/000/part-999999.gz"), None);
}

/// Builds 10 M realistic keys and reports size and speed. Run with
/// `cargo test --release -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: 10 M keys, run on demand in release mode"]
fn ten_million_keys() {
    use rand::rngs::SmallRng;
    use rand::{RngExt, SeedableRng};
    use std::time::Instant;

    const KEYS: u64 = 10_000_000;
    const PER_HOUR: u64 = 34_723; // 12 days x 24 hours x this > 10 M
    let key = |n: u64| {
        let hour = n / PER_HOUR;
        format!(
            "acme/orders/2026/11/{:02}/{:02}/part-{:08}.ndjson.gz",
            1 + hour / 24,
            hour % 24,
            n % PER_HOUR
        )
    };
    // Random-looking but reproducible, so lookups can be checked.
    let entry = |n: u64| {
        let fp = splitmix64(n) & FINGERPRINT_MASK;
        Finished {
            fingerprint: fp,
            failed: fp.is_multiple_of(1000),
        }
    };

    let mut rng = SmallRng::seed_from_u64(7);
    let mut keys = FinishedKeys::default();
    let mut peak_memory = 0;
    let mut peak_merge = 0;
    let mut merged_entries = 0;
    let start = Instant::now();
    let mut n = 0;
    while n < KEYS {
        let batch = rng.random_range(20_000..120_000).min(KEYS - n);
        for i in n..n + batch {
            keys.insert(&key(i), entry(i));
        }
        n += batch;
        peak_memory = peak_memory.max(keys.memory_bytes());
        keys.seal();
        while let Some(compaction) = keys.compaction() {
            merged_entries += compaction.inputs().iter().map(Segment::len).sum::<usize>();
            let merged = compaction.run();
            // Inputs and output are alive together until the apply.
            let during = keys.memory_bytes() + merged.segment().unwrap().bytes().len();
            peak_merge = peak_merge.max(during);
            keys.apply(merged).expect("no concurrent compaction");
        }
    }
    let build = start.elapsed();
    let segments: Vec<Segment> = keys.segments().cloned().collect();
    let serialized: usize = segments.iter().map(|s| s.bytes().len()).sum();
    println!(
        "10M: built in {build:.2?}, {} segments, {merged_entries} entries merged",
        segments.len()
    );
    println!(
        "10M: memory_bytes {:.1} MB (peak during build {:.1} MB), serialized {:.1} MB, {:.2} bytes/key",
        keys.memory_bytes() as f64 / 1e6,
        peak_memory as f64 / 1e6,
        serialized as f64 / 1e6,
        serialized as f64 / KEYS as f64
    );
    println!(
        "10M: peak while a merge's output coexists with its inputs {:.1} MB; process RSS {:.0} MB (peak {:.0} MB)",
        peak_merge as f64 / 1e6,
        proc_status_mb("VmRSS:").unwrap_or(f64::NAN),
        proc_status_mb("VmHWM:").unwrap_or(f64::NAN)
    );
    for s in &segments {
        println!(
            "10M:   segment {} keys {} bytes {}",
            &s.name()[..12],
            s.len(),
            s.bytes().len()
        );
    }

    // Load the checkpoint back: copies are made first, only from_bytes is timed.
    let copies: Vec<(String, Vec<u8>)> = segments
        .iter()
        .map(|s| (s.name().to_owned(), s.bytes().to_vec()))
        .collect();
    drop(segments);
    drop(keys);
    let start = Instant::now();
    let loaded: Vec<Segment> = copies
        .into_iter()
        .map(|(name, bytes)| Segment::from_bytes(&name, bytes).expect("valid"))
        .collect();
    let load = start.elapsed();
    let keys = FinishedKeys::from_segments(loaded);
    println!(
        "10M: from_bytes of all segments in {load:.2?}; memory_bytes {:.1} MB, process RSS {:.0} MB",
        keys.memory_bytes() as f64 / 1e6,
        proc_status_mb("VmRSS:").unwrap_or(f64::NAN)
    );
    assert_eq!(keys.len(), KEYS as usize);

    let probes: Vec<(String, u64)> = (0..1_000_000)
        .map(|_| {
            let n = rng.random_range(0..KEYS);
            (key(n), n)
        })
        .collect();
    let start = Instant::now();
    let mut found = 0;
    for (probe, n) in &probes {
        let got = keys.get(probe);
        assert_eq!(got, Some(entry(*n)));
        found += 1;
    }
    let gets = start.elapsed();
    let misses: Vec<String> = (0..1_000_000u64)
        .map(|i| key(KEYS + rng.random_range(0..KEYS) + i % 2))
        .collect();
    let start = Instant::now();
    let missing = misses.iter().filter(|k| keys.get(k).is_none()).count();
    let miss_time = start.elapsed();
    assert_eq!(missing, misses.len());
    println!(
        "10M: {found} random hits in {gets:.2?} ({:.0} ns/get), {missing} misses in {miss_time:.2?}",
        gets.as_nanos() as f64 / found as f64
    );

    // Worst case for the merge: everything into one segment.
    let start = Instant::now();
    let all = Compaction {
        inputs: keys.segments().cloned().collect(),
    };
    let merged = all.run();
    println!(
        "10M: full merge of {} segments in {:.2?}, {:.1} MB",
        all.inputs().len(),
        start.elapsed(),
        merged.segment().unwrap().bytes().len() as f64 / 1e6
    );
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A memory figure of this process from /proc (Linux only), in MB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0 / 1e6)
}
