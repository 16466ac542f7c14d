"""JobLoadRunner (kube/load.py) over a hand-written platform fake: the Job it creates, a
finished Job's termination message read as the sample, a failed Job raised as a LoadError
with its reason (not an empty sample), an unknown Job as LoadLostError, no validation
sample as a LoadError naming the ConfigMap (and no Job), cancel deleting the Job. The
operator tests (test_operator.py) run the same Jobs for real on KMock."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelrail.infra import manifests
from modelrail.infra.config import StackConfig
from modelrail.rollout.core.analysis import LoadSample
from modelrail.rollout.kube.load import JobLoadRunner
from modelrail.rollout.kube.platform import InvalidObjectError
from modelrail.rollout.ports import LoadError, LoadLostError, LoadTarget
from tests.rollout.kube.conftest import stack

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
TARGET = LoadTarget(model="iris", version="2", http_url="http://iris-canary.ns.svc:3000",
                    grpc_target=None, seconds=1.5, users=2)


class FakeJobs:
    """The runner's view of KubePlatform: Jobs and pods as dicts, a sample or none."""

    def __init__(self, cfg: StackConfig, rows: list[list[float]] | None = ROWS) -> None:
        self.cfg = cfg
        self.rows = rows
        self.jobs: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, list[dict[str, Any]]] = {}
        self.deleted: list[str] = []

    def create_job(self, body: dict[str, Any]) -> None:
        name = body["metadata"]["name"]
        assert name not in self.jobs, f"Job {name} created twice"
        self.jobs[name] = body

    def job(self, name: str) -> dict[str, Any] | None:
        return self.jobs.get(name)

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        return self.pods.get(name, [])

    def delete_job(self, name: str) -> None:
        self.deleted.append(name)
        self.jobs.pop(name, None)

    def validation_sample(self, model: str) -> list[list[float]]:
        if self.rows is None:
            raise InvalidObjectError("no validation sample: the ConfigMap does not exist",
                                     where=f"ConfigMap ns/{model}-validation, key rows.json")
        return self.rows

    def finish(self, name: str, *, succeeded: bool, message: str | None,
               conditions: list[dict[str, str]] | None = None) -> None:
        """What the Job controller and the kubelet leave behind."""
        key = "succeeded" if succeeded else "failed"
        self.jobs[name]["status"] = {key: 1, "conditions": conditions or []}
        terminated: dict[str, Any] = {"exitCode": 0 if succeeded else 1}
        if message is not None:
            terminated["message"] = message
        self.pods[name] = [{"status": {"containerStatuses": [
            {"name": "locust", "state": {"terminated": terminated}}]}}]


@pytest.fixture()
def jobs() -> FakeJobs:
    return FakeJobs(stack())


def test_a_finished_job_is_the_sample_and_is_deleted_once_read(jobs: FakeJobs) -> None:
    runner = JobLoadRunner(jobs)
    handle = runner.start(target=TARGET)
    body = jobs.jobs[handle]
    assert body == manifests.load_job(jobs.cfg, name=handle, model="iris", version="2",
                                      target=TARGET.http_url, rows=ROWS, seconds=2, users=2)
    assert handle.startswith("iris-load-")
    assert body["metadata"]["labels"]["app.kubernetes.io/component"] == manifests.LOADTEST
    assert runner.result(handle=handle) is None  # still running
    jobs.finish(handle, succeeded=True, message=json.dumps(
        {"requests": 420, "failures": 3, "p99_ms": 4.2, "exit_code": 0}))
    assert runner.result(handle=handle) == LoadSample(requests=420, failures=3)
    assert jobs.deleted == [handle]


def test_a_failed_job_is_a_load_error_with_its_reason(jobs: FakeJobs) -> None:
    runner = JobLoadRunner(jobs)
    handle = runner.start(target=TARGET)
    jobs.finish(handle, succeeded=False, message="ConnectError: connection refused",
                conditions=[{"type": "Failed", "status": "True",
                             "reason": "BackoffLimitExceeded",
                             "message": "Job has reached the specified backoff limit"}])
    with pytest.raises(LoadError, match=r"BackoffLimitExceeded.*connection refused") as err:
        runner.result(handle=handle)
    assert not isinstance(err.value, LoadLostError) and handle in str(err.value)
    assert jobs.deleted == [handle]


def test_a_succeeded_job_without_a_summary_is_a_load_error(jobs: FakeJobs) -> None:
    runner = JobLoadRunner(jobs)
    handle = runner.start(target=TARGET)
    jobs.finish(handle, succeeded=True, message=None)
    with pytest.raises(LoadError, match="without a readable summary"):
        runner.result(handle=handle)


def test_an_unknown_job_is_lost(jobs: FakeJobs) -> None:
    with pytest.raises(LoadLostError, match="iris-load-gone"):
        JobLoadRunner(jobs).result(handle="iris-load-gone")


def test_no_validation_sample_fails_the_run_and_starts_no_job() -> None:
    jobs = FakeJobs(stack(), rows=None)
    runner = JobLoadRunner(jobs)
    handle = runner.start(target=TARGET)
    assert jobs.jobs == {}
    with pytest.raises(LoadError, match=r"iris-validation.*no validation sample") as err:
        runner.result(handle=handle)
    assert not isinstance(err.value, LoadLostError)
    # an operator that restarted no longer remembers it: the interval starts again
    with pytest.raises(LoadLostError):
        JobLoadRunner(jobs).result(handle=handle)


def test_cancel_deletes_the_job(jobs: FakeJobs) -> None:
    runner = JobLoadRunner(jobs)
    handle = runner.start(target=TARGET)
    runner.cancel(handle=handle)
    runner.cancel(handle=handle)  # idempotent
    assert jobs.jobs == {} and jobs.deleted == [handle, handle]


def test_grpc_load_is_refused_not_dropped(jobs: FakeJobs) -> None:
    with pytest.raises(ValueError, match="grpc_load=False"):
        JobLoadRunner(jobs).start(target=LoadTarget(
            model="iris", version="2", http_url="http://x", grpc_target="x:8001",
            seconds=1, users=1))
