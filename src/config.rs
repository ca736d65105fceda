//! The runtime configuration of one IngestSource's coordinator and workers.
//!
//! The operator renders it from the IngestSource into a ConfigMap, so the
//! pods need no access to the custom resource to start; `sluice coordinator
//! --config FILE` and `sluice worker --config FILE` read it back. S3
//! credentials are not in it: they reach the pods as environment variables
//! from the Secrets the IngestSource names (see [`credential_env`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use sluice_core::duration::Duration;
use sluice_core::encoding::{Compression, Format};
use sluice_core::id::SourceId;
use sluice_core::location::S3Location;

use crate::crd::{IngestSource, S3Spec};
use crate::telemetry::LogFormat;

/// The file name of the configuration inside the ConfigMap and the pods.
pub const FILE_NAME: &str = "config.json";

/// Everything the coordinator and the workers of one source need.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// The IngestSource, and the account and collection it ingests for.
    #[serde(flatten)]
    pub id: SourceId,
    pub source: SourceConfig,
    pub sink: S3Location,
    pub archive: S3Location,
    pub tasks: TaskLimits,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SourceConfig {
    pub s3: S3Location,
    pub format: Format,
    pub compression: Compression,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<Duration>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskLimits {
    pub max_objects: u32,
    pub max_bytes: u64,
    pub lease_duration: Duration,
    pub max_attempts: u32,
}

/// Which S3 location a credential is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Source,
    Sink,
    Archive,
}

impl Store {
    pub const ALL: [Store; 3] = [Store::Source, Store::Sink, Store::Archive];

    /// The spec field that names this location, for messages.
    pub fn field(self) -> &'static str {
        match self {
            Store::Source => "spec.source.s3",
            Store::Sink => "spec.sink.s3",
            Store::Archive => "spec.archive.s3",
        }
    }

    fn env_prefix(self) -> &'static str {
        match self {
            Store::Source => "SLUICE_SOURCE_",
            Store::Sink => "SLUICE_SINK_",
            Store::Archive => "SLUICE_ARCHIVE_",
        }
    }

    /// This location in an IngestSource.
    pub fn spec(self, source: &IngestSource) -> &S3Spec {
        match self {
            Store::Source => &source.spec.source.s3,
            Store::Sink => &source.spec.sink.s3,
            Store::Archive => &source.spec.archive.s3,
        }
    }
}

/// The keys a credentials Secret holds, and whether each is required.
pub const CREDENTIAL_KEYS: [(&str, bool); 3] = [
    ("AWS_ACCESS_KEY_ID", true),
    ("AWS_SECRET_ACCESS_KEY", true),
    ("AWS_SESSION_TOKEN", false),
];

/// The environment variable that carries `key` of `store`'s credentials,
/// for example `SLUICE_SINK_AWS_ACCESS_KEY_ID`.
pub fn credential_env(store: Store, key: &str) -> String {
    format!("{}{key}", store.env_prefix())
}

/// An IngestSource the schema accepted but sluice cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub reason: String,
}

impl RuntimeConfig {
    /// Renders the configuration of `source`.
    pub fn from_source(source: &IngestSource) -> Result<Self, InvalidSpec> {
        let spec = &source.spec;
        let max_bytes = parse_bytes(&spec.tasks.max_bytes.0).map_err(|reason| InvalidSpec {
            field: "spec.tasks.maxBytes",
            reason,
        })?;
        Ok(Self {
            id: SourceId {
                namespace: source.metadata.namespace.clone().unwrap_or_default(),
                name: source.metadata.name.clone().unwrap_or_default(),
                account: spec.account.clone(),
                collection: spec.collection.clone(),
            },
            source: SourceConfig {
                s3: spec.source.s3.location(),
                format: spec.source.format,
                compression: spec.source.compression,
                poll_interval: spec.source.poll_interval,
            },
            sink: spec.sink.s3.location(),
            archive: spec.archive.s3.location(),
            tasks: TaskLimits {
                max_objects: spec.tasks.max_objects,
                max_bytes,
                lease_duration: spec.tasks.lease_duration,
                max_attempts: spec.tasks.max_attempts,
            },
        })
    }
}

