//! Where sluice puts things in S3: one function per key layout, used by
//! whoever writes there and whoever reads it back. The archive's own
//! layout (time partitions, object names) is in [`crate::archive`].

use std::fmt::Display;

use crate::id::{SourceId, TaskId};

/// The key `rest` under `prefix`, with exactly one `/` between them.
pub fn join(prefix: Option<&str>, rest: &str) -> String {
    match prefix.map(|prefix| prefix.trim_end_matches('/')) {
        Some(prefix) if !prefix.is_empty() => format!("{prefix}/{rest}"),
        _ => rest.to_owned(),
    }
}

/// Where a source's outputs go, and what sets their names apart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sink {
    /// The sink location's prefix.
    pub prefix: Option<String>,
    /// The checkpoint's lineage: a start that finds no checkpoint begins a
    /// new one, so its task ids (from 1-1 again) never name an earlier
    /// lineage's outputs. None for checkpoints from before lineages.
    pub lineage: Option<String>,
}

impl Sink {
    /// The sink object task `task` of `source` writes, on the day
    /// (`YYYY-MM-DD`) the task was created: the same for every attempt.
    pub fn object(&self, source: &SourceId, date: impl Display, task: TaskId) -> String {
        let SourceId {
            namespace,
            name,
            collection,
            ..
        } = source;
        let lineage = self
            .lineage
            .as_deref()
            .map(|lineage| format!("{lineage}-"))
            .unwrap_or_default();
        join(
            self.prefix.as_deref(),
            &format!("{collection}/dt={date}/{namespace}.{name}-{lineage}{task}.ndjson.zst"),
        )
    }
}

/// Where the record of a redrive of dead letters goes:
/// `<archive prefix>/redrives/<namespace>.<name>/<id>.json`.
pub fn redrive_record(prefix: Option<&str>, namespace: &str, name: &str, id: &str) -> String {
    join(prefix, &format!("redrives/{namespace}.{name}/{id}.json"))
}

/// The directory (ending in `/`) of source `namespace/name`'s checkpoint
/// under the archive prefix: its manifest and finished-key segments.
pub fn checkpoint_dir(prefix: Option<&str>, namespace: &str, name: &str) -> String {
    join(prefix, &format!("checkpoints/{namespace}.{name}/"))
}

/// The manifest object in a checkpoint directory ([`checkpoint_dir`]):
/// the one object a coordinator writes conditionally to fence others out.
pub fn checkpoint_manifest(dir: &str) -> String {
    format!("{dir}manifest.json.zst")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_puts_exactly_one_slash_between_prefix_and_key() {
        assert_eq!(join(None, "a/b"), "a/b");
        assert_eq!(join(Some(""), "a/b"), "a/b");
        assert_eq!(join(Some("/"), "a/b"), "a/b");
        assert_eq!(join(Some("p"), "a/b"), "p/a/b");
        assert_eq!(join(Some("p/"), "a/b"), "p/a/b");
        assert_eq!(join(Some("p//"), "a/b"), "p/a/b");
    }

    #[test]
    fn a_tasks_sink_object_is_under_its_collection_and_day() {
        let source = SourceId {
            namespace: "shop".into(),
            name: "feed".into(),
            account: "acme".into(),
            collection: "orders".into(),
        };
        let task = TaskId { epoch: 3, seq: 7 };
        let mut sink = Sink {
            prefix: Some("out/".into()),
            lineage: None,
        };
        assert_eq!(
            sink.object(&source, "2026-12-02", task),
            "out/orders/dt=2026-12-02/shop.feed-3-7.ndjson.zst"
        );
        // Another lineage of the same source, task and day: another object.
        sink.lineage = Some("9f3c0a1e".into());
        assert_eq!(
            sink.object(&source, "2026-12-02", task),
            "out/orders/dt=2026-12-02/shop.feed-9f3c0a1e-3-7.ndjson.zst"
        );
    }

    #[test]
    fn a_sources_checkpoint_is_a_directory_of_its_own() {
        assert_eq!(
            checkpoint_dir(Some("sluice/"), "shop", "feed"),
            "sluice/checkpoints/shop.feed/"
        );
        assert_eq!(
            checkpoint_manifest(&checkpoint_dir(None, "shop", "feed")),
            "checkpoints/shop.feed/manifest.json.zst"
        );
    }
}
