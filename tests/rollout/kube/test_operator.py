"""The kopf operator against KMock: the fast layer for what is slow or awkward to stage on
a real cluster — no data holding then failing at the deadline, an operator killed and a
new one resuming (with the CLI's verdict), a version changed mid-rollout, weights held
while the canary's scale-up is pending, abort — asserted on the objects it wrote, each
validated against the Kubernetes and Gateway API schemas.

Moved to the real cluster (tests/cluster/test_rollouts.py) and deleted here: the good
version promoted, the erroring, slow and wrong versions rolled back, two peered replicas
acting once, and the RBAC comparison (now against the API server's audit log)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from modelrail.rollout import api
from tests.infra.schemas import validate
from tests.rollout.kube.conftest import NS, operator, stack
from tests.rollout.kube.harness import Cluster, FakePrometheus

pytestmark = pytest.mark.slow
GROUP, VERSION = api.GROUP, api.VERSION


def rollout(cluster: Cluster) -> dict[str, Any]:
    obj = cluster.get(GROUP, VERSION, api.PLURAL, "iris")
    assert obj is not None
    return obj


def start(cluster: Cluster, version: str) -> None:
    """What CI does (and `modelrail rollout start --kube`): set the desired version."""
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, api.PLURAL, "iris",
                                                  {"spec": {"version": version}})


TERMINAL = {"Succeeded", "RolledBack", "Failed", "Aborted"}


def done(st: dict[str, Any]) -> bool:
    """The controller carried out the action it decided last, and a finished rollout is
    cleaned up (status.rollout is its RolloutRecord)."""
    record = st.get("rollout")
    if record is None:
        return True
    if st.get("phase") in TERMINAL:
        return bool(record.get("finished"))
    return bool(record.get("executed_seq") == record["status"].get("seq"))


def history(st: dict[str, Any]) -> list[dict[str, Any]]:
    return list(st["rollout"]["status"]["history"])


def wait_phase(cluster: Cluster, phases: set[str], timeout: float = 120,
               canary: str | None = None) -> dict[str, Any]:
    """Wait for a phase (of the rollout of `canary`, if given) whose action is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rollout(cluster).get("status") or {}
        if (st.get("phase") in phases and done(st)
                and (canary is None or st.get("canaryVersion") == canary)):
            return st
        time.sleep(0.3)
    st = rollout(cluster).get("status") or {}
    record = st.get("rollout") or {}
    raise AssertionError(f"phase never reached {phases} (executed_seq "
                         f"{record.get('executed_seq')}, finished {record.get('finished')}): "
                         f"{st}")


