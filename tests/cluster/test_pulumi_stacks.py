"""`pulumi up` of the staging and prod stacks, unchanged, on the real cluster (dev has its
own module, test_pulumi.py, with the checks every stack shares run once there).

Each stack: `up` with the real CLI and provider; every stable Deployment at the stack's
minReplicas, Ready, its pods restricted and spread over the nodes (prod's requests, 6
CPUs, do not fit one 2-core node: the scheduler places them on several); the HPAs, quota
and rollout policy as declared; the model answers at the Gateway address the stack's
outputs name; `preview --expect-no-changes` passes; `destroy` leaves nothing of the stack.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as thttp

from modelrail.cluster import config as c
from modelrail.infra import deploy, manifests
from modelrail.infra.config import StackConfig, load_stack
from tests.cluster.test_pulumi import ROOT, get_json, images_of, kubectl
from tests.conftest import Example

pytestmark = pytest.mark.slow


def _cpu(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _infer(address: str, host: str, x: np.ndarray) -> np.ndarray:
    client = thttp.InferenceServerClient(address)
    inp = thttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    res = client.infer("iris", [inp], model_version="1", headers={"Host": host})
    out: np.ndarray = res.as_numpy("label").reshape(-1)
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("stack", ["staging", "prod"])
def test_stack_up_is_ready_idempotent_and_destroyed_without_trace(
        stack: str, cluster: tuple[Path, Any, str], examples: dict[str, Example],
        tmp_path: Path) -> None:
    cfg = load_stack(stack, ROOT)
    state_dir = cluster[0]
    images_of(cfg, state_dir)
    target = deploy.Target(project=ROOT, stack=stack,
                           kubeconfig=state_dir / "admin.kubeconfig", backend=tmp_path / "be")
    t0 = time.monotonic()
    result = deploy.up(target)
    print(f"\npulumi up {stack}: {time.monotonic() - t0:.0f} s")
    try:
        outputs = result["outputs"]
        assert outputs["namespace"] == cfg.namespace and outputs["environment"] == stack
        _check_workloads(state_dir, cfg)
        _check_answers_at_the_outputs(outputs, cfg, examples["iris:1"])
        changes = deploy.preview(target, expect_no_changes=True)
        assert set(changes) <= {"same", "read"}, changes
    finally:
        t0 = time.monotonic()
        deploy.destroy(target)
        print(f"pulumi destroy {stack}: {time.monotonic() - t0:.0f} s")
    _check_nothing_left(state_dir, cfg)


def _check_workloads(state_dir: Path, cfg: StackConfig) -> None:
    ns = get_json(state_dir, "namespace", cfg.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # every stable Deployment brought to the stack's minReplicas by its HPA (the program
    # leaves replicas to the HPA, so `up` returns once the first pod is ready), all Ready
    for m in cfg.models:
        deadline = time.monotonic() + 240
        while True:
            dep = get_json(state_dir, "-n", cfg.namespace, "deployment", f"{m.name}-stable")
            if dep["spec"].get("replicas") == cfg.autoscaling.min_replicas and \
                    dep["status"].get("readyReplicas") == cfg.autoscaling.min_replicas:
                break
            assert time.monotonic() < deadline, (dep["spec"].get("replicas"), dep["status"])
            time.sleep(2)
        hpa = get_json(state_dir, "-n", cfg.namespace, "hpa", f"{m.name}-stable")
        assert hpa["spec"]["minReplicas"] == cfg.autoscaling.min_replicas
        assert hpa["spec"]["maxReplicas"] == cfg.autoscaling.max_replicas
        rollout = get_json(state_dir, "-n", cfg.namespace, "modelrollout", m.name)
        assert rollout["spec"]["steps"] == list(cfg.rollout.steps)
    quota = get_json(state_dir, "-n", cfg.namespace, "resourcequota")["items"][0]
    assert quota["spec"]["hard"]["requests.cpu"] == cfg.quota.cpu

    # the pods run restricted, with the stack's requests, spread by the scheduler
    pods = get_json(state_dir, "-n", cfg.namespace, "pods", "-l",
                    "app.kubernetes.io/component=inference")["items"]
    assert len(pods) == len(cfg.models) * cfg.autoscaling.min_replicas
    requested = 0.0
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["securityContext"]["runAsUser"] == manifests.RUN_AS
        ctr = pod["spec"]["containers"][0]
        assert ctr["resources"]["requests"]["cpu"] == cfg.resources.cpu_request
        requested += _cpu(ctr["resources"]["requests"]["cpu"])
    nodes = {p["spec"]["nodeName"] for p in pods}
    allocatable = _cpu(get_json(state_dir, "node", c.NODE_NAME)["status"]
                       ["allocatable"]["cpu"])
    if requested > allocatable:  # prod: more than one node could hold
        assert len(nodes) > 1, nodes
    print(f"{cfg.environment}: {len(pods)} inference pods, {requested:g} CPUs requested, "
          f"on {sorted(nodes)}")


def _check_answers_at_the_outputs(outputs: dict[str, Any], cfg: StackConfig,
                                  ex: Example) -> None:
    """The model answers where the outputs say the Gateway is, for the host they name."""
    gateway = outputs["gateway"]
    assert gateway["addresses"] == [c.GATEWAY_SERVICE_IP]
    host = outputs["models"]["iris"]["host"]
    assert host == f"iris.{cfg.hostname}"
    x = np.asarray(ex.split.X_test[:10], dtype=np.float32)
    deadline = time.monotonic() + 60
    while True:
        try:
            got = _infer(gateway["http"], host, x)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    np.testing.assert_array_equal(got, ex.estimator.predict(x.astype(np.float64)))


def _check_nothing_left(state_dir: Path, cfg: StackConfig) -> None:
    deadline = time.monotonic() + 180
    while kubectl(state_dir, "get", "namespace", cfg.namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, f"{cfg.namespace} is still terminating"
        time.sleep(2)
    selector = f"{manifests.ENVIRONMENT_LABEL}={cfg.environment}"
    for kind in ("clusterroles", "clusterrolebindings", "namespaces", "crd",
                 "httproutes", "grpcroutes"):
        found = get_json(state_dir, kind, "-A", "-l", selector)["items"]
        assert found == [], (kind, [f["metadata"]["name"] for f in found])
    # the cluster's own Gateway is not the stack's: still there after destroy
    assert json.loads(kubectl(state_dir, "-n", c.GATEWAY_NAMESPACE, "get", "gateway",
                              c.GATEWAY_NAME, "-o", "json").stdout)["metadata"]["name"]
