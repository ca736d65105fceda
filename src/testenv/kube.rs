//! etcd and kube-apiserver on loopback, the way controller-runtime's envtest
//! runs them: a private CA, a serving certificate for 127.0.0.1, a
//! service-account signing key, RBAC authorization, and an admin client
//! certificate in `system:masters` written into a kubeconfig.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::process::{Daemon, free_port, http_ok, lock};
use super::{Error, scratch_dir, tools, with_port_retries};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// A running etcd, kube-apiserver and kube-controller-manager, stopped and
/// deleted on drop.
///
/// The controller manager runs only what a real cluster's control plane
/// does for objects without pods: garbage collection (owner references),
/// namespace deletion, default ServiceAccounts and Endpoints. No Deployment controller
/// runs (there is no kubelet to run pods), so tests stand in for it by
/// writing Deployment status themselves.
pub struct KubeEnv {
    // Field order is drop order: clients of the API server stop first.
    /// None only while restarting.
    controller_manager: Mutex<Option<Daemon>>,
    /// None only while restarting.
    apiserver: Mutex<Option<Daemon>>,
    etcd: Daemon,
    etcd_url: String,
    server: String,
    kubeconfig: PathBuf,
    ca_cert: PathBuf,
    kubectl: PathBuf,
    namespaces: AtomicU32,
    dir: tempfile::TempDir,
}

