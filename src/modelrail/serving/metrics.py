"""Prometheus metrics of the serving path, exposed by BentoML at /metrics.

Served by the REST app at /metrics (BentoML's own request metrics are switched off: they
duplicated these and cost a multiprocess write per request). Series (every worker's counts
appear in one scrape, through prometheus_client's multiprocess mode, which BentoML sets up
for its workers):
  modelrail_requests_total{model,version,protocol,outcome,route}
      outcome: HTTP status class (2xx, 4xx, 5xx) or gRPC status code name (OK, INTERNAL, …)
      route: "header" for requests carrying the rollout's headerRoute
      (MODELRAIL_HEADER_ROUTE: testers, a cohort), "shadow" for requests another server
      mirrored here (header x-modelrail-shadow, shadow.py), "split" for the others — a
      rollout analyses them apart
  modelrail_request_duration_seconds{model,version,protocol,route}   histogram, 50 µs – 10 s
  modelrail_predictions_total{model,version,value}
      classification: value = class label; regression: value = training-target decile
      bin d0…d9 — the prediction distribution the rollout model gate compares
  modelrail_requests_in_flight{protocol}                        gauge, summed over workers
  modelrail_model_info{model,version,sha256,ready}              1 per loaded model
  modelrail_inference_stat_seconds{model,version,stat}          summary (_count, _sum);
      stat: success / fail (whole requests), compute_input / compute_infer /
      compute_output (phases of successful ones) — what the statistics extension reports
  modelrail_inference_rows_total{model,version}                 rows inferred
  modelrail_last_inference_timestamp_seconds{model,version}     gauge, max over workers
  modelrail_connections_closed_total{reason}                    HTTP connections the server
      closed on a slow or surplus client (header_timeout, body_timeout, over_limit)
  modelrail_shadow_requests_total{model,version,outcome}       requests this server
      mirrored to the canary in a shadow phase (MODELRAIL_SHADOW, shadow.py), labelled
      with this server's model and version; outcome: answered (the canary answered and the
      pair was compared), failed (an error, timeout or malformed answer), dropped (the
      mirror's queue was full), off (the gateway sent it back to this version: shadowing
      is off)
  modelrail_shadow_pairs_total{model,version}                   rows compared: this
      server's answer and the canary's to the same input
  modelrail_shadow_disagreements_total{model,version}           compared rows whose answers
      disagree (classification: another label; regression: relative difference > 5%)
  modelrail_shadow_queue_depth                                  gauge, samples waiting to be
      mirrored, summed over workers
Requests that name no servable model are counted under model="" version="": one bounded
label, however many unknown names clients send. Any 5xx or gRPC INTERNAL/UNKNOWN is
counted, unexpected exceptions included (rest.py and grpc_server.py catch them all).

Updates are buffered in plain Python and flushed to the multiprocess files every
FLUSH_SECONDS by `flush_forever` (started in each worker) and before each scrape: a
multiprocess write costs more than the whole inference (measured: 22% of a REST request's
CPU), so a scrape trails the other workers by at most that interval.
"""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from collections import defaultdict
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

# Fine at the low end so a millisecond-level p99 is resolvable, coarse above.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                   0.004, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_SECONDS = 0.1
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))


@cache
def _m() -> dict[str, Any]:
    # Imported on first use, inside a worker: prometheus_client picks multiprocess mode
    # from PROMETHEUS_MULTIPROC_DIR, which BentoML sets only after importing the service.
    import prometheus_client as prom

    return {
        "requests": prom.Counter(
            "modelrail_requests_total", "Inference requests by outcome",
            ["model", "version", "protocol", "outcome", "route"]),
        "duration": prom.Histogram(
            "modelrail_request_duration_seconds", "Inference request latency, receipt to reply",
            ["model", "version", "protocol", "route"], buckets=LATENCY_BUCKETS),
        "predictions": prom.Counter(
            "modelrail_predictions_total",
            "Predicted classes, or regression outputs by training-decile bin",
            ["model", "version", "value"]),
        "in_flight": prom.Gauge(
            "modelrail_requests_in_flight", "Requests being processed", ["protocol"],
            multiprocess_mode="livesum"),
        "info": prom.Gauge(
            "modelrail_model_info", "Loaded models (1 each)",
            ["model", "version", "sha256", "ready"], multiprocess_mode="liveall"),
        "stat": prom.Summary(
            "modelrail_inference_stat_seconds",
            "Inference requests by result (success, fail) and phases of successful ones",
            ["model", "version", "stat"]),
        "rows": prom.Counter(
            "modelrail_inference_rows_total", "Rows inferred", ["model", "version"]),
        "last": prom.Gauge(
            "modelrail_last_inference_timestamp_seconds", "Time of the last inference",
            ["model", "version"], multiprocess_mode="max"),
        "closed": prom.Counter(
            "modelrail_connections_closed_total",
            "HTTP connections closed by the server on a slow or surplus client", ["reason"]),
        "shadow": prom.Counter(
            "modelrail_shadow_requests_total",
            "Requests mirrored to the canary (shadow phase) by outcome",
            ["model", "version", "outcome"]),
        "shadow_pairs": prom.Counter(
            "modelrail_shadow_pairs_total",
            "Rows answered by this server and the canary, compared", ["model", "version"]),
        "shadow_disagreements": prom.Counter(
            "modelrail_shadow_disagreements_total",
            "Compared rows on which the canary's answer disagrees", ["model", "version"]),
        "shadow_queue": prom.Gauge(
            "modelrail_shadow_queue_depth", "Samples waiting to be mirrored",
            multiprocess_mode="livesum"),
    }


