//! moto's S3 server on loopback, at the version pinned in
//! `tools/moto/requirements.txt`: a real store that ignores conditional
//! writes, for the tests that show sluice refusing such a store.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use sluice_core::location::S3Location;

use super::process::{Daemon, free_port, http_at};
use super::{Error, scratch_dir, tools, with_port_retries};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const REGION: &str = "us-east-1";

/// A running moto server, stopped on drop. It takes any credentials.
pub struct MotoEnv {
    _daemon: Daemon,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl MotoEnv {
    /// Starts moto on a free loopback port and waits until it answers.
    pub fn start() -> Result<Self, Error> {
        let dir = scratch_dir("sluice-moto-")?;
        let (daemon, port) = with_port_retries(|| {
            let port = free_port()?;
            let mut command = Command::new(tools::binary("moto_server")?);
            command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            let mut daemon = Daemon::spawn("moto", command, &dir.path().join("moto.log"))?;
            let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            daemon.wait_ready(STARTUP_TIMEOUT, || {
                http_at(address, "GET", "/", &[], b"").is_some_and(|(status, _)| status == 200)
            })?;
            Ok((daemon, port))
        })?;
        Ok(Self {
            _daemon: daemon,
            endpoint: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        })
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A location in `bucket` on this server.
    pub fn location(&self, bucket: &str) -> S3Location {
        S3Location {
            bucket: bucket.into(),
            region: Some(REGION.into()),
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            ..S3Location::default()
        }
    }

    /// Creates `bucket`.
    pub async fn bucket(&self, bucket: &str) -> Result<(), aws_sdk_s3::Error> {
        let credentials = sluice::s3::Credentials {
            access_key_id: "moto".into(),
            secret_access_key: "moto".into(),
            session_token: None,
        };
        sluice::s3::client(
            &self.location(bucket),
            Some(credentials),
            sluice::s3::DEFAULT_TIMEOUT,
        )
        .await
        .create_bucket()
        .bucket(bucket)
        .send()
        .await?;
        Ok(())
    }
}
