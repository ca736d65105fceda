//! CEL rules the API server enforces at admission, each with a message that
//! says what is wrong and what to write instead, rather than a regex dump.

use kube::core::{Message, Rule};

use sluice_core::duration;

use super::template::{RESERVED_ENV, RESERVED_ENV_PREFIX, RESERVED_VOLUMES};

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

/// A CEL list literal of `items`.
fn cel_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|item| format!("'{item}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// Template volumes take no name of sluice's own, and none reaches into
/// the node.
pub fn volumes_allowed() -> Rule {
    let names = cel_list(RESERVED_VOLUMES.map(|(name, _)| name));
    rule(
        format!("self.all(v, !(v.name in {names}) && !has(v.hostPath))"),
        format!(
            "spec.template.*.pod.volumes: the names {names} are sluice's own, and hostPath \
             volumes are refused; rename the volume, or use a configMap, secret, projected, \
             emptyDir or persistentVolumeClaim volume"
        ),
    )
}

/// Template environment variables set nothing sluice sets itself.
pub fn env_allowed() -> Rule {
    let names = cel_list(RESERVED_ENV);
    rule(
        format!("self.all(e, !(e.name in {names}) && !e.name.startsWith('{RESERVED_ENV_PREFIX}'))"),
        format!(
            "spec.template.*.container.env: {names} and {RESERVED_ENV_PREFIX}* are set by sluice \
             itself; configure sluice through the IngestSource's spec instead"
        ),
    )
}

/// Template mounts cover nothing sluice mounts.
pub fn mounts_allowed() -> Rule {
    let names = cel_list(RESERVED_VOLUMES.map(|(name, _)| name));
    let paths = cel_list(RESERVED_VOLUMES.map(|(_, path)| path));
    rule(
        format!(
            "self.all(m, !(m.name in {names}) \
             && {paths}.all(p, m.mountPath != p && !m.mountPath.startsWith(p + '/')))"
        ),
        format!(
            "spec.template.*.container.volumeMounts: sluice mounts its own volumes at {paths}; \
             mount yours elsewhere, for example under /etc/ssl/private-ca"
        ),
    )
}

/// Every template mount names a template volume: caught here rather than
/// when the operator's Deployment is refused.
pub fn mounts_name_volumes() -> Rule {
    rule(
        "!has(self.container) || !has(self.container.volumeMounts) \
         || self.container.volumeMounts.all(m, has(self.pod) && has(self.pod.volumes) \
         && self.pod.volumes.exists(v, v.name == m.name))",
        "every container.volumeMounts[].name must be the name of one of pod.volumes".into(),
    )
}
