"""`pulumi up` for real: the dev stack, unchanged, applied by the Pulumi CLI and the
Kubernetes provider to the one-node cluster, with the real images in containerd. What the
mock runtime could not prove is proven here: admission (Pod Security restricted) lets the
pods run and become ready, a privileged pod is refused, the model answers through the
Gateway over HTTPRoute and GRPCRoute with tritonclient, the program is idempotent, a hand
edit is found by refresh, the CI account may do exactly what its Role says, a bad stack
value is refused before anything is created, and destroy leaves nothing behind.

The tests of this module run in order (up → checks → destroy) on one deployment."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from modelrail.cluster import config as c
from modelrail.cluster import node
from modelrail.errors import InvalidInputError
from modelrail.images.build import build_image, build_inference
from modelrail.infra import deploy, manifests
from modelrail.infra.config import StackConfig, load_stack
from modelrail.serving.config import ModelRef
from tests.cluster.kubectl import ROOT, get_json, kubectl
from tests.conftest import Example

pytestmark = pytest.mark.slow
STACK = "dev"


def images_of(cfg: StackConfig, state_dir: Path) -> None:
    """The stack's images built (or found), tagged with its references, in containerd."""
    build_inference([ModelRef(m.name, m.version) for m in cfg.models], tags=(cfg.image,))
    build_image("controller", tags=(cfg.controller_image,))
    build_image("loadtest", tags=(cfg.loadtest_image,))
    node.up(state_dir, images_to_import=[cfg.image, cfg.controller_image, cfg.loadtest_image])


@pytest.fixture(scope="module")
def dev() -> StackConfig:
    return load_stack(STACK, ROOT)


@pytest.fixture(scope="module")
def deployed(cluster: tuple[Path, Any, str], examples: dict[str, Example], dev: StackConfig,
             tmp_path_factory: pytest.TempPathFactory,
             ) -> Iterator[tuple[Path, deploy.Target, dict[str, Any], float]]:
    """The stack's images (tagged with the stack's references) in containerd, then
    `pulumi up`; destroyed at the end if a test did not."""
    state_dir = cluster[0]
    images_of(dev, state_dir)
    target = deploy.Target(project=ROOT, stack=STACK,
                           kubeconfig=state_dir / "admin.kubeconfig",
                           backend=tmp_path_factory.mktemp("pulumi"))
    t0 = time.monotonic()
    result = deploy.up(target)
    seconds = time.monotonic() - t0
    try:
        yield state_dir, target, result, seconds
    finally:
        if kubectl(state_dir, "get", "namespace", dev.namespace, check=False).returncode == 0:
            deploy.destroy(target)


def test_a_bad_stack_value_is_refused_before_anything_is_created(
        cluster: tuple[Path, Any, str], tmp_path: Path) -> None:
    state_dir = cluster[0]
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy2(ROOT / "Pulumi.yaml", project)
    text = (ROOT / "Pulumi.staging.yaml").read_text().replace("modelrail:workers: 2",
                                                               "modelrail:workers: 0")
    assert "workers: 0" in text
    (project / "Pulumi.staging.yaml").write_text(text)
    target = deploy.Target(project=project, stack="staging",
                           kubeconfig=state_dir / "admin.kubeconfig", backend=tmp_path / "be")
    with pytest.raises(InvalidInputError, match="workers"):
        deploy.up(target)
    assert kubectl(state_dir, "get", "namespace", "modelrail-staging",
                   check=False).returncode != 0


def test_up_runs_restricted_pods_that_become_ready(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig) -> None:
    state_dir, _, result, seconds = deployed
    assert result["summary"].get("create", 0) >= 40, result["summary"]
    assert result["outputs"]["namespace"] == dev.namespace
    # the outputs point at the cluster's Gateway, read live: its address, the listeners'
    gateway = result["outputs"]["gateway"]
    assert gateway["addresses"] == [c.GATEWAY_SERVICE_IP]
    assert gateway["http"] == f"{c.GATEWAY_SERVICE_IP}:{c.GATEWAY_WEB_PORT}"
    assert gateway["grpc"] == f"{c.GATEWAY_SERVICE_IP}:{c.GATEWAY_H2C_PORT}"
    iris = result["outputs"]["models"]["iris"]
    assert iris["http"] == f"http://iris.{dev.hostname}:{c.GATEWAY_WEB_PORT}/v2/models/iris"
    ns = get_json(state_dir, "namespace", dev.namespace)
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for m in dev.models:
        dep = get_json(state_dir, "-n", dev.namespace, "deployment", f"{m.name}-stable")
        assert dep["status"].get("readyReplicas", 0) >= 1, dep["status"]
    pods = get_json(state_dir, "-n", dev.namespace, "pods",
                    "-l", "app.kubernetes.io/component=inference")["items"]
    assert pods and all(p["status"]["phase"] == "Running" for p in pods)
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == manifests.RUN_AS
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    controller = get_json(state_dir, "-n", dev.namespace, "deployment",
                          "modelrail-controller")
    assert controller["status"].get("readyReplicas") == 2, controller["status"]
    print(f"pulumi up {STACK}: {seconds:.0f} s")


def test_a_privileged_pod_is_refused_by_admission(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig,
        tmp_path: Path) -> None:
    state_dir = deployed[0]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "privileged", "namespace": dev.namespace},
           "spec": {"containers": [{"name": "x", "image": dev.image,
                                    "securityContext": {"privileged": True}}]}}
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(pod))
    run = kubectl(state_dir, "create", "-f", str(path), check=False)
    assert run.returncode != 0 and "violates PodSecurity" in run.stderr, run.stderr


