//! What names a task and a source, typed from the edges inward: the task
//! API's paths and bodies, the checkpoint, the archive and the CLI's flags
//! all carry a [`TaskId`], and every part that needs to know whose records
//! these are carries a [`SourceId`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A task's identity: the coordinator epoch that planned it and a sequence
/// number, written `EPOCH-SEQ` (for example `3-1042`). Ordered by epoch,
/// then sequence, which is the order the tasks were planned in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub epoch: u64,
    pub seq: u64,
}

/// A text that is not `EPOCH-SEQ`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a task id (EPOCH-SEQ, for example 3-1042)")]
pub struct InvalidTaskId(pub String);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for TaskId {
    type Err = InvalidTaskId;

    fn from_str(text: &str) -> Result<Self, InvalidTaskId> {
        let number = |digits: &str| {
            // `u64::from_str` takes a leading `+`; an id never has one.
            digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
        };
        text.split_once('-')
            .and_then(|(epoch, seq)| {
                Some(TaskId {
                    epoch: number(epoch)?,
                    seq: number(seq)?,
                })
            })
            .ok_or_else(|| InvalidTaskId(text.to_owned()))
    }
}

impl Serialize for TaskId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TaskId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Parsed from the borrowed text: the history scan reads millions.
        struct Text;
        impl de::Visitor<'_> for Text {
            type Value = TaskId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task id (EPOCH-SEQ)")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<TaskId, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Text)
    }
}

/// Whose records these are: the IngestSource (namespace and name) and the
/// account and collection it ingests for. Written `namespace/name`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SourceId {
    pub namespace: String,
    pub name: String,
    pub account: String,
    pub collection: String,
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_parse_print_and_order_by_epoch_then_sequence() {
        let id: TaskId = "3-1042".parse().unwrap();
        assert_eq!(
            id,
            TaskId {
                epoch: 3,
                seq: 1042
            }
        );
        assert_eq!(id.to_string(), "3-1042");
        assert!(TaskId { epoch: 2, seq: 99 } < TaskId { epoch: 3, seq: 1 });
        assert!(TaskId { epoch: 3, seq: 9 } < TaskId { epoch: 3, seq: 10 });
        for bad in [
            "", "3", "3-", "-1", "a-1", "1-b", "+1-2", "1-+2", "1-2-3", " 1-2",
        ] {
            assert_eq!(
                bad.parse::<TaskId>(),
                Err(InvalidTaskId(bad.to_owned())),
                "{bad:?}"
            );
        }
        assert_eq!(
            InvalidTaskId("x".into()).to_string(),
            "\"x\" is not a task id (EPOCH-SEQ, for example 3-1042)"
        );
    }

    #[test]
    fn task_ids_are_json_strings() {
        let id = TaskId { epoch: 1, seq: 7 };
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""1-7""#);
        assert_eq!(serde_json::from_str::<TaskId>(r#""1-7""#).unwrap(), id);
        // Escaped text is not borrowed; it still parses.
        assert_eq!(serde_json::from_str::<TaskId>(r#""1\u002d7""#).unwrap(), id);
        let err = serde_json::from_str::<TaskId>(r#""7""#).unwrap_err();
        assert!(err.to_string().contains("\"7\" is not a task id"), "{err}");
        assert!(serde_json::from_str::<TaskId>("17").is_err());
    }

    #[test]
    fn a_source_is_written_namespace_slash_name() {
        let source = SourceId {
            namespace: "shop".into(),
            name: "orders".into(),
            account: "acme".into(),
            collection: "orders".into(),
        };
        assert_eq!(source.to_string(), "shop/orders");
    }
}
