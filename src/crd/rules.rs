//! CEL rules the API server enforces at admission, each with a message that
//! says what is wrong and what to write instead, rather than a regex dump.

use kube::core::{Message, Rule};

use sluice_core::duration;

fn rule(expression: impl Into<String>, message: String) -> Rule {
    Rule::new(expression).message(Message::Message(message))
}

/// The IngestSource's name becomes part of its children's names, the
/// longest being the Service `NAME-coordinator`, a DNS-1035 label of at most
/// 63 characters.
pub fn source_name() -> Rule {
    rule(
        "self.metadata.name.size() <= 51 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "metadata.name must be at most 51 characters of a-z, 0-9 and '-', starting with a letter: \
         sluice names the coordinator's Service NAME-coordinator"
            .into(),
    )
}

/// A lowercase RFC 1123 label; the length is checked by `maxLength`.
pub fn dns_label(field: &str) -> Rule {
    rule(
        "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
        format!(
            "{field} must be a lowercase DNS label: a-z, 0-9 and '-', starting and ending with a letter or digit"
        ),
    )
}

pub fn immutable(field: &str) -> Rule {
    let name = field.rsplit('.').next().unwrap_or(field);
    rule(
        "self == oldSelf",
        format!("{field} is immutable: create a new IngestSource to use another {name}"),
    )
}

/// The archive's bucket and prefix hold the checkpoint: a coordinator that
/// finds none there starts from zero and ingests everything again.
pub fn archive_stays() -> Rule {
    rule(
        "self.s3.bucket == oldSelf.s3.bucket \
         && (has(self.s3.prefix) ? self.s3.prefix : '') == (has(oldSelf.s3.prefix) ? oldSelf.s3.prefix : '')",
        "spec.archive.s3.bucket and prefix are immutable: the checkpoint lives there, and a \
         coordinator that finds none starts from zero and ingests everything again. Create a new \
         IngestSource to archive elsewhere"
            .into(),
    )
}

/// Exactly one source of credentials, so that no store is read or written
/// with the node's identity by omission.
pub fn credentials_chosen() -> Rule {
    rule(
        "has(self.credentialsSecretRef) != (has(self.ambientCredentials) && self.ambientCredentials)",
        "set exactly one of credentialsSecretRef (a Secret with AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY) and ambientCredentials: true (the pods' own identity: IRSA, Pod \
         Identity, or the node's instance metadata)"
            .into(),
    )
}

/// S3's naming rules for general purpose buckets.
pub fn bucket() -> Rule {
    rule(
        "self.matches('^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$') && !self.contains('..') \
         && !self.matches('^[0-9]+[.][0-9]+[.][0-9]+[.][0-9]+$')",
        "bucket must be a valid S3 bucket name: 3 to 63 characters of a-z, 0-9, '.' and '-', \
         starting and ending with a letter or digit, not formatted as an IP address"
            .into(),
    )
}

pub fn endpoint() -> Rule {
    rule(
        "self.matches('^https?://[^/?#\\\\s]+(/.*)?$')",
        "endpoint must be an http:// or https:// URL with a host, for example http://minio.storage:9000"
            .into(),
    )
}

pub fn duration(field: &str) -> Rule {
    rule(
        format!("self.matches('{}')", duration::PATTERN),
        format!("{field} must be a duration such as 30s, 5m or 1h30m"),
    )
}

/// Only judges well-formed durations: [`duration`] reports the others, and
/// `duration()` would fail on them with a less helpful error.
pub fn duration_at_least(field: &str, min: &str) -> Rule {
    rule(
        format!(
            "!self.matches('{}') || duration(self) >= duration('{min}')",
            duration::PATTERN
        ),
        format!("{field} must be at least {min}"),
    )
}

/// A whole number of bytes: `500m` and `1.5` are quantities, but not of
/// bytes, and would only fail later, in the coordinator.
pub fn positive_quantity(field: &str) -> Rule {
    rule(
        "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0')) \
         && quantity(string(self)).isInteger()",
        format!(
            "{field} must be a positive quantity of bytes such as 64Mi, 512Ki or 1Gi, \
             a whole number of bytes (no m suffix, no fraction of a byte)"
        ),
    )
}

/// For a struct with `minReplicas` and `maxReplicas`; reported on
/// `minReplicas`.
pub fn min_at_most_max(field: &str) -> Rule {
    rule(
        "self.minReplicas <= self.maxReplicas",
        format!("{field}.minReplicas must not be greater than {field}.maxReplicas"),
    )
    .field_path(".minReplicas")
}
