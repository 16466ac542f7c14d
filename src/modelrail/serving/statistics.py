"""The statistics extension (Triton's, which tritonclient's `get_inference_statistics`
calls): per model version, request counts and cumulative durations, read from the same
Prometheus values as /metrics so every worker is included.

Called by the REST app (`GET /v2/models[/{name}[/versions/{v}]]/stats`) and the gRPC
servicer (`ModelStatistics`); both encode the `ModelStats` built here. Figures of other
workers trail by at most metrics.FLUSH_SECONDS. Queueing is not measured separately: a
request is never queued apart from the event loop, so `queue` is reported as zero.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from modelrail.serving import metrics
from modelrail.serving.repository import LoadedModel

STATS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0


@dataclass
class ModelStats:
    """One model version's figures since the server started."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # rows inferred
    execution_count: int = 0  # onnxruntime runs (one per successful request)
    durations: dict[str, Duration] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Triton's REST form."""
        return {
            "name": self.name, "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {s: {"count": d.count, "ns": d.ns}
                                for s, d in ((s, self.durations.get(s, Duration()))
                                             for s in STATS)},
            "batch_stats": [],
        }


def collect(models: list[LoadedModel]) -> list[ModelStats]:
    """Statistics of `models` (in that order) from every worker's metric values."""
    sums: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
    rows: dict[tuple[str, str], float] = defaultdict(float)
    last: dict[tuple[str, str], float] = {}
    for family in metrics.registry().collect():
        for s in family.samples:
            key = (s.labels.get("model", ""), s.labels.get("version", ""))
            if s.name == "modelrail_inference_stat_seconds_count":
                sums[(*key, s.labels["stat"])][0] += s.value
            elif s.name == "modelrail_inference_stat_seconds_sum":
                sums[(*key, s.labels["stat"])][1] += s.value
            elif s.name == "modelrail_inference_rows_total":
                rows[key] += s.value
            elif s.name == "modelrail_last_inference_timestamp_seconds":
                last[key] = max(last.get(key, 0.0), s.value)
    out = []
    for m in models:
        key = (m.name, m.version)
        durations = {stat: Duration(count=int(c), ns=int(sec * 1e9))
                     for (n, v, stat), (c, sec) in sums.items() if (n, v) == key}
        out.append(ModelStats(
            name=m.name, version=m.version, last_inference_ms=int(last.get(key, 0.0) * 1000),
            inference_count=int(rows.get(key, 0.0)),
            execution_count=durations.get("compute_infer", Duration()).count,
            durations=durations))
    return out
