"""Canary rollouts on the real cluster, driven as CI drives them.

A stack of its own (`rollouts`: the dev stack with iris only and short steps, written into a
scratch project) is applied with `pulumi up`; the operator runs in the cluster from the
controller image, two peered replicas, exactly as the program declares it (its stack
configuration comes from the program, MODELRAIL_STACK_CONFIG). CI's credentials are a
token of the stack's CI ServiceAccount (TokenRequest), never the admin certificate, and
`modelrail rollout start --kube --wait` runs as a subprocess: its exit code is the verdict.

Meanwhile clients call the model through the Gateway (Traefik) on both protocols — REST on
the HTTPRoute, gRPC on the GRPCRoute, bounded in time — and count every failed request.
Each rollout's assertions read the cluster: Deployments and their version labels, the
routes' weights, the canary's absence afterwards, Jobs (the Locust load), Events, and the
ModelRollout's status.

Bad candidates exist only in this test's image: versions 90-erroring, 91-slow and
92-never-ready of iris are copies of iris:2 with faults injected by version
(MODELRAIL_FAULTS baked into a test image built FROM the real inference image: half the
requests answered with errors; 400 ms added; a warm-up that fails). iris:3 is the
examples' wrong model (trained on shuffled labels: fast, error-free, wrong).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelrail.cluster import node, pki
from modelrail.cluster.api import Api
from modelrail.images import podman
from modelrail.images.build import build_image, build_inference
from modelrail.infra import deploy
from modelrail.infra.config import load_stack
from modelrail.models.register import register_estimator
from modelrail.models.registry import Registry
from modelrail.rollout import api as rollout_api
from modelrail.rollout.load.client import ClientTraffic
from modelrail.serving.config import ModelRef
from tests.cluster.test_pulumi import ROOT, get_json, kubectl
from tests.conftest import Example
from tests.rollout.envs import write_stack

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
STACK = "rollouts"
NS = "modelrail-rollouts"
IMAGE = "localhost/modelrail/inference:rollouts-test"
# copies of iris:2, faulty by version
ERRORING, SLOW, NEVER_READY = "90-erroring", "91-slow", "92-never-ready"
FAULTS = {f"iris:{ERRORING}": {"error_rate": 0.5}, f"iris:{SLOW}": {"latency_ms": 400},
          f"iris:{NEVER_READY}": {"never_ready": True}}
POLICY = {
    "steps": [50, 100], "stepSeconds": 10, "analysisIntervalSeconds": 5,
    "maxErrorRate": 0.05, "maxP99LatencyMs": 300, "maxLatencyRatio": 5.0,
    "maxErrorRateIncrease": 0.02, "maxLabelDisagreement": 0.05, "minRequestsPerStep": 20,
    "failureLimit": 1, "progressDeadlineSeconds": 300, "manualGates": []}
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


def _images(examples: dict[str, Example], registry_dir: Path, work: Path) -> list[str]:
    """The stack's inference image (iris 1–4, faults by version) and the others."""
    ex = examples["iris:2"]
    registry = Registry(registry_dir)
    for version in (ERRORING, SLOW, NEVER_READY):
        register_estimator(estimator=ex.estimator, split=ex.split, name="iris",
                           version=version, registry=registry, source_sha256="test")
    built = build_inference([ModelRef("iris", v) for v in ("1", "2", "3", ERRORING, SLOW,
                                                            NEVER_READY)])
    context = work / "faults"
    context.mkdir()
    containerfile = context / "Containerfile"
    containerfile.write_text(f"FROM {built.ref}\nENV MODELRAIL_FAULTS='{json.dumps(FAULTS)}'\n")
    podman.build(context, containerfile=containerfile, tag=IMAGE,
                 labels=podman.owner_labels())
    dev = load_stack("dev", ROOT)
    build_image("controller", tags=(dev.controller_image,))
    build_image("loadtest", tags=(dev.loadtest_image,))
    return [IMAGE, dev.controller_image, dev.loadtest_image]


