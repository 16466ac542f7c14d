"""GatewayAPIRouter: the TrafficRouter (ports.py) of the Kubernetes platform — canary weights
on a model's HTTPRoute and GRPCRoute (Gateway API v1).

The routes are created by the Pulumi program (infra/manifests.py: `http_route`,
`grpc_route`) with two backendRefs, `<model>-stable` and `<model>-canary`. Setting a weight
reads each route, changes only the two weights of the split's rule, and writes the rules
back (a JSON merge patch replaces lists whole, so the matches are carried over as read); a
route already at the weight is not written. With the stack's headerRoute the program adds a
rule matching that header too; `set_header_route` turns it to the canary while one runs
and back to stable, the split untouched; with a shadow phase the HTTPRoute has a rule for
stable's mirror header, which `set_shadow` turns the same way. `observed_weight` reads
both routes back: a step counts only when both protocols carry the same weight. The
operator (kube/reconciler.py) builds it over the platform's custom objects
(kube/platform.py KubeObjects); it imports no client itself.
"""

from __future__ import annotations

from typing import Any, Protocol

from modelrail.errors import NotFoundError
from modelrail.rollout.core.policy import SHADOW_HEADER
from modelrail.rollout.ports import TrafficRouter

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
PLURALS = ("httproutes", "grpcroutes")


class RouteObjects(Protocol):
    """Custom objects of the router's namespace (kube/platform.py KubeObjects)."""

    def get(self, *, group: str, version: str, plural: str,
            name: str) -> dict[str, Any] | None:
        """The object, or None when there is none."""

    def patch(self, *, group: str, version: str, plural: str, name: str,
              body: dict[str, Any]) -> None:
        """A merge patch of the object."""


def rule_kind(rule: dict[str, Any]) -> str:
    """"shadow": the shadow rule (it matches stable's mirror header); "header": the stack's
    headerRoute (its matches name another header); "split": the weighted split."""
    names = {str(h.get("name", "")).lower() for m in rule.get("matches") or []
             for h in m.get("headers") or []}
    if SHADOW_HEADER in names:
        return "shadow"
    return "header" if names else "split"


def is_header_rule(rule: dict[str, Any]) -> bool:
    """A rule of the stack's headerRoute: not the split, not the shadow rule."""
    return rule_kind(rule) == "header"


def header_of(route: dict[str, Any]) -> tuple[str, str] | None:
    """(name, value) the route's headerRoute rule matches exactly; None without one."""
    for rule in route.get("spec", {}).get("rules", []):
        if rule_kind(rule) != "header":
            continue
        for match in rule.get("matches") or []:
            for h in match.get("headers") or []:
                if h.get("type", "Exact") == "Exact":
                    return str(h["name"]).lower(), str(h["value"])
    return None


def _kind(header_rules: bool, kind: str | None) -> str:
    return kind or ("header" if header_rules else "split")


def with_weights(route: dict[str, Any], model: str, canary_weight: int,
                 *, header_rules: bool = False, kind: str | None = None) -> list[Any]:
    """The route's rules with the stable/canary backend weights set: the weighted split's
    rules, or (`header_rules`) the headerRoute's, or those of `kind`; the others as they
    are."""
    want = _kind(header_rules, kind)
    rules = []
    for rule in route.get("spec", {}).get("rules", []):
        if rule_kind(rule) != want:
            rules.append(rule)
            continue
        refs = []
        for original in rule.get("backendRefs", []):
            ref = dict(original)
            if ref.get("name") == f"{model}-canary":
                ref["weight"] = canary_weight
            elif ref.get("name") == f"{model}-stable":
                ref["weight"] = 100 - canary_weight
            refs.append(ref)
        rules.append({**rule, "backendRefs": refs})
    return rules