class _Buffer:
    """Pending metric updates of this worker (touched only from its event loop)."""

    def __init__(self) -> None:
        # (model, version, protocol, outcome, route)
        self.requests: dict[tuple[str, str, str, str, str], int] = defaultdict(int)
        # (model, version, protocol, route)
        self.buckets: dict[tuple[str, str, str, str], list[int]] = {}
        self.sums: dict[tuple[str, str, str, str], float] = defaultdict(float)
        self.predictions: dict[tuple[str, str, str], int] = defaultdict(int)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.flushed_in_flight: dict[str, int] = {}
        # (model, version, stat) -> [count, seconds]
        self.stats: dict[tuple[str, str, str], list[float]] = {}
        self.rows: dict[tuple[str, str], int] = defaultdict(int)
        self.last: dict[tuple[str, str], float] = {}
        self.closed: dict[str, int] = defaultdict(int)
        # (model, version, outcome)
        self.shadow: dict[tuple[str, str, str], int] = defaultdict(int)
        # (model, version) -> [pairs, disagreements]
        self.shadow_pairs: dict[tuple[str, str], list[int]] = {}
        self.shadow_queue: int | None = None  # None: this worker mirrors nothing
        self.flushed_shadow_queue: int | None = None


_buffer = _Buffer()


def http_outcome(status: int) -> str:
    return f"{status // 100}xx"


SUCCESS_OUTCOMES = ("2xx", "OK")


class _Routing:
    """The rollout's headerRoute (name, value) this server counts apart; None: every
    request is route="split". Set once at start (service.py)."""

    header: tuple[str, str] | None = None


def set_header_route(header: tuple[str, str] | None) -> None:
    _Routing.header = header


def header_route() -> tuple[str, str] | None:
    return _Routing.header


def observe_request(*, model: str, version: str, protocol: str, outcome: str,
                    seconds: float, route: str = "split") -> None:
    _buffer.requests[(model, version, protocol, outcome, route)] += 1
    if model:
        _stat(model, version, "success" if outcome in SUCCESS_OUTCOMES else "fail", seconds)
    key = (model, version, protocol, route)
    counts = _buffer.buckets.get(key)
    if counts is None:
        counts = _buffer.buckets[key] = [0] * len(_BOUNDS)
    counts[bisect.bisect_left(_BOUNDS, seconds)] += 1
    _buffer.sums[key] += seconds


def _stat(model: str, version: str, stat: str, seconds: float) -> None:
    entry = _buffer.stats.get((model, version, stat))
    if entry is None:
        entry = _buffer.stats[(model, version, stat)] = [0, 0.0]
    entry[0] += 1
    entry[1] += seconds


def observe_inference(*, model: str, version: str, rows: int, input_seconds: float,
                      infer_seconds: float, output_seconds: float) -> None:
    """The phases of one successful inference (the statistics extension's figures)."""
    _stat(model, version, "compute_input", input_seconds)
    _stat(model, version, "compute_infer", infer_seconds)
    _stat(model, version, "compute_output", output_seconds)
    _buffer.rows[(model, version)] += rows
    _buffer.last[(model, version)] = time.time()


def connection_closed(reason: str) -> None:
    _buffer.closed[reason] += 1


def observe_shadow(*, model: str, version: str, outcome: str, pairs: int = 0,
                   disagreements: int = 0) -> None:
    """One mirrored request's outcome; with "answered", the rows compared and how many
    disagreed (both series exist from the first answer on, zeros included)."""
    _buffer.shadow[(model, version, outcome)] += 1
    if outcome == "answered":
        entry = _buffer.shadow_pairs.get((model, version))
        if entry is None:
            entry = _buffer.shadow_pairs[(model, version)] = [0, 0]
        entry[0] += pairs
        entry[1] += disagreements


def shadow_queue_depth(depth: int) -> None:
    _buffer.shadow_queue = depth


def request_started(protocol: str) -> None:
    _buffer.in_flight[protocol] += 1


