"""The local platform with real processes: instances behind Traefik, a crashed instance
restarted by the supervisor, a canary track, and a stable swap to a new version under load
without a failed request."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from modelrail.processes import wait_ready
from modelrail.rollout.load.client import ClientTraffic
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.serving.config import ModelRef
from tests.conftest import Example

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


def versions(env: LocalEnvironment, n: int) -> Counter[object]:
    seen: Counter[object] = Counter()
    with httpx.Client() as client:
        for _ in range(n):
            r = client.post(f"http://127.0.0.1:{env.router.http_port}/v2/models/iris/infer",
                            json=BODY, timeout=10)
            seen[r.json().get("model_version") if r.status_code == 200 else r.status_code] += 1
    return seen


def wait_pool(env: LocalEnvironment, service: str, up: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"http://127.0.0.1:{env.router.api_port}/api/http/services/"
                           f"{service}@file").json().get("serverStatus", {})
        if list(status.values()).count("UP") == up and len(status) == up:
            return
        time.sleep(0.2)
    raise AssertionError(f"{service} never had exactly {up} servers UP")


def test_local_environment(examples: dict[str, Example], tmp_path: Path) -> None:
    env = LocalEnvironment(name="dev", run_dir=tmp_path / "dev")
    env.start()
    try:
        v1, v2 = ModelRef("iris", "1"), ModelRef("iris", "2")
        env.scale("iris", "stable", ref=v1, replicas=2)
        env.router.set_weight(route="iris", canary_weight=0)
        wait_pool(env, "iris-http-stable", 2)
        assert versions(env, 20) == Counter({"1": 20})

        # an instance dies: the supervisor brings a new one and the pool recovers
        victim = env.track("iris", "stable").instances[0]
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        restarted = env.supervise()
        assert len(restarted) == 1 and f":{victim.http_port}" in restarted[0]
        fresh = env.track("iris", "stable").instances[0]
        assert fresh.restarts == 1 and wait_ready(fresh.url, timeout=90, proc=fresh.proc)
        wait_pool(env, "iris-http-stable", 2)
        assert env.supervise() == []

        # a canary track takes its share
        env.scale("iris", "canary", ref=v2, replicas=1)
        env.router.set_weight(route="iris", canary_weight=50)
        wait_pool(env, "iris-http-canary", 1)
        while env.router.observed_weight(route="iris") != 50:
            time.sleep(0.1)
        assert versions(env, 40) == Counter({"1": 20, "2": 20})

        # promotion mechanics under load: stable swaps to v2, then traffic back to stable
        traffic = ClientTraffic(f"http://127.0.0.1:{env.router.http_port}/v2/models/iris/"
                                "infer", BODY, threads=2, max_seconds=40).start()
        env.scale("iris", "stable", ref=v2, replicas=2)  # new ones ready before old ones go
        wait_pool(env, "iris-http-stable", 2)
        env.router.set_weight(route="iris", canary_weight=0)
        while env.router.observed_weight(route="iris") != 0:
            time.sleep(0.1)
        env.scale("iris", "canary", ref=v2, replicas=0)
        results = traffic.stop()
        assert set(results) == {200} and results[200] > 200, results
        assert versions(env, 20) == Counter({"2": 20})
    finally:
        env.stop()
    assert all(not i.alive() for t in env.tracks.values() for i in t.instances)
