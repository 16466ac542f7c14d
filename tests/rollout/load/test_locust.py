"""Locust as a subprocess against a real server, both protocols; a canary that errors shows
failures; a load test that sent nothing fails the step (Flagger issue 931)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from modelrail.errors import InvalidInputError
from modelrail.processes import stop
from modelrail.rollout.core.analysis import Measurements, Status, TrafficSample, analyse
from modelrail.rollout.load.locust import run_load
from tests.conftest import Example, Server, start_server
from tests.rollout.core.test_engine import GOOD, SPEC

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flaky(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Server]:
    srv = start_server(["iris:1", "iris:2"], tmp_path_factory.mktemp("load"),
                       extra_env={"MODELRAIL_FAULTS": '{"iris:2": {"error_rate": 0.5}}'})
    yield srv
    stop(srv.proc)


def rows(examples: dict[str, Example]) -> list[list[float]]:
    return [[float(v) for v in r] for r in examples["iris:1"].split.X_test[:20]]


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_load_against_a_healthy_and_a_failing_version(flaky: Server, protocol: str,
                                                      examples: dict[str, Example]) -> None:
    target = flaky.http_url if protocol == "rest" else flaky.grpc_target
    good = run_load(protocol=protocol, target=target, model="iris", version="1",
                    rows=rows(examples), users=2, seconds=2)
    assert good.sample.requests > 50 and good.sample.failures == 0, good.output_tail
    assert good.p99_ms is not None
    bad = run_load(protocol=protocol, target=target, model="iris", version="2",
                   rows=rows(examples), users=2, seconds=2)
    share = bad.sample.failures / bad.sample.requests
    assert 0.3 < share < 0.7, bad  # about half fail, as injected


def test_a_load_test_that_sent_nothing_fails_the_step(flaky: Server,
                                                      examples: dict[str, Example]) -> None:
    idle = run_load(protocol="grpc", target=flaky.grpc_target, model="iris",
                    rows=rows(examples), users=0, seconds=1)
    assert idle.sample.requests == 0
    verdict = analyse(SPEC, replace(GOOD, load=idle.sample))
    assert verdict.status is Status.FAIL and verdict.decisive
    # and with no traffic at all, the interval is never a pass either
    nothing = analyse(SPEC, Measurements(canary=TrafficSample(0, 0, None)))
    assert nothing.status is not Status.PASS


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="unknown load protocol 'udp'"):
        run_load(protocol="udp", target="x", model="iris", rows=[[1.0]])
    with pytest.raises(InvalidInputError, match="no rows to send"):
        run_load(protocol="rest", target="http://127.0.0.1:1", model="iris", rows=[])
