"""The cluster, for real: `up` in a fresh state folder with NODES nodes, each Ready with
its own address, pod range and this machine's CPUs; a pod of the modelrail base image
running under the `restricted` Pod Security level with an address in its node's range,
reached through its ClusterIP Service and its DNS name from the host, a privileged pod
refused by admission; then `down`, and nothing of it is left on the machine (process,
mount, cgroup, namespace, veth, route, shim socket).

Needs root, the upstream binaries (scripts/upstream/build.sh) and the base image in
podman's store; skipped otherwise. The fast tests check the generated configuration. The
cluster is the session's (conftest.py); this test stops it, so it runs last.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelrail.cluster import components, dns, netns, node, pki
from modelrail.cluster import config as c
from modelrail.cluster.api import Api
from modelrail.cluster.supervise import Record, alive
from tests.cluster.conftest import NODES

# --- fast: the configuration the components get -------------------------------------------

def test_kubelet_config_fits_this_machine(tmp_path: Path) -> None:
    lay = c.Layout(tmp_path)
    cfg = components.kubelet_config(lay, pki.Pki(lay.pki))
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["failCgroupV1"] is False
    assert cfg["failSwapOn"] is False
    assert cfg["containerRuntimeEndpoint"] == f"unix://{lay.containerd_socket}"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["clusterDNS"] == [c.DNS_SERVICE_IP]
    # imported images cannot be pulled back: no image GC on a nearly full shared disk (it
    # once deleted the pause image, and every new pod failed to get a sandbox)
    assert cfg["imageGCHighThresholdPercent"] == 100


def test_the_archive_cache_keeps_the_recently_used_within_its_limit(tmp_path: Path) -> None:
    from modelrail.cluster.images import prune_archives

    now = time.time()
    paths = []
    for i, age_hours in enumerate((30, 20, 10, 5, 0)):  # oldest first; the last in use
        p = tmp_path / f"{i}.tar"
        p.write_bytes(b"x" * 100)
        os.utime(p, (now - age_hours * 3600, now - age_hours * 3600))
        paths.append(p)
    deleted = prune_archives(tmp_path, keep=paths[0], limit=300)
    # the oldest is kept (asked for), then the least recently used go until 300 ≤ 300…
    assert deleted == [paths[1], paths[2]]
    assert [p.exists() for p in paths] == [True, False, False, True, True]
    # …and one used within the hour is never deleted, even over the limit
    assert prune_archives(tmp_path, limit=0) == [paths[0], paths[3]]
    assert paths[4].exists()


def test_containerd_config_keeps_everything_under_the_state_folder(tmp_path: Path) -> None:
    lay = c.Layout(tmp_path)
    toml = components.containerd_toml(lay, runc="/usr/sbin/runc", cni_bin=Path("/cni"))
    assert "restrict_oom_score_adj = true" in toml  # no CAP_SYS_RESOURCE here
    assert "netns_mounts_under_state_dir = true" in toml
    assert f'sandbox_image = "{c.PAUSE_IMAGE}"' in toml
    for path in (lay.containerd_root, lay.containerd_state, lay.containerd_socket,
                 lay.runc_root, lay.cni_conf_dir):
        assert str(path) in toml


def test_each_node_has_its_own_runtime_address_range_cgroup_and_identity(
        tmp_path: Path) -> None:
    lay = c.Layout(tmp_path)
    keys = pki.Pki(lay.pki)
    first, second = components.kubelet_config(lay, keys, 0), \
        components.kubelet_config(lay, keys, 1)
    assert first["containerRuntimeEndpoint"] != second["containerRuntimeEndpoint"]
    assert (first["address"], second["address"]) == (c.node_ip(0), c.node_ip(1))
    assert (first["cgroupRoot"], second["cgroupRoot"]) == ("/modelrail-cluster/node0",
                                                            "/modelrail-cluster/node1")
    assert second["tlsCertFile"].endswith("kubelet-server-1.crt")
    nets = [components.cni_conflist(lay, i)["plugins"][0] for i in (0, 1)]
    assert [n["bridge"] for n in nets] == ["cni0", "cni1"]
    assert [n["ipam"]["ranges"][0][0]["subnet"] for n in nets] == [c.pod_cidr(0),
                                                                    c.pod_cidr(1)]
    assert nets[0]["ipam"]["dataDir"] != nets[1]["ipam"]["dataDir"]
    toml = components.containerd_toml(lay, runc="/usr/sbin/runc", cni_bin=Path("/cni"),
                                       index=1)
    node1 = lay.node(1)
    for path in (node1.containerd_root, node1.runc_root, node1.cni_conf_dir):
        assert str(path) in toml and str(tmp_path / "node1") in str(path)
    assert str(node1.containerd_socket) in toml
    assert node1.containerd_socket.parent == tmp_path
    argv = components.argv_of("kubelet-1", lay, keys) if (
        c.upstream_bin() / "kubelet").is_file() else []
    if argv:
        assert f"--hostname-override={c.node_name(1)}" in argv
    assert components.components_of(2)[-2:] == ("containerd-1", "kubelet-1")
    assert components.split_name("kubelet-3") == ("kubelet", 3)
    assert components.split_name("kube-proxy") == ("kube-proxy", 0)
    names = {leaf.name: leaf.cn for leaf in pki.leaves(3)}
    assert names["kubelet-2"] == "system:node:modelrail-node-2"
    assert c.node_ip(2) in next(leaf for leaf in pki.leaves(3)
                                if leaf.name == "kubelet-server-2").ips


@pytest.mark.parametrize("bad", ["0", "9", "two", "-1"])
def test_a_bad_node_count_is_refused(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    from modelrail.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["cluster", "up", "--nodes", bad, "--state-dir", "/nonexistent"])
    assert exit_.value.code == 2
    assert "whole number from 1 to 8" in capsys.readouterr().err


def test_apiserver_flags(tmp_path: Path) -> None:
    if not (c.upstream_bin() / "kube-apiserver").is_file():
        pytest.skip("kube-apiserver is not built (scripts/upstream/build.sh)")
    lay = c.Layout(tmp_path)
    argv = components.kube_apiserver(lay, pki.Pki(lay.pki))
    flags = dict(a.split("=", 1) for a in argv[1:])
    assert flags["--authorization-mode"] == "Node,RBAC"
    assert "PodSecurity" in flags["--enable-admission-plugins"]
    assert flags["--service-cluster-ip-range"] == c.SERVICE_CIDR
    assert flags["--audit-log-path"] == str(lay.audit_log)


def test_dns_name_encoding_and_mountinfo_unescape() -> None:
    assert dns._encode_name("a.bc.") == b"\x01a\x02bc\x00"
    assert node._unescape(r"/tmp/with\040space") == "/tmp/with space"


# --- slow: the real cluster ------------------------------------------------------------------

RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]}}
RESTRICTED_POD = {"runAsNonRoot": True, "runAsUser": 1034, "runAsGroup": 1034,
                  "seccompProfile": {"type": "RuntimeDefault"}}


def _pod(name: str, image: str, command: list[str], *, privileged: bool = False,
         labels: dict[str, str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image, "imagePullPolicy": "Never",
                                 "command": command}
    spec: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": 1}
    if privileged:
        container["securityContext"] = {"privileged": True}
    else:
        container["securityContext"] = RESTRICTED_CONTAINER
        spec["securityContext"] = RESTRICTED_POD
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def _wait(check: Any, *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.cluster_down
@pytest.mark.timeout(900)
def test_cluster_up_runs_restricted_pods_and_down_leaves_nothing(
        cluster: tuple[Path, Any, str]) -> None:
    state_dir, result, image = cluster
    lay = c.Layout(state_dir.resolve())
    print(f"\nup: {result.timings}")
    assert result.running, result.problems
    assert result.node_ready and result.api_ready
    keys = pki.Pki(lay.pki)
    records = [Record.from_dict(r) for r in
               json.loads(lay.state_file.read_text())["components"].values()]
    assert {r.name for r in records} == set(components.components_of(NODES))
    assert result.nodes == NODES and all(result.nodes_ready.values()), result.nodes_ready

    with Api(keys) as api:
        cidrs = {}
        for i in range(NODES):  # each node: its own address, /24 and this machine's CPUs
            node_obj = api.get(f"/api/v1/nodes/{c.node_name(i)}")
            assert node_obj is not None
            assert node_obj["spec"]["podCIDR"] == c.pod_cidr(i)
            assert {"type": "InternalIP", "address": c.node_ip(i)} in \
                node_obj["status"]["addresses"]
            assert node_obj["status"]["allocatable"]["cpu"] == str(os.cpu_count())
            cidrs[c.node_name(i)] = node_obj["spec"]["podCIDR"]
        api.create("/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": "restricted",
                "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
        pods = "/api/v1/namespaces/restricted/pods"

        # a privileged pod is refused by the PodSecurity admission plugin
        code, body = api.try_create(pods, _pod("privileged", image, ["sleep", "infinity"],
                                               privileged=True))
        assert code == 403, body
        assert "violates PodSecurity" in body.get("message", ""), body

        # a restricted pod of the base image runs, with an address in the pod range
        api.create(pods, _pod("web", image, ["python3", "-m", "http.server", "8080",
                                             "--directory", "/usr/share"],
                              labels={"app": "web"}))
        pod = _wait(lambda: (p := api.get(f"{pods}/web")) and
                    p.get("status", {}).get("phase") == "Running" and p,
                    timeout=120, what="the restricted pod to run")
        pod_ip = ipaddress.ip_address(pod["status"]["podIP"])
        assert pod_ip in ipaddress.ip_network(cidrs[pod["spec"]["nodeName"]])
        status = pod["status"]["containerStatuses"][0]
        assert status["ready"] or status["state"].get("running")

        # kube-proxy: its ClusterIP Service answers from the host (through the node)
        svc = api.create("/api/v1/namespaces/restricted/services", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": 8080}]}})
        cluster_ip = svc["spec"]["clusterIP"]
        assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network(c.SERVICE_CIDR)

        def answers() -> bool:
            try:
                return httpx.get(f"http://{cluster_ip}/", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False
        _wait(answers, timeout=60, what=f"the Service at {cluster_ip}")

        # CoreDNS (if built): the Service's name resolves through kube-dns
        if (c.upstream_bin() / "coredns").is_file():
            name = f"web.restricted.svc.{c.CLUSTER_DOMAIN}"
            assert _wait(lambda: dns.query_a(name, c.DNS_SERVICE_IP) == [cluster_ip],
                         timeout=30, what=f"{name} to resolve")

    again = node.status(state_dir)
    assert again.running, again.problems

    report = node.down(state_dir)
    print(f"down: {report.to_dict()}")
    assert not report.problems
    assert not report.killed, "every component stops on SIGTERM"
    for r in records:
        assert not alive(r), f"{r.name} (pid {r.pid}) still runs"
    assert node.leftovers(state_dir) == []
    assert not netns.exists()
    assert node.mounts_under(state_dir.resolve()) == []
    assert not node.status(state_dir).running



def test_service_account_credentials_refuse_bad_input(tmp_path: Path) -> None:
    from modelrail.cluster import credentials
    from modelrail.cluster.errors import ClusterError

    with pytest.raises(ClusterError, match="NAMESPACE/NAME"):
        credentials.write_service_account_kubeconfig(
            None, tmp_path / "ca.crt", "no-slash", tmp_path / "kc")  # type: ignore[arg-type]
    with pytest.raises(ClusterError, match=r"600\.\.86400"):
        credentials.request_token(None, "ns", "sa", seconds=60)  # type: ignore[arg-type]
    doc = credentials.kubeconfig_for("TOKEN", namespace="ns", user="system:serviceaccount:ns:sa",
                                     ca=tmp_path / "ca.crt")
    assert doc["users"][0]["user"] == {"token": "TOKEN"}
    assert doc["contexts"][0]["context"]["namespace"] == "ns"
