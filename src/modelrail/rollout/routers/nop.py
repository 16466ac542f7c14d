"""NopRouter: an in-memory router that applies weights at once. For tests, and for "no mesh"
setups where nothing splits traffic."""

from __future__ import annotations

from modelrail.rollout.ports import TrafficRouter


class NopRouter:
    def __init__(self) -> None:
        self.weights: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.header_to_canary: dict[str, bool] = {}
        self.shadow_on: dict[str, bool] = {}

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        self.calls.append((route, canary_weight))
        self.weights[route] = canary_weight

    def set_header_route(self, *, route: str, header: tuple[str, str],
                         to_canary: bool) -> None:
        self.header_to_canary[route] = to_canary

    def set_shadow(self, *, route: str, on: bool) -> None:
        self.shadow_on[route] = on

    def observed_weight(self, *, route: str) -> int | None:
        return self.weights.get(route)


def _check_router(router: NopRouter) -> TrafficRouter:
    return router  # mypy checks that NopRouter implements the TrafficRouter port
