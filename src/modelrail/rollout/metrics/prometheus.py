"""PrometheusProvider: the MetricProvider (ports.py) of the Kubernetes platform — a track's
traffic over the analysis window, from the Prometheus HTTP API (`/api/v1/query`). Built by
the operator (kube/operator.py) for its namespace when MODELRAIL_PROMETHEUS_URL is set.

The PromQL templates read the serving metrics every instance exports (serving/metrics.py),
per namespace, model, version and route (the weighted split's requests, or the
headerRoute's or stable's mirror's, apart), over both protocols: requests, server errors (HTTP 5xx
and the gRPC codes that mean the server failed) and the p99 of the latency histogram. An
unreachable Prometheus, an error answer or an empty result is "no data" (None), never zero.
In a shadow phase, `shadow` reads stable's mirror counters (modelrail_shadow_*) the same way.
"""

from __future__ import annotations

import math
from typing import Any

import httpx

from modelrail.rollout.core.analysis import ShadowSample, TrafficSample
from modelrail.rollout.metrics.scrape import SERVER_ERRORS
from modelrail.rollout.ports import MetricProvider, MetricTrack

SELECTOR = 'namespace="{namespace}",model="{model}",version="{version}",route{route}'
# the split's requests: every route label but "header" and "shadow" (or none); or only
# the header's, or only those stable's mirror sent
ROUTES = {"split": '!~"header|shadow"', "header": '="header"', "shadow": '="shadow"'}
QUERIES = {
    "requests": "sum(increase(modelrail_requests_total{{{sel}}}[{window}s]))",
    "errors": "sum(increase(modelrail_requests_total{{{sel},outcome=~\"{errors}\"}}"
              "[{window}s]))",
    "p99_seconds": "histogram_quantile(0.99, sum by (le) "
                   "(rate(modelrail_request_duration_seconds_bucket{{{sel}}}[{window}s])))",
}


def queries(*, namespace: str, track: MetricTrack, window_seconds: float) -> dict[str, str]:
    """The PromQL of each figure for `track` over the last `window_seconds` (whole
    seconds, at least one)."""
    sel = SELECTOR.format(namespace=namespace, model=track.model, version=track.version,
                          route=ROUTES[track.route])
    errors = "|".join(sorted({"5xx", *SERVER_ERRORS}))
    window = max(1, math.ceil(window_seconds))
    return {k: q.format(sel=sel, window=window, errors=errors) for k, q in QUERIES.items()}


SHADOW_SELECTOR = 'namespace="{namespace}",model="{model}",version="{version}"'
SHADOW_QUERIES = {
    "outcomes": "sum by (outcome) (increase(modelrail_shadow_requests_total{{{sel}}}"
                "[{window}s]))",
    "pairs": "sum(increase(modelrail_shadow_pairs_total{{{sel}}}[{window}s]))",
    "disagreements": "sum(increase(modelrail_shadow_disagreements_total{{{sel}}}"
                     "[{window}s]))",
}


def shadow_queries(*, namespace: str, track: MetricTrack,
                   window_seconds: float) -> dict[str, str]:
    """The PromQL of stable's mirror counters over the last `window_seconds`."""
    sel = SHADOW_SELECTOR.format(namespace=namespace, model=track.model,
                                 version=track.version)
    window = max(1, math.ceil(window_seconds))
    return {k: q.format(sel=sel, window=window) for k, q in SHADOW_QUERIES.items()}


class PrometheusProvider:
    """One Prometheus, one namespace's model Deployments."""

    def __init__(self, url: str, *, namespace: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.timeout = timeout

    def sample(self, *, track: MetricTrack, window_seconds: float) -> TrafficSample | None:
        """Requests, server errors and p99 of `track` over the window; None without data
        (each query is over the window, so the controller's baseline call reads nothing
        it needs)."""
        values = {k: self._scalar(q) for k, q in queries(
            namespace=self.namespace, track=track, window_seconds=window_seconds).items()}
        requests, errors = values["requests"], values["errors"]
        if requests is None:
            return None
        p99 = values["p99_seconds"]
        return TrafficSample(requests=round(requests), errors=round(errors or 0.0),
                             p99_ms=None if p99 is None else p99 * 1000)

    def shadow(self, *, track: MetricTrack, window_seconds: float) -> ShadowSample | None:
        """Stable's mirror over the window; None while it has exported nothing (a mirror
        that sent nothing yet exports no series)."""
        q = shadow_queries(namespace=self.namespace, track=track,
                           window_seconds=window_seconds)
        outcomes = self._vector(q["outcomes"], "outcome")
        if outcomes is None:
            return None
        pairs, differ = self._scalar(q["pairs"]), self._scalar(q["disagreements"])
        return ShadowSample(**{k: round(outcomes.get(k, 0.0))
                               for k in ("answered", "failed", "dropped", "off")},
                            pairs=round(pairs or 0.0), disagreements=round(differ or 0.0))

    def _vector(self, query: str, label: str) -> dict[str, float] | None:
        body = self._query(query)
        if body is None:
            return None
        out = {}
        for item in body.get("data", {}).get("result", []):
            value = float(item["value"][1])
            if not math.isnan(value):
                out[str(item.get("metric", {}).get(label, ""))] = value
        return out or None

    def _scalar(self, query: str) -> float | None:
        body = self._query(query)
        if body is None:
            return None
        result = body.get("data", {}).get("result", [])
        if not result:
            return None
        value = float(result[0]["value"][1])
        return None if math.isnan(value) else value  # NaN: no samples in the window

    def _query(self, query: str) -> dict[str, Any] | None:
        try:
            r = httpx.get(f"{self.url}/api/v1/query", params={"query": query},
                          timeout=self.timeout)
            body = r.json()
        except (httpx.HTTPError, ValueError):
            return None
        if r.status_code != 200 or not isinstance(body, dict) \
                or body.get("status") != "success":
            return None
        return body


# mypy checks that the provider implements its port
_check_provider: type[MetricProvider] = PrometheusProvider
