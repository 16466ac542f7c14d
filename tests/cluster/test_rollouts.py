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

The stack and its bad candidates are rollout_stack.py's (shared with
`benchmarks/rollout.py --platform cluster`): versions 90-erroring, 91-slow and
92-never-ready of iris are copies of iris:2 with faults injected by version; iris:3 is the
examples' wrong model (trained on shuffled labels: fast, error-free, wrong).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelrail.cluster import node
from modelrail.infra.config import load_stack
from modelrail.models.register import register_estimator
from modelrail.models.registry import Registry
from modelrail.rollout import api as rollout_api
from modelrail.rollout.load.client import ClientTraffic
from tests.cluster.kubectl import get_json, kubectl
from tests.cluster.rollout_stack import (
    BODY,
    ERRORING,
    HEADER,
    NEVER_READY,
    NS,
    POLICY,
    SLOW,
    STACK,
    Env,
    GrpcTraffic,
    build_images,
    ci,
    rollout_stack,
    start_rollout,
    status_of,
    version_of,
    weights,
)
from tests.conftest import Example

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def env(cluster: tuple[Path, Any, str], examples: dict[str, Example], registry_dir: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    state_dir = cluster[0]
    work = tmp_path_factory.mktemp("rollouts")
    ex = examples["iris:2"]
    for version in (ERRORING, SLOW, NEVER_READY, COPY):
        register_estimator(estimator=ex.estimator, split=ex.split, name="iris",
                           version=version, registry=Registry(registry_dir),
                           source_sha256="test")
    images = build_images(("1", "2", "3", ERRORING, SLOW, NEVER_READY, COPY), work)
    node.up(state_dir, images_to_import=images)
    with rollout_stack(state_dir, work, registry_dir) as env:
        yield env


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
    assert version_of(env, "stable") == "1"
    stable_hpa = _spec_writers(env, "iris-stable")
    code, out, rest, grpc = _under_load(env, "2")
    assert code == rollout_api.exit_code_of("Succeeded") == 0, out
    assert version_of(env, "stable") == "2"
    assert version_of(env, "canary") is None  # deleted, and its HPA with it
    assert kubectl(env.state_dir, "-n", NS, "get", "hpa", "iris-canary",
                   check=False).returncode != 0
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
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
    stable = version_of(env, "stable")
    code, out, rest, _grpc = _under_load(env, ERRORING)
    assert code == rollout_api.exit_code_of("RolledBack") != 0, out
    assert version_of(env, "stable") == stable
    assert version_of(env, "canary") is None
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    status = get_json(env.state_dir, "-n", NS, "modelrollout", "iris")["status"]
    assert status["phase"] == "RolledBack", status
    failed = [ch for ch in status["lastAnalysis"]["checks"] if ch["status"] == "FAIL"]
    assert any("error" in ch["name"] for ch in failed), status["lastAnalysis"]
    assert any(e.startswith("RollingBack") for e in _events(env)), _events(env)
    # a bounded blast radius: only requests sent to the canary while it held weight
    total = sum(rest.values())
    assert (total - rest[200]) / total < 0.3, rest


@pytest.mark.parametrize(("version", "reason"), [(SLOW, "latency: FAIL"),
                                                  ("3", "model gate: FAIL")])
def test_a_slow_and_a_wrong_version_are_rolled_back(env: Env, version: str,
                                                    reason: str) -> None:
    stable = version_of(env, "stable")
    code, out, rest, grpc = _under_load(env, version)
    assert code == rollout_api.exit_code_of("RolledBack"), out
    status = status_of(env)
    assert status["phase"] == "RolledBack" and reason in status["message"], status["message"]
    assert version_of(env, "stable") == stable and version_of(env, "canary") is None
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    # caught before any user request reached it (the pre-traffic analysis), so no client
    # saw a failure
    assert set(rest) == {200} and set(grpc) == {"OK"}, (rest, grpc)


def test_a_version_that_never_becomes_ready_fails_at_the_deadline(env: Env) -> None:
    """No data is not success: the rollout holds with traffic on stable, then fails at
    its progress deadline (shortened for this test by patching the spec as an admin)."""
    stable = version_of(env, "stable")
    kubectl(env.state_dir, "-n", NS, "patch", "modelrollout", "iris", "--type", "merge",
            "-p", json.dumps({"spec": {"progressDeadlineSeconds": 45}}))
    try:
        code, out, rest, grpc = _under_load(env, NEVER_READY)
    finally:
        kubectl(env.state_dir, "-n", NS, "patch", "modelrollout", "iris", "--type", "merge",
                "-p", json.dumps({"spec": {"progressDeadlineSeconds":
                                           POLICY["progressDeadlineSeconds"]}}))
    assert code == rollout_api.exit_code_of("Failed"), out
    status = status_of(env)
    assert status["phase"] == "Failed" and "ready" in status["message"], status["message"]
    assert version_of(env, "stable") == stable and version_of(env, "canary") is None
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
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
    stable = version_of(env, "stable")
    target = "1" if stable != "1" else "2"
    since = time.time()
    result: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: result.update(zip(
        ("code", "out", "rest", "grpc"), _under_load(env, target), strict=True)))
    runner.start()
    deadline = time.monotonic() + 240
    while status_of(env).get("canaryWeight", 0) < 50 or status_of(env)["phase"] != "Progressing":
        assert time.monotonic() < deadline, status_of(env)
        time.sleep(1)
    victim = _acting_operator(env)
    kubectl(env.state_dir, "-n", NS, "delete", "pod", victim, "--wait=false")
    print(f"\ndeleted the acting operator {victim} at weight {status_of(env)['canaryWeight']}")
    runner.join(600)
    assert result["code"] == 0, result["out"]
    assert version_of(env, "stable") == target and version_of(env, "canary") is None
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


