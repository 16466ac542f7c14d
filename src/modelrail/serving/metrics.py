"""Prometheus metrics of the serving path, exposed by BentoML at /metrics.

Built on `bentoml.metrics` (BentoML's drop-in for prometheus_client that sets up
multiprocess mode), so every worker's counts appear in one scrape. Series:
  modelrail_requests_total{model,version,protocol,outcome}
      outcome: HTTP status class (2xx, 4xx, 5xx) or gRPC status code name (OK, INTERNAL, …)
  modelrail_request_duration_seconds{model,version,protocol}   histogram, 50 µs – 10 s
  modelrail_predictions_total{model,version,value}
      classification: value = class label; regression: value = training-target decile
      bin d0…d9 — the prediction distribution the rollout model gate compares
  modelrail_requests_in_flight{protocol}                        gauge, summed over workers
  modelrail_model_info{model,version,sha256,ready}              1 per loaded model
Requests that name no servable model are counted under model="" version="".
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

import modelrail  # noqa: F401  # telemetry off before bentoml loads

# Fine at the low end so a millisecond-level p99 is resolvable, coarse above.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                   0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@cache
def _m() -> dict[str, Any]:
    # Created lazily, on first use inside a worker, as bentoml.metrics requires.
    import bentoml

    return {
        "requests": bentoml.metrics.Counter(
            name="modelrail_requests_total", documentation="Inference requests by outcome",
            labelnames=["model", "version", "protocol", "outcome"]),
        "duration": bentoml.metrics.Histogram(
            name="modelrail_request_duration_seconds",
            documentation="Inference request latency, receipt to reply",
            labelnames=["model", "version", "protocol"], buckets=LATENCY_BUCKETS),
        "predictions": bentoml.metrics.Counter(
            name="modelrail_predictions_total",
            documentation="Predicted classes, or regression outputs by training-decile bin",
            labelnames=["model", "version", "value"]),
        "in_flight": bentoml.metrics.Gauge(
            name="modelrail_requests_in_flight", documentation="Requests being processed",
            labelnames=["protocol"], multiprocess_mode="livesum"),
        "info": bentoml.metrics.Gauge(
            name="modelrail_model_info", documentation="Loaded models (1 each)",
            labelnames=["model", "version", "sha256", "ready"], multiprocess_mode="liveall"),
    }


def http_outcome(status: int) -> str:
    return f"{status // 100}xx"


def observe_request(*, model: str, version: str, protocol: str, outcome: str,
                    seconds: float) -> None:
    m = _m()
    m["requests"].labels(model=model, version=version, protocol=protocol,
                         outcome=outcome).inc()
    m["duration"].labels(model=model, version=version, protocol=protocol).observe(seconds)


def in_flight(protocol: str) -> Any:
    """A gauge child with .inc() / .dec()."""
    return _m()["in_flight"].labels(protocol=protocol)


def observe_predictions(*, model: str, version: str, labels: npt.NDArray[Any] | None,
                        values: npt.NDArray[Any] | None, bins: list[float]) -> None:
    counter = _m()["predictions"]
    if labels is not None:
        uniq, counts = np.unique(labels.reshape(-1), return_counts=True)
        for u, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            text = u.decode() if isinstance(u, bytes) else str(u)
            counter.labels(model=model, version=version, value=text).inc(c)
    elif values is not None and bins:
        idx = np.searchsorted(np.asarray(bins), values.reshape(-1), side="right")
        uniq, counts = np.unique(idx, return_counts=True)
        for u, c in zip(uniq.tolist(), counts.tolist(), strict=True):
            counter.labels(model=model, version=version, value=f"d{u}").inc(c)


def set_model_info(*, model: str, version: str, sha256: str, ready: bool) -> None:
    _m()["info"].labels(model=model, version=version, sha256=sha256,
                        ready=str(ready).lower()).set(1)
