"""ScrapeProvider: reads the serving instances' /metrics directly (the local platform; on
Kubernetes a Prometheus query provider does the same job).

For each track it scrapes every instance, keeps the last counters per instance, and returns
the increase since the previous call: requests, server errors (HTTP 5xx, gRPC INTERNAL,
UNAVAILABLE, UNKNOWN, DEADLINE_EXCEEDED, DATA_LOSS — client errors such as 400 or
INVALID_ARGUMENT are the caller's fault, not the canary's) and the p99 latency interpolated
from the histogram buckets' increase, as PromQL's histogram_quantile does. A counter that
went down (an instance restarted) counts from zero, as Prometheus' rate() does.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from modelrail.rollout.core.analysis import TrafficSample

SERVER_ERRORS = frozenset({"5xx", "INTERNAL", "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED",
                           "DATA_LOSS"})


@dataclass(frozen=True)
class Track:
    """Where a track's instances are and which model version they serve."""

    model: str
    version: str
    urls: tuple[str, ...]


@dataclass
class _Counters:
    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le → cumulative count


def parse(text: str, model: str, version: str) -> _Counters:
    out = _Counters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = s.labels
            if labels.get("model") != model or labels.get("version") != version:
                continue
            if s.name == "modelrail_requests_total":
                out.requests += s.value
                if labels.get("outcome") in SERVER_ERRORS:
                    out.errors += s.value
            elif s.name == "modelrail_request_duration_seconds_bucket":
                le = float(labels["le"])
                out.buckets[le] = out.buckets.get(le, 0.0) + s.value
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
    def __init__(self, tracks: dict[str, Track], *, timeout: float = 2.0) -> None:
        self.tracks = dict(tracks)
        self.timeout = timeout
        self._last: dict[tuple[str, str], _Counters] = {}

    def set_track(self, name: str, track: Track) -> None:
        """Instances come and go (autoscaling); counters of removed ones are forgotten."""
        self.tracks[name] = track
        keep = {(name, u) for u in track.urls}
        for key in [k for k in self._last if k[0] == name and k not in keep]:
            del self._last[key]

    def online(self) -> bool:
        urls = [u for t in self.tracks.values() for u in t.urls]
        return bool(urls) and all(self._get(u) is not None for u in urls)

    def sample(self, *, track: str) -> TrafficSample | None:
        t = self.tracks.get(track)
        if t is None or not t.urls:
            return None
        requests = errors = 0.0
        buckets: dict[float, float] = defaultdict(float)
        for url in t.urls:
            text = self._get(url)
            if text is None:
                return None  # a missing instance makes the interval unknowable
            now = parse(text, t.model, t.version)
            before = self._last.get((track, url), _Counters())
            self._last[(track, url)] = now
            requests += _increase(now.requests, before.requests)
            errors += _increase(now.errors, before.errors)
            for le, count in now.buckets.items():
                buckets[le] += _increase(count, before.buckets.get(le, 0.0))
        p99 = quantile(0.99, dict(buckets))
        return TrafficSample(requests=round(requests), errors=round(errors),
                             p99_ms=None if p99 is None else p99 * 1000,
                             latency_buckets=tuple((le * 1000, n)
                                                   for le, n in sorted(buckets.items())))

    def _get(self, url: str) -> str | None:
        try:
            r = httpx.get(f"{url}/metrics", timeout=self.timeout)
        except httpx.HTTPError:
            return None
        return r.text if r.status_code == 200 else None


def _increase(now: float, before: float) -> float:
    return now if now < before else now - before
