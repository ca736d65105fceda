//! The configuration of each of the node's components (containerd, the CNI
//! bridge, the kubelet, kube-proxy, CoreDNS) and its system images.

use std::path::Path;

use crate::image::{File, Image};
use crate::kube::{POD_RANGE, Pki, SERVICE_RANGE, write};
use crate::{Error, tools};

use super::NODE_IP;
use super::host::BRIDGE;

/// The cluster DNS Service's address.
const DNS_IP: &str = "10.96.0.10";

/// The pause image (every pod's sandbox) and CoreDNS's, from the pinned
/// builds.
pub(super) fn system_images() -> Result<[Image; 2], Error> {
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
pub(super) fn containerd_config(state: &Path) -> Result<String, Error> {
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
pub(super) fn write_cni_config(state: &Path) -> Result<(), Error> {
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
pub(super) fn kubelet_config_yaml(state: &Path, pki: &Pki, healthz: u16) -> String {
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
pub(super) fn kube_proxy_config(kubeconfig: &Path, healthz: u16, metrics: u16) -> String {
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
pub(super) const COREDNS: &str = r#"apiVersion: v1
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
