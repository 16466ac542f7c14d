"""What each component runs with: its argv and the configuration files it reads, built
from the cluster's shape (config.py) and the state folder's layout. Pure but for
`write_configs`, which writes the files.

Flags follow what kubeadm, envtest and kwok's binary runtime give a local control plane
(service-account issuer and keys, client CA, Node+RBAC authorization), plus what this
machine needs: cgroup v1 (hybrid) with the cgroupfs driver (`failCgroupV1: false`), no
swap check, no CAP_SYS_RESOURCE (containerd's `restrict_oom_score_adj`), no registry
(a locally built sandbox image), and every path (data, sockets, logs, runc state, CNI
IPAM, pod netns mounts) under the state folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from modelrail.cluster import config as c
from modelrail.cluster.errors import ClusterError
from modelrail.cluster.pki import Pki

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE = ("containerd", "kubelet", "kube-proxy")
COMPONENTS = (*CONTROL_PLANE, *NODE)  # a one-node cluster's
PER_NODE = ("containerd", "kubelet")  # every extra node i runs containerd-i and kubelet-i


def components_of(nodes: int) -> tuple[str, ...]:
    """Every component of an N-node cluster, by name."""
    extra = tuple(c.NodeLayout(Path("/"), i).component(kind)
                  for i in range(1, nodes) for kind in PER_NODE)
    return (*COMPONENTS, *extra)


def split_name(name: str) -> tuple[str, int]:
    """`kubelet-2` → ("kubelet", 2); `kube-proxy` → ("kube-proxy", 0)."""
    kind, _, index = name.rpartition("-")
    if kind in PER_NODE and index.isdigit():
        return kind, int(index)
    return name, 0


def binary(name: str) -> str:
    """An upstream binary from the build cache (containerd: Debian's, on PATH)."""
    if name == "containerd":
        found = shutil.which("containerd")
        if not found:
            raise ClusterError("containerd is not installed", where="PATH",
                               accepted="Debian's containerd package (1.6.20)")
        return found
    path = c.upstream_bin() / name
    if not path.is_file():
        raise ClusterError(f"{name} is not built", where=str(path),
                           accepted="the binaries scripts/upstream/build.sh makes",
                           repair="run scripts/upstream/build.sh")
    return str(path)


def etcd(lay: c.Layout, pki: Pki) -> list[str]:
    local = "https://127.0.0.1"
    return [
        binary("etcd"), "--name=modelrail", f"--data-dir={lay.etcd_data}",
        f"--listen-client-urls={local}:{c.ETCD_CLIENT_PORT}",
        f"--advertise-client-urls={local}:{c.ETCD_CLIENT_PORT}",
        f"--listen-peer-urls=http://127.0.0.1:{c.ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{c.ETCD_PEER_PORT}",
        f"--initial-cluster=modelrail=http://127.0.0.1:{c.ETCD_PEER_PORT}",
        f"--listen-metrics-urls=http://127.0.0.1:{c.ETCD_METRICS_PORT}",
        f"--cert-file={pki.crt('etcd-server')}", f"--key-file={pki.key('etcd-server')}",
        f"--trusted-ca-file={pki.ca}", "--client-cert-auth=true",
        "--snapshot-count=10000", "--log-level=warn",
    ]


def kube_apiserver(lay: c.Layout, pki: Pki) -> list[str]:
    return [
        binary("kube-apiserver"),
        # one flag, one address: 0.0.0.0 *inside the namespace* is its loopback, the
        # node address 10.214.0.2 and the pod bridge's gateway, nothing on the host
        "--bind-address=0.0.0.0", f"--secure-port={c.API_PORT}",
        f"--advertise-address={c.NODE_IP}",
        f"--etcd-servers=https://127.0.0.1:{c.ETCD_CLIENT_PORT}",
        f"--etcd-cafile={pki.ca}", f"--etcd-certfile={pki.crt('apiserver-etcd-client')}",
        f"--etcd-keyfile={pki.key('apiserver-etcd-client')}",
        f"--tls-cert-file={pki.crt('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca}",
        f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        f"--kubelet-certificate-authority={pki.ca}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--service-account-issuer={c.SA_ISSUER}",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        f"--service-cluster-ip-range={c.SERVICE_CIDR}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction,PodSecurity",
        # PodSecurity, not this flag, decides who may run privileged (namespace labels)
        "--allow-privileged=true",
        "--anonymous-auth=false",
        f"--audit-policy-file={lay.config / 'audit-policy.yaml'}",
        f"--audit-log-path={lay.audit_log}",
        "--audit-log-maxsize=100", "--audit-log-maxbackup=2",
        f"--encryption-provider-config={pki.encryption_config}",
        f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.crt('front-proxy-client')}",
        f"--proxy-client-key-file={pki.key('front-proxy-client')}",
        "--enable-aggregator-routing=true",
        "--profiling=false",
    ]


