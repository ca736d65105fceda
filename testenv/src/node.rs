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

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sluice_core::sync::lock;

use super::image::{self, File, Image};
use super::kube::{POD_RANGE, Pki, Plane, SERVICE_RANGE, write, write_kubeconfig};
use super::process::{Daemon, free_port, http_ok, run_at_exit};
use super::{Error, KubeEnv, tools, walk};

/// The node's name and address.
pub const NODE_NAME: &str = "sluice-node";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The cluster DNS Service's address.
const DNS_IP: &str = "10.96.0.10";
/// The veth pair that carries the node's address, and the pods' bridge.
const NODE_LINK: &str = "sluicenode0";
const NODE_LINK_PEER: &str = "sluicenode0p";
const BRIDGE: &str = "sluicebr0";
/// The nftables table that keeps every packet on the machine.
const GUARD_TABLE: &str = "sluice_node_guard";
/// Tables that the kubelet (iptables-nft), kube-proxy and the guard create;
/// removed at teardown unless they were there before.
const NODE_TABLES: [&str; 9] = [
    "ip filter",
    "ip nat",
    "ip mangle",
    "ip6 filter",
    "ip6 nat",
    "ip6 mangle",
    "ip kube-proxy",
    "ip6 kube-proxy",
    "inet sluice_node_guard",
];
/// Sysctls the kubelet, kube-proxy and the bridge plugin change.
const SYSCTLS: [&str; 10] = [
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.conf.all.route_localnet",
];
/// Host paths the kubelet, containerd and the CNI plugins write whatever
/// their root directories are; removed at teardown unless they were there.
const HOST_PATHS: [&str; 4] = [
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/lib/cni",
    "/run/containerd",
];
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

/// Notes the nftables tables, sysctls and host paths there were before the
/// node, so that teardown removes only what the node added.
fn record_host(state: &Path) -> Result<(), Error> {
    write(
        &state.join("nft-tables.before"),
        &run("nft", &["list", "tables"])?,
    )?;
    // A sysctl this kernel lacks (bridge-nf before br_netfilter loads) is
    // left out: there is nothing to put back.
    write(&state.join("sysctl.before"), &stdout_of("sysctl", &SYSCTLS))?;
    let present: Vec<&str> = HOST_PATHS
        .into_iter()
        .filter(|path| Path::new(path).exists())
        .collect();
    write(&state.join("host-paths.before"), &present.join("\n"))
}

