"""ServiceModelGate: the ModelGate (ports.py) of the Kubernetes platform — the validation
sample replayed to the stable and canary Services, compared by the ModelGateProvider
(metrics/gate.py).

The two things it needs are read in the cluster, never guessed: the rows from ConfigMap
`<model>-validation` (kube/platform.py `validation_sample`), and the model's task
(classification or regression) from the stable Service's OIP model metadata — its outputs
name `label` or `predictions` (asked once per model: a model's task does not change between
versions). When either is missing the gate answers None (no data, never success: the
analysis holds) and says why as a Diagnosis, which the operator writes as a status
condition and a Warning event. The operator (kube/operator.py) builds it over the platform.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx
import numpy as np

from modelrail.rollout.core.analysis import GateSample
from modelrail.rollout.kube.platform import InvalidObjectError
from modelrail.rollout.kube.status import (
    MODEL_TASK_KNOWN,
    VALIDATION_SAMPLE,
    Diagnoses,
    Diagnosis,
)
from modelrail.rollout.metrics.gate import ModelGateProvider
from modelrail.rollout.ports import GateEndpoint, ModelGate

TASKS = {"label": "classification", "predictions": "regression"}  # output name → task


class SampleSource(Protocol):
    """Where the validation sample is (kube/platform.py KubePlatform)."""

    def validation_sample(self, model: str) -> list[list[float]]:
        """The model's validation rows; InvalidObjectError when there are none."""


class ServiceModelGate:
    """The model gate over in-cluster Services."""

    def __init__(self, samples: SampleSource, *, batch: int = 64,
                 timeout: float = 5.0) -> None:
        self.samples = samples
        self.batch = batch
        self.timeout = timeout
        self._tasks: dict[str, str] = {}  # model → its task, once the metadata said it
        self._diagnoses: dict[str, dict[str, Diagnosis | None]] = {}

    def compare(self, *, stable: GateEndpoint, canary: GateEndpoint) -> GateSample | None:
        """Both Services' answers to the sample, compared; None (with a Diagnosis) when
        the sample or the task is unknown, or a side did not answer."""
        model = stable.model
        found: dict[str, Diagnosis | None] = {VALIDATION_SAMPLE: None, MODEL_TASK_KNOWN: None}
        rows: list[list[float]] | None = None
        try:
            rows = self.samples.validation_sample(model)
        except InvalidObjectError as exc:
            found[VALIDATION_SAMPLE] = Diagnosis(
                VALIDATION_SAMPLE, "NoValidationSample",
                f"the model gate cannot pass: {exc}")
        task, why = self._task(stable)
        if task is None:
            found[MODEL_TASK_KNOWN] = Diagnosis(
                MODEL_TASK_KNOWN, "ModelTaskUnknown",
                f"the model gate holds: the task of {model} (classification or "
                f"regression) is unknown, {why}; it is read from the stable Service's OIP "
                "metadata, never guessed")
        self._diagnoses[model] = found
        if rows is None or task is None:
            return None
        provider = ModelGateProvider(np.asarray(rows, dtype=np.float64), task=task,
                                     batch=self.batch)
        return provider.compare(stable=stable, canary=canary)

    def diagnoses(self, model: str) -> Diagnoses:
        """What the last comparison for `model` found missing (empty before the first)."""
        return dict(self._diagnoses.get(model, {}))

    def _task(self, stable: GateEndpoint) -> tuple[str | None, str]:
        if stable.model in self._tasks:
            return self._tasks[stable.model], ""
        url = f"{stable.url}/v2/models/{stable.model}"
        try:
            r = httpx.get(url, timeout=self.timeout)
            meta: Any = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as exc:
            return None, f"GET {url} failed ({type(exc).__name__}: {exc})"
        if not isinstance(meta, dict):
            return None, f"GET {url} answered {r.status_code}, not model metadata"
        outputs = {o.get("name") for o in meta.get("outputs") or [] if isinstance(o, dict)}
        tasks = {TASKS[name] for name in outputs if name in TASKS}
        if len(tasks) != 1:
            return None, (f"the metadata at {url} names outputs {sorted(map(str, outputs))}, "
                          "not one of 'label' (classification) or 'predictions' (regression)")
        self._tasks[stable.model] = task = tasks.pop()
        return task, ""


# mypy checks that the gate implements its port
_check_gate: type[ModelGate] = ServiceModelGate
