//! A real single-node Kubernetes on this machine: the control plane of
//! [`KubeEnv`] on the node's address, kube-scheduler, containerd with runc
//! and the CNI bridge, the kubelet, kube-proxy (nftables) and CoreDNS, all
//! from the binaries `tools/build.sh` pins, with images written here (see
//! [`image`](super::image)).
//!
//! One node per machine: the bridge, the cgroup root, the nftables tables
//! and a few host paths are host-wide. The node lives in one state
//! directory, which records what the host looked like before (nftables
//! tables, sysctls, host paths), so that [`teardown`] puts it back from that
//! directory alone, also after a run that was killed.
//!
//! Nothing leaves the machine: the node's address sits on a veth pair, pods
//! route only to the pod, Service and node ranges, the bridge does no NAT,
//! and an nftables guard drops anything forwarded between the bridge and
//! other interfaces.
//!
//! This file starts, restarts and stops the node; `host.rs` is what it
//! changes on the machine and how that is put back, `config.rs` the
//! components' configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::sync::lock;

use super::image::{self, Image};
use super::kube::{Pki, Plane, write, write_kubeconfig};
use super::process::{Daemon, free_port, http_ok, run_at_exit};
use super::{Error, KubeEnv, tools};

mod config;
mod host;

pub use host::{leftovers, teardown};

use config::{
    COREDNS, containerd_config, kube_proxy_config, kubelet_config_yaml, system_images,
    write_cni_config,
};
use host::{host_network, kill_containers, record_host};

/// The node's name and address.
pub const NODE_NAME: &str = "sluice-node";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// A running node, torn down on drop (or, held in a static, when the
/// process exits).
pub struct Node {
    // Field order is drop order: the node's daemons stop before the
    // control plane.
    proxy: Option<Daemon>,
    kubelet: Option<Daemon>,
    /// Behind a lock: a test restarts it while others use the node.
    containerd: Mutex<Option<Daemon>>,
    scheduler: Option<Daemon>,
    kube: Option<KubeEnv>,
    state: PathBuf,
    /// The machine-wide lock that keeps a second node from starting.
    _lock: std::fs::File,
}

impl Node {
    /// Where a node keeps everything: one directory per machine.
    pub fn state_dir() -> PathBuf {
        std::env::temp_dir().join("sluice-node")
    }

    /// Starts the node, after tearing down whatever a killed run left, and
    /// waits until it is Ready and CoreDNS answers. `images` are imported
    /// into its runtime beside the pause and CoreDNS images. A watchdog
    /// (`sluice-testenv node-watchdog`), in a session of its own, tears the
    /// node down if this process dies without doing so (killed, or
    /// interrupted with Ctrl-C).
    pub fn start(images: &[Image]) -> Result<Self, Error> {
        check_preconditions()?;
        let lock = lock_machine()?;
        let state = Self::state_dir();
        // What a killed run left behind.
        teardown(&state);
        run_at_exit(|| teardown(&Node::state_dir()));
        spawn_watchdog()?;
        std::fs::create_dir_all(&state).map_err(|source| Error::Io {
            what: format!("creating {}", state.display()),
            source,
        })?;
        let mut node = Self {
            proxy: None,
            kubelet: None,
            containerd: Mutex::new(None),
            scheduler: None,
            kube: None,
            state,
            _lock: lock,
        };
        node.bring_up(images)?;
        Ok(node)
    }

