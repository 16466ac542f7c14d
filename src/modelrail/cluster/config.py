"""The one-node cluster's fixed shape: names, addresses, ranges, ports, where each file
lives under the state folder, and where the upstream binaries are.

Everything that must agree between components (the API server's address in the
certificates, the kubeconfigs and the kubelet's node IP; the pod range in the CNI
configuration, the controller manager and kube-proxy; the DNS Service's ClusterIP in the
kubelet and the CoreDNS Service) is named here once. Pure: no I/O beyond path arithmetic.

Addresses: the cluster lives in the network namespace `modelrail-cluster`, joined to the
host by one veth pair on a private /24 (host 10.214.0.1, node i 10.214.0.(2+i)). The
netns has no default route, so nothing in it (pods included) reaches past this machine;
the host gets routes to the pod and service ranges through the first node's address.

Nodes: one by default. `up(nodes=N)` adds N-1 more, each a kubelet with a containerd,
a pod /24 (10.244.i.0/24 on its bridge cni<i>) and a cgroup parent of its own, all in the
same namespace (as kind runs several nodes on one machine). Every node reports this
machine's CPUs, so N nodes let the scheduler place N times its CPUs in requests: how the
prod stack's 6 CPUs of requests are scheduled on a 2-core machine. One kube-proxy serves
the namespace for all of them (iptables rules are per network namespace).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

NETNS = "modelrail-cluster"
HOST_IF = "mrc0"  # the host's end of the veth pair (IFNAMSIZ: at most 15 characters)
NODE_IF = "eth0"  # the namespace's end
HOST_IP = "10.214.0.1"
NODE_IP = "10.214.0.2"  # the first node's (the API server's, kube-proxy's)
LINK_PREFIX = 24
MAX_NODES = 8
POD_CIDR = "10.244.0.0/24"  # the first node's pods (host-local IPAM on the cni0 bridge)
CLUSTER_CIDR = "10.244.0.0/16"  # the controller manager gives each node a /24 of it
POD_GATEWAY = "10.244.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"  # the first address of SERVICE_CIDR
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
NODE_NAME = "modelrail-node"
API_PORT = 6443
API_URL = f"https://{NODE_IP}:{API_PORT}"
SA_ISSUER = f"https://kubernetes.default.svc.{CLUSTER_DOMAIN}"
# kubelet's cgroups (cgroupfs driver, cgroup v1) all live under this one parent, in every
# mounted hierarchy: `down` kills what runs there and removes the tree
CGROUP_ROOT = "modelrail-cluster"
PAUSE_IMAGE = "localhost/modelrail/pause:3.10"
COREDNS_IMAGE_REPO = "localhost/modelrail/coredns"
TRAEFIK_IMAGE_REPO = "localhost/modelrail/traefik"
PROMETHEUS_IMAGE_REPO = "localhost/modelrail/prometheus"
METRICS_SERVER_IMAGE_REPO = "localhost/modelrail/metrics-server"

# the Gateway API implementation (Traefik, gateway.py): the Gateway the stacks' routes name
# (Pulumi.<stack>.yaml `modelrail:gateway`), served by a ClusterIP Service at a fixed
# address in the static part of SERVICE_CIDR: port 80 → Traefik's `web` entry point (the
# HTTPRoutes' listener), port 8001 → its `grpc` entry point (the GRPCRoutes', h2c)
GATEWAY_NAMESPACE = "gateway-system"
GATEWAY_NAME = "modelrail-gateway"
GATEWAY_CLASS = "traefik"
GATEWAY_SERVICE_IP = "10.96.0.80"
GATEWAY_HTTP_PORT = 80  # the Service's ports
GATEWAY_GRPC_PORT = 8001
GATEWAY_WEB_PORT = 8000  # Traefik's entry points = the Gateway listeners' ports
GATEWAY_H2C_PORT = 8001
GATEWAY_PING_PORT = 8080  # Traefik's own entry point: /ping for the probes

# monitoring (monitoring.py): Prometheus in the namespace the stacks name as
# `modelrail:monitoringNamespace`, its Service at a fixed address in the static part of
# SERVICE_CIDR (the operator's http://prometheus.monitoring.svc:9090; the host reaches the
# ClusterIP through its route to the Service range); metrics-server in kube-system behind
# the aggregated API v1beta1.metrics.k8s.io (what HPAs on CPU read)
MONITORING_NAMESPACE = "monitoring"
PROMETHEUS_SERVICE_IP = "10.96.0.90"
PROMETHEUS_PORT = 9090
METRICS_SERVER_PORT = 10250  # in its pod (the Service maps 443 to it)

# health endpoints, all inside the namespace
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
PROXY_HEALTHZ_PORT = 10256



def node_name(i: int) -> str:
    """Node i's name: the first is `modelrail-node`, then `modelrail-node-1`, …"""
    return NODE_NAME if i == 0 else f"{NODE_NAME}-{i}"


def node_ip(i: int) -> str:
    return f"10.214.0.{2 + i}"


def pod_cidr(i: int) -> str:
    return f"10.244.{i}.0/24"


def pod_gateway(i: int) -> str:
    return f"10.244.{i}.1"


def bridge(i: int) -> str:
    return f"cni{i}"


def cgroup_parent(i: int) -> str:
    """Node i's kubelet cgroupRoot: a child of CGROUP_ROOT, one per node (two kubelets
    under one parent would both manage its `kubepods`)."""
    return f"/{CGROUP_ROOT}/node{i}"


def check_nodes(nodes: int) -> int:
    from modelrail.cluster.errors import ClusterError

    if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"nodes must be a whole number from 1 to {MAX_NODES}, got {nodes!r}",
                           where="--nodes", accepted=f"1..{MAX_NODES}")
    return nodes


