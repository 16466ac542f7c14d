"""The cluster's network namespace: made, entered, inspected and removed here.

`ip netns add modelrail-cluster`, loopback up, one veth pair to the host on a /24 (one
address per node inside), host routes to the pod and service ranges through the first
node's address, no default route inside.
The host end carries the owning state folder as its interface alias, so a second `up`
from another folder is refused and `down` knows whose namespace it removes.

Components are started with `nsenter --net=/run/netns/…`, not `ip netns exec`: the latter
also unshares the mount namespace and remounts /sys, which hides /sys/fs/cgroup (the
kubelet, containerd and runc need the cgroup v1 hierarchies) and would keep the kubelet's
volume mounts out of the host's sight, where `down` unmounts them. Only the network
namespace differs from the host's.

`call_in_netns` runs a Python function on a thread that has joined the namespace
(setns(2) moves only the calling thread), for health probes of endpoints bound inside.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from modelrail.cluster import config as c
from modelrail.cluster.errors import ClusterError

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def path(name: str = c.NETNS) -> Path:
    return NETNS_DIR / name


def exists(name: str = c.NETNS) -> bool:
    return path(name).exists()


def ip(*args: str, check: bool = True, netns: str | None = None) -> str:
    """`ip ARGS…` (in `netns` if given); raises ClusterError with ip's message."""
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if check and proc.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed: {proc.stderr.strip()}",
                           accepted="root with CAP_NET_ADMIN (the cluster needs it)")
    return proc.stdout


def owner() -> str | None:
    """The state folder that made the namespace (the host veth's alias), if any."""
    try:
        alias = Path(f"/sys/class/net/{c.HOST_IF}/ifalias").read_text().strip()
    except OSError:
        return None
    return alias or None


def create(state_dir: Path, *, nodes: int = 1) -> None:
    """The namespace, its loopback, the veth pair with one address per node, and the
    host routes (idempotent for the same state folder)."""
    if exists() and owner() == str(state_dir):
        _node_addresses(nodes)
        return
    if exists() or Path(f"/sys/class/net/{c.HOST_IF}").exists():
        raise ClusterError(
            f"network namespace {c.NETNS} (or interface {c.HOST_IF}) already exists",
            where=owner() or "unknown state folder",
            accepted="one cluster per machine",
            repair=f"run `modelrail cluster down` with the state folder {owner() or '?'}")
    try:
        ip("netns", "add", c.NETNS)
        ip("link", "set", "lo", "up", netns=c.NETNS)
        ip("link", "add", c.HOST_IF, "type", "veth", "peer", "name", c.NODE_IF,
           "netns", c.NETNS)
        ip("link", "set", c.HOST_IF, "alias", str(state_dir))
        ip("addr", "add", f"{c.HOST_IP}/{c.LINK_PREFIX}", "dev", c.HOST_IF)
        ip("link", "set", c.HOST_IF, "up")
        _node_addresses(nodes)
        ip("link", "set", c.NODE_IF, "up", netns=c.NETNS)
        # no default route inside; Service addresses need a route for the node's own
        # processes to reach them (kube-proxy's OUTPUT DNAT runs after the lookup). On
        # the link, not via the host: an address no Service holds is never answered
        # (ARP) and so never bounces between host and namespace
        ip("route", "add", c.SERVICE_CIDR, "dev", c.NODE_IF, netns=c.NETNS)
        # every node's pod /24 is on a bridge in the namespace: one route for them all
        for cidr in HOST_ROUTES:
            ip("route", "replace", cidr, "via", c.NODE_IP, "dev", c.HOST_IF)
        for key, value in (("net/ipv4/ip_forward", "1"),
                           ("net/bridge/bridge-nf-call-iptables", "1")):
            write_sysctl(key, value)
    except BaseException:
        remove()
        raise


HOST_ROUTES = (c.CLUSTER_CIDR, c.SERVICE_CIDR)


def _node_addresses(nodes: int) -> None:
    """Node i's address, 10.214.0.(2+i), on the namespace's end of the veth pair."""
    for i in range(nodes):
        ip("addr", "replace", f"{c.node_ip(i)}/{c.LINK_PREFIX}", "dev", c.NODE_IF,
           netns=c.NETNS)


def write_sysctl(key: str, value: str) -> None:
    """A per-namespace sysctl, written from inside the namespace."""
    def write() -> None:
        Path("/proc/sys", key).write_text(value)
    try:
        call_in_netns(write)
    except OSError as exc:
        raise ClusterError(f"cannot set {key}={value} in {c.NETNS}: {exc}") from exc


def remove() -> None:
    """Host routes, the veth pair (deleting one end deletes both) and the namespace."""
    for cidr in (*HOST_ROUTES, c.POD_CIDR):  # (a one-node cluster routed only its /24)
        ip("route", "del", cidr, "via", c.NODE_IP, check=False)
    if Path(f"/sys/class/net/{c.HOST_IF}").exists():
        ip("link", "del", c.HOST_IF, check=False)
    if exists():
        ip("netns", "del", c.NETNS)


def pids(name: str = c.NETNS) -> list[int]:
    """Every process whose network namespace is this one (`ip netns pids`)."""
    if not exists(name):
        return []
    out = ip("netns", "pids", name, check=False)
    return sorted(int(p) for p in out.split() if p.isdigit())


def argv_in(argv: list[str]) -> list[str]:
    """`argv` run in the cluster's network namespace (and the host's everything else)."""
    return ["nsenter", f"--net={path()}", "--", *argv]


_LIBC = ctypes.CDLL(None, use_errno=True)


def call_in_netns(fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """`fn()` on a fresh thread inside the namespace; its result, or its exception."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(path(), os.O_RDONLY)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, name="modelrail-netns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise ClusterError(f"a probe inside {c.NETNS} did not return within {timeout:.0f}s")
    if error:
        raise error[0]
    return result[0]