def ci_status(env: Env) -> dict[str, Any]:
    run = ci(env, "status", "--model", "iris", "--output", "json")
    assert run.returncode == 0, run.stdout + run.stderr
    data: dict[str, Any] = json.loads(run.stdout)
    return data


@contextmanager
def manual_gate_at(env: Env, weight: int) -> Iterator[None]:
    """The ModelRollout pauses at `weight` for a person (patched as an admin, as a
    platform engineer changes the stack's manualGates; restored afterwards)."""
    def gates(value: list[int]) -> None:
        kubectl(env.state_dir, "-n", NS, "patch", "modelrollout", "iris", "--type",
                "merge", "-p", json.dumps({"spec": {"manualGates": value}}))
    gates([weight])
    try:
        yield
    finally:
        gates([])


def _paused_at(env: Env, version: str, weight: int, *, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while True:
        s = ci_status(env)
        if s["canary"] == version and s["phase"] == "Paused" and s["weight"] == weight:
            assert s["exit_code"] is None, s  # not over: no verdict yet
            return
        assert s["phase"] not in ("RolledBack", "Failed", "Aborted") or \
            s["canary"] != version, s
        assert time.monotonic() < deadline, s
        time.sleep(1)


def _hpa(env: Env, name: str) -> dict[str, Any]:
    hpa: dict[str, Any] = get_json(env.state_dir, "-n", NS, "hpa", name)
    return hpa


def test_the_canary_hpa_scales_under_a_load_ramp_and_the_stable_hpa_is_untouched(
        env: Env) -> None:
    """Paused at a manual gate at 100 %, the canary takes a rising client load through the
    Gateway; the real HPA controller, fed by metrics-server, scales it past what the
    analysis' own load asked for, up to its ceiling for that weight, while the operator
    leaves the stable HPA's spec alone. Then CI passes the gate (`rollout promote --kube`)
    and `status --watch` exits with the verdict."""
    from modelrail.rollout.kube.platform import canary_max_replicas

    cfg = load_stack(STACK, env.target.project)
    stable = version_of(env, "stable")
    target = "2" if stable != "2" else "1"
    stable_hpa = _spec_writers(env, "iris-stable")
    with manual_gate_at(env, 100):
        started = ci(env, "start", "--model", f"iris:{target}", "--no-shadow")
        assert started.returncode == 0, started.stdout + started.stderr
        _paused_at(env, target, 100)
        canary = _hpa(env, "iris-canary")
        ceiling = canary_max_replicas(cfg, 100)
        assert (canary["spec"]["minReplicas"], canary["spec"]["maxReplicas"]) == (1, ceiling)
        before = int((canary.get("status") or {}).get("desiredReplicas") or 1)
        assert before < ceiling, canary.get("status")  # the ramp has something to do
        # the ramp: one more client (2 threads) every 10 s, at most 4; bounded in time
        clients: list[ClientTraffic] = []
        deadline = time.monotonic() + 240
        seen: list[tuple[float, int, int, Any]] = []
        try:
            while True:
                if len(clients) < 4 and len(seen) % 10 == 0:
                    clients.append(ClientTraffic(
                        f"http://{env.http}/v2/models/iris/infer", BODY,
                        headers={"Host": env.host}, threads=2, pause=0,
                        max_seconds=300).start())
                st = _hpa(env, "iris-canary").get("status") or {}
                cpu = [m["resource"]["current"].get("averageUtilization")
                       for m in st.get("currentMetrics") or []
                       if m.get("type") == "Resource"]
                seen.append((time.monotonic(), len(clients),
                             int(st.get("desiredReplicas") or 0), cpu))
                deployment = get_json(env.state_dir, "-n", NS, "deployment", "iris-canary")
                ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
                if ready >= ceiling:
                    break
                assert time.monotonic() < deadline, (seen[-5:], st)
                time.sleep(1)
        finally:
            results: Counter[object] = Counter()
            for client in clients:
                results.update(client.stop())
        print(f"\ncanary HPA from {before} replicas, (t, clients, desired, cpu %) every "
              f"10 s: {[(round(t - seen[0][0]), n, d, c) for t, n, d, c in seen[::10]]}"
              f"\nclients: {dict(results)}")
        # scaled by the HPA controller (its Events), within the weight's ceiling
        assert _hpa(env, "iris-canary")["spec"]["maxReplicas"] == ceiling
        events = get_json(env.state_dir, "-n", NS, "events", "--field-selector",
                          "involvedObject.name=iris-canary,"
                          "involvedObject.kind=HorizontalPodAutoscaler")["items"]
        rescales = [e["message"] for e in events if e.get("reason") == "SuccessfulRescale"]
        assert any(f"New size: {ceiling}" in m for m in rescales), rescales
        # the operator left the stable HPA's spec alone (its writers unchanged too)
        assert _spec_writers(env, "iris-stable") == stable_hpa
        # and no client request failed while the canary scaled
        assert set(results) == {200} and results[200] > 200, results
        assert status_of(env)["phase"] == "Paused"  # still judged healthy under the ramp
        promoted = ci(env, "promote", "--model", "iris")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        watched = ci(env, "status", "--model", "iris", "--watch", "--timeout", "300",
                     timeout=300)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert version_of(env, "stable") == target and version_of(env, "canary") is None
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}


