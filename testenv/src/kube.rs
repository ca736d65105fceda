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

use sluice_core::sync::lock;

use super::process::{Daemon, free_port, http_ok};
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
    plane: Plane,
    namespaces: AtomicU32,
    dir: tempfile::TempDir,
}

/// Where the control plane serves, and for whom.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plane {
    /// The address the API server binds and advertises.
    pub(super) address: IpAddr,
    /// A node's name: the API server then authorizes its kubelet (Node
    /// authorizer, NodeRestriction) and reaches it, and the controller
    /// manager runs every controller and gives the node a pod range.
    pub(super) node: Option<&'static str>,
}

/// The ranges of a cluster with a node.
pub(super) const SERVICE_RANGE: &str = "10.96.0.0/16";
pub(super) const POD_RANGE: &str = "10.244.0.0/16";

impl KubeEnv {
    /// This process's shared API server, started on first use; it stops when
    /// the process exits. A failed start panics: it is for tests and
    /// benchmarks.
    pub fn shared() -> &'static Self {
        static SHARED: std::sync::OnceLock<KubeEnv> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| Self::start().unwrap_or_else(|err| panic!("{err}")))
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager on loopback
    /// and waits until `/readyz` answers.
    pub fn start() -> Result<Self, Error> {
        Self::start_in(
            scratch_dir("sluice-kube-")?,
            Plane {
                address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                node: None,
            },
        )
    }

    /// The control plane of a cluster as `plane` says, its files in `dir`.
    pub(super) fn start_in(dir: tempfile::TempDir, plane: Plane) -> Result<Self, Error> {
        let pki = Pki::write(
            dir.path(),
            &PkiFor {
                apiserver_ips: match plane.node {
                    // The `kubernetes` Service's ClusterIP.
                    Some(_) => vec![plane.address, IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))],
                    None => vec![],
                },
                node: plane.node.map(|name| (name, plane.address)),
            },
        )?;
        let (mut etcd, etcd_url) = with_port_retries(|| start_etcd(dir.path()))?;
        let kubectl = tools::binary("kubectl")?;
        let (apiserver, server, kubeconfig) = with_port_retries(|| {
            etcd.check_running()?;
            let port = free_port()?;
            start_apiserver(dir.path(), &pki, &etcd_url, plane, port, &kubectl)
        })?;
        let controller_manager = start_controller_manager(dir.path(), &pki, plane, &kubeconfig)?;
        Ok(Self {
            controller_manager: Mutex::new(Some(controller_manager)),
            apiserver: Mutex::new(Some(apiserver)),
            etcd,
            etcd_url,
            server,
            kubeconfig,
            ca_cert: pki.ca_cert,
            kubectl,
            plane,
            namespaces: AtomicU32::new(0),
            dir,
        })
    }

    /// The API server's URL, `https://ADDRESS:PORT`.
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
        *controller_manager = Some(start_controller_manager(
            self.dir.path(),
            &Pki::paths(self.dir.path()),
            self.plane,
            &self.kubeconfig,
        )?);
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
            start_apiserver(
                self.dir.path(),
                &pki,
                &self.etcd_url,
                self.plane,
                port,
                &self.kubectl,
            )
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
    plane: Plane,
    port: u16,
    kubectl: &Path,
) -> Result<(Daemon, String, PathBuf), Error> {
    let address = plane.address;
    let server = format!("https://{address}:{port}");
    let mut command = Command::new(tools::binary("kube-apiserver")?);
    command
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--secure-port={port}"))
        .arg(format!("--bind-address={address}"))
        .arg(format!("--advertise-address={address}"))
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
        .arg(format!("--service-cluster-ip-range={SERVICE_RANGE}"))
        .arg("--allow-privileged=true")
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false");
    if plane.node.is_some() {
        // The admin certificate is also how the API server authenticates to
        // the kubelet (logs, exec, the pod proxy).
        command
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!(
                "--kubelet-client-certificate={}",
                pki.admin_cert.display()
            ))
            .arg(format!("--kubelet-client-key={}", pki.admin_key.display()))
            .arg(format!(
                "--kubelet-certificate-authority={}",
                pki.ca_cert.display()
            ))
            .arg("--kubelet-preferred-address-types=InternalIP");
    } else {
        command.arg("--authorization-mode=RBAC");
    }
    let log = dir.join("kube-apiserver.log");
    let mut apiserver = Daemon::spawn("kube-apiserver", command, &log)?;
    let kubeconfig = dir.join("kubeconfig");
    write_kubeconfig(&kubeconfig, &server, pki, (&pki.admin_cert, &pki.admin_key))?;
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

