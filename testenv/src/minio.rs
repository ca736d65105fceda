//! A MinIO server on loopback, the S3 store of the test environment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_core::location::S3Location;
use sluice_core::sync::lock;

use super::process::{Daemon, free_port, http_at};
use super::{Error, scratch_dir, tools, with_port_retries};
use sluice::s3::{self, Credentials};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const ACCESS_KEY: &str = "sluice-test";
const SECRET_KEY: &str = "sluice-test-secret";
const REGION: &str = "us-east-1";

/// A running MinIO server, stopped and deleted on drop.
pub struct MinioEnv {
    /// None only while restarting.
    daemon: Mutex<Option<Daemon>>,
    address: IpAddr,
    port: u16,
    endpoint: String,
    buckets: AtomicU32,
    dir: tempfile::TempDir,
}

impl MinioEnv {
    /// This process's shared MinIO, started on first use; it stops when
    /// the process exits. A failed start panics: it is for tests and
    /// benchmarks.
    pub fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<MinioEnv> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::start().unwrap_or_else(|err| panic!("{err}")))
    }

    /// Starts MinIO on a free loopback port and waits until it is ready.
    pub fn start() -> Result<Self, Error> {
        Self::start_at(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts MinIO on a free port of `address` (the test node's, so that
    /// pods reach it too) and waits until it is ready.
    pub fn start_at(address: IpAddr) -> Result<Self, Error> {
        let dir = scratch_dir("sluice-minio-")?;
        let (daemon, port) = with_port_retries(|| start_minio(dir.path(), address, free_port()?))?;
        Ok(Self {
            daemon: Mutex::new(Some(daemon)),
            address,
            port,
            endpoint: format!("http://{address}:{port}"),
            buckets: AtomicU32::new(0),
            dir,
        })
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The root credentials as the pods' environment carries them: each
    /// store's access key and secret (`SOURCE_AWS_ACCESS_KEY_ID`, ...), as
    /// the operator's Deployments set them from the Secret.
    pub fn pod_credentials_env(&self) -> Vec<(String, String)> {
        sluice::config::Store::ALL
            .into_iter()
            .flat_map(|store| {
                [
                    ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
                    ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                ]
                .map(|(key, value)| (sluice::config::credential_env(store, key), value.to_owned()))
            })
            .collect()
    }

    /// The root credentials.
    pub fn credentials(&self) -> Credentials {
        Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }
    }

    /// The pinned DuckDB's Python (`tools/build.sh`), with this MinIO's
    /// endpoint and root credentials in the environment that
    /// `tools/duckdb/query.py`'s `connect()` reads; the caller adds the
    /// script.
    pub fn duckdb(&self) -> Result<Command, Error> {
        let mut command = Command::new(tools::binary("duckdb-python")?);
        command
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env(
                "SLUICE_S3_ENDPOINT",
                self.endpoint.trim_start_matches("http://"),
            );
        Ok(command)
    }

    /// Runs `sql` in DuckDB against this MinIO (`tools/duckdb/query.py`):
    /// the rows of its last statement.
    pub fn duckdb_query(&self, sql: &str) -> Result<Vec<serde_json::Value>, Error> {
        use std::io::Write;
        use std::process::Stdio;
        let io = |source| Error::Io {
            what: "running DuckDB".into(),
            source,
        };
        let mut child = self
            .duckdb()?
            .arg(super::repo().join("tools/duckdb/query.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(sql.as_bytes())
            .map_err(io)?;
        let output = child.wait_with_output().map_err(io)?;
        if !output.status.success() {
            return Err(Error::Command {
                what: format!("DuckDB ({sql})"),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|err| Error::Command {
                    what: format!("DuckDB ({sql})"),
                    stderr: format!("not a row: {line}: {err}"),
                })
            })
            .collect()
    }

    /// A Secret `name` with the root credentials, as an IngestSource's
    /// `credentialsSecretRef` names one.
    pub fn credentials_secret(&self, name: &str) -> k8s_openapi::api::core::v1::Secret {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "stringData": {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            }
        }))
        .expect("a Secret")
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
        s3::client(
            &self.location("any"),
            Some(self.credentials()),
            s3::DEFAULT_TIMEOUT,
        )
        .await
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

    /// The server's process id (a new one after [`MinioEnv::restart`]).
    pub fn pid(&self) -> u32 {
        lock(&self.daemon).as_ref().map_or(0, Daemon::pid)
    }

    /// Kills MinIO (SIGKILL), as a crash would, leaves it down for
    /// `downtime`, and starts it again on the same port with the same data.
    /// Returns once it is ready again.
    pub fn restart(&self, downtime: Duration) -> Result<(), Error> {
        let mut daemon = lock(&self.daemon);
        let mut stopped = daemon.take().ok_or_else(|| Error::Io {
            what: "restarting MinIO".into(),
            source: std::io::Error::other("an earlier restart failed"),
        })?;
        stopped.kill();
        drop(stopped);
        std::thread::sleep(downtime);
        // The port was ours a moment ago; a clash means the old process
        // had not let go of it yet.
        let (restarted, _) =
            with_port_retries(|| start_minio(self.dir(), self.address, self.port))?;
        *daemon = Some(restarted);
        Ok(())
    }
}

fn start_minio(dir: &Path, address: IpAddr, port: u16) -> Result<(Daemon, u16), Error> {
    let console_port = free_port()?;
    let mut command = Command::new(tools::binary("minio")?);
    command
        .arg("server")
        .arg(dir.join("data"))
        .arg(format!("--address={}", SocketAddr::new(address, port)))
        .arg(format!("--console-address=127.0.0.1:{console_port}"))
        .arg("--quiet")
        .env("MINIO_ROOT_USER", ACCESS_KEY)
        .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
        .env("MINIO_REGION", REGION)
        .env("MINIO_BROWSER", "off")
        .env("MINIO_UPDATE", "off")
        .env("MINIO_CI_CD", "1");
    let mut daemon = Daemon::spawn("minio", command, &dir.join("minio.log"))?;
    daemon.wait_ready(STARTUP_TIMEOUT, || {
        http_at(
            SocketAddr::new(address, port),
            "GET",
            "/minio/health/ready",
            &[],
            b"",
        )
        .is_some_and(|(status, _)| status == 200)
    })?;
    Ok((daemon, port))
}
