"""GatewayAPIRouter: canary weights on a model's HTTPRoute and GRPCRoute (Gateway API v1).

The routes are created by the Pulumi program (infra/manifests.py: `http_route`,
`grpc_route`) with two backendRefs, `<model>-stable` and `<model>-canary`. Setting a weight
reads each route, changes only the two weights, and writes the rules back (a JSON merge
patch replaces lists whole, so the matches are carried over as read). `observed_weight`
reads both routes back: a step counts only when both protocols carry the same weight.
"""

from __future__ import annotations

from typing import Any, Protocol

GROUP, VERSION = "gateway.networking.k8s.io", "v1"
PLURALS = ("httproutes", "grpcroutes")


class CustomObjects(Protocol):
    """The part of kubernetes.client.CustomObjectsApi this router uses."""

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                     plural: str, name: str) -> Any: ...

    def patch_namespaced_custom_object(self, group: str, version: str, namespace: str,
                                       plural: str, name: str, body: Any) -> Any: ...


def with_weights(route: dict[str, Any], model: str, canary_weight: int) -> list[Any]:
    """The route's rules with the stable/canary backend weights set."""
    rules = []
    for rule in route.get("spec", {}).get("rules", []):
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


def canary_weight_of(route: dict[str, Any], model: str) -> int | None:
    weights = {ref.get("name"): int(ref.get("weight", 1))
               for rule in route.get("spec", {}).get("rules", [])
               for ref in rule.get("backendRefs", [])}
    canary, stable = weights.get(f"{model}-canary"), weights.get(f"{model}-stable")
    if canary is None or stable is None or canary + stable != 100:
        return None
    return canary


class GatewayAPIRouter:
    def __init__(self, api: CustomObjects, namespace: str) -> None:
        self.api = api
        self.namespace = namespace

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        if not 0 <= canary_weight <= 100:
            raise ValueError(f"canary weight {canary_weight} is outside 0..100")
        for plural in PLURALS:
            current = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                            plural, route)
            if canary_weight_of(current, route) == canary_weight:
                continue  # already there: no write, no new generation
            self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, plural, route,
                {"spec": {"rules": with_weights(current, route, canary_weight)}})

    def observed_weight(self, *, route: str) -> int | None:
        seen = set()
        for plural in PLURALS:
            obj = self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                        plural, route)
            seen.add(canary_weight_of(obj, route))
        return seen.pop() if len(seen) == 1 else None