UNIX_PATH_MAX = 107  # sun_path is 108 bytes with its terminating NUL


def upstream_bin() -> Path:
    """Where scripts/upstream/build.sh puts etcd, kube-*, kubectl, coredns (and bin/cni)."""
    env = os.environ.get("MODELRAIL_UPSTREAM_BIN")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("MODELRAIL_CACHE") or str(Path.home() / ".cache" / "modelrail")
    return Path(cache).expanduser() / "upstream" / "bin"


def gateway_api_crds() -> Path:
    """Where scripts/upstream/build.sh (component gateway-api-crds) copies the Gateway API
    CRDs of the standard channel: <cache>/upstream/crds/gateway-api/*.yaml."""
    return upstream_bin().parent / "crds" / "gateway-api"


def cluster_cache() -> Path:
    """Built once per machine: the pause binary, saved image archives."""
    cache = os.environ.get("MODELRAIL_CACHE") or str(Path.home() / ".cache" / "modelrail")
    return Path(cache).expanduser() / "cluster"


CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
DEBIAN_CNI_DIR = Path("/usr/lib/cni")


def cni_bin_dir() -> Path:
    """The upstream CNI plugins (v1.10, bin/cni) if all four are built, else Debian's."""
    upstream = upstream_bin() / "cni"
    if all((upstream / p).is_file() for p in CNI_PLUGINS):
        return upstream
    return DEBIAN_CNI_DIR


@dataclass(frozen=True)
class NodeLayout:
    """One node's paths: the first node's at the top of the state folder (where a
    one-node cluster always kept them), node i's under node<i>/ (its kubelet's root at
    kubelet-<i>/ and its containerd's socket at the top: the kubelet binds sockets under
    its root, and a socket's path has at most 107 characters); its components' names
    (`kubelet`, `kubelet-1`, …), configuration files and logs."""

    root: Path  # the state folder
    index: int

    @property
    def base(self) -> Path:
        return self.root if self.index == 0 else self.root / f"node{self.index}"

    @property
    def name(self) -> str:
        return node_name(self.index)

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    def component(self, kind: str) -> str:
        """`containerd` or `kubelet` → this node's component name."""
        return kind if self.index == 0 else f"{kind}-{self.index}"

    @property
    def suffix(self) -> str:
        return "" if self.index == 0 else f"-{self.index}"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "config" / f"kubelet{self.suffix}.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.root / "config" / f"kubelet{self.suffix}.kubeconfig"

    @property
    def containerd_config(self) -> Path:
        return self.root / "config" / f"containerd{self.suffix}.toml"

    @property
    def images_record(self) -> Path:
        """The images imported into this node's containerd (ref → image id)."""
        return self.base / "images.json"

    # containerd: its own root (images, metadata: kept across down/up) and state (runtime
    # only: removed by down), socket, and runc's state
    @property
    def containerd_root(self) -> Path:
        return self.base / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.base / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        """At the top of the state folder for extra nodes (see the class)."""
        if self.index == 0:
            return self.base / "containerd" / "containerd.sock"
        return self.root / f"containerd-{self.index}.sock"

    @property
    def runc_root(self) -> Path:
        return self.base / "containerd" / "runc"

    @property
    def cni_conf_dir(self) -> Path:
        return self.base / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.base / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        return self.root / f"kubelet{self.suffix}"

    @property
    def pod_logs(self) -> Path:
        return self.base / "pod-logs"

    def runtime_dirs(self) -> list[Path]:
        return [self.containerd_state, self.runc_root, self.cni_ipam_dir,
                self.kubelet_root / "pods", self.kubelet_root / "pod-resources",
                self.kubelet_root / "plugins_registry"]


@dataclass(frozen=True)
class Layout:
    """Every path under one cluster's state folder (the first node's as attributes,
    any node's through `node(i)`)."""

    root: Path

    def node(self, i: int) -> NodeLayout:
        return NodeLayout(self.root, i)

    def nodes_on_disk(self) -> list[NodeLayout]:
        """The first node and every extra node whose folder exists (what `down` and
        `leftovers` look through, with or without a state file)."""
        indexes = {0}
        if self.root.is_dir():
            for d in self.root.iterdir():
                for prefix in ("node", "kubelet-"):
                    rest = d.name.removeprefix(prefix)
                    if d.name.startswith(prefix) and rest.isdigit() and int(rest) > 0:
                        indexes.add(int(rest))
        return [self.node(i) for i in sorted(indexes)]

    @property
    def state_file(self) -> Path:
        return self.root / "cluster.json"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    def kubeconfig(self, component: str) -> Path:
        return self.config / f"{component}.kubeconfig"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def audit_log(self) -> Path:
        return self.logs / "audit.log"

    # the first node's (node(0)'s) paths, as a one-node cluster always had them
    @property
    def containerd_root(self) -> Path:
        return self.node(0).containerd_root

    @property
    def containerd_state(self) -> Path:
        return self.node(0).containerd_state

    @property
    def containerd_socket(self) -> Path:
        return self.node(0).containerd_socket

    @property
    def runc_root(self) -> Path:
        return self.node(0).runc_root

    @property
    def cni_conf_dir(self) -> Path:
        return self.node(0).cni_conf_dir

    @property
    def cni_ipam_dir(self) -> Path:
        return self.node(0).cni_ipam_dir

    @property
    def kubelet_root(self) -> Path:
        return self.node(0).kubelet_root

    @property
    def pod_logs(self) -> Path:
        return self.node(0).pod_logs

    def runtime_dirs(self) -> list[Path]:
        """Folders that only mean something while the cluster runs (down empties them)."""
        return [d for n in self.nodes_on_disk() for d in n.runtime_dirs()]
