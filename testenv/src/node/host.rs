//! What the node changes on this machine, and putting it back: the node's
//! address and the guard that keeps traffic on the machine, nftables tables,
//! sysctls, host paths, cgroups and processes.

use std::path::{Path, PathBuf};

use crate::kube::{POD_RANGE, write};
use crate::{Error, tools, walk};

use super::{NODE_IP, Node, quietly, run, stdout_of};

/// The veth pair that carries the node's address, and the pods' bridge.
const NODE_LINK: &str = "sluicenode0";

const NODE_LINK_PEER: &str = "sluicenode0p";

pub(super) const BRIDGE: &str = "sluicebr0";

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

/// Notes the nftables tables, sysctls and host paths there were before the
/// node, so that teardown removes only what the node added.
pub(super) fn record_host(state: &Path) -> Result<(), Error> {
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
pub(super) fn host_network(state: &Path) -> Result<(), Error> {
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
pub(super) fn kill_containers() {
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
