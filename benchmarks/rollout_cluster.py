"""Rollout benchmark on the real cluster (`benchmarks/rollout.py --platform cluster`).

The same figures as the local platform's, measured the way CI meets them: a 5-node cluster
(`modelrail cluster up`), the `rollouts` stack applied by `pulumi up` (the cluster rollout
tests' harness, tests/cluster/rollout_stack.py), the operator in the cluster, and
`modelrail rollout start --kube --wait` run with the CI ServiceAccount's token. Clients call
the model through the Gateway (Traefik, HTTPRoute) and record every answer's status and
model version; a watcher reads the HTTPRoute's weights every 0.1 s.

  start → end              `rollout start` to its exit (the verdict)
  first traffic → end      the first client answer from the canary to the verdict
  weight propagation       the HTTPRoute's first canary weight written → the first client
                           answer from the canary (the Gateway applied it)
  blast radius             failed client requests / all client requests in the run

Loopback and the cluster's network namespace only; bounded in time.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

# 2 s per answer at most; 2 clients, ~5 ms between requests each (as the local benchmark)
CLIENTS, PAUSE = 2, 0.005


class Recorder:
    """Client threads through the Gateway recording (time, status, model version)."""

    def __init__(self, url: str, host: str, body: dict[str, Any], *,
                 max_seconds: float) -> None:
        self.url, self.host, self.body, self.max_seconds = url, host, body, max_seconds
        self.answers: list[tuple[float, int | str, str | None]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(CLIENTS)]

    def start(self) -> Recorder:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self) -> None:
        started = time.monotonic()
        with httpx.Client(headers={"Host": self.host}) as client:
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                outcome: int | str
                version = None
                try:
                    r = client.post(self.url, json=self.body, timeout=10)
                    outcome = r.status_code
                    if r.status_code == 200:
                        version = str(r.json().get("model_version"))
                except (httpx.HTTPError, ValueError) as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.answers.append((time.monotonic(), outcome, version))
                time.sleep(PAUSE)


class RouteWatcher:
    """The HTTPRoute's canary weight, read every 0.1 s: (time, weight) at each change."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RouteWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        last: int | None = None
        while not self._stop.is_set():
            weight: int | None
            try:
                weight = self.read()
            except Exception:  # a missed read is retried on the next tick
                weight = last
            if weight is not None and weight != last:
                self.changes.append((time.monotonic(), weight))
                last = weight
            time.sleep(0.1)


def run(work: Path, wrong: str) -> list[dict[str, Any]]:
    """Bring a cluster up in `work`, apply the stack and run every scenario; bring it down."""
    from modelrail.cluster import netns, node, pki
    from modelrail.cluster.api import Api
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all
    from tests.cluster import rollout_stack as rs
    from tests.cluster.kubectl import kubectl

    root = Path(__file__).resolve().parents[1]
    if netns.exists():
        raise SystemExit(f"a cluster already runs on this machine ({netns.owner()}): "
                         "stop it first (modelrail cluster down)")
    (trained,) = train_all(load_spec(root / "models" / "examples.yaml"), work / "train",
                           ["iris:2"])
    for version in (rs.ERRORING, rs.SLOW, rs.NEVER_READY):
        register_model(model_path=trained.model_path, data_path=trained.data_path,
                       name="iris", version=version, registry=Registry())
    state_dir = Path(os.environ.get("MODELRAIL_BENCH_CLUSTER", "/tmp/mr-bench-c"))
    images = rs.build_images(("1", "2", wrong, rs.ERRORING, rs.SLOW, rs.NEVER_READY), work)
    node.up(state_dir, nodes=5, images_to_import=images)
    runs: list[dict[str, Any]] = []
    try:
        with rs.rollout_stack(state_dir, work, Registry().root) as env, \
                Api(pki.Pki(state_dir / "pki")) as admin:
            route = (f"/apis/gateway.networking.k8s.io/v1/namespaces/{rs.NS}/"
                     "httproutes/iris")

            def canary_weight() -> int:
                obj = admin.get(route) or {}
                return int(obj["spec"]["rules"][0]["backendRefs"][1]["weight"])

            def deadline(seconds: int) -> None:  # as the cluster test shortens it
                kubectl(state_dir, "-n", rs.NS, "patch", "modelrollout", "iris", "--type",
                        "merge", "-p", json.dumps(
                            {"spec": {"progressDeadlineSeconds": seconds}}))

            plan: list[tuple[str, str, bool]] = [("good", "", True)]
            for pre in (True, False):
                plan += [("errors", rs.ERRORING, pre), ("slow", rs.SLOW, pre),
                         ("wrong", wrong, pre)]
            plan.append(("never-ready", rs.NEVER_READY, True))
            for kind, bad, pre in plan:
                stable = rs.version_of(env, "stable")
                version = bad or ("2" if stable != "2" else "1")
                if kind == "never-ready":
                    deadline(45)
                try:
                    runs.append(scenario(env, kind, version, pre, canary_weight))
                finally:
                    if kind == "never-ready":
                        deadline(300)  # the stack's (rs.POLICY)
                print(json.dumps(runs[-1]), flush=True)
    finally:
        node.down(state_dir)
    return runs


def scenario(env: Any, kind: str, version: str, pre: bool,
             canary_weight: Callable[[], int]) -> dict[str, Any]:
    from tests.cluster import rollout_stack as rs

    recorder = Recorder(f"http://{env.http}/v2/models/iris/infer", env.host, rs.BODY,
                        max_seconds=420).start()
    watcher = RouteWatcher(canary_weight).start()
    time.sleep(2)  # a baseline of answers from stable
    started = time.monotonic()
    try:
        code, out = rs.start_rollout(env, version,
                                     *(() if pre else ("--no-pre-traffic",)), timeout=360)
        ended = time.monotonic()
        time.sleep(1)
    finally:
        recorder.stop()
        watcher.stop()
    answers = [a for a in recorder.answers if a[0] >= started]
    canary = [t for t, status, v in answers if status == 200 and v == version]
    set_at = [t for t, w in watcher.changes if t >= started and w > 0]
    failed = sum(1 for _, status, _ in answers if status != 200)
    phase = rs.status_of(env).get("phase")
    return {
        "kind": kind, "mode": "pre-traffic + live" if pre else "live only",
        "runtime": "cluster", "phase": phase, "exit_code": code,
        "start_to_end_s": ended - started,
        "canary_took_traffic": bool(canary),
        "first_traffic_to_end_s": (ended - canary[0]) if canary else None,
        "requests": len(answers), "failed": failed,
        "blast_radius": failed / len(answers) if answers else None,
        "weight_propagation_s": (canary[0] - set_at[0]) if canary and set_at else None,
        "reason": out.strip().splitlines()[-1][:160] if out.strip() else "",
    }
