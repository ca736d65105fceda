//! S3 clients for the locations an IngestSource names.

use aws_sdk_s3::config::http::HttpResponse;
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use sluice_core::location::S3Location;

use crate::config::{Store, credential_env};

/// The region used when neither the location nor the environment names one.
const DEFAULT_REGION: &str = "us-east-1";

/// How long one request to S3 may go unanswered before it is given up and
/// tried again (three attempts at most): a store that stops answering must
/// not hold a checkpoint, a listing or an upload forever. A body read after
/// the answer (an object streaming in) is watched instead by the SDK's
/// stalled-stream protection (no byte for 20 s). Pods take it from
/// `--s3-timeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 3;

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

/// A client for `location` whose requests time out after `timeout` (see
/// [`DEFAULT_TIMEOUT`]). With `credentials` it uses exactly those and looks
/// nothing up; without, the SDK's default chain (environment, web identity
/// as with IRSA, instance metadata) finds them.
pub async fn client(
    location: &S3Location,
    credentials: Option<Credentials>,
    timeout: Duration,
) -> aws_sdk_s3::Client {
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
    config = config
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(timeout)
                .operation_timeout(timeout * ATTEMPTS)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(ATTEMPTS));
    aws_sdk_s3::Client::from_conf(config.force_path_style(location.force_path_style).build())
}

/// The credentials of `store` from the environment variables the operator
/// sets from the IngestSource's Secret (see [`crate::config::credential_env`]),
/// or `None` to use the SDK's default chain.
pub fn env_credentials(store: Store) -> Option<Credentials> {
    let var = |key: &str| std::env::var(credential_env(store, key)).ok();
    Some(Credentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        session_token: var("AWS_SESSION_TOKEN"),
    })
}

/// A client for `store`'s location with the credentials the pod was given.
pub async fn client_for(
    store: Store,
    location: &S3Location,
    timeout: Duration,
) -> aws_sdk_s3::Client {
    client(location, env_credentials(store), timeout).await
}

/// An S3 error as a person reads it: the code and message the server sent,
/// or what failed on the way there.
pub fn describe<E, R>(err: &SdkError<E, R>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match err {
        SdkError::ServiceError(service) => {
            let inner = service.err();
            match (inner.code(), inner.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                (Some(code), None) => code.to_owned(),
                _ => DisplayErrorContext(err).to_string(),
            }
        }
        _ => DisplayErrorContext(err).to_string(),
    }
}

/// The HTTP status of an error response, if the request got that far.
pub fn status<E>(err: &SdkError<E, HttpResponse>) -> Option<u16> {
    err.raw_response()
        .map(|response| response.status().as_u16())
}

/// Whether an error is about the store's availability (it could not be
/// reached, timed out, dropped the connection, or answered 5xx or 429)
/// rather than about what was asked: trying again later may succeed.
pub fn unavailable<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(_) => {
            status(err).is_some_and(|status| status >= 500 || status == 429)
        }
        _ => false,
    }
}