def _rows(examples: dict[str, Example]) -> np.ndarray:
    return np.asarray(examples["iris:1"].split.X_test[:10], dtype=np.float32)


def test_the_model_answers_through_the_gateway_on_both_routes(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig,
        cluster: tuple[Path, Any, str], examples: dict[str, Example]) -> None:
    # where the stack's outputs say the Gateway answers, with the host they name
    outputs = deployed[2]["outputs"]
    gateway = outputs["gateway"]
    host = outputs["models"]["iris"]["host"]
    ex = examples["iris:1"]
    x = _rows(examples)
    want = ex.estimator.predict(x.astype(np.float64))
    deadline = time.monotonic() + 60  # the routes' backends join once the pods are ready
    while True:
        try:
            http = thttp.InferenceServerClient(gateway["http"])
            inp = thttp.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            res = http.infer("iris", [inp], model_version="1", headers={"Host": host})
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    np.testing.assert_array_equal(res.as_numpy("label").reshape(-1), want)
    grpc = tgrpc.InferenceServerClient(
        gateway["grpc"], channel_args=[("grpc.default_authority", host)])
    ginp = tgrpc.InferInput("input", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    gres = grpc.infer("iris", [ginp], model_version="1")
    np.testing.assert_array_equal(gres.as_numpy("label").reshape(-1), want)


def test_the_program_is_idempotent(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float]) -> None:
    changes = deploy.preview(deployed[1], expect_no_changes=True)
    assert set(changes) <= {"same", "read"}, changes


def test_a_hand_edit_is_found_and_not_silently_overwritten(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig) -> None:
    """Server-side apply: after `kubectl set env` the field belongs to kubectl; refresh and
    preview show the Deployment drifting, and Pulumi refuses to take the field back
    without force, naming the field and who changed it."""
    state_dir, target = deployed[0], deployed[1]

    def workers() -> str:
        dep = get_json(state_dir, "-n", dev.namespace, "deployment", "iris-stable")
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        return str(next(e["value"] for e in env if e["name"] == "MODELRAIL_WORKERS"))

    assert workers() == str(dev.workers)
    kubectl(state_dir, "-n", dev.namespace, "set", "env", "deployment/iris-stable",
            "MODELRAIL_WORKERS=3")  # a field the program declares, changed by hand
    deploy.refresh(target)
    with pytest.raises(deploy.DeployError) as drift:
        deploy.preview(target)
    text = str(drift.value)
    assert "deployment-iris-stable update [diff: ~spec]" in text, text[-2000:]
    assert 'conflict with "kubectl-set"' in text and "MODELRAIL_WORKERS" in text, text[-2000:]
    assert workers() == "3"


def _can_i(state_dir: Path, namespace: str, verb: str, resource: str) -> bool:
    sa = f"system:serviceaccount:{namespace}:{manifests.CI_SA}"
    run = kubectl(state_dir, "auth", "can-i", verb, resource, "-n", namespace, "--as", sa,
                  check=False)
    return run.stdout.strip() == "yes"


def test_the_ci_account_may_do_exactly_what_its_role_says(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig) -> None:
    state_dir = deployed[0]
    granted = {(verb, f"{res}.{group}" if group else res)
               for rule in manifests.CI_RULES for group in rule["apiGroups"]
               for res in rule["resources"] for verb in rule["verbs"]}
    for verb, resource in sorted(granted):
        assert _can_i(state_dir, dev.namespace, verb, resource), (verb, resource)
    refused = [("delete", "modelrollouts.modelrail.dev"), ("patch", "deployments.apps"),
               ("delete", "deployments.apps"), ("create", "pods"), ("get", "secrets"),
               ("get", "configmaps"), ("create", "rolebindings.rbac.authorization.k8s.io"),
               ("patch", "httproutes.gateway.networking.k8s.io"), ("create", "jobs.batch"),
               ("create", "modelrollouts.modelrail.dev"), ("list", "modelrollouts.modelrail.dev"),
               ("get", "deployments.apps"), ("list", "events")]
    for verb, resource in refused:
        assert not _can_i(state_dir, dev.namespace, verb, resource), (verb, resource)
    # and nothing in another environment's namespace
    assert not _can_i(state_dir, "kube-system", "get", "deployments.apps")


def test_destroy_leaves_nothing_of_ours(
        deployed: tuple[Path, deploy.Target, dict[str, Any], float], dev: StackConfig) -> None:
    state_dir, target = deployed[0], deployed[1]
    deploy.destroy(target)
    deadline = time.monotonic() + 120
    while kubectl(state_dir, "get", "namespace", dev.namespace, check=False).returncode == 0:
        assert time.monotonic() < deadline, "the namespace is still terminating"
        time.sleep(2)
    crds = get_json(state_dir, "crd", "-l", "app.kubernetes.io/part-of=modelrail")["items"]
    assert crds == [], [c["metadata"]["name"] for c in crds]
    # the stack's objects carry its environment label (the cluster's own Gateway is not
    # the stack's)
    selector = f"{manifests.ENVIRONMENT_LABEL}={dev.environment}"
    for kind in ("clusterroles", "clusterrolebindings", "namespaces", "crd",
                 "gatewayclasses", "gateways", "httproutes", "grpcroutes"):
        found = get_json(state_dir, kind, "-A", "-l", selector)["items"]
        assert found == [], (kind, [f["metadata"]["name"] for f in found])