@pytest.fixture(scope="module")
def env(cluster: tuple[Path, Any, str], examples: dict[str, Example], registry_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    state_dir = cluster[0]
    work = tmp_path_factory.mktemp("rollouts")
    node.up(state_dir, images_to_import=_images(examples, registry_dir, work))
    project = work / "project"
    write_stack(project, STACK, namespace=NS, image=IMAGE, rollout=POLICY)
    shutil.copy2(ROOT / "Pulumi.yaml", project)
    target = deploy.Target(project=project, stack=STACK,
                           kubeconfig=state_dir / "admin.kubeconfig", backend=work / "be")
    result = deploy.up(target)
    try:
        outputs = result["outputs"]
        sample = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "iris-validation", "namespace": NS},
                  "data": {"rows.json": json.dumps(
                      examples["iris:1"].split.X_test.tolist())}}
        with Api(pki.Pki(state_dir / "pki")) as admin:
            admin.create(f"/api/v1/namespaces/{NS}/configmaps", sample)
        # CI's credentials as the platform hands them out: a token of the CI account
        ci = work / "ci.kubeconfig"
        run = subprocess.run([sys.executable, "-m", "modelrail", "cluster", "kubeconfig",
                              "--state-dir", str(state_dir), "--service-account",
                              f"{NS}/modelrail-ci", "--out", str(ci)],
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
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


def start_rollout(env: Env, version: str, *, timeout: float = 420) -> tuple[int, str]:
    """`modelrail rollout start --kube --wait` as CI runs it, with CI's kubeconfig."""
    run = subprocess.run(
        [sys.executable, "-m", "modelrail", "rollout", "start", "--kube",
         "--kubeconfig", str(env.ci_kubeconfig), "--namespace", NS,
         "--model", f"iris:{version}", "--wait", "--timeout", str(timeout)],
        capture_output=True, text=True, timeout=timeout + 60, check=False, cwd=ROOT)
    return run.returncode, run.stdout + run.stderr


def _weights(env: Env) -> dict[str, list[int]]:
    out = {}
    for kind in ("httproute", "grpcroute"):
        route = get_json(env.state_dir, "-n", NS, kind, "iris")
        out[kind] = [b["weight"] for b in route["spec"]["rules"][0]["backendRefs"]]
    return out


def _version(env: Env, track: str) -> str | None:
    run = kubectl(env.state_dir, "-n", NS, "get", "deployment", f"iris-{track}", "-o",
                  "json", check=False)
    if run.returncode != 0:
        return None
    return str(json.loads(run.stdout)["metadata"]["labels"]["modelrail.dev/model-version"])


def _spec_writers(env: Env, hpa: str) -> tuple[Any, set[str]]:
    """An HPA's spec and who wrote it (managedFields, the status subresource aside)."""
    obj = get_json(env.state_dir, "-n", NS, "hpa", hpa)
    writers = {m["manager"] for m in obj["metadata"].get("managedFields", [])
               if m.get("subresource") != "status"}
    return obj["spec"], writers


def _events(env: Env) -> list[str]:
    items = get_json(env.state_dir, "-n", NS, "events",
                     "--field-selector", "involvedObject.kind=ModelRollout")["items"]
    return [f"{e.get('reason')}: {e.get('message')}" for e in items]


def _under_load(env: Env, version: str) -> tuple[int, str, Counter[object], Counter[str]]:
    rest = ClientTraffic(f"http://{env.http}/v2/models/iris/infer", BODY,
                         headers={"Host": env.host}, pause=0.02, max_seconds=480).start()
    grpc = GrpcTraffic(env.grpc, env.host, max_seconds=480).start()
    try:
        code, out = start_rollout(env, version)
    finally:
        rest_results, grpc_results = rest.stop(), grpc.stop()
    print(f"\nrollout iris:{version}: exit {code}; REST {dict(rest_results)}, "
          f"gRPC {dict(grpc_results)}\n{out[-1500:]}")
    return code, out, rest_results, grpc_results


def test_a_good_version_is_promoted_with_no_failed_request(env: Env) -> None:
    assert _version(env, "stable") == "1"
    stable_hpa = _spec_writers(env, "iris-stable")
    code, out, rest, grpc = _under_load(env, "2")
    assert code == rollout_api.exit_code_of("Succeeded") == 0, out
    assert _version(env, "stable") == "2"
    assert _version(env, "canary") is None  # deleted, and its HPA with it
    assert kubectl(env.state_dir, "-n", NS, "get", "hpa", "iris-canary",
                   check=False).returncode != 0
    assert _weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    status = get_json(env.state_dir, "-n", NS, "modelrollout", "iris")["status"]
    assert status["phase"] == "Succeeded" and status["stableVersion"] == "2"
    acts = [(h["action"], h["weight"]) for h in status["rollout"]["status"]["history"]
            if h["action"] != "hold"]
    assert acts == [("set_weight", 50), ("set_weight", 100), ("promote", 100),
                    ("complete", 0)], acts
    # the stable HPA is never touched by the operator (only the canary's is)
    assert _spec_writers(env, "iris-stable") == stable_hpa
    checks = status["lastAnalysis"]["checks"]
    assert checks and not [ch for ch in checks if ch["status"] == "FAIL"], checks
    # clients saw no failure at all, on either protocol, through every step
    assert set(rest) == {200} and rest[200] > 100, rest
    assert set(grpc) == {"OK"} and grpc["OK"] > 100, grpc
    # every step was an Event: weights 50 then 100, then the promotion
    events = _events(env)
    assert sum(e.startswith("WeightChanged") for e in events) >= 2, events
    assert any(e.startswith("Promoting") for e in events), events
    # the Locust load ran as Jobs; each is deleted once its result is read
    assert get_json(env.state_dir, "-n", NS, "jobs")["items"] == []


def test_an_erroring_version_is_rolled_back_with_its_verdict(env: Env) -> None:
    stable = _version(env, "stable")
    code, out, rest, _grpc = _under_load(env, ERRORING)
    assert code == rollout_api.exit_code_of("RolledBack") != 0, out
    assert _version(env, "stable") == stable
    assert _version(env, "canary") is None
    assert _weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    status = get_json(env.state_dir, "-n", NS, "modelrollout", "iris")["status"]
    assert status["phase"] == "RolledBack", status
    failed = [ch for ch in status["lastAnalysis"]["checks"] if ch["status"] == "FAIL"]
    assert any("error" in ch["name"] for ch in failed), status["lastAnalysis"]
    assert any(e.startswith("RollingBack") for e in _events(env)), _events(env)
    # a bounded blast radius: only requests sent to the canary while it held weight
    total = sum(rest.values())
    assert (total - rest[200]) / total < 0.3, rest


def _status(env: Env) -> dict[str, Any]:
    status: dict[str, Any] = get_json(env.state_dir, "-n", NS, "modelrollout", "iris")["status"]
    return status


@pytest.mark.parametrize(("version", "reason"), [(SLOW, "latency: FAIL"),
                                                  ("3", "model gate: FAIL")])
def test_a_slow_and_a_wrong_version_are_rolled_back(env: Env, version: str,
                                                    reason: str) -> None:
    stable = _version(env, "stable")
    code, out, rest, grpc = _under_load(env, version)
    assert code == rollout_api.exit_code_of("RolledBack"), out
    status = _status(env)
    assert status["phase"] == "RolledBack" and reason in status["message"], status["message"]
    assert _version(env, "stable") == stable and _version(env, "canary") is None
    assert _weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    # caught before any user request reached it (the pre-traffic analysis), so no client
    # saw a failure
    assert set(rest) == {200} and set(grpc) == {"OK"}, (rest, grpc)


def test_a_version_that_never_becomes_ready_fails_at_the_deadline(env: Env) -> None:
    """No data is not success: the rollout holds with traffic on stable, then fails at
    its progress deadline (shortened for this test by patching the spec as an admin)."""
    stable = _version(env, "stable")
    kubectl(env.state_dir, "-n", NS, "patch", "modelrollout", "iris", "--type", "merge",
            "-p", json.dumps({"spec": {"progressDeadlineSeconds": 45}}))
    try:
        code, out, rest, grpc = _under_load(env, NEVER_READY)
    finally:
        kubectl(env.state_dir, "-n", NS, "patch", "modelrollout", "iris", "--type", "merge",
                "-p", json.dumps({"spec": {"progressDeadlineSeconds":
                                           POLICY["progressDeadlineSeconds"]}}))
    assert code == rollout_api.exit_code_of("Failed"), out
    status = _status(env)
    assert status["phase"] == "Failed" and "ready" in status["message"], status["message"]
    assert _version(env, "stable") == stable and _version(env, "canary") is None
    assert _weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    assert set(rest) == {200} and set(grpc) == {"OK"}, (rest, grpc)


def _acting_operator(env: Env) -> str:
    """The controller pod whose kopf peer has the highest priority: the one that acts."""
    peering = get_json(env.state_dir, "-n", NS, "kopfpeering", "modelrail-controller")
    peers = peering.get("status") or {}
    assert len(peers) == 2, peers
    acting = max(peers, key=lambda p: peers[p]["priority"])
    pods = get_json(env.state_dir, "-n", NS, "pods", "-l",
                    "app.kubernetes.io/name=modelrail-controller")["items"]
    names = [p["metadata"]["name"] for p in pods if p["metadata"]["name"] in acting]
    assert len(names) == 1, (acting, [p["metadata"]["name"] for p in pods])
    return names[0]


def test_the_acting_operator_deleted_mid_rollout_the_other_finishes_once(env: Env) -> None:
    stable = _version(env, "stable")
    target = "1" if stable != "1" else "2"
    since = time.time()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(zip(
        ("code", "out", "rest", "grpc"), _under_load(env, target), strict=True)))
    runner.start()
    deadline = time.monotonic() + 240
    while _status(env).get("canaryWeight", 0) < 50 or _status(env)["phase"] != "Progressing":
        assert time.monotonic() < deadline, _status(env)
        time.sleep(1)
    victim = _acting_operator(env)
    kubectl(env.state_dir, "-n", NS, "delete", "pod", victim, "--wait=false")
    print(f"\ndeleted the acting operator {victim} at weight {_status(env)['canaryWeight']}")
    runner.join(600)
    assert result["code"] == 0, result["out"]
    assert _version(env, "stable") == target and _version(env, "canary") is None
    assert set(result["rest"]) == {200} and set(result["grpc"]) == {"OK"}, result
    # each action once, though two operators took part
    items = get_json(env.state_dir, "-n", NS, "events",
                     "--field-selector", "involvedObject.kind=ModelRollout")["items"]
    mine = [e for e in items if _when(e) >= since - 1]
    reasons = Counter(str(e.get("reason")) for e in mine
                      for _ in range(int(e.get("count") or 1)))
    assert reasons["WeightChanged"] == 2 and reasons["Promoting"] == 1, reasons