    fn bring_up(&mut self, images: &[Image]) -> Result<(), Error> {
        let state = self.state.clone();
        let started = Instant::now();
        record_host(&state)?;
        host_network(&state)?;
        let plane_dir = tempfile::Builder::new()
            .prefix("plane-")
            .tempdir_in(&state)
            .map_err(|source| Error::Io {
                what: "creating the control plane's directory".into(),
                source,
            })?;
        let kube = self.kube.insert(KubeEnv::start_in(
            plane_dir,
            Plane {
                address: IpAddr::V4(NODE_IP),
                node: Some(NODE_NAME),
            },
        )?);
        let pki = Pki::paths(kube.dir());
        let admin = kube.kubeconfig().to_owned();
        let kubelet_kubeconfig = state.join("kubelet.kubeconfig");
        write_kubeconfig(
            &kubelet_kubeconfig,
            kube.server(),
            &pki,
            (&pki.kubelet_client.0, &pki.kubelet_client.1),
        )?;

        let mut scheduler = Command::new(tools::binary("kube-scheduler")?);
        scheduler
            .arg(format!("--kubeconfig={}", admin.display()))
            .arg(format!("--authentication-kubeconfig={}", admin.display()))
            .arg(format!("--authorization-kubeconfig={}", admin.display()))
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()?));
        self.scheduler = Some(Daemon::spawn(
            "kube-scheduler",
            scheduler,
            &state.join("kube-scheduler.log"),
        )?);

        write(&state.join("containerd.toml"), &containerd_config(&state)?)?;
        write_cni_config(&state)?;
        self.restart_containerd()?;
        for image in system_images()?.iter().chain(images) {
            self.import(image)?;
        }

        let kubelet_config = state.join("kubelet.yaml");
        let healthz = free_port()?;
        write(&kubelet_config, &kubelet_config_yaml(&state, &pki, healthz))?;
        write(
            &state.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions ndots:1\n",
        )?;
        let mut kubelet = Command::new(tools::binary("kubelet")?);
        kubelet
            .arg(format!("--config={}", kubelet_config.display()))
            .arg(format!("--kubeconfig={}", kubelet_kubeconfig.display()))
            .arg(format!("--root-dir={}", state.join("kubelet").display()))
            .arg(format!("--hostname-override={NODE_NAME}"))
            .arg(format!("--node-ip={NODE_IP}"))
            .arg("-v=1");
        let kubelet = self.kubelet.insert(Daemon::spawn(
            "kubelet",
            kubelet,
            &state.join("kubelet.log"),
        )?);
        let kube = self.kube.as_ref().expect("started above");
        kubelet.wait_ready(STARTUP_TIMEOUT, || {
            kube.kubectl_output(&[
                "get",
                "node",
                NODE_NAME,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ])
            .is_ok_and(|output| output.stdout == b"True")
        })?;

        let proxy_config = state.join("kube-proxy.yaml");
        let (proxy_healthz, proxy_metrics) = (free_port()?, free_port()?);
        write(
            &proxy_config,
            &kube_proxy_config(&admin, proxy_healthz, proxy_metrics),
        )?;
        let mut proxy = Command::new(tools::binary("kube-proxy")?);
        proxy
            .arg(format!("--config={}", proxy_config.display()))
            .arg(format!("--hostname-override={NODE_NAME}"));
        let proxy = self.proxy.insert(Daemon::spawn(
            "kube-proxy",
            proxy,
            &state.join("kube-proxy.log"),
        )?);
        proxy.wait_ready(STARTUP_TIMEOUT, || http_ok(proxy_healthz, "/healthz"))?;

        let coredns = state.join("coredns.yaml");
        write(&coredns, COREDNS)?;
        kube.apply(&coredns)?;
        let output = kube.kubectl_output(&[
            "-n",
            "kube-system",
            "rollout",
            "status",
            "deployment/coredns",
            "--timeout=120s",
        ])?;
        if !output.status.success() {
            return Err(Error::Command {
                what: "waiting for CoreDNS".into(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        eprintln!(
            "test node {NODE_NAME} ({NODE_IP}) ready in {:.1}s; state in {}",
            started.elapsed().as_secs_f64(),
            state.display()
        );
        Ok(())
    }

    /// The node's control plane: its API server, kubectl and clients.
    pub fn kube(&self) -> &KubeEnv {
        self.kube.as_ref().expect("a node has a control plane")
    }

    /// Starts containerd, or restarts it as an upgrade or a crash of the
    /// runtime would (the containers keep running under their shims), and
    /// waits until it answers.
    pub fn restart_containerd(&self) -> Result<(), Error> {
        let mut containerd = lock(&self.containerd);
        drop(containerd.take());
        let containerd = containerd.insert(spawn_containerd(&self.state)?);
        let ctr = tools::binary("ctr")?;
        let socket = self.state.join("containerd/containerd.sock");
        containerd.wait_ready(STARTUP_TIMEOUT, || {
            Command::new(&ctr)
                .arg("--address")
                .arg(&socket)
                .arg("version")
                .output()
                .is_ok_and(|output| output.status.success())
        })
    }

    /// `ctr` against the node's containerd, in the CRI's namespace.
    pub fn ctr(&self) -> Result<Command, Error> {
        let mut command = Command::new(tools::binary("ctr")?);
        command
            .arg("--address")
            .arg(self.state.join("containerd/containerd.sock"))
            .args(["--namespace", "k8s.io"]);
        Ok(command)
    }

    /// The host's process id of a running container's first process, read
    /// from the file its shim keeps in the container's bundle. Unlike
    /// `ctr tasks ls`, this answers while containerd restarts (the shims and
    /// containers live on), which a test on the shared node may be doing.
    pub fn container_pid(&self, container_id: &str) -> Result<u32, Error> {
        let path = self
            .state
            .join("containerd/state/io.containerd.runtime.v2.task/k8s.io")
            .join(container_id)
            .join("init.pid");
        let what = || format!("reading {}", path.display());
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
            what: what(),
            source,
        })?;
        text.trim().parse().map_err(|_| Error::Command {
            what: what(),
            stderr: format!("not a process id: {text:?}"),
        })
    }

    /// Writes `image` and imports it into the node's runtime, where pods
    /// find it without pulling.
    pub fn import(&self, image: &Image) -> Result<(), Error> {
        let archive = self.state.join("image.tar");
        image::write_archive(image, &archive)?;
        let output = self
            .ctr()?
            .args(["images", "import"])
            .arg(&archive)
            .output()
            .map_err(|source| Error::Spawn {
                name: "ctr".into(),
                source,
            })?;
        let _ = std::fs::remove_file(&archive);
        if !output.status.success() {
            return Err(Error::Command {
                what: format!("importing the image {}", image.name),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Stop the node's daemons (kill their process groups) before the
        // control plane, then put the host back.
        drop(self.proxy.take());
        drop(self.kubelet.take());
        drop(self.scheduler.take());
        kill_containers();
        drop(lock(&self.containerd).take());
        drop(self.kube.take());
        teardown(&self.state);
    }
}

/// containerd with the configuration in `state`; it finds its runc shim on
/// PATH, so the pinned one comes first.
fn spawn_containerd(state: &Path) -> Result<Daemon, Error> {
    let binary = tools::binary("containerd")?;
    let mut path = binary
        .parent()
        .unwrap_or(Path::new("/"))
        .as_os_str()
        .to_owned();
    path.push(":");
    path.push(std::env::var_os("PATH").unwrap_or_default());
    let mut containerd = Command::new(&binary);
    containerd
        .arg("--config")
        .arg(state.join("containerd.toml"))
        .env("PATH", path);
    Daemon::spawn("containerd", containerd, &state.join("containerd.log"))
}

/// `sluice-testenv node-watchdog --parent <this process>`, outside this
/// process's session and process group, so that neither Ctrl-C nor this
/// process's death reaches it. This binary, when it is `sluice-testenv`
/// (`make demo`); otherwise (a test) its release build.
fn spawn_watchdog() -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    const NAME: &str = "sluice-testenv";
    let binary = match std::env::current_exe() {
        Ok(exe) if exe.file_name().is_some_and(|name| name == NAME) => exe,
        _ => image::release_binary(NAME)?,
    };
    let mut watchdog = Command::new(binary);
    watchdog
        .args(["node-watchdog", "--parent"])
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Not this process's stderr: a pipe a caller reads to its end
        // would stay open as long as the watchdog waits.
        .stderr(watchdog_log()?);
    // SAFETY: setsid is async-signal-safe and touches no memory of ours.
    unsafe {
        watchdog.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    watchdog.spawn().map_err(|source| Error::Spawn {
        name: "the node's watchdog".into(),
        source,
    })?;
    Ok(())
}

/// Where the watchdog writes what went wrong, if anything.
fn watchdog_log() -> Result<std::fs::File, Error> {
    let path = std::env::temp_dir().join("sluice-node-watchdog.log");
    std::fs::File::create(&path).map_err(|source| Error::Io {
        what: format!("creating {}", path.display()),
        source,
    })
}

/// `sluice-testenv node-watchdog`: waits until process `parent` is gone, then
/// tears down the node it may have left (once no other node runs).
pub fn watch(parent: u32) -> Result<(), Error> {
    while running(parent) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _lock = lock_machine()?;
    teardown(&Node::state_dir());
    Ok(())
}

/// Whether process `pid` runs: it exists and has not exited (a zombie
/// waiting to be reaped has).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The state follows the command name, which is in parentheses.
            let (_, after_name) = stat.rsplit_once(')')?;
            after_name
                .split_whitespace()
                .next()
                .map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// Takes the machine's node lock, waiting while another process's node
/// runs.
fn lock_machine() -> Result<std::fs::File, Error> {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("sluice-node.lock");
    let file = std::fs::File::create(&path).map_err(|source| Error::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    // SAFETY: flock(2) on a file we hold open.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for another process's test node to stop ({} is locked)",
            path.display()
        );
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Io {
                what: format!("locking {}", path.display()),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(file)
}

/// What the node needs of this machine, each missing one named.
fn check_preconditions() -> Result<(), Error> {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (the node creates links, mounts and cgroups): run as root".to_owned());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        missing.push("the overlay filesystem (containerd's snapshotter): modprobe overlay".into());
    }
    if !Path::new("/sys/fs/cgroup/memory").is_dir()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").is_file()
    {
        missing.push("cgroups (/sys/fs/cgroup/memory or a cgroup v2 hierarchy)".into());
    }
    for (program, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("iptables", "iptables"),
    ] {
        if Command::new(program).arg("--version").output().is_err() {
            missing.push(format!(
                "`{program}` (Debian's {package}): run `make tools`"
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Precondition(missing.join("; ")))
    }
}

/// Runs `program args`, failing with what it printed.
fn run(program: &str, args: &[&str]) -> Result<String, Error> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| Error::Spawn {
            name: program.into(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            what: format!("{program} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `program args` during teardown, where a failure only means there
/// was nothing to undo.
fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).output();
}

/// What `program args` printed on stdout; nothing when it cannot run.
fn stdout_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}