impl RuntimeConfig {
    /// Reads the configuration file the operator's ConfigMap provides.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read(path)
            .map_err(|err| format!("cannot read the configuration {}: {err}", path.display()))?;
        serde_json::from_slice(&text)
            .map_err(|err| format!("the configuration {} is not valid: {err}", path.display()))
    }
}

/// What the coordinator and the workers of a source both start from: the
/// flags the operator's Deployments pass, and where they serve.
#[derive(clap::Args, Debug)]
pub struct PodArgs {
    /// The runtime configuration the operator renders (config.json).
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: PathBuf,

    /// A file holding the token workers present to the coordinator.
    #[arg(long, env = "SLUICE_TOKEN_FILE")]
    pub token_file: PathBuf,

    /// Where the HTTP endpoints (the coordinator's task API; /healthz,
    /// /readyz and /metrics) are served.
    #[arg(long, env = "SLUICE_ADDRESS", default_value = "0.0.0.0:8080")]
    pub address: SocketAddr,

    /// How logs are written.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    /// How long one S3 request may go unanswered before it is given up and
    /// tried again (three attempts at most).
    #[arg(long, env = "SLUICE_S3_TIMEOUT", default_value = "60s", value_parser = sluice_core::duration::parse_std)]
    pub s3_timeout: std::time::Duration,
}

impl PodArgs {
    /// Sets up logging, then reads the configuration and the token.
    pub fn start(&self) -> Result<(RuntimeConfig, String), String> {
        crate::telemetry::init_logging(self.log_format);
        Ok((
            RuntimeConfig::load(&self.config)?,
            read_token(&self.token_file)?,
        ))
    }
}

/// Reads the token that workers present to the coordinator.
fn read_token(path: &Path) -> Result<String, String> {
    let token = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read the token file {}: {err}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// A Kubernetes quantity as a whole number of bytes: `64Mi`, `500k`,
/// `1e6`, `1048576`, `1.5Gi`.
pub fn parse_bytes(quantity: &str) -> Result<u64, String> {
    let invalid = |why: &str| format!("{quantity:?} is not a whole number of bytes: {why}");
    let text = quantity.trim();
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..]
                .parse()
                .map_err(|_| invalid("the exponent is not a number"))?;
            10f64.powi(power)
        }
        "m" => return Err(invalid("milli-units are fractions of a byte")),
        _ => return Err(invalid("unknown suffix")),
    };
    let value: f64 = number.parse().map_err(|_| invalid("no number"))?;
    let bytes = value * multiplier;
    if bytes < 1.0 || bytes.fract() != 0.0 || bytes > u64::MAX as f64 {
        return Err(invalid("must be a positive whole number of bytes"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities_as_bytes() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5Ki"), Ok(1536));
        assert_eq!(parse_bytes("500k"), Ok(500_000));
        assert_eq!(parse_bytes("2M"), Ok(2_000_000));
        assert_eq!(parse_bytes("1e6"), Ok(1_000_000));
        assert_eq!(parse_bytes("1048576"), Ok(1_048_576));
    }

    #[test]
    fn refuses_what_is_not_a_whole_number_of_bytes() {
        for bad in ["100m", "0.5", "0", "1.1", "lots", "12Xi", "", "1e-3", "-5"] {
            let err = parse_bytes(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn credentials_reach_pods_under_distinct_names() {
        assert_eq!(
            credential_env(Store::Sink, "AWS_ACCESS_KEY_ID"),
            "SLUICE_SINK_AWS_ACCESS_KEY_ID"
        );
        let names: std::collections::BTreeSet<_> = Store::ALL
            .iter()
            .flat_map(|store| {
                CREDENTIAL_KEYS
                    .iter()
                    .map(|(key, _)| credential_env(*store, key))
            })
            .collect();
        assert_eq!(names.len(), 9);
    }
}