def _when(event: dict[str, Any]) -> float:
    from datetime import datetime

    stamp = event.get("lastTimestamp") or event.get("eventTime") or \
        event["metadata"]["creationTimestamp"]
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def _granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(group, res, verb) for rule in rules for group in rule["apiGroups"]
            for res in rule["resources"] for verb in rule["verbs"]}


def _used(state_dir: Path, user: str) -> tuple[set[tuple[str, str, str]], list[str]]:
    """(apiGroup, resource[/subresource], verb) of every request `user` made in NS, from
    the API server's audit log; and the ones refused (403)."""
    used: set[tuple[str, str, str]] = set()
    refused = []
    for log in sorted((state_dir / "logs").glob("audit*.log")):
        for line in log.read_text().splitlines():
            ev = json.loads(line)
            ref = ev.get("objectRef") or {}
            if ev.get("user", {}).get("username") != user or ref.get("namespace") != NS:
                continue
            res = ref.get("resource", "") + (f"/{ref['subresource']}"
                                             if ref.get("subresource") else "")
            key = (ref.get("apiGroup", ""), res, ev["verb"])
            if (ev.get("responseStatus") or {}).get("code") == 403:
                refused.append(str(key))
            else:
                used.add(key)
    return used, refused


def test_rbac_the_audit_log_matches_the_roles_both_ways(env: Env) -> None:
    """After the rollouts above: every request of the operator and of CI, as the API
    server logged it, is one its Role grants and none was refused; and every grant of
    each Role was used."""
    from modelrail.infra import manifests

    operator_user = f"system:serviceaccount:{NS}:modelrail-controller"
    ci_user = f"system:serviceaccount:{NS}:{manifests.CI_SA}"
    for user, rules in ((operator_user, manifests.CONTROLLER_RULES),
                        (ci_user, manifests.CI_RULES)):
        used, refused = _used(env.state_dir, user)
        assert used, f"no request of {user} in the audit log"
        assert refused == [], (user, refused)
        assert used <= _granted(rules), (user, sorted(used - _granted(rules)))
        unused = sorted(_granted(rules) - used)
        print(f"\n{user}: {sorted(used)}")
        assert unused == [], (user, unused)