def _answered_by(env: Env, headers: dict[str, str]) -> str:
    import httpx

    r = httpx.post(f"http://{env.http}/v2/models/iris/infer", json=BODY,
                   headers={"Host": env.host, **headers}, timeout=10)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_header_requests_reach_the_canary_at_weight_0_then_ci_aborts(env: Env) -> None:
    """The stack's headerRoute: once the canary is ready, at weight 0 (its pre-traffic
    analysis), a client sending the header reaches it through the Gateway and one without
    never does; paused at 50 %, CI aborts (`rollout abort --kube`): both the split and the
    header go back to stable."""
    stable = version_of(env, "stable")
    target = "2" if stable != "2" else "1"
    assert weights(env, header_rule=True) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    with manual_gate_at(env, 50):
        started = ci(env, "start", "--model", f"iris:{target}", "--no-shadow")
        assert started.returncode == 0, started.stdout + started.stderr
        with_header: Counter[str] = Counter()
        without: Counter[str] = Counter()
        deadline = time.monotonic() + 240
        while with_header[target] < 20:
            assert time.monotonic() < deadline, (with_header, without, status_of(env))
            before = status_of(env).get("canaryWeight", 0)
            answers = (_answered_by(env, HEADER), _answered_by(env, {}))
            if before == 0 and status_of(env).get("canaryWeight", 0) == 0:
                with_header[answers[0]] += 1
                without[answers[1]] += 1
            else:
                assert with_header[target] > 0, "the canary took weight before any header " \
                                                "request reached it"
                break
        print(f"\nat weight 0: with the header {dict(with_header)}, without {dict(without)}")
        assert set(without) == {stable}, without  # no weight: nobody else reaches it
        assert with_header[target] > 0, with_header
        _paused_at(env, target, 50)
        assert weights(env) == {"httproute": [50, 50], "grpcroute": [50, 50]}
        assert weights(env, header_rule=True) == {"httproute": [0, 100],
                                                  "grpcroute": [0, 100]}
        assert {_answered_by(env, HEADER) for _ in range(20)} == {target}
        aborted = ci(env, "abort", "--model", "iris")
        assert aborted.returncode == 0, aborted.stdout + aborted.stderr
        watched = ci(env, "status", "--model", "iris", "--watch", "--timeout", "120",
                     timeout=120)
    assert watched.returncode == rollout_api.exit_code_of("Aborted") == 11, \
        watched.stdout + watched.stderr
    assert status_of(env)["phase"] == "Aborted"
    assert version_of(env, "stable") == stable and version_of(env, "canary") is None
    assert weights(env) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    assert weights(env, header_rule=True) == {"httproute": [100, 0], "grpcroute": [100, 0]}
    assert {_answered_by(env, HEADER) for _ in range(10)} == {stable}
    # promote is refused once nothing is paused: a clear error, exit 2
    late = ci(env, "promote", "--model", "iris")
    assert late.returncode == 2 and "not paused" in late.stderr, late.stdout + late.stderr