def _component_auth(lay: c.Layout, name: str) -> list[str]:
    kc = lay.kubeconfig(name)
    return [f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1",
            "--leader-elect=false", "--profiling=false"]


def kube_controller_manager(lay: c.Layout, pki: Pki) -> list[str]:
    return [
        binary("kube-controller-manager"), *_component_auth(lay, "controller-manager"),
        f"--client-ca-file={pki.ca}",
        f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}",
        f"--cluster-signing-cert-file={pki.ca}", f"--cluster-signing-key-file={pki.key('ca')}",
        f"--root-ca-file={pki.ca}", f"--service-account-private-key-file={pki.sa_key}",
        "--use-service-account-credentials=true", "--controllers=*",
        # each node's /24 is fixed by its CNI configuration (config.pod_cidr) and set on
        # its Node by `up`: the allocator would hand them out in registration order
        "--allocate-node-cidrs=false", f"--cluster-cidr={c.CLUSTER_CIDR}",
        f"--service-cluster-ip-range={c.SERVICE_CIDR}",
        # else it creates /usr/libexec/kubernetes/kubelet-plugins/volume/exec on the host
        f"--flex-volume-plugin-dir={lay.kubelet_root / 'volume-plugins'}",
    ]


def kube_scheduler(lay: c.Layout, pki: Pki) -> list[str]:
    return [binary("kube-scheduler"), *_component_auth(lay, "scheduler"),
            f"--client-ca-file={pki.ca}",
            f"--requestheader-client-ca-file={pki.crt('front-proxy-ca')}"]


def containerd(node: c.NodeLayout) -> list[str]:
    return [binary("containerd"), f"--config={node.containerd_config}"]


def kubelet(node: c.NodeLayout) -> list[str]:
    return [binary("kubelet"), f"--config={node.kubelet_config}",
            f"--kubeconfig={node.kubelet_kubeconfig}",
            f"--hostname-override={node.name}", f"--node-ip={node.ip}",
            f"--root-dir={node.kubelet_root}", f"--cert-dir={node.kubelet_root / 'pki'}",
            "--v=1"]


def kube_proxy(lay: c.Layout) -> list[str]:
    return [binary("kube-proxy"), f"--config={lay.config / 'kube-proxy.yaml'}"]


def argv_of(name: str, lay: c.Layout, pki: Pki) -> list[str]:
    kind, index = split_name(name)
    match kind:
        case "etcd":
            return etcd(lay, pki)
        case "kube-apiserver":
            return kube_apiserver(lay, pki)
        case "kube-controller-manager":
            return kube_controller_manager(lay, pki)
        case "kube-scheduler":
            return kube_scheduler(lay, pki)
        case "containerd":
            return containerd(lay.node(index))
        case "kubelet":
            return kubelet(lay.node(index))
        case "kube-proxy":
            return kube_proxy(lay)
    raise ClusterError(f"unknown component {name!r}", accepted=", ".join(COMPONENTS))


# --- configuration files ----------------------------------------------------------------

AUDIT_POLICY: dict[str, Any] = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
    # who did what to which object, never the bodies (Secrets stay out of the log)
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


def kubeconfig(*, name: str, ca: Path, cert: Path, key: Path, server: str = c.API_URL,
               ) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "modelrail", "cluster": {
            "server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": name, "user": {
            "client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "modelrail", "context": {"cluster": "modelrail", "user": name}}],
        "current-context": "modelrail",
    }


def kubelet_config(lay: c.Layout, pki: Pki, index: int = 0) -> dict[str, Any]:
    node = lay.node(index)
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # each node its own address in the namespace, so the ports are the usual ones
        "address": node.ip, "port": c.KUBELET_PORT, "readOnlyPort": 0,
        "healthzBindAddress": node.ip, "healthzPort": c.KUBELET_HEALTHZ_PORT,
        "authentication": {"anonymous": {"enabled": False},
                           "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki.ca)}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki.crt(f"kubelet-server{node.suffix}")),
        "tlsPrivateKeyFile": str(pki.key(f"kubelet-server{node.suffix}")),
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        # cgroup v1 (hybrid) here: the cgroupfs driver, and v1 allowed explicitly
        "cgroupDriver": "cgroupfs", "failCgroupV1": False,
        "cgroupRoot": c.cgroup_parent(index), "cgroupsPerQOS": True,
        "enforceNodeAllocatable": ["pods"],
        "failSwapOn": False,
        "protectKernelDefaults": False,
        "clusterDNS": [c.DNS_SERVICE_IP], "clusterDomain": c.CLUSTER_DOMAIN,
        "resolvConf": str(lay.config / "resolv.conf"),
        "podCIDR": c.pod_cidr(index), "maxPods": 110,
        "podLogsDir": str(node.pod_logs),
        "volumePluginDir": str(node.kubelet_root / "volume-plugins"),
        "rotateCertificates": False, "serverTLSBootstrap": False,
        "registerNode": True,
        # a shared machine's disk is not ours to keep free: evict only when nearly full
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "2%",
                         "imagefs.available": "2%", "nodefs.inodesFree": "2%"},
        # no image GC: the images were imported (there is no registry to pull them back
        # from), so a nearly full shared disk must not delete the pause or add-on images
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "containerLogMaxSize": "10Mi", "containerLogMaxFiles": 2,
    }


