"""Locust as a subprocess against a real server, both protocols. The LocustRunner of the
rollout controller: REST and gRPC side by side, polled without waiting, a canary that errors
shows failures, a run that fails to run is named in Locust's own words, an unknown handle is
lost, cancel leaves no process. The blocking run_load (the Kubernetes load Job): a load
test that sent nothing fails the step (Flagger issue 931); bad arguments are refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from modelrail.errors import InvalidInputError
from modelrail.processes import stop
from modelrail.rollout.core.analysis import LoadSample, Measurements, Status, TrafficSample, analyse
from modelrail.rollout.load.locust import LocustRunner, run_load
from modelrail.rollout.ports import LoadError, LoadLostError, LoadTarget
from tests.conftest import Example, Server, start_server
from tests.rollout.core.test_engine import GOOD, SPEC

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flaky(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Server]:
    # unversioned requests reach the last version, 2; version 1 fails half its requests
    srv = start_server(["iris:1", "iris:2"], tmp_path_factory.mktemp("load"),
                       extra_env={"MODELRAIL_FAULTS": '{"iris:1": {"error_rate": 0.5}}'})
    yield srv
    stop(srv.proc)


def rows(examples: dict[str, Example]) -> list[list[float]]:
    return [[float(v) for v in r] for r in examples["iris:1"].split.X_test[:20]]


def target(server: Server, version: str) -> LoadTarget:
    return LoadTarget(model="iris", version=version, http_url=server.http_url,
                      grpc_target=server.grpc_target, seconds=2, users=2)


def finish(runner: LocustRunner, handle: str, timeout: float = 60.0) -> LoadSample:
    deadline = time.monotonic() + timeout
    while (sample := runner.result(handle=handle)) is None:
        assert time.monotonic() < deadline, "the load run never finished"
        time.sleep(0.2)
    return sample


def locust_pids(handle: str) -> list[int]:
    """Processes whose command line names the run (its work folder does)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and handle.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_rest_and_grpc_run_side_by_side(flaky: Server, examples: dict[str, Example]) -> None:
    runner = LocustRunner(rows(examples))
    try:
        healthy = runner.start(target=target(flaky, "2"))
        started = time.monotonic()
        assert runner.result(handle=healthy) is None  # still running: no waiting
        assert time.monotonic() - started < 0.5
        good = finish(runner, healthy)
        # REST (unversioned) reaches version 2, gRPC names version 1, which errors
        bad = finish(runner, runner.start(target=target(flaky, "1")))
    finally:
        runner.close()
    assert good.requests > 100 and good.failures == 0 and good.error is None
    assert 0 < bad.failures < bad.requests  # the gRPC leg's failures, next to REST's passes
    with pytest.raises(LoadLostError):
        runner.result(handle=healthy)  # read once, then forgotten


def test_cancel_ends_the_run_and_forgets_it(flaky: Server,
                                            examples: dict[str, Example]) -> None:
    runner = LocustRunner(rows(examples))
    handle = runner.start(target=replace(target(flaky, "2"), seconds=60))
    try:
        deadline = time.monotonic() + 10
        while len(locust_pids(handle)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # a process's command line shows once it has exec'd
        assert len(locust_pids(handle)) == 2  # REST and gRPC
    finally:
        runner.cancel(handle=handle)
    assert locust_pids(handle) == []
    runner.cancel(handle=handle)  # idempotent
    with pytest.raises(LoadLostError, match="restarted controller"):
        runner.result(handle=handle)
    with pytest.raises(LoadLostError):
        runner.result(handle="locust-from-a-dead-process")


def test_a_run_that_fails_to_run_is_named(flaky: Server, examples: dict[str, Example]) -> None:
    runner = LocustRunner(rows(examples))
    handle = runner.start(target=replace(target(flaky, "2"), users=-1, grpc_target=None))
    with pytest.raises(LoadError, match=r"Locust \(rest\) failed to run.*must be >= 0"):
        finish(runner, handle)
    assert locust_pids(handle) == []
    with pytest.raises(LoadLostError):
        runner.result(handle=handle)


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
    with pytest.raises(InvalidInputError, match="no rows to send"):
        LocustRunner([])
