"""The metric-provider interface: measurements of one track since the previous call."""

from __future__ import annotations

from typing import Protocol

from modelrail.rollout.core.analysis import TrafficSample


class MetricProvider(Protocol):
    def sample(self, *, track: str) -> TrafficSample | None:
        """Requests, server errors and p99 of `track` since the last call; None if the
        backend could not be read (which analysis treats as no data, never as success)."""

    def online(self) -> bool:
        """Whether the backend answers at all."""
