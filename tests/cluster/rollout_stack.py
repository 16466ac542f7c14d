"""The `rollouts` stack on a real cluster, as the cluster rollout tests and
`benchmarks/rollout.py --platform cluster` both run it.

The dev stack with iris only and short steps, written into a scratch project and applied
with `pulumi up`; the operator runs in the cluster from the controller image, exactly as the
program declares it. CI's credentials are a token of the stack's CI ServiceAccount
(TokenRequest), never the admin certificate.

Bad candidates exist only in this stack's image: versions 90-erroring, 91-slow and
92-never-ready of iris are copies of a good version with faults injected by version
(MODELRAIL_FAULTS baked into an image built FROM the real inference image: half the
requests answered with errors; 400 ms added; a warm-up that fails).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelrail.cluster import pki
from modelrail.cluster.api import Api
from modelrail.images import podman
from modelrail.images.build import build_image, build_inference
from modelrail.infra import deploy
from modelrail.infra.config import load_stack
from modelrail.serving.config import ModelRef
from tests.cluster.kubectl import ROOT, get_json, kubectl
from tests.rollout.envs import write_stack

STACK = "rollouts"
NS = "modelrail-rollouts"
IMAGE = "localhost/modelrail/inference:rollouts-test"
ERRORING, SLOW, NEVER_READY = "90-erroring", "91-slow", "92-never-ready"
FAULTS = {f"iris:{ERRORING}": {"error_rate": 0.5}, f"iris:{SLOW}": {"latency_ms": 400},
          f"iris:{NEVER_READY}": {"never_ready": True}}
POLICY = {
    "steps": [50, 100], "stepSeconds": 10, "analysisIntervalSeconds": 5,
    "maxErrorRate": 0.05, "maxP99LatencyMs": 300, "maxLatencyRatio": 5.0,
    "maxErrorRateIncrease": 0.02, "maxLabelDisagreement": 0.05, "minRequestsPerStep": 20,
    "failureLimit": 1, "progressDeadlineSeconds": 300, "manualGates": [],
    "headerRoute": {"name": "x-model-cohort", "value": "canary"},
    # the stable servers mirror to the Gateway; a rollout runs the shadow phase only when
    # started with shadow=True (the others pass --no-shadow)
    "shadow": {"percent": 50, "minPairs": 100}}
HEADER = {"x-model-cohort": "canary"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


@dataclass
class Env:
    state_dir: Path
    host: str
    http: str  # the Gateway's address:port for HTTPRoutes
    grpc: str
    ci_kubeconfig: Path
    target: deploy.Target


def build_images(versions: Sequence[str], work: Path) -> list[str]:
    """The stack's inference image (iris at `versions`, registered beforehand; faults by
    version), the controller and the load-test image: their references."""
    built = build_inference([ModelRef("iris", v) for v in versions])
    context = work / "faults"
    context.mkdir(exist_ok=True)
    containerfile = context / "Containerfile"
    containerfile.write_text(f"FROM {built.ref}\nENV MODELRAIL_FAULTS='{json.dumps(FAULTS)}'\n")
    podman.build(context, containerfile=containerfile, tag=IMAGE,
                 labels=podman.owner_labels())
    dev = load_stack("dev", ROOT)
    build_image("controller", tags=(dev.controller_image,))
    build_image("loadtest", tags=(dev.loadtest_image,))
    return [IMAGE, dev.controller_image, dev.loadtest_image]


@contextmanager
def rollout_stack(state_dir: Path, work: Path, registry: Path) -> Iterator[Env]:
    """`pulumi up` of the stack on the running cluster, iris:1's validation sample
    published from `registry` as a platform engineer does (`modelrail model sample
    --configmap`, applied as the admin), CI's kubeconfig written; `pulumi destroy`
    afterwards."""
    project = work / "project"
    write_stack(project, STACK, namespace=NS, image=IMAGE, rollout=POLICY)
    shutil.copy2(ROOT / "Pulumi.yaml", project)
    target = deploy.Target(project=project, stack=STACK,
                           kubeconfig=state_dir / "admin.kubeconfig", backend=work / "be")
    result = deploy.up(target)
    try:
        outputs = result["outputs"]
        sample = subprocess.run([sys.executable, "-m", "modelrail", "model", "sample",
                                 "iris:1", "--configmap", NS, "--registry", str(registry)],
                                capture_output=True, text=True, timeout=60, check=False)
        if sample.returncode != 0:
            raise RuntimeError(sample.stdout + sample.stderr)
        with Api(pki.Pki(state_dir / "pki")) as admin:
            admin.create(f"/api/v1/namespaces/{NS}/configmaps", json.loads(sample.stdout))
        # CI's credentials as the platform hands them out: a token of the CI account
        ci = work / "ci.kubeconfig"
        run = subprocess.run([sys.executable, "-m", "modelrail", "cluster", "kubeconfig",
                              "--state-dir", str(state_dir), "--service-account",
                              f"{NS}/modelrail-ci", "--out", str(ci)],
                             capture_output=True, text=True, timeout=60, check=False)
        if run.returncode != 0:
            raise RuntimeError(run.stdout + run.stderr)
        yield Env(state_dir=state_dir, host=outputs["models"]["iris"]["host"],
                  http=outputs["gateway"]["http"], grpc=outputs["gateway"]["grpc"],
                  ci_kubeconfig=ci, target=target)
    finally:
        deploy.destroy(target)


class GrpcTraffic:
    """gRPC clients through the Gateway's GRPCRoute (tritonclient), counted by outcome."""

    def __init__(self, target: str, host: str, *, max_seconds: float) -> None:
        self.target, self.host, self.max_seconds = target, host, max_seconds
        self.results: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> GrpcTraffic:
        self._thread.start()
        return self

    def stop(self) -> Counter[str]:
        self._stop.set()
        self._thread.join(30)
        return self.results

    def _run(self) -> None:
        import tritonclient.grpc as tgrpc
        from tritonclient.utils import InferenceServerException

        client = tgrpc.InferenceServerClient(
            self.target, channel_args=[("grpc.default_authority", self.host)])
        x = np.asarray([BODY["inputs"][0]["data"]], dtype=np.float32)
        started = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
            inp = tgrpc.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            try:
                client.infer("iris", [inp], client_timeout=10)
                self.results["OK"] += 1
            except InferenceServerException as exc:
                self.results[str(exc.status())] += 1
            time.sleep(0.02)
        client.close()


