//! Where a store is and how to reach it, as the coordinator, the workers
//! and the CLI use it. The IngestSource's `s3` fields add which Secret holds
//! the credentials (`crd::S3Spec`); the runtime has them in its environment.

use serde::{Deserialize, Serialize};

/// A bucket and prefix in S3 or an S3-compatible store, and how to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct S3Location {
    pub bucket: String,
    /// The key prefix; `None` or empty is the whole bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `None`: the SDK's default chain (AWS_REGION, then us-east-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The endpoint URL of an S3-compatible store; `None`: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`.
    #[serde(default)]
    pub force_path_style: bool,
}
