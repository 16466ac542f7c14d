"""Security invariants of every stack: restricted pods, namespaces and least-privilege RBAC."""

from __future__ import annotations

from typing import Any

import pytest

from modelrail.infra.config import load_stack
from modelrail.infra.manifests import model_deployment, render
from tests.infra.harness import ROOT

STACKS = ("dev", "staging", "prod")


def pod_templates(stack: str) -> list[tuple[str, dict[str, Any]]]:
    cfg = load_stack(stack, ROOT)
    objs = render(cfg)
    objs.append(model_deployment(cfg, cfg.models[0], track="canary"))
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"])
            for o in objs if o["kind"] == "Deployment"]


@pytest.mark.parametrize("stack", STACKS)
def test_pod_security(stack: str) -> None:
    templates = pod_templates(stack)
    assert len(templates) >= 3
    for name, spec in templates:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"]
            assert sc.get("privileged", False) is False
            res = c["resources"]
            assert {"cpu", "memory"} <= res["requests"].keys() <= res["limits"].keys(), name
            assert "livenessProbe" in c, name
        assert "hostNetwork" not in spec and "hostPID" not in spec


@pytest.mark.parametrize("stack", STACKS)
def test_inference_pods_serve_both_ports_with_probes(stack: str) -> None:
    for name, spec in pod_templates(stack):
        if name == "modelrail-controller":
            continue
        c = spec["containers"][0]
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 3000,
                                                                       "grpc": 8001}
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert spec["automountServiceAccountToken"] is False


@pytest.mark.parametrize("stack", STACKS)
def test_services_declare_h2c_for_grpc(stack: str) -> None:
    for o in render(load_stack(stack, ROOT)):
        if o["kind"] == "Service":
            ports = {p["name"]: p for p in o["spec"]["ports"]}
            assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"


@pytest.mark.parametrize("stack", STACKS)
def test_rbac_has_no_wildcards_and_is_namespaced(stack: str) -> None:
    objs = render(load_stack(stack, ROOT))
    roles = [o for o in objs if o["kind"] in ("Role", "ClusterRole")]
    assert {o["kind"] for o in roles} == {"Role"}  # nothing cluster-wide
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]


@pytest.mark.parametrize("stack", STACKS)
def test_namespace_is_restricted_and_default_denied(stack: str) -> None:
    objs = render(load_stack(stack, ROOT))
    ns = next(o for o in objs if o["kind"] == "Namespace")
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
    deny = next(o for o in objs if o["kind"] == "NetworkPolicy"
                and o["metadata"]["name"] == "default-deny")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A podSelector (matchLabels, matchExpressions with In) against a pod's labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(e["operator"] == "In" and labels.get(e["key"]) in e["values"]
               for e in selector.get("matchExpressions", []))


@pytest.mark.parametrize("stack", STACKS)
def test_load_jobs_may_reach_the_models_through_the_default_deny(stack: str) -> None:
    """The operator's Locust Jobs (manifests.load_job) carry the labels the NetworkPolicies
    allow: egress to the inference pods, and ingress into them."""
    from modelrail.infra.manifests import load_job

    cfg = load_stack(stack, ROOT)
    job = load_job(cfg, name="iris-load-1", model="iris", version="2",
                   target="http://iris-canary:3000", rows=[[1.0]], seconds=1, users=1)
    pod = job["spec"]["template"]["metadata"]["labels"]
    policies = [o for o in render(cfg) if o["kind"] == "NetworkPolicy"]
    egress = [p for p in policies if "Egress" in p["spec"]["policyTypes"]
              and p["spec"]["podSelector"] and _selects(p["spec"]["podSelector"], pod)]
    assert egress, "no NetworkPolicy lets the load Job's pods out"
    ingress = next(p for p in policies if p["metadata"]["name"] == "allow-inference-ingress")
    assert any(_selects(peer["podSelector"], pod) for rule in ingress["spec"]["ingress"]
               for peer in rule["from"] if "podSelector" in peer)
