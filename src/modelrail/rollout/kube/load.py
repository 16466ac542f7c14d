"""JobLoadRunner: the LoadRunner (ports.py) of the Kubernetes platform — one Locust Job per
analysis interval, straight at the canary's Service.

`start` creates the Job (infra/manifests.py `load_job`: `python -m modelrail.rollout.load.job`
with the rows of the validation sample, `<model>-validation`); `result` reads the finished
pod's termination message (the run's summary), deletes the Job once read, and raises
LoadError when the Job failed — with the Job's reason and the pod's last words — or
LoadLostError when there is no such Job (an operator restarted mid-run: the controller
starts the interval again); `cancel` deletes it. With no validation sample there is nothing
to send: no Job is created and the run is LoadUnavailableError — no data, which holds the
rollout until its deadline (then Failed, traffic on stable), never an empty sample.

The operator (kube/operator.py) builds it over the KubePlatform, which makes the calls.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any, Protocol

from modelrail.infra import manifests
from modelrail.infra.config import StackConfig
from modelrail.rollout.core.analysis import LoadSample
from modelrail.rollout.kube.platform import InvalidObjectError
from modelrail.rollout.ports import (
    LoadError,
    LoadLostError,
    LoadRunner,
    LoadTarget,
    LoadUnavailableError,
)


class JobPlatform(Protocol):
    """What the runner needs of the platform (kube/platform.py KubePlatform)."""

    cfg: StackConfig

    def create_job(self, body: dict[str, Any]) -> None:
        """Create a Job from its manifest."""

    def job(self, name: str) -> dict[str, Any] | None:
        """The Job `name` as a dict, or None."""

    def job_pods(self, name: str) -> list[dict[str, Any]]:
        """The pods the Job ran, as dicts."""

    def delete_job(self, name: str) -> None:
        """Delete the Job and its pods (idempotent)."""

    def validation_sample(self, model: str) -> list[list[float]]:
        """The model's validation rows; InvalidObjectError when there are none."""


class JobLoadRunner:
    """Locust as Kubernetes Jobs, REST straight at the canary (the operator sets
    ControllerSettings.grpc_load off: the Job runs one protocol)."""

    def __init__(self, platform: JobPlatform) -> None:
        self.platform = platform
        self._refused: dict[str, str] = {}  # handle → why no Job was started for it

    def start(self, *, target: LoadTarget) -> str:
        """Create the interval's Job; returns its name."""
        if target.grpc_target is not None:
            raise ValueError("the load Job sends OIP REST only: build the controller with "
                             "ControllerSettings(grpc_load=False)")
        name = f"{target.model}-load-{uuid.uuid4().hex[:10]}"
        try:
            rows = self.platform.validation_sample(target.model)
        except InvalidObjectError as exc:
            self._refused[name] = f"no load Job started: {exc}"
            return name
        self.platform.create_job(manifests.load_job(
            self.platform.cfg, name=name, model=target.model, version=target.version,
            target=target.http_url, rows=rows, seconds=max(1, math.ceil(target.seconds)),
            users=target.users))
        return name

    def result(self, *, handle: str) -> LoadSample | None:
        """The finished Job's sample; None while it runs; LoadError if it failed,
        LoadLostError if there is no such Job."""
        if handle in self._refused:
            raise LoadUnavailableError(self._refused.pop(handle))
        job = self.platform.job(handle)
        if job is None:
            raise LoadLostError(f"load Job {handle} does not exist (deleted, or never "
                                "created by this operator)")
        st = job.get("status") or {}
        if not (st.get("succeeded") or st.get("failed")):
            return None
        message = _termination_message(self.platform.job_pods(handle))
        self.platform.delete_job(handle)  # read: its result lives on in the verdict
        if st.get("failed"):
            raise LoadError(f"load Job {handle} failed ({_failure_reason(st)})"
                            + (f": {message[-500:]}" if message else ""))
        try:
            summary = json.loads(message or "")
            return LoadSample(requests=int(summary["requests"]),
                              failures=int(summary["failures"]))
        except (ValueError, TypeError, KeyError):
            raise LoadError(f"load Job {handle} succeeded without a readable summary in "
                            f"its termination message: {(message or '(none)')[:300]}"
                            ) from None

    def cancel(self, *, handle: str) -> None:
        """Delete the Job (and its pod); idempotent."""
        self._refused.pop(handle, None)
        self.platform.delete_job(handle)


def _termination_message(pods: list[dict[str, Any]]) -> str | None:
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            if terminated.get("message"):
                return str(terminated["message"])
    return None


def _failure_reason(status: dict[str, Any]) -> str:
    """The Job controller's reason (BackoffLimitExceeded, DeadlineExceeded, …)."""
    for c in status.get("conditions") or []:
        if c.get("type") == "Failed" and c.get("status") == "True":
            return ": ".join(str(c[k]) for k in ("reason", "message") if c.get(k))
    return "the Job reports a failed pod"


# mypy checks that the runner implements its port
_check_runner: type[LoadRunner] = JobLoadRunner