def request_finished(protocol: str) -> None:
    _buffer.in_flight[protocol] -= 1


def observe_predictions(*, model: str, version: str, labels: npt.NDArray[Any] | None,
                        values: npt.NDArray[Any] | None, bins: list[float]) -> None:
    pending = _buffer.predictions
    if labels is not None:
        flat = labels.reshape(-1)
        if flat.size == 1:  # the common single-row request: skip np.unique
            pending[(model, version, _text(flat[0]))] += 1
            return
        if flat.dtype.kind in "iu" and flat.size and flat.min() >= 0 and flat.max() < 4096:
            # class indices (the usual labels): bincount is ~20x cheaper than np.unique
            counts = np.bincount(flat)
            for u in np.flatnonzero(counts).tolist():
                pending[(model, version, str(u))] += int(counts[u])
            return
        uniq, ucounts = np.unique(flat, return_counts=True)
        for u, c in zip(uniq.tolist(), ucounts.tolist(), strict=True):
            pending[(model, version, _text(u))] += int(c)
    elif values is not None and bins:
        idx = np.searchsorted(np.asarray(bins), values.reshape(-1), side="right")
        for i in idx.tolist():
            pending[(model, version, f"d{i}")] += 1


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode()
    return str(v.item() if hasattr(v, "item") else v)


def flush() -> None:
    """Write pending updates to the (multiprocess) Prometheus values."""
    m = _m()
    buf = _buffer
    for (model, version, protocol, outcome, route), n in buf.requests.items():
        m["requests"].labels(model=model, version=version, protocol=protocol,
                             outcome=outcome, route=route).inc(n)
    buf.requests.clear()
    for key, counts in buf.buckets.items():
        model, version, protocol, route = key
        child = m["duration"].labels(model=model, version=version, protocol=protocol,
                                     route=route)
        # Histogram keeps one value per bucket (non-cumulative) and a sum; add to them
        # directly instead of replaying each observation.
        for i, n in enumerate(counts):
            if n:
                child._buckets[i].inc(n)
        child._sum.inc(buf.sums[key])
    buf.buckets.clear()
    buf.sums.clear()
    for (model, version, value), n in buf.predictions.items():
        m["predictions"].labels(model=model, version=version, value=value).inc(n)
    buf.predictions.clear()
    for (model, version, stat), (count, seconds) in buf.stats.items():
        child = m["stat"].labels(model=model, version=version, stat=stat)
        child._count.inc(count)
        child._sum.inc(seconds)
    buf.stats.clear()
    for (model, version), n in buf.rows.items():
        m["rows"].labels(model=model, version=version).inc(n)
    buf.rows.clear()
    for (model, version), when in buf.last.items():
        m["last"].labels(model=model, version=version).set(when)
    buf.last.clear()
    for reason, n in buf.closed.items():
        m["closed"].labels(reason=reason).inc(n)
    buf.closed.clear()
    for (model, version, outcome), n in buf.shadow.items():
        m["shadow"].labels(model=model, version=version, outcome=outcome).inc(n)
    buf.shadow.clear()
    for (model, version), (pairs, differ) in buf.shadow_pairs.items():
        m["shadow_pairs"].labels(model=model, version=version).inc(pairs)
        m["shadow_disagreements"].labels(model=model, version=version).inc(differ)
    buf.shadow_pairs.clear()
    if buf.shadow_queue is not None and buf.shadow_queue != buf.flushed_shadow_queue:
        m["shadow_queue"].set(buf.shadow_queue)
        buf.flushed_shadow_queue = buf.shadow_queue
    for protocol, n in buf.in_flight.items():
        if buf.flushed_in_flight.get(protocol) != n:
            m["in_flight"].labels(protocol=protocol).set(n)
            buf.flushed_in_flight[protocol] = n


async def flush_forever(interval: float = FLUSH_SECONDS) -> None:
    """Flush every `interval` seconds until cancelled (then once more)."""
    try:
        while True:
            await asyncio.sleep(interval)
            flush()
    finally:
        flush()


def registry() -> Any:
    """Every worker's values (multiprocess mode) or this process's (tests, embedding)."""
    import prometheus_client as prom
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        reg = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)  # type: ignore[no-untyped-call]
        return reg
    return prom.REGISTRY


def exposition() -> tuple[bytes, str]:
    """The Prometheus text of every worker. Call `flush()` first, on the event loop that
    records (this may then run in a thread: it only reads the multiprocess files)."""
    import prometheus_client as prom

    return prom.generate_latest(registry()), prom.CONTENT_TYPE_LATEST


def set_model_info(*, model: str, version: str, sha256: str, ready: bool) -> None:
    _m()["info"].labels(model=model, version=version, sha256=sha256,
                        ready=str(ready).lower()).set(1)
