"""The one-node cluster, for real: `up` in a fresh state folder, the node Ready, a pod of
the modelrail base image running under the `restricted` Pod Security level with an
address in the pod range, reached through its ClusterIP Service and its DNS name from the
host, a privileged pod refused by admission; then `down`, and nothing of it is left on
the machine (process, mount, cgroup, namespace, veth, route, shim socket).

Needs root, the upstream binaries (scripts/upstream/build.sh) and the base image in
podman's store; skipped otherwise. The fast tests check the generated configuration. The
cluster is the session's (conftest.py); this test stops it, so it runs last.
"""

from __future__ import annotations

import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelrail.cluster import components, dns, netns, node, pki
from modelrail.cluster import config as c
from modelrail.cluster.api import Api
from modelrail.cluster.supervise import Record, alive

# --- fast: the configuration the components get -------------------------------------------

def test_kubelet_config_fits_this_machine(tmp_path: Path) -> None:
    lay = c.Layout(tmp_path)
    cfg = components.kubelet_config(lay, pki.Pki(lay.pki))
    assert cfg["cgroupDriver"] == "cgroupfs" and cfg["failCgroupV1"] is False
    assert cfg["failSwapOn"] is False
    assert cfg["containerRuntimeEndpoint"] == f"unix://{lay.containerd_socket}"
    assert cfg["authentication"]["anonymous"]["enabled"] is False
    assert cfg["clusterDNS"] == [c.DNS_SERVICE_IP]


def test_containerd_config_keeps_everything_under_the_state_folder(tmp_path: Path) -> None:
    lay = c.Layout(tmp_path)
    toml = components.containerd_toml(lay, runc="/usr/sbin/runc", cni_bin=Path("/cni"))
    assert "restrict_oom_score_adj = true" in toml  # no CAP_SYS_RESOURCE here
    assert "netns_mounts_under_state_dir = true" in toml
    assert f'sandbox_image = "{c.PAUSE_IMAGE}"' in toml
    for path in (lay.containerd_root, lay.containerd_state, lay.containerd_socket,
                 lay.runc_root, lay.cni_conf_dir):
        assert str(path) in toml


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
    assert {r.name for r in records} == set(components.COMPONENTS)

    with Api(keys) as api:
        node_obj = api.get(f"/api/v1/nodes/{c.NODE_NAME}")
        assert node_obj is not None
        assert node_obj["spec"]["podCIDR"] == c.POD_CIDR
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
        assert pod_ip in ipaddress.ip_network(c.POD_CIDR)
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

