"""The traffic-router interface: how the engine's weights reach a data plane.

A weight change is not done until the data plane shows it: `observed_weight` reads back what
the router really applies, and the engine counts a step only once it matches.
"""

from __future__ import annotations

from typing import Protocol


class TrafficRouter(Protocol):
    def set_weight(self, *, route: str, canary_weight: int) -> None:
        """Ask the data plane to send `canary_weight`% of the route's traffic to the canary."""

    def observed_weight(self, *, route: str) -> int | None:
        """The canary weight the data plane applies now (None: route unknown to it)."""
