"""TraefikRouter against real servers: weights split both protocols as asked (verified on
Traefik's API, not assumed), an instance that is not ready gets nothing, and weight changes
under continuous load lose no request."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from modelrail.processes import free_port, stop
from modelrail.rollout.routers.nop import NopRouter
from modelrail.rollout.routers.traefik import TraefikRouter
from tests.conftest import Example, Server, start_server

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}


def ports(s: Server) -> tuple[int, int]:
    return int(s.http_url.rsplit(":", 1)[1]), int(s.grpc_target.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def servers(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
            ) -> Iterator[dict[str, Server]]:
    d = tmp_path_factory.mktemp("router")
    out = {"stable": start_server(["iris:1"], d), "canary": start_server(["iris:2"], d)}
    yield out
    for s in out.values():
        stop(s.proc)


@pytest.fixture
def router(tmp_path: Path) -> Iterator[TraefikRouter]:
    r = TraefikRouter(http_port=free_port(), grpc_port=free_port(), api_port=free_port(),
                      workdir=tmp_path / "traefik")
    r.start()
    yield r
    r.stop()


def wait_weight(r: TraefikRouter, weight: int, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if r.observed_weight(route="iris") == weight:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"weight {weight} never observed")


def wait_up(r: TraefikRouter, service: str, n: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"http://127.0.0.1:{r.api_port}/api/http/services/{service}@file"
                           ).json().get("serverStatus", {})
        if list(status.values()).count("UP") == n:
            return
        time.sleep(0.2)
    raise AssertionError(f"{service}: {n} servers never UP")


def test_weights_split_both_protocols(router: TraefikRouter,
                                      servers: dict[str, Server]) -> None:
    router.set_pools(route="iris", stable=[ports(servers["stable"])],
                     canary=[ports(servers["canary"])])
    router.set_weight(route="iris", canary_weight=30)
    wait_weight(router, 30)
    for proto in ("http", "grpc"):
        wait_up(router, f"iris-{proto}-stable", 1)
        wait_up(router, f"iris-{proto}-canary", 1)
    seen: Counter[str] = Counter()
    with httpx.Client() as client:
        for _ in range(200):
            r = client.post(f"http://127.0.0.1:{router.http_port}/v2/models/iris/infer",
                            json=BODY)
            assert r.status_code == 200
            seen[r.json()["model_version"]] += 1
    grpc_seen: Counter[str] = Counter()
    client_g = tgrpc.InferenceServerClient(f"127.0.0.1:{router.grpc_port}")
    for _ in range(200):
        inp = tgrpc.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(np.array([BODY["inputs"][0]["data"]], dtype=np.float32))
        grpc_seen[client_g.infer("iris", [inp]).get_response().model_version] += 1
    # Traefik's weighted round robin is deterministic: 30% exactly over whole cycles
    assert seen == Counter({"1": 140, "2": 60})
    assert grpc_seen == Counter({"1": 140, "2": 60})


def test_header_requests_reach_the_canary_at_weight_0_on_both_protocols(
        router: TraefikRouter, servers: dict[str, Server]) -> None:
    """The rollout's headerRoute: with the header, every request (REST and gRPC) reaches
    the canary at weight 0; without it, none does; turned back, the header means nothing."""
    header = ("x-model-cohort", "canary")
    router.set_pools(route="iris", stable=[ports(servers["stable"])],
                     canary=[ports(servers["canary"])])
    router.set_weight(route="iris", canary_weight=0)
    wait_weight(router, 0)
    router.set_header_route(route="iris", header=header, to_canary=True)
    deadline = time.monotonic() + 10
    while not router.observed_header(route="iris"):
        assert time.monotonic() < deadline, "the header routers were never loaded"
        time.sleep(0.1)
    for proto in ("http", "grpc"):
        wait_up(router, f"iris-{proto}-canary", 1)

    def rest(headers: dict[str, str]) -> Counter[str]:
        seen: Counter[str] = Counter()
        with httpx.Client() as client:
            for _ in range(50):
                r = client.post(f"http://127.0.0.1:{router.http_port}/v2/models/iris/infer",
                                json=BODY, headers=headers)
                assert r.status_code == 200
                seen[r.json()["model_version"]] += 1
        return seen

    def grpc(headers: dict[str, str]) -> Counter[str]:
        seen: Counter[str] = Counter()
        client = tgrpc.InferenceServerClient(f"127.0.0.1:{router.grpc_port}")
        for _ in range(50):
            inp = tgrpc.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(np.array([BODY["inputs"][0]["data"]], dtype=np.float32))
            seen[client.infer("iris", [inp], headers=headers).get_response()
                 .model_version] += 1
        client.close()
        return seen

    with_header = {header[0]: header[1]}
    assert rest(with_header) == grpc(with_header) == Counter({"2": 50})
    assert rest({}) == grpc({}) == Counter({"1": 50})
    assert rest({header[0]: "other"}) == Counter({"1": 50})  # the exact value only
    router.set_header_route(route="iris", header=header, to_canary=False)
    deadline = time.monotonic() + 10
    while router.observed_header(route="iris"):
        assert time.monotonic() < deadline, "the header routers were never removed"
        time.sleep(0.1)
    assert rest(with_header) == grpc(with_header) == Counter({"1": 50})


def test_instance_that_is_not_ready_gets_nothing(router: TraefikRouter,
                                                 servers: dict[str, Server],
                                                 tmp_path: Path) -> None:
    unready = start_server(["iris:2"], tmp_path, wait=False,
                           extra_env={"MODELRAIL_FAULTS": json.dumps(
                               {"iris:2": {"never_ready": True}})})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it is up (but unready)
            try:
                if httpx.get(f"{unready.http_url}/v2/health/live").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        router.set_pools(route="iris", stable=[ports(servers["stable"])],
                         canary=[ports(servers["canary"]), ports(unready)])
        router.set_weight(route="iris", canary_weight=50)
        wait_weight(router, 50)
        wait_up(router, "iris-http-canary", 1)
        wait_up(router, "iris-grpc-canary", 1)
        time.sleep(2.5)  # a few health-check intervals: the unready one stays DOWN
        status = httpx.get(f"http://127.0.0.1:{router.api_port}/api/http/services/"
                           "iris-grpc-canary@file").json()["serverStatus"]
        assert sorted(status.values()) == ["DOWN", "UP"]
        codes = Counter(httpx.post(f"http://127.0.0.1:{router.http_port}/v2/models/iris/"
                                   "infer", json=BODY).status_code for _ in range(60))
        assert codes == Counter({200: 60})
    finally:
        stop(unready.proc)


def test_weight_changes_under_load_lose_nothing(router: TraefikRouter,
                                                servers: dict[str, Server]) -> None:
    router.set_pools(route="iris", stable=[ports(servers["stable"])],
                     canary=[ports(servers["canary"])])
    router.set_weight(route="iris", canary_weight=0)
    wait_weight(router, 0)
    wait_up(router, "iris-http-canary", 1)
    results: Counter[int] = Counter()
    stop_at = time.monotonic() + 8.0  # bounded load, loopback only

    def load() -> None:
        with httpx.Client() as client:
            while time.monotonic() < stop_at:
                try:
                    results[client.post(f"http://127.0.0.1:{router.http_port}/v2/models/"
                                        "iris/infer", json=BODY, timeout=5).status_code] += 1
                except httpx.HTTPError:
                    results[-1] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    propagation = []
    for w in (10, 50, 100, 25, 0):
        router.set_weight(route="iris", canary_weight=w)
        propagation.append(wait_weight(router, w))
    for t in threads:
        t.join(15)
    assert set(results) == {200} and results[200] > 100, results
    assert max(propagation) < 10.0


def test_nop_router_applies_at_once() -> None:
    r = NopRouter()
    assert r.observed_weight(route="iris") is None
    r.set_weight(route="iris", canary_weight=40)
    assert r.observed_weight(route="iris") == 40 and r.calls == [("iris", 40)]