def wait_weight(cluster: Cluster, weight: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while rollout(cluster)["status"].get("canaryWeight") != weight:
        assert time.monotonic() < deadline, f"canary weight never reached {weight}%"
        time.sleep(0.2)


def weights(cluster: Cluster) -> set[tuple[int, int]]:
    out = set()
    for plural in ("httproutes", "grpcroutes"):
        route = cluster.get("gateway.networking.k8s.io", "v1", plural, "iris")
        assert route is not None
        refs = {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}
        out.add((refs["iris-stable"], refs["iris-canary"]))
    return out


def events(cluster: Cluster) -> list[dict[str, Any]]:
    return [e for e in cluster.list("", "v1", "events")
            if e.get("involvedObject", {}).get("name") == "iris"]


def check_written_objects(cluster: Cluster) -> None:
    """Every object the operator created or patched validates against its schema."""
    for c in cluster.operator_calls():
        if c.action != "CREATE" or not isinstance(c.body, dict) or "kind" not in c.body:
            continue
        validate(c.body)
    for plural, group, version in (("deployments", "apps", "v1"),
                                   ("httproutes", "gateway.networking.k8s.io", "v1"),
                                   ("grpcroutes", "gateway.networking.k8s.io", "v1")):
        for stored in cluster.list(group, version, plural):
            obj = {k: v for k, v in stored.items() if k != "status"}
            obj["metadata"] = {k: v for k, v in stored["metadata"].items()
                               if k in ("name", "namespace", "labels", "annotations")}
            validate(obj)


def kube_cli(cluster: Cluster, *args: str) -> Any:
    """The `modelrail` CLI in a subprocess, pointed at KMock as CI would be at a cluster."""
    import os
    import subprocess
    import sys

    from tests.rollout.envs import ROOT

    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    return subprocess.run([sys.executable, "-m", "modelrail", "rollout", *args, "--kube"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                          check=False)


def test_no_data_holds_then_fails_at_the_deadline(kube: Callable[..., Any],
                                                  prometheus: FakePrometheus,
                                                  server: Any) -> None:
    prometheus.figures["2"] = {}  # Prometheus has nothing for the canary
    with kube() as (cluster, _), operator(cluster, prometheus, server, stack()):
        wait_phase(cluster, {"Succeeded"}, 30)
        start(cluster, "2")
        held = wait_phase(cluster, {"Initializing"}, 30, canary="2")
        assert held["canaryWeight"] == 0
        st = wait_phase(cluster, TERMINAL, 90, canary="2")
        assert st["phase"] == "Failed" and "deadline" in st["message"], st
        assert "INCONCLUSIVE" in str(st.get("lastAnalysis")) or "no conclusive" in st["message"]
        assert weights(cluster) == {(100, 0)}
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None
        check_written_objects(cluster)


def test_restarted_operator_resumes_and_the_cli_gets_the_verdict(
        kube: Callable[..., Any], prometheus: FakePrometheus, server: Any) -> None:
    cfg = stack()
    with kube() as (cluster, _):
        with operator(cluster, prometheus, server, cfg):
            wait_phase(cluster, {"Succeeded"}, 30)
            started = kube_cli(cluster, "start", "--model", "iris:2")
            assert started.returncode == 0, started.stderr
            wait_phase(cluster, {"Progressing"}, 60, canary="2")
            wait_weight(cluster, 50)
        # the operator is gone mid-rollout; a new one takes over from the status alone
        assert rollout(cluster)["status"]["phase"] == "Progressing"
        with operator(cluster, prometheus, server, cfg):
            watch = kube_cli(cluster, "status", "--model", "iris", "--watch")
            assert watch.returncode == 0, watch.stdout + watch.stderr
        assert_each_action_once(cluster, rollout(cluster)["status"])
        check_written_objects(cluster)


def assert_each_action_once(cluster: Cluster, st: dict[str, Any]) -> None:
    """Decided once (the status history) and carried out once (the route writes: 50, 100,
    back to 0), though two operators ran."""
    acts = [(h["action"], h["weight"]) for h in history(st)
            if h["action"] not in ("hold", "complete")]
    assert acts == [("set_weight", 50), ("set_weight", 100), ("promote", 100)], acts
    patches = [c for c in cluster.operator_calls()
               if c.resource == "httproutes" and c.action == "UPDATE"]
    assert len(patches) == 3, [c.body for c in patches]


def test_a_new_version_mid_rollout_restarts_the_analysis(kube: Callable[..., Any],
                                                         prometheus: FakePrometheus,
                                                         server: Any) -> None:
    with kube() as (cluster, _), operator(cluster, prometheus, server, stack()):
        wait_phase(cluster, {"Succeeded"}, 30)
        start(cluster, "2")
        wait_phase(cluster, {"Progressing"}, 60, canary="2")
        start(cluster, "3")  # changed mind mid-rollout
        st = wait_phase(cluster, TERMINAL, canary="3")
        assert st["phase"] == "RolledBack" and "model gate: FAIL" in st["message"]
        time.sleep(1)
        restarted = [e for e in events(cluster) if e["reason"] == "Restarted"]
        assert restarted and "version changed to 3" in restarted[0]["message"]
        # the analysis of 3 started from scratch: its history has no step of version 2
        assert [h["weight"] for h in history(st) if h["action"] == "set_weight"] == []
        check_written_objects(cluster)


def test_weights_wait_for_a_pending_canary_scale_up(kube: Callable[..., Any],
                                                     prometheus: FakePrometheus,
                                                     server: Any) -> None:
    with kube() as (cluster, kubelet), operator(cluster, prometheus, server, stack()):
        wait_phase(cluster, {"Succeeded"}, 30)
        start(cluster, "2")
        wait_weight(cluster, 50)
        # the canary's HPA asks for 3 pods; only 1 becomes ready for now
        kubelet.ready_cap["iris-canary"] = 1
        cluster.apps.patch_namespaced_deployment("iris-canary", NS, {"spec": {"replicas": 3}})
        time.sleep(8)  # longer than a step (5 s): it would have advanced by now
        st = rollout(cluster)["status"]
        assert st["canaryWeight"] == 50 and "scale-up" in st["message"], st["message"]
        assert weights(cluster) == {(50, 50)}
        kubelet.ready_cap.clear()  # the pods come up
        st = wait_phase(cluster, TERMINAL, canary="2")
        assert st["phase"] == "Succeeded", st
        check_written_objects(cluster)


def test_abort_leaves_traffic_on_stable(kube: Callable[..., Any],
                                        prometheus: FakePrometheus, server: Any) -> None:
    with kube() as (cluster, _), operator(cluster, prometheus, server, stack()):
        wait_phase(cluster, {"Succeeded"}, 30)
        start(cluster, "2")
        wait_phase(cluster, {"Progressing"}, 60, canary="2")
        wait_weight(cluster, 50)
        promote = kube_cli(cluster, "promote", "--model", "iris")
        assert promote.returncode == 2 and "not paused" in promote.stderr
        assert kube_cli(cluster, "abort", "--model", "iris").returncode == 0
        watch = kube_cli(cluster, "status", "--model", "iris", "--watch")
        assert watch.returncode == 11, watch.stdout
        assert weights(cluster) == {(100, 0)}
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None
        assert rollout(cluster)["status"]["stableVersion"] == "1"
        check_written_objects(cluster)