/// The node's address on a veth pair (this kernel has no dummy links) and
/// the guard that drops anything the bridge would forward off the machine.
fn host_network(state: &Path) -> Result<(), Error> {
    run(
        "ip",
        &[
            "link",
            "add",
            NODE_LINK,
            "type",
            "veth",
            "peer",
            "name",
            NODE_LINK_PEER,
        ],
    )?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/32"), "dev", NODE_LINK],
    )?;
    run("ip", &["link", "set", NODE_LINK_PEER, "up"])?;
    run("ip", &["link", "set", NODE_LINK, "up"])?;
    let guard = state.join("guard.nft");
    write(
        &guard,
        &format!(
            "table inet {GUARD_TABLE} {{
  chain forward {{
    type filter hook forward priority -300; policy accept;
    iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" drop
    oifname \"{BRIDGE}\" iifname != \"{BRIDGE}\" drop
  }}
  chain output {{
    type filter hook output priority -300; policy accept;
    ip saddr {POD_RANGE} oifname != {{ \"{BRIDGE}\", \"lo\", \"{NODE_LINK}\" }} drop
    ip daddr {POD_RANGE} oifname != {{ \"{BRIDGE}\", \"lo\" }} drop
  }}
}}
"
        ),
    )?;
    run("nft", &["-f", &guard.to_string_lossy()])?;
    Ok(())
}

/// Puts the host back as [`record_host`] found it and removes `state`:
/// every container and shim of the node killed, its mounts, links,
/// nftables tables, cgroups, sysctl changes and host paths gone. Safe to
/// run on a half-started or already torn-down node.
pub fn teardown(state: &Path) {
    // What the host had before is recorded there; without it, nothing of
    // the host is known to be the node's.
    if !state.join("nft-tables.before").exists() {
        let _ = std::fs::remove_dir_all(state);
        return;
    }
    kill_containers();
    // Shims outlive containerd; ours run the pinned binary.
    for pid in processes_of("containerd-shim-runc-v2") {
        // SAFETY: kill(2) on a shim of this node's containerd.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let mut ours = mounts_under(state);
    ours.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in ours {
        quietly("umount", &["-l", &point]);
    }
    for line in stdout_of("ip", &["-o", "link", "show", "master", BRIDGE]).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            quietly(
                "ip",
                &["link", "del", name.split('@').next().unwrap_or(name)],
            );
        }
    }
    quietly("ip", &["link", "del", BRIDGE]);
    quietly("ip", &["link", "del", NODE_LINK]);
    let before = std::fs::read_to_string(state.join("nft-tables.before")).unwrap_or_default();
    let now = stdout_of("nft", &["list", "tables"]);
    for table in now.lines().filter_map(|line| line.strip_prefix("table ")) {
        if NODE_TABLES.contains(&table)
            && !before.lines().any(|line| line == format!("table {table}"))
        {
            let (family, name) = table.split_once(' ').unwrap_or((table, ""));
            quietly("nft", &["delete", "table", family, name]);
        }
    }
    for root in cgroup_roots() {
        remove_cgroups(&root);
    }
    if let Ok(sysctls) = std::fs::read_to_string(state.join("sysctl.before")) {
        for line in sysctls.lines() {
            if let Some((key, value)) = line.split_once(" = ") {
                quietly("sysctl", &["-q", "-w", &format!("{key}={value}")]);
            }
        }
    }
    if let Ok(before) = std::fs::read_to_string(state.join("host-paths.before")) {
        for path in HOST_PATHS {
            if !before.lines().any(|line| line == path) {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
    let _ = std::fs::remove_dir_all(state);
}

/// What of a node is still on this machine: its links, its nftables guard,
/// mounts under its state directory, processes of its binaries or in its
/// pod cgroups, the state directory itself. Empty once torn down.
pub fn leftovers() -> Vec<String> {
    let state = Node::state_dir();
    let mut found = Vec::new();
    for link in [NODE_LINK, BRIDGE] {
        if Path::new("/sys/class/net").join(link).exists() {
            found.push(format!("network link {link}"));
        }
    }
    if stdout_of("nft", &["list", "tables"]).contains(GUARD_TABLE) {
        found.push(format!("nftables table {GUARD_TABLE}"));
    }
    found.extend(
        mounts_under(&state)
            .into_iter()
            .map(|point| format!("mount {point}")),
    );
    for binary in [
        "containerd",
        "containerd-shim-runc-v2",
        "kubelet",
        "kube-proxy",
    ] {
        found.extend(
            processes_of(binary)
                .into_iter()
                .map(|pid| format!("{binary} process {pid}")),
        );
    }
    for root in cgroup_roots() {
        found.push(format!("cgroup {}", root.display()));
    }
    if state.exists() {
        found.push(format!("state directory {}", state.display()));
    }
    found
}

/// Kills every process in the node's pod cgroups: the containers, whether
/// or not containerd and their shims still run.
fn kill_containers() {
    for root in cgroup_roots() {
        for procs in walk(&root).filter(|path| path.ends_with("cgroup.procs")) {
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill(2) on a process in the node's pod cgroups.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

/// The `kubepods` cgroup of every hierarchy.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|hierarchy| hierarchy.path().join("kubepods"))
        .collect();
    roots.push(PathBuf::from("/sys/fs/cgroup/kubepods"));
    roots.retain(|root| root.is_dir());
    roots
}

/// Removes a cgroup and its children, deepest first (a cgroup directory
/// goes with rmdir once it holds no process and no child).
fn remove_cgroups(root: &Path) {
    if !root.is_dir() {
        return;
    }
    let mut dirs: Vec<PathBuf> = walk(root).filter(|path| path.is_dir()).collect();
    dirs.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// The pids of the processes running the pinned binary `name`.
fn processes_of(name: &str) -> Vec<u32> {
    let Some(binary) = tools::binary(name)
        .ok()
        .and_then(|path| path.canonicalize().ok())
    else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            (std::fs::read_link(entry.path().join("exe")).ok()? == binary).then_some(pid)
        })
        .collect()
}

/// The mount points under `state`.
fn mounts_under(state: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(state))
        .map(str::to_owned)
        .collect()
}

/// The pause image (every pod's sandbox) and CoreDNS's, from the pinned
/// builds.
fn system_images() -> Result<[Image; 2], Error> {
    let image = |name: &str, binary: &str, user: &str| -> Result<Image, Error> {
        Ok(Image {
            name: name.into(),
            files: vec![File::host(
                &format!("/{binary}"),
                tools::binary(binary)?,
                0o755,
            )],
            user: user.into(),
            entrypoint: vec![format!("/{binary}")],
        })
    };
    Ok([
        image(PAUSE_IMAGE, "pause", "65535:65535")?,
        image(COREDNS_IMAGE, "coredns", "65532:65532")?,
    ])
}

const PAUSE_IMAGE: &str = "sluice.test/pause:1";
const COREDNS_IMAGE: &str = "sluice.test/coredns:1";

/// containerd v2 (configuration version 3), everything under `state`;
/// `restrict_oom_score_adj` because this machine lacks CAP_SYS_RESOURCE.
fn containerd_config(state: &Path) -> Result<String, Error> {
    let state = state.display();
    let runc = tools::binary("runc")?;
    let cni = tools::binary("bridge")?;
    let cni_dir = cni.parent().unwrap_or(Path::new("/")).display().to_string();
    Ok(format!(
        r#"version = 3
root = "{state}/containerd/root"
state = "{state}/containerd/state"
temp = "{state}/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{state}/containerd/containerd.sock"
[ttrpc]
  address = "{state}/containerd/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{state}/containerd/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{state}/runc"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni_dir}"]
    conf_dir = "{state}/cni"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
        runc = runc.display(),
    ))
}

/// The pod network: a bridge without NAT, pods routed only to the pod,
/// Service and node ranges (no default route off the machine).
fn write_cni_config(state: &Path) -> Result<(), Error> {
    let dir = state.join("cni");
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "sluice",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.0.0/24", "gateway": "10.244.0.1"}]],
                    "routes": [{"dst": POD_RANGE}, {"dst": SERVICE_RANGE}, {"dst": format!("{NODE_IP}/32")}],
                    "dataDir": state.join("cni-ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    write(&dir.join("10-sluice.conflist"), &config.to_string())
}

/// The kubelet: cgroupfs on cgroup v1 (`failCgroupV1: false`), serving
/// on the node's address with webhook authentication and authorization.
fn kubelet_config_yaml(state: &Path, pki: &Pki, healthz: u16) -> String {
    let state = state.display();
    format!(
        "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
tlsCertFile: {cert}
tlsPrivateKeyFile: {key}
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
containerRuntimeEndpoint: unix://{state}/containerd/containerd.sock
clusterDNS: [{DNS_IP}]
clusterDomain: cluster.local
resolvConf: {state}/resolv.conf
podLogsDir: {state}/pod-logs
evictionHard: {{\"memory.available\": \"100Mi\", \"nodefs.available\": \"1%\", \"imagefs.available\": \"1%\"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
",
        cert = pki.kubelet_serving.0.display(),
        key = pki.kubelet_serving.1.display(),
        ca = pki.ca_cert.display(),
    )
}

/// kube-proxy in nftables mode; `oomScoreAdj: 0` for want of
/// CAP_SYS_RESOURCE.
fn kube_proxy_config(kubeconfig: &Path, healthz: u16, metrics: u16) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: {POD_RANGE}
bindAddress: {NODE_IP}
healthzBindAddress: 127.0.0.1:{healthz}
metricsBindAddress: 127.0.0.1:{metrics}
nodePortAddresses: [\"{NODE_IP}/32\"]
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
oomScoreAdj: 0
",
        kubeconfig = kubeconfig.display(),
    )
}

/// CoreDNS as a restricted pod; no `forward`, so no query leaves the
/// machine.
const COREDNS: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: coredns, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{kind: ServiceAccount, name: coredns, namespace: kube-system}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health {
            lameduck 2s
        }
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {
            pods insecure
            fallthrough in-addr.arpa ip6.arpa
        }
        cache 30
        reload
    }
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  replicas: 1
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      dnsPolicy: Default
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: coredns
        image: sluice.test/coredns:1
        imagePullPolicy: Never
        args: ["-conf", "/etc/coredns/Corefile"]
        ports:
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: dns-tcp, containerPort: 53, protocol: TCP}
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        volumeMounts: [{name: config, mountPath: /etc/coredns, readOnly: true}]
        readinessProbe: {httpGet: {path: /ready, port: 8181}, periodSeconds: 2}
        livenessProbe: {httpGet: {path: /health, port: 8080}, periodSeconds: 10}
        resources: {requests: {cpu: 20m, memory: 32Mi}, limits: {memory: 128Mi}}
      volumes:
      - name: config
        configMap: {name: coredns}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
"#;
