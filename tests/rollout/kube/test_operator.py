"""The kopf operator against KMock: whole rollouts, asserted on the objects it wrote
(Deployments, route weights, HPAs, Jobs, status, Events), every one of them validated
against the Kubernetes and Gateway API schemas, and its API use compared with its RBAC."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from modelrail.infra import manifests
from tests.infra.schemas import validate
from tests.rollout.kube.conftest import NS, operator, stack
from tests.rollout.kube.harness import Call, Cluster, FakePrometheus

pytestmark = pytest.mark.slow
GROUP, VERSION = manifests.GROUP, manifests.CRD_VERSION
OBSERVED: list[Call] = []  # every operator call of this module, for the RBAC comparison


def rollout(cluster: Cluster) -> dict[str, Any]:
    obj = cluster.get(GROUP, VERSION, "modelrollouts", "iris")
    assert obj is not None
    return obj


def start(cluster: Cluster, version: str) -> None:
    """What CI does (and `modelrail rollout start --kube`): set the desired version."""
    cluster.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "modelrollouts",
                                                  "iris", {"spec": {"version": version}})


TERMINAL = {"Succeeded", "RolledBack", "Failed", "Aborted"}


def wait_phase(cluster: Cluster, phases: set[str], timeout: float = 120,
               canary: str | None = None) -> dict[str, Any]:
    """Wait for a phase (of the rollout of `canary`, if given) whose action is done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = rollout(cluster).get("status") or {}
        done = "rollout" not in st or st.get("executedSeq") == st["rollout"].get("seq")
        if (st.get("phase") in phases and done
                and (canary is None or st.get("canaryVersion") == canary)):
            return st
        time.sleep(0.3)
    raise AssertionError(f"phase never reached {phases}: {rollout(cluster).get('status')}")


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
        history = st["rollout"]["history"]
        acts = [(h["action"], h["weight"]) for h in history if h["action"] != "hold"]
        assert acts == [("set_weight", 50), ("set_weight", 100), ("promote", 100),
                        ("complete", 0)], acts
        assert len(kubelet.jobs_run) >= 3  # pre-traffic + at least one per step
        time.sleep(2)  # kopf posts events from a queue, a moment later
        reasons = [e["reason"] for e in events(cluster)]
        assert {"Started", "WeightChanged", "Promoting", "Succeeded"} <= set(reasons), (
            reasons, [(e["reason"], e.get("message")) for e in cluster.list("", "v1", "events")])
        assert st["lastAnalysis"]["status"] == "PASS"
        hpa_creates = [c for c in cluster.operator_calls()
                       if c.resource == "horizontalpodautoscalers" and c.action == "CREATE"]
        assert hpa_creates and hpa_creates[0].body["metadata"]["name"] == "iris-canary"
        assert not [c for c in cluster.operator_calls()  # the stable HPA is never touched
                    if c.resource == "horizontalpodautoscalers"
                    and isinstance(c.body, dict)
                    and c.body.get("metadata", {}).get("name") == "iris-stable"]
        check_written_objects(cluster)
