"""The kopf operator against KMock: whole rollouts, asserted on the objects it wrote
(Deployments, route weights, HPAs, Jobs, status, Events), every one of them validated
against the Kubernetes and Gateway API schemas, and its API use compared with its RBAC."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from modelrail.infra import manifests
from modelrail.rollout import api
from tests.infra.schemas import validate
from tests.rollout.kube.conftest import NS, operator, operator_env, stack
from tests.rollout.kube.harness import Call, Cluster, FakePrometheus

pytestmark = pytest.mark.slow
GROUP, VERSION = api.GROUP, api.VERSION
OBSERVED: list[Call] = []  # every operator call of this module, for the RBAC comparison


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
    calls = cluster.operator_calls()
    OBSERVED.extend(calls)
    for c in calls:
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


def test_good_version_is_promoted(kube: Callable[..., Any], prometheus: FakePrometheus,
                                  server: Any) -> None:
    with kube() as (cluster, kubelet), operator(cluster, prometheus, server, stack()):
        assert wait_phase(cluster, {"Succeeded"}, 30)["stableVersion"] == "1"
        start(cluster, "2")
        st = wait_phase(cluster, TERMINAL, canary="2")
        assert st["phase"] == "Succeeded", st
        assert st["stableVersion"] == "2" and st["canaryWeight"] == 0
        stable = cluster.get("apps", "v1", "deployments", "iris-stable")
        assert stable is not None
        env = {e["name"]: e["value"] for e in stable["spec"]["template"]["spec"]
               ["containers"][0]["env"]}
        assert env["MODELRAIL_MODELS"] == "iris:2"
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None
        assert cluster.get("autoscaling", "v2", "horizontalpodautoscalers",
                           "iris-canary") is None
        assert weights(cluster) == {(100, 0)}
        acts = [(h["action"], h["weight"]) for h in history(st) if h["action"] != "hold"]
        assert acts == [("set_weight", 50), ("set_weight", 100), ("promote", 100),
                        ("complete", 0)], acts
        assert len(kubelet.jobs_run) >= 3  # pre-traffic + at least one per step
        time.sleep(2)  # kopf posts events from a queue, a moment later
        reasons = [e["reason"] for e in events(cluster)]
        assert {"Started", "WeightChanged", "Promoting", "Succeeded"} <= set(reasons), (
            reasons, [(e["reason"], e.get("message")) for e in cluster.list("", "v1", "events")])
        assert reasons.count("Started") == 1 and reasons.count("Succeeded") == 1, reasons
        assert st["lastAnalysis"]["status"] == "PASS"
        hpa_creates = [c for c in cluster.operator_calls()
                       if c.resource == "horizontalpodautoscalers" and c.action == "CREATE"]
        assert hpa_creates and hpa_creates[0].body["metadata"]["name"] == "iris-canary"
        assert not [c for c in cluster.operator_calls()  # the stable HPA is never touched
                    if c.resource == "horizontalpodautoscalers"
                    and isinstance(c.body, dict)
                    and c.body.get("metadata", {}).get("name") == "iris-stable"]
        check_written_objects(cluster)


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


@pytest.mark.parametrize("kind", ["errors", "latency", "wrong"])
def test_bad_versions_are_rolled_back(kind: str, kube: Callable[..., Any],
                                      prometheus: FakePrometheus, server: Any) -> None:
    version = "3" if kind == "wrong" else "2"  # iris:3 answers wrongly (shuffled labels)
    if kind == "errors":
        prometheus.figures["2"] = {"requests": 400, "errors": 120, "p99_seconds": 0.004}
    elif kind == "latency":
        prometheus.figures["2"] = {"requests": 400, "errors": 0, "p99_seconds": 0.9}
    with kube() as (cluster, _), operator(cluster, prometheus, server, stack()):
        wait_phase(cluster, {"Succeeded"}, 30)
        start(cluster, version)
        st = wait_phase(cluster, TERMINAL, canary=version)
        assert st["phase"] == "RolledBack", st
        reason = {"errors": "errors: FAIL", "latency": "latency: FAIL",
                  "wrong": "model gate: FAIL"}[kind]
        assert reason in st["message"] and "pre-traffic" in st["message"], st["message"]
        assert st["lastAnalysis"]["status"] == "FAIL"
        assert st["stableVersion"] == "1" and weights(cluster) == {(100, 0)}
        assert cluster.get("apps", "v1", "deployments", "iris-canary") is None
        # caught before any user traffic: the routes never gave the canary a share
        assert not [c for c in cluster.operator_calls()
                    if c.resource in ("httproutes", "grpcroutes") and c.action == "UPDATE"]
        time.sleep(1)
        assert "RollingBack" in [e["reason"] for e in events(cluster)]
        check_written_objects(cluster)


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


def test_two_operator_replicas_act_once(kube: Callable[..., Any],
                                        prometheus: FakePrometheus, server: Any) -> None:
    """Two replicas on one KopfPeering (one in-process, one a `kopf run` process): the
    higher priority acts, the other waits; no action is carried out twice."""
    import os
    import subprocess
    import sys

    from tests.rollout.envs import ROOT

    cfg = stack()
    with kube() as (cluster, _):
        env = {**os.environ, **operator_env(cluster, prometheus, server, cfg),
               "MODELRAIL_PEERING_PRIORITY": "10"}
        replica = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--peering", manifests.PEERING,
             "--namespace", NS, "-m", "modelrail.rollout.kube.operator"], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            os.environ["MODELRAIL_PEERING_PRIORITY"] = "20"
            with operator(cluster, prometheus, server, cfg):
                wait_phase(cluster, {"Succeeded"}, 30)
                start(cluster, "2")
                st = wait_phase(cluster, TERMINAL, canary="2")
        finally:
            os.environ.pop("MODELRAIL_PEERING_PRIORITY", None)
            replica.terminate()
            out, _ = replica.communicate(timeout=30)
        assert st["phase"] == "Succeeded", st
        # the replica waited while the higher priority acted (it resumes once that is gone)
        assert "operations after the pause" in out or "Pausing operations" in out, out[-3000:]
        assert_each_action_once(cluster, st)
        creates = [c for c in cluster.operator_calls()
                   if c.resource == "deployments" and c.action == "CREATE"]
        assert len(creates) == 1  # one canary, not one per replica


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


def test_rbac_covers_exactly_what_the_operator_uses() -> None:
    """The Role of the Pulumi program (CONTROLLER_RULES) against every call the operator
    made in this module's rollouts: nothing missing, nothing granted that is never used."""
    if not OBSERVED:
        pytest.skip("run with the rollout tests above: they record the operator's calls")
    verbs = {"LIST": {"list"}, "WATCH": {"watch"}, "FETCH": {"get"}, "CREATE": {"create"},
             "UPDATE": {"patch"}, "DELETE": {"delete"}}
    used: set[tuple[str, str, str]] = set()
    for c in OBSERVED:
        if not c.resource:
            continue  # API discovery (/api/v1, /apis/…): open to every authenticated user
        resource = c.resource + (f"/{c.subresource}" if c.subresource else "")
        for verb in verbs.get(c.action, set()):
            used.add((c.group, resource, verb))
    granted = {(g, r, v) for rule in manifests.CONTROLLER_RULES
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    assert used - granted == set(), f"used but not granted: {sorted(used - granted)}"
    assert granted - used == set(), f"granted but never used: {sorted(granted - used)}"