def kube_proxy_config(lay: c.Layout) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(lay.kubeconfig("kube-proxy"))},
        "hostnameOverride": c.NODE_NAME,
        "clusterCIDR": c.CLUSTER_CIDR,
        "bindAddress": c.NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{c.PROXY_HEALTHZ_PORT}",
        "metricsBindAddress": "127.0.0.1:10249",
        # nf_conntrack_max is not per network namespace: leave the host's alone
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
        "nodePortAddresses": [f"{c.NODE_IP}/32"],
    }


def cni_conflist(lay: c.Layout, index: int = 0) -> dict[str, Any]:
    node = lay.node(index)
    return {
        "cniVersion": "1.0.0", "name": "modelrail",
        "plugins": [
            {"type": "bridge", "bridge": c.bridge(index), "isGateway": True, "ipMasq": True,
             "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(node.cni_ipam_dir),
                      "ranges": [[{"subnet": c.pod_cidr(index),
                                   "gateway": c.pod_gateway(index)}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def containerd_toml(lay: c.Layout, *, runc: str, cni_bin: Path, index: int = 0) -> str:
    node = lay.node(index)
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    runc_table = f'{cri[:-1]}.containerd.runtimes.runc]'
    return f"""\
version = 2
root = "{node.containerd_root}"
state = "{node.containerd_state}"
# the system's /opt/containerd, and snapshotters this machine lacks, are not ours
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{node.containerd_socket}"

[ttrpc]
  address = "{node.containerd_socket}.ttrpc"

[debug]
  level = "info"

{cri}
  sandbox_image = "{c.PAUSE_IMAGE}"
  # no CAP_SYS_RESOURCE: never ask for an oom_score_adj below containerd's own
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  tolerate_missing_hugetlb_controller = true
  enable_selinux = false
  enable_cdi = false
  max_concurrent_downloads = 1

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{runc_table}
  runtime_type = "io.containerd.runc.v2"

{runc_table[:-1]}.options]
  BinaryName = "{runc}"
  Root = "{node.runc_root}"
  SystemdCgroup = false

{cri[:-1]}.cni]
  bin_dir = "{cni_bin}"
  conf_dir = "{node.cni_conf_dir}"
  max_conf_num = 1
"""


def write_configs(lay: c.Layout, pki: Pki, *, runc: str, nodes: int = 1) -> None:
    """Every configuration file the components read, under <state>/config (and each
    node's cni/)."""
    lay.config.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, data: dict[str, Any]) -> None:
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    dump(lay.config / "audit-policy.yaml", AUDIT_POLICY)
    for name in ("controller-manager", "scheduler", "kube-proxy"):
        dump(lay.kubeconfig(name), kubeconfig(name=name, ca=pki.ca, cert=pki.crt(name),
                                              key=pki.key(name)))
    dump(lay.admin_kubeconfig, kubeconfig(name="modelrail-admin", ca=pki.ca,
                                          cert=pki.crt("admin"), key=pki.key("admin")))
    lay.admin_kubeconfig.chmod(0o600)
    dump(lay.config / "kube-proxy.yaml", kube_proxy_config(lay))
    # the pods' upstream resolver: none (nothing beyond this machine is reachable)
    (lay.config / "resolv.conf").write_text(f"search {c.CLUSTER_DOMAIN}\n")
    for i in range(nodes):
        node = lay.node(i)
        client = f"kubelet{node.suffix}"
        dump(node.kubelet_kubeconfig, kubeconfig(name=client, ca=pki.ca,
                                                 cert=pki.crt(client), key=pki.key(client)))
        dump(node.kubelet_config, kubelet_config(lay, pki, i))
        node.cni_conf_dir.mkdir(parents=True, exist_ok=True)
        (node.cni_conf_dir / "10-modelrail.conflist").write_text(
            json.dumps(cni_conflist(lay, i), indent=2))
        node.containerd_config.write_text(
            containerd_toml(lay, runc=runc, cni_bin=c.cni_bin_dir(), index=i))
