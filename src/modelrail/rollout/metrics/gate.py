"""ModelGateProvider: does the canary answer like stable? (What generic rollout tools never
check: a model can be fast and error-free but wrong.)

Replays a validation sample (the registry's held-out rows, or mirrored live inputs) to both
tracks over OIP v2 REST in batches and compares the answers: for classifiers the share of
rows whose label differs and the total-variation distance between the two predicted class
distributions; for regressors the share of rows differing by more than `tolerance`
(relative) and the distance between the two outputs' decile histograms. Returns a
GateSample; the analysis decides.

The rollout controller's ModelGate (ports.py): it calls `compare` with one ready instance of
each track at the end of every analysis interval.
"""

from __future__ import annotations

from collections import Counter

import httpx
import numpy as np
import numpy.typing as npt

from modelrail.rollout.core.analysis import GateSample
from modelrail.rollout.ports import GateEndpoint, ModelGate

TASKS = ("classification", "regression")  # what a model card's `task` may be


class ModelGateProvider:
    """Replays one validation sample (`rows`) to both sides of each comparison."""

    def __init__(self, rows: npt.NDArray[np.float64], *, task: str, batch: int = 256,
                 tolerance: float = 0.05, timeout: float = 10.0) -> None:
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError("the validation sample must be a non-empty 2-D array")
        if task not in TASKS:
            raise ValueError(f"unknown model task {task!r}; known: {', '.join(TASKS)}")
        self.rows = rows
        self.task = task
        self.batch = batch
        self.tolerance = tolerance
        self.timeout = timeout

    def compare(self, *, stable: GateEndpoint, canary: GateEndpoint) -> GateSample | None:
        """None when either side could not answer (no data, never success)."""
        a = self._answers(stable)
        b = self._answers(canary)
        if a is None or b is None or a.shape != b.shape:
            return None
        if self.task == "classification":
            differ = int(np.sum(a != b))
            distance = _total_variation(Counter(a.tolist()), Counter(b.tolist()))
        else:
            fa, fb = a.astype(np.float64), b.astype(np.float64)
            scale = np.maximum(np.abs(fa), 1e-9)
            differ = int(np.sum(np.abs(fa - fb) / scale > self.tolerance))
            edges = np.quantile(fa, np.linspace(0.1, 0.9, 9))
            distance = _total_variation(Counter(np.searchsorted(edges, fa).tolist()),
                                        Counter(np.searchsorted(edges, fb).tolist()))
        return GateSample(compared=int(a.shape[0]), disagreements=differ, distance=distance,
                          complete=int(a.shape[0]) == int(self.rows.shape[0]))

    def _answers(self, ep: GateEndpoint) -> npt.NDArray[np.generic] | None:
        output = "label" if self.task == "classification" else "predictions"
        parts: list[npt.NDArray[np.generic]] = []
        url = f"{ep.url}/v2/models/{ep.model}/versions/{ep.version}/infer"
        with httpx.Client(timeout=self.timeout) as client:
            for start in range(0, self.rows.shape[0], self.batch):
                chunk = self.rows[start:start + self.batch]
                body = {"inputs": [{"name": "input", "datatype": "FP64",
                                    "shape": list(chunk.shape),
                                    "data": chunk.reshape(-1).tolist()}],
                        "outputs": [{"name": output}]}
                try:
                    r = client.post(url, json=body)
                except httpx.HTTPError:
                    return None
                if r.status_code != 200:
                    return None
                parts.append(np.asarray(r.json()["outputs"][0]["data"]))
        return np.concatenate(parts)


def _total_variation(p: Counter[object], q: Counter[object]) -> float:
    n_p, n_q = sum(p.values()), sum(q.values())
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p[k] / n_p - q[k] / n_q) for k in keys)


def _check_gate(gate: ModelGateProvider) -> ModelGate:
    return gate  # mypy checks that ModelGateProvider implements the ModelGate port
