//! S3 clients for the locations an IngestSource names.

use aws_sdk_s3::config::{BehaviorVersion, Region};

use crate::crd::S3Location;

/// The region used when neither the location nor the environment names one.
const DEFAULT_REGION: &str = "us-east-1";

/// Static credentials, as read from an IngestSource's credentials Secret.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A client for `location`. With `credentials` it uses exactly those and
/// looks nothing up; without, the SDK's default chain (environment, web
/// identity as with IRSA, instance metadata) finds them.
pub async fn client(location: &S3Location, credentials: Option<Credentials>) -> aws_sdk_s3::Client {
    let mut config = match credentials {
        Some(credentials) => aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(DEFAULT_REGION))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                credentials.access_key_id,
                credentials.secret_access_key,
                credentials.session_token,
                None,
                "sluice",
            )),
        None => {
            let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
            let mut config = aws_sdk_s3::config::Builder::from(&shared);
            if shared.region().is_none() {
                config = config.region(Region::new(DEFAULT_REGION));
            }
            config
        }
    };
    if let Some(region) = &location.region {
        config = config.region(Region::new(region.clone()));
    }
    if let Some(endpoint) = &location.endpoint {
        config = config.endpoint_url(endpoint);
    }
    aws_sdk_s3::Client::from_conf(config.force_path_style(location.force_path_style).build())
}
