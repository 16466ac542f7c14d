"""The local platform with real processes: instances behind Traefik, a crashed instance
restarted by the supervisor and let into the pool once ready, a canary asked for through the
Platform port (which returns at once) converging over supervise() calls, and a promotion
under load — stable swapped to the new version, traffic back on stable, canary removed —
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
from modelrail.rollout.local.platform import LocalEnvironment, Stage
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
        env.scale("iris", "stable", ref=ModelRef("iris", "1"), replicas=2)
        env.router.set_weight(route="iris", canary_weight=0)
        wait_pool(env, "iris-http-stable", 2)
        assert versions(env, 20) == Counter({"1": 20})
        an_instance_dies(env)
        a_canary_through_the_port(env)
        a_promotion_under_load(env)
    finally:
        env.stop()
    assert all(not i.alive() for t in env.tracks.values() for i in t.instances)


def an_instance_dies(env: LocalEnvironment) -> None:
    """The supervisor starts a new one, which joins the pool once ready."""
    victim = env.track("iris", "stable").instances[0]
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    restarted = env.supervise()
    assert len(restarted) == 1 and f":{victim.http_port}" in restarted[0]
    fresh = env.track("iris", "stable").instances[0]
    assert fresh.restarts == 1 and fresh.stage is Stage.STARTING
    assert env.view(model="iris").stable.scaling  # one wanted instance is not ready
    assert wait_ready(fresh.url, timeout=90, proc=fresh.proc)
    env.settle("iris", "stable")  # the daemon's loop calls supervise() every second
    assert fresh.stage is Stage.SERVING
    wait_pool(env, "iris-http-stable", 2)
    assert env.supervise() == []


def a_canary_through_the_port(env: LocalEnvironment) -> None:
    """Asked for at once; ready, and in the pool, over supervise() calls."""
    started = time.monotonic()
    env.run_canary(model="iris", version="2", weight=50)
    view = env.view(model="iris")
    assert time.monotonic() - started < 0.5
    assert view.canary.version == "2" and view.canary.scaling and not view.canary.ready
    assert view.canary.http_url is None
    env.settle("iris", "canary")
    view = env.view(model="iris")
    canary = env.track("iris", "canary").instances[0]
    assert view.canary.ready and not view.canary.scaling
    assert (view.canary.http_url, view.canary.grpc_target) == (canary.url, canary.grpc_target)
    assert view.canary.instance_urls == (canary.url,)
    assert view.entry_url == f"http://127.0.0.1:{env.router.http_port}"
    env.router.set_weight(route="iris", canary_weight=50)
    wait_pool(env, "iris-http-canary", 1)
    while env.router.observed_weight(route="iris") != 50:
        time.sleep(0.1)
    assert versions(env, 40) == Counter({"1": 20, "2": 20})


def a_promotion_under_load(env: LocalEnvironment) -> None:
    """Stable swaps to v2 (new instances serve before old ones go), traffic back to
    stable, the canary removed once no traffic reaches it: no request fails."""
    traffic = ClientTraffic(f"http://127.0.0.1:{env.router.http_port}/v2/models/iris/"
                            "infer", BODY, threads=2, max_seconds=40).start()
    env.promote(model="iris", version="2")
    assert env.view(model="iris").stable.version == "2"
    assert not env.view(model="iris").stable.ready  # until the new instances serve
    env.settle("iris", "stable")
    assert env.view(model="iris").stable.ready
    wait_pool(env, "iris-http-stable", 2)
    env.router.set_weight(route="iris", canary_weight=0)
    while env.router.observed_weight(route="iris") != 0:
        time.sleep(0.1)
    env.remove_canary(model="iris")
    assert env.view(model="iris").canary.version == "2"  # until its instance has stopped
    env.settle("iris", "canary")
    assert env.view(model="iris").canary.version is None
    results = traffic.stop()
    assert set(results) == {200} and results[200] > 200, results
    assert versions(env, 20) == Counter({"2": 20})