def ci(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`modelrail rollout <args> --kube` with CI's kubeconfig, as a CI job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "modelrail", "rollout", *args, "--kube", "--kubeconfig",
         str(env.ci_kubeconfig), "--namespace", NS],
        capture_output=True, text=True, timeout=timeout + 60, check=False, cwd=ROOT)


def start_rollout(env: Env, version: str, *args: str, shadow: bool = False,
                  timeout: float = 420) -> tuple[int, str]:
    """`modelrail rollout start --kube --wait` as CI runs it: (exit code, its output);
    without the stack's shadow phase unless `shadow`."""
    run = ci(env, "start", "--model", f"iris:{version}", "--wait", "--timeout",
             str(timeout), *args, *(() if shadow else ("--no-shadow",)), timeout=timeout)
    return run.returncode, run.stdout + run.stderr


def weights(env: Env, *, header_rule: bool = False,
            shadow_rule: bool = False) -> dict[str, list[int]]:
    """[stable, canary] weights of each route's split (or of its headerRoute rule, or of
    the HTTPRoute's shadow rule)."""
    from modelrail.rollout.routers.gateway_api import rule_kind

    want = "shadow" if shadow_rule else "header" if header_rule else "split"
    out = {}
    for kind in ("httproute",) if shadow_rule else ("httproute", "grpcroute"):
        route = get_json(env.state_dir, "-n", NS, kind, "iris")
        rule = next(r for r in route["spec"]["rules"] if rule_kind(r) == want)
        out[kind] = [b["weight"] for b in rule["backendRefs"]]
    return out


def version_of(env: Env, track: str) -> str | None:
    """The model version a track's Deployment runs; None when it does not exist."""
    run = kubectl(env.state_dir, "-n", NS, "get", "deployment", f"iris-{track}", "-o",
                  "json", check=False)
    if run.returncode != 0:
        return None
    return str(json.loads(run.stdout)["metadata"]["labels"]["modelrail.dev/model-version"])


def status_of(env: Env) -> dict[str, Any]:
    status: dict[str, Any] = get_json(env.state_dir, "-n", NS, "modelrollout", "iris")["status"]
    return status