def canary_weight_of(route: dict[str, Any], model: str, *,
                     header_rules: bool = False, kind: str | None = None) -> int | None:
    """The canary weight of the route's split (or of its headerRoute rule, or of the rules
    of `kind`); None unless both backends are there and sum to 100."""
    want = _kind(header_rules, kind)
    weights = {ref.get("name"): int(ref.get("weight", 1))
               for rule in route.get("spec", {}).get("rules", [])
               if rule_kind(rule) == want
               for ref in rule.get("backendRefs", [])}
    canary, stable = weights.get(f"{model}-canary"), weights.get(f"{model}-stable")
    if canary is None or stable is None or canary + stable != 100:
        return None
    return canary


class GatewayAPIRouter:
    """Weights on `<route>`'s HTTPRoute and GRPCRoute in one namespace."""

    def __init__(self, objects: RouteObjects) -> None:
        self.objects = objects

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        """Write the weight into both routes (a missing route is a NotFoundError)."""
        if not 0 <= canary_weight <= 100:
            raise ValueError(f"canary weight {canary_weight} is outside 0..100")
        for plural in PLURALS:
            current = self._get(plural, route)
            if current is None:
                raise NotFoundError(
                    f"no {plural[:-1]} {route!r} to set the canary weight on",
                    where=f"{GROUP}/{VERSION} {plural}/{route}",
                    accepted="the routes the Pulumi program creates for each model")
            if canary_weight_of(current, route) == canary_weight:
                continue  # already there: no write, no new generation
            self.objects.patch(group=GROUP, version=VERSION, plural=plural, name=route,
                               body={"spec": {"rules": with_weights(current, route,
                                                                    canary_weight)}})

    def set_header_route(self, *, route: str, header: tuple[str, str],
                         to_canary: bool) -> None:
        """Turn both routes' headerRoute rule to the canary or back to stable; a route
        without a rule matching `header` is a NotFoundError (the stack's headerRoute was
        not applied)."""
        weight = 100 if to_canary else 0
        for plural in PLURALS:
            current = self._get(plural, route)
            if current is None or canary_weight_of(current, route,
                                                   header_rules=True) is None \
                    or header_of(current) != header:
                raise NotFoundError(
                    f"no {plural[:-1]} {route!r} with a rule for header {header[0]}: "
                    f"{header[1]}",
                    where=f"{GROUP}/{VERSION} {plural}/{route}",
                    accepted="the routes `pulumi up` writes when the stack's "
                             "modelrail:rollout has headerRoute (run it again)")
            if canary_weight_of(current, route, header_rules=True) == weight:
                continue
            self.objects.patch(group=GROUP, version=VERSION, plural=plural, name=route,
                               body={"spec": {"rules": with_weights(
                                   current, route, weight, header_rules=True)}})

    def set_shadow(self, *, route: str, on: bool) -> None:
        """Turn the HTTPRoute's shadow rule (stable's mirror speaks REST) to the canary or
        back to stable; a route without one is a NotFoundError (the stack's shadow phase
        was not applied)."""
        weight = 100 if on else 0
        plural = "httproutes"
        current = self._get(plural, route)
        if current is None or canary_weight_of(current, route, kind="shadow") is None:
            raise NotFoundError(
                f"no httproute {route!r} with a rule for header {SHADOW_HEADER}",
                where=f"{GROUP}/{VERSION} {plural}/{route}",
                accepted="the routes `pulumi up` writes when the stack's modelrail:rollout "
                         "has shadow (run it again)")
        if canary_weight_of(current, route, kind="shadow") == weight:
            return
        self.objects.patch(group=GROUP, version=VERSION, plural=plural, name=route,
                           body={"spec": {"rules": with_weights(current, route, weight,
                                                                kind="shadow")}})

    def observed_weight(self, *, route: str) -> int | None:
        """The weight both routes carry; None when they differ or one is missing."""
        seen = set()
        for plural in PLURALS:
            obj = self._get(plural, route)
            seen.add(None if obj is None else canary_weight_of(obj, route))
        return seen.pop() if len(seen) == 1 else None

    def _get(self, plural: str, route: str) -> dict[str, Any] | None:
        return self.objects.get(group=GROUP, version=VERSION, plural=plural, name=route)


# mypy checks that the router implements its port
_check_router: type[TrafficRouter] = GatewayAPIRouter