impl KubeEnv {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers.
    pub fn start() -> Result<Self, Error> {
        let dir = scratch_dir("sluice-kube-")?;
        let pki = Pki::write(dir.path())?;
        let (mut etcd, etcd_url) = with_port_retries(|| start_etcd(dir.path()))?;
        let kubectl = tools::binary("kubectl")?;
        let (apiserver, server, kubeconfig) = with_port_retries(|| {
            etcd.check_running()?;
            let port = free_port()?;
            start_apiserver(dir.path(), &pki, &etcd_url, port, &kubectl)
        })?;
        let controller_manager = start_controller_manager(dir.path(), &kubeconfig)?;
        Ok(Self {
            controller_manager: Mutex::new(Some(controller_manager)),
            apiserver: Mutex::new(Some(apiserver)),
            etcd,
            etcd_url,
            server,
            kubeconfig,
            ca_cert: pki.ca_cert,
            kubectl,
            namespaces: AtomicU32::new(0),
            dir,
        })
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig with the admin credential (group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The CA certificate that signed the API server's serving certificate.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// The scratch directory that holds the certificates, data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pinned kubectl, pointed at this API server.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Runs kubectl with `args` and returns what it printed.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<Output, Error> {
        self.kubectl()
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                name: "kubectl".into(),
                source,
            })
    }

    /// `kubectl apply --server-side -f path`, returning what kubectl printed.
    /// Waits for kinds whose CRD was applied a moment ago to be served.
    pub fn apply(&self, path: &Path) -> Result<String, Error> {
        let path = path.to_string_lossy();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let output = self.kubectl_output(&["apply", "--server-side", "-f", &path])?;
            let stderr = String::from_utf8_lossy(&output.stderr);
            if output.status.success() {
                return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
            }
            if !stderr.contains("ensure CRDs are installed first") || Instant::now() > deadline {
                return Err(Error::Command {
                    what: format!("kubectl apply -f {path}"),
                    stderr: stderr.into_owned(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client with the admin credential.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .expect("the test kubeconfig is readable");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("the test kubeconfig is valid");
        kube::Client::try_from(config).expect("a client for the test API server")
    }

    /// Creates a new namespace named `{prefix}-{n}` and returns its name, so
    /// tests sharing one API server do not see each other's objects.
    pub fn namespace(&self, prefix: &str) -> Result<String, Error> {
        let name = format!(
            "{prefix}-{}",
            self.namespaces.fetch_add(1, Ordering::Relaxed)
        );
        let output = self.kubectl_output(&["create", "namespace", &name])?;
        if !output.status.success() {
            return Err(Error::Command {
                what: format!("kubectl create namespace {name}"),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(name)
    }

    /// The process ids of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> Vec<u32> {
        let apiserver = lock(&self.apiserver).as_ref().map(Daemon::pid);
        let controller_manager = lock(&self.controller_manager).as_ref().map(Daemon::pid);
        [Some(self.etcd.pid()), apiserver, controller_manager]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Restarts kube-controller-manager, whose garbage collector otherwise
    /// learns of CustomResourceDefinitions installed after it started only
    /// at its next discovery (every 30 s).
    pub fn restart_controller_manager(&self) -> Result<(), Error> {
        let mut controller_manager = lock(&self.controller_manager);
        drop(controller_manager.take());
        *controller_manager = Some(start_controller_manager(self.dir.path(), &self.kubeconfig)?);
        Ok(())
    }

    /// Kills kube-apiserver (SIGKILL) and starts it again on the same port
    /// with the same etcd, as after a control-plane crash. Returns once it
    /// is ready again.
    pub fn restart_apiserver(&self) -> Result<(), Error> {
        let mut apiserver = lock(&self.apiserver);
        let port: u16 = self
            .server
            .rsplit(':')
            .next()
            .and_then(|port| port.parse().ok())
            .unwrap_or_default();
        // Dropping the daemon kills it and waits for it to exit.
        drop(apiserver.take());
        let pki = Pki::paths(self.dir.path());
        let (restarted, _, _) = with_port_retries(|| {
            start_apiserver(self.dir.path(), &pki, &self.etcd_url, port, &self.kubectl)
        })?;
        *apiserver = Some(restarted);
        Ok(())
    }
}

fn start_etcd(dir: &Path) -> Result<(Daemon, String), Error> {
    let (client_port, peer_port) = (free_port()?, free_port()?);
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut command = Command::new(tools::binary("etcd")?);
    command
        .arg("--name=test")
        .arg(format!("--data-dir={}", dir.join("etcd").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=test={peer_url}"))
        // Test data is thrown away; durability only costs time here.
        .arg("--unsafe-no-fsync")
        .arg("--log-level=warn");
    let mut etcd = Daemon::spawn("etcd", command, &dir.join("etcd.log"))?;
    etcd.wait_ready(STARTUP_TIMEOUT, || http_ok(client_port, "/health"))?;
    Ok((etcd, client_url))
}

fn start_apiserver(
    dir: &Path,
    pki: &Pki,
    etcd_url: &str,
    port: u16,
    kubectl: &Path,
) -> Result<(Daemon, String, PathBuf), Error> {
    let server = format!("https://127.0.0.1:{port}");
    let mut command = Command::new(tools::binary("kube-apiserver")?);
    command
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--secure-port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!(
            "--cert-dir={}",
            dir.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            pki.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
        .arg(format!(
            "--service-account-key-file={}",
            pki.sa_public.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            pki.sa_private.display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--authorization-mode=RBAC")
        .arg("--allow-privileged=true")
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false");
    let log = dir.join("kube-apiserver.log");
    let mut apiserver = Daemon::spawn("kube-apiserver", command, &log)?;
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server, pki)?;
    apiserver.wait_ready(STARTUP_TIMEOUT, || {
        Command::new(kubectl)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "--raw=/readyz"])
            .output()
            .is_ok_and(|output| output.status.success())
    })?;
    Ok((apiserver, server, kubeconfig))
}

/// Garbage collection, namespace deletion, default ServiceAccounts and the
/// Endpoints of Services (empty without pods, so the service proxy answers
/// 503 as it does in a real cluster whose pods are not ready).
fn start_controller_manager(dir: &Path, kubeconfig: &Path) -> Result<Daemon, Error> {
    let mut command = Command::new(tools::binary("kube-controller-manager")?);
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,endpoints-controller")
        .arg("--leader-elect=false")
        // Serve nothing: the tests only need the controllers.
        .arg("--secure-port=0");
    let mut daemon = Daemon::spawn(
        "kube-controller-manager",
        command,
        &dir.join("kube-controller-manager.log"),
    )?;
    daemon.check_running()?;
    Ok(daemon)
}

/// Certificate and key files, all under the environment's directory.
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
}

impl Pki {
    fn paths(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_private: dir.join("sa.key"),
            sa_public: dir.join("sa.pub"),
        }
    }

    fn write(dir: &Path) -> Result<Self, Error> {
        let pki = Self::paths(dir);
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "sluice-test-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec!["localhost".to_owned()])?;
        serving
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "sluice-test-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;

        for (path, contents) in [
            (&pki.ca_cert, ca_cert.pem()),
            (&pki.serving_cert, serving_cert.pem()),
            (&pki.serving_key, serving_key.serialize_pem()),
            (&pki.admin_cert, admin_cert.pem()),
            (&pki.admin_key, admin_key.serialize_pem()),
            (&pki.sa_private, sa_key.serialize_pem()),
            (&pki.sa_public, sa_key.public_key_pem()),
        ] {
            write(path, &contents)?;
        }
        Ok(pki)
    }
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<(), Error> {
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: sluice-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: sluice-test
  context:
    cluster: sluice-test
    user: admin
    namespace: default
current-context: sluice-test
",
        ca = pki.ca_cert.display(),
        cert = pki.admin_cert.display(),
        key = pki.admin_key.display(),
    );
    write(path, &kubeconfig)
}

fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}
