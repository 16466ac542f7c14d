"""ScrapeProvider: reads the serving instances' /metrics directly (the local platform; on
Kubernetes a Prometheus query provider does the same job).

For each track it scrapes every instance, keeps the last counters per instance, and returns
the increase since the previous call: requests, server errors (HTTP 5xx, gRPC INTERNAL,
UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS — client errors such as 400 or
INVALID_ARGUMENT are the caller's fault, not the canary's) and the p99 latency interpolated
from the histogram buckets' increase, as PromQL's histogram_quantile does. A counter that
went down (an instance restarted) counts from zero, as Prometheus' rate() does.

The rollout controller's MetricProvider (ports.py) on the local platform: the controller
calls `sample` at the start of each analysis interval (the baseline) and at its end; in a
shadow phase `shadow` reads stable's mirror counters (modelrail_shadow_*) the same way.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelrail.rollout.core.analysis import ShadowSample, TrafficSample
from modelrail.rollout.ports import MetricProvider, MetricTrack

SERVER_ERRORS = frozenset({"5xx", "INTERNAL", "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED",
                           "DATA_LOSS"})


@dataclass
class _Counters:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count


# the route labels counted apart from the split (serving/metrics.py)
APART = ("header", "shadow")
SHADOW_FIELDS = ("answered", "failed", "dropped", "off", "pairs", "disagreements")


def parse(text: str, model: str, version: str, route: str = "split") -> _Counters:
    """The counters of `model` at `version`: of the split's requests (every `route` label
    but "header" and "shadow", or none: a server without the label), or of the
    header-routed ones, or of those stable's mirror sent."""
    out = _Counters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            seen = labels.get("route", "split")
            if s.name in ("modelrail_requests_total",
                          "modelrail_request_duration_seconds_bucket") and \
                    (seen if seen in APART else "split") != route:
                continue
            if s.name == "modelrail_requests_total":
                out.requests += s.value
                if labels.get("outcome") in SERVER_ERRORS:
                    out.errors += s.value
            elif s.name == "modelrail_request_duration_seconds_bucket":
                le = float(labels["le"])
                out.buckets[le] = out.buckets.get(le, 0.0) + s.value
    return out


def parse_shadow(text: str, model: str, version: str) -> dict[str, float]:
    """The mirror counters of `model` at `version` (the sender's): outcomes, pairs and
    disagreements, keyed by ShadowSample's fields."""
    out = dict.fromkeys(SHADOW_FIELDS, 0.0)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if s.name == "modelrail_shadow_requests_total":
                outcome = labels.get("outcome", "")
                if outcome in out:
                    out[outcome] += s.value
            elif s.name == "modelrail_shadow_pairs_total":
                out["pairs"] += s.value
            elif s.name == "modelrail_shadow_disagreements_total":
                out["disagreements"] += s.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """histogram_quantile over cumulative bucket counts (le → count)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if b == float("inf"):
                return prev_bound
            width = count - prev_count
            frac = (rank - prev_count) / width if width > 0 else 1.0
            return prev_bound + (b - prev_bound) * frac
        prev_bound, prev_count = b, count
    return prev_bound


class ScrapeProvider:
    """Scrapes a track's instances; remembers each instance's last counters per model
    version, so a sample is the increase since the previous one."""

    def __init__(self, *, timeout: float = 2.0) -> None:
        self.timeout = timeout
        # (model, version, route) → each instance's last counters
        self._last: dict[tuple[str, str, str], dict[str, _Counters]] = {}
        self._last_shadow: dict[tuple[str, str], dict[str, dict[str, float]]] = {}

    def sample(self, *, track: MetricTrack, window_seconds: float) -> TrafficSample | None:
        """What `track` served since the previous call for its model version (the first
        call is the baseline; `window_seconds` is implied by the calls); None when it has
        no instance or one cannot be scraped (a missing instance makes it unknowable)."""
        if not track.urls:
            return None
        key = (track.model, track.version, track.route)
        before = self._last.get(key, {})
        now: dict[str, _Counters] = {}
        for url in track.urls:
            text = self._get(url)
            if text is None:
                return None
            now[url] = parse(text, track.model, track.version, track.route)
        self._last[key] = now  # instances no longer listed are forgotten
        requests = errors = 0.0
        buckets: dict[float, float] = defaultdict(float)
        for url, counters in now.items():
            last = before.get(url, _Counters())
            requests += _increase(counters.requests, last.requests)
            errors += _increase(counters.errors, last.errors)
            for le, count in counters.buckets.items():
                buckets[le] += _increase(count, last.buckets.get(le, 0.0))
        p99 = quantile(0.99, dict(buckets))
        return TrafficSample(requests=round(requests), errors=round(errors),
                             p99_ms=None if p99 is None else p99 * 1000,
                             latency_buckets=tuple((le * 1000, n)
                                                   for le, n in sorted(buckets.items())))

    def shadow(self, *, track: MetricTrack, window_seconds: float) -> ShadowSample | None:
        """The mirror counters of `track`'s instances (stable) since the previous call;
        None when it has no instance or one cannot be scraped, and on the first call for
        the version (the baseline: the counters since the servers started are not this
        interval's — e.g. after the controller restarted mid-interval)."""
        if not track.urls:
            return None
        key = (track.model, track.version)
        first = key not in self._last_shadow
        before = self._last_shadow.get(key, {})
        now: dict[str, dict[str, float]] = {}
        for url in track.urls:
            text = self._get(url)
            if text is None:
                return None
            now[url] = parse_shadow(text, track.model, track.version)
        self._last_shadow[key] = now
        if first:
            return None
        totals = dict.fromkeys(SHADOW_FIELDS, 0.0)
        for url, counters in now.items():
            last = before.get(url, {})
            for k in SHADOW_FIELDS:
                totals[k] += _increase(counters[k], last.get(k, 0.0))
        return ShadowSample(**{k: round(v) for k, v in totals.items()})

    def _get(self, url: str) -> str | None:
        try:
            r = httpx.get(f"{url}/metrics", timeout=self.timeout)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None


def _increase(now: float, before: float) -> float:
    return now if now < before else now - before


def _check_provider(provider: ScrapeProvider) -> MetricProvider:
    return provider  # mypy checks that ScrapeProvider implements the MetricProvider port
