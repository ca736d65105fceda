//! A MinIO server on loopback, the S3 store of the test environment.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::process::{Daemon, free_port, http_ok};
use super::{Error, scratch_dir, tools, with_port_retries};
use crate::crd::S3Location;
use crate::s3::{self, Credentials};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const ACCESS_KEY: &str = "sluice-test";
const SECRET_KEY: &str = "sluice-test-secret";
const REGION: &str = "us-east-1";

/// A running MinIO server, stopped and deleted on drop.
pub struct MinioEnv {
    daemon: Daemon,
    endpoint: String,
    buckets: AtomicU32,
    dir: tempfile::TempDir,
}

impl MinioEnv {
    /// Starts MinIO on a free loopback port and waits until it is ready.
    pub fn start() -> Result<Self, Error> {
        let dir = scratch_dir("sluice-minio-")?;
        let (daemon, endpoint) = with_port_retries(|| start_minio(dir.path()))?;
        Ok(Self {
            daemon,
            endpoint,
            buckets: AtomicU32::new(0),
            dir,
        })
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The root credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }
    }

    /// A location in `bucket` on this server, as an IngestSource names it.
    pub fn location(&self, bucket: &str) -> S3Location {
        S3Location {
            bucket: bucket.into(),
            region: Some(REGION.into()),
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            ..S3Location::default()
        }
    }

    /// A client with the root credentials.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        s3::client(&self.location("any"), Some(self.credentials())).await
    }

    /// Creates a new bucket named `{prefix}-{n}` and returns its name.
    pub async fn bucket(&self, prefix: &str) -> Result<String, aws_sdk_s3::Error> {
        let name = format!("{prefix}-{}", self.buckets.fetch_add(1, Ordering::Relaxed));
        self.client()
            .await
            .create_bucket()
            .bucket(&name)
            .send()
            .await?;
        Ok(name)
    }

    /// The scratch directory that holds the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

fn start_minio(dir: &Path) -> Result<(Daemon, String), Error> {
    let (port, console_port) = (free_port()?, free_port()?);
    let mut command = Command::new(tools::binary("minio")?);
    command
        .arg("server")
        .arg(dir.join("data"))
        .arg(format!("--address=127.0.0.1:{port}"))
        .arg(format!("--console-address=127.0.0.1:{console_port}"))
        .arg("--quiet")
        .env("MINIO_ROOT_USER", ACCESS_KEY)
        .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
        .env("MINIO_REGION", REGION)
        .env("MINIO_BROWSER", "off")
        .env("MINIO_UPDATE", "off")
        .env("MINIO_CI_CD", "1");
    let mut daemon = Daemon::spawn("minio", command, &dir.join("minio.log"))?;
    daemon.wait_ready(STARTUP_TIMEOUT, || http_ok(port, "/minio/health/ready"))?;
    Ok((daemon, format!("http://127.0.0.1:{port}")))
}