SHIFT = np.array([2.0, 2.0, 1.0, 1.0])  # sepal length and width doubled upstream
# iris:2 (the random forest) registered again under a version no earlier test rolled out:
# the operator rolls a version out once, and the header test just aborted one
COPY = "93-copy"


def _bodies(rows: Any) -> list[dict[str, Any]]:
    return [{"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(chunk), 4],
                         "data": chunk.reshape(-1).tolist()}]}
            for chunk in (rows[i:i + 4] for i in range(0, len(rows), 4))]


def _shadow_rollout(env: Env, version: str,
                    bodies: list[dict[str, Any]]) -> tuple[int, str, ClientTraffic]:
    """A rollout with the stack's shadow phase while a client sends `bodies` through the
    Gateway (REST: what stable's mirror copies)."""
    traffic = ClientTraffic(f"http://{env.http}/v2/models/iris/infer", bodies[0],
                            bodies=bodies, headers={"Host": env.host}, pause=0.01,
                            max_seconds=480).start()
    try:
        code, out = start_rollout(env, version, shadow=True)
    finally:
        traffic.stop()
    print(f"\nshadow rollout iris:{version}: exit {code}; {dict(traffic.results)} answered "
          f"by {dict(traffic.versions)}\n{out[-1200:]}")
    return code, out, traffic


def test_the_shadow_phase_judges_a_candidate_on_live_inputs_before_it_answers_anyone(
        env: Env, examples: dict[str, Example]) -> None:
    """The stack's shadow phase on the cluster: the stable pods mirror half of the users'
    requests through the real Gateway (Traefik) to the canary via the HTTPRoute's shadow
    rule, which the operator turns to the canary for the phase only. On the users' usual
    distribution the candidate passes the shadow phase and is promoted with no failed
    request; then iris:1, which answers the validation sample like it (so the
    pre-traffic analysis passes) but differs on a shifted live distribution, is rolled back
    in the shadow phase with no user request answered by it. Starting that version again
    is refused (the operator rolls a version out once), not answered with the old verdict.
    The candidate that passes is iris:2's random forest under a version of its own (the
    earlier tests rolled 1 and 2 out already); the one that fails is iris:1's logistic
    regression."""
    assert weights(env, shadow_rule=True) == {"httproute": [100, 0]}
    rows = examples["iris:1"].split.X_test

    code, out, traffic = _shadow_rollout(env, COPY, _bodies(rows))
    assert code == 0, out
    record = status_of(env)["rollout"]["status"]
    phases = [h["to"] for h in record["history"]]
    assert phases.index("Shadowing") < phases.index("Progressing"), phases
    assert record["shadow"]["pairs"] >= POLICY["shadow"]["minPairs"], record["shadow"]
    assert record["shadow"]["disagreements"] / record["shadow"]["pairs"] < 0.05
    assert set(traffic.results) == {200} and traffic.results[200] > 100, traffic.results
    assert version_of(env, "stable") == COPY
    assert weights(env, shadow_rule=True) == {"httproute": [100, 0]}
    first, second = "1", COPY

    code, out, traffic = _shadow_rollout(env, first, _bodies(rows * SHIFT))
    assert code == rollout_api.exit_code_of("RolledBack") == 9, out
    status = status_of(env)
    assert "shadow phase failed" in status["message"], status["message"]
    record = status["rollout"]["status"]
    assert "Shadowing" in [h["to"] for h in record["history"]]
    assert all(h["weight"] == 0 for h in record["history"]), record["history"]
    totals = record["shadow"]
    assert totals["pairs"] > 0 and totals["disagreements"] / totals["pairs"] > 0.05, totals
    # every user request was answered, all by stable: none by the candidate
    assert set(traffic.results) == {200}, traffic.results
    assert set(traffic.versions) == {second}, traffic.versions
    assert weights(env, shadow_rule=True) == {"httproute": [100, 0]}
    assert version_of(env, "canary") is None
    text = ci(env, "status", "--model", "iris")
    assert "shadow phase:" in text.stdout and "answers compared" in text.stdout, text.stdout
    again = ci(env, "start", "--model", f"iris:{first}", "--wait")
    assert again.returncode == 2 and "already ended RolledBack" in again.stderr, \
        again.stdout + again.stderr


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