/// Without a node: garbage collection, namespace deletion, default
/// ServiceAccounts and the Endpoints of Services (empty without pods, so
/// the service proxy answers 503 as it does in a real cluster whose pods
/// are not ready). With one: every controller a cluster runs.
fn start_controller_manager(
    dir: &Path,
    pki: &Pki,
    plane: Plane,
    kubeconfig: &Path,
) -> Result<Daemon, Error> {
    let mut command = Command::new(tools::binary("kube-controller-manager")?);
    command
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--leader-elect=false")
        // Serve nothing: the tests only need the controllers.
        .arg("--secure-port=0");
    if plane.node.is_some() {
        command
            .arg(format!("--cluster-cidr={POD_RANGE}"))
            .arg("--allocate-node-cidrs=true")
            .arg("--node-cidr-mask-size=24")
            .arg(format!("--service-cluster-ip-range={SERVICE_RANGE}"))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_private.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
            .arg("--use-service-account-credentials=true");
    } else {
        command.arg("--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller,endpoints-controller,clusterrole-aggregation-controller");
    }
    let mut daemon = Daemon::spawn(
        "kube-controller-manager",
        command,
        &dir.join("kube-controller-manager.log"),
    )?;
    daemon.check_running()?;
    Ok(daemon)
}

/// Certificate and key files, all under the environment's directory.
pub(super) struct Pki {
    pub(super) ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_private: PathBuf,
    sa_public: PathBuf,
    /// A node's client certificate (`system:node:NAME` in `system:nodes`)
    /// and its kubelet's serving certificate, when there is a node.
    pub(super) kubelet_client: (PathBuf, PathBuf),
    pub(super) kubelet_serving: (PathBuf, PathBuf),
}

/// Who the certificates are for, beyond the API server on loopback.
#[derive(Default)]
pub(super) struct PkiFor<'a> {
    /// More addresses the API server is reached at (a node's IP, the
    /// `kubernetes` Service's ClusterIP).
    pub(super) apiserver_ips: Vec<IpAddr>,
    /// A node: its name and IP, for its kubelet's certificates.
    pub(super) node: Option<(&'a str, IpAddr)>,
}

impl Pki {
    pub(super) fn paths(dir: &Path) -> Self {
        Self {
            ca_cert: dir.join("ca.crt"),
            serving_cert: dir.join("apiserver.crt"),
            serving_key: dir.join("apiserver.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            sa_private: dir.join("sa.key"),
            sa_public: dir.join("sa.pub"),
            kubelet_client: (dir.join("kubelet.crt"), dir.join("kubelet.key")),
            kubelet_serving: (
                dir.join("kubelet-serving.crt"),
                dir.join("kubelet-serving.key"),
            ),
        }
    }

    pub(super) fn write(dir: &Path, to: &PkiFor) -> Result<Self, Error> {
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
        let mut files = vec![(&pki.ca_cert, ca_cert.pem())];

        let mut apiserver_names = vec!["localhost".to_owned()];
        let mut apiserver_ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        if !to.apiserver_ips.is_empty() {
            // In-cluster clients name the `kubernetes` Service.
            apiserver_names.extend(
                [
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ]
                .map(String::from),
            );
            apiserver_ips.extend(&to.apiserver_ips);
        }
        let serving_key = KeyPair::generate()?;
        let serving_cert = serving(apiserver_names, &apiserver_ips, "kube-apiserver")?
            .signed_by(&serving_key, &issuer)?;
        files.push((&pki.serving_cert, serving_cert.pem()));
        files.push((&pki.serving_key, serving_key.serialize_pem()));

        let admin_key = KeyPair::generate()?;
        let admin_cert =
            client("sluice-test-admin", "system:masters")?.signed_by(&admin_key, &issuer)?;
        files.push((&pki.admin_cert, admin_cert.pem()));
        files.push((&pki.admin_key, admin_key.serialize_pem()));

        let sa_key = KeyPair::generate()?;
        files.push((&pki.sa_private, sa_key.serialize_pem()));
        files.push((&pki.sa_public, sa_key.public_key_pem()));

        if let Some((name, ip)) = to.node {
            let user = format!("system:node:{name}");
            let key = KeyPair::generate()?;
            let cert = client(&user, "system:nodes")?.signed_by(&key, &issuer)?;
            files.push((&pki.kubelet_client.0, cert.pem()));
            files.push((&pki.kubelet_client.1, key.serialize_pem()));
            let key = KeyPair::generate()?;
            let cert = serving(vec![name.to_owned()], &[ip], &user)?.signed_by(&key, &issuer)?;
            files.push((&pki.kubelet_serving.0, cert.pem()));
            files.push((&pki.kubelet_serving.1, key.serialize_pem()));
        }
        for (path, contents) in files {
            write(path, &contents)?;
        }
        Ok(pki)
    }
}

fn serving(
    names: Vec<String>,
    ips: &[IpAddr],
    common_name: &str,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(names)?;
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

fn client(common_name: &str, organization: &str) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .distinguished_name
        .push(DnType::OrganizationName, organization);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A kubeconfig for `server` with the client certificate and key `user`.
pub(super) fn write_kubeconfig(
    path: &Path,
    server: &str,
    pki: &Pki,
    user: (&Path, &Path),
) -> Result<(), Error> {
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
        cert = user.0.display(),
        key = user.1.display(),
    );
    write(path, &kubeconfig)
}

pub(super) fn write(path: &Path, contents: &str) -> Result<(), Error> {
    std::fs::write(path, contents).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })
}
