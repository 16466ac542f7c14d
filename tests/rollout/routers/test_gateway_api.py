"""GatewayAPIRouter on the routes the program writes (manifests.py), in memory: the split's
weights and the headerRoute's rule are turned apart, and every route written validates
against the Gateway API v1.6.1 CRD schemas (header matches included)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from modelrail.errors import NotFoundError
from modelrail.infra.config import load_stack
from modelrail.infra.manifests import grpc_route, http_route
from modelrail.rollout.core.policy import HeaderRoute
from modelrail.rollout.routers.gateway_api import (
    GatewayAPIRouter,
    canary_weight_of,
    header_of,
    rule_kind,
)
from tests.infra.harness import ROOT
from tests.infra.schemas import validate

HEADER = ("x-model-cohort", "canary")


class Objects:
    """The two routes of one model, as the API server would hold them."""

    def __init__(self, routes: list[dict[str, Any]]) -> None:
        self.routes = {r["kind"].lower() + "s": copy.deepcopy(r) for r in routes}
        self.patches = 0

    def get(self, *, group: str, version: str, plural: str,
            name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.routes.get(plural))

    def patch(self, *, group: str, version: str, plural: str, name: str,
              body: dict[str, Any]) -> None:
        self.routes[plural]["spec"].update(body["spec"])
        self.patches += 1


def _routes(header: bool) -> list[dict[str, Any]]:
    cfg = load_stack("dev", ROOT)
    if header:
        cfg = cfg.model_copy(update={"rollout": cfg.rollout.model_copy(
            update={"header_route": HeaderRoute(name=HEADER[0], value=HEADER[1])})})
    return [http_route(cfg, "iris"), grpc_route(cfg, "iris")]


def _backends(rule: dict[str, Any]) -> dict[str, int]:
    return {r["name"]: r["weight"] for r in rule["backendRefs"]}


def test_the_header_rule_turns_apart_from_the_split_and_stays_schema_valid() -> None:
    objects = Objects(_routes(header=True))
    router = GatewayAPIRouter(objects)
    for route in objects.routes.values():
        validate(route)
        assert header_of(route) == HEADER
        header_rule, split = route["spec"]["rules"]
        assert header_rule["matches"][0]["headers"] == [
            {"type": "Exact", "name": HEADER[0], "value": HEADER[1]}]
        assert _backends(header_rule) == {"iris-stable": 100, "iris-canary": 0}
    router.set_header_route(route="iris", header=HEADER, to_canary=True)
    router.set_weight(route="iris", canary_weight=10)
    for route in objects.routes.values():
        validate(route)
        header_rule, split = route["spec"]["rules"]
        assert _backends(header_rule) == {"iris-stable": 0, "iris-canary": 100}
        assert _backends(split) == {"iris-stable": 90, "iris-canary": 10}
        assert canary_weight_of(route, "iris") == 10  # the split's, not the header's
    assert router.observed_weight(route="iris") == 10
    writes = objects.patches
    router.set_header_route(route="iris", header=HEADER, to_canary=True)
    assert objects.patches == writes  # already so: nothing written
    router.set_header_route(route="iris", header=HEADER, to_canary=False)
    router.set_weight(route="iris", canary_weight=0)
    for route in objects.routes.values():
        header_rule, split = route["spec"]["rules"]
        assert _backends(header_rule) == _backends(split) == {"iris-stable": 100,
                                                              "iris-canary": 0}


def test_a_route_without_the_rollouts_header_rule_is_named() -> None:
    router = GatewayAPIRouter(Objects(_routes(header=False)))
    with pytest.raises(NotFoundError, match="x-model-cohort"):
        router.set_header_route(route="iris", header=HEADER, to_canary=True)
    other = GatewayAPIRouter(Objects(_routes(header=True)))
    with pytest.raises(NotFoundError, match="x-other"):
        other.set_header_route(route="iris", header=("x-other", "1"), to_canary=True)


@pytest.mark.parametrize(("name", "value"), [("Host", "x"), ("grpc-timeout", "1"),
                                             ("x-forwarded-for", "1"), ("x cohort", "a"),
                                             ("x-cohort", "a b"), ("x-cohort", "")])
def test_a_bad_header_route_is_refused_by_name(name: str, value: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        HeaderRoute(name=name, value=value)


def _shadow_cfg(header: bool = True) -> Any:
    from modelrail.rollout.core.policy import ShadowPolicy
    cfg = load_stack("dev", ROOT)
    rollout = cfg.rollout.model_copy(update={"shadow": ShadowPolicy(percent=20), **(
        {"header_route": HeaderRoute(name=HEADER[0], value=HEADER[1])} if header else {})})
    return cfg.model_copy(update={"rollout": rollout, "gateway": cfg.gateway.model_copy(
        update={"address": "http://modelrail-gateway.gateway-system.svc:80"})})


def test_the_shadow_rule_turns_apart_from_the_split_and_the_header_rule() -> None:
    """With a shadow phase the HTTPRoute (stable's mirror speaks REST) has a rule for
    x-modelrail-shadow: 1, on stable until the operator turns it; the GRPCRoute has none.
    Every route written stays schema-valid."""
    cfg = _shadow_cfg()
    objects = Objects([http_route(cfg, "iris"), grpc_route(cfg, "iris")])
    router = GatewayAPIRouter(objects)
    http, grpc = objects.routes["httproutes"], objects.routes["grpcroutes"]
    validate(http)
    assert [rule_kind(r) for r in http["spec"]["rules"]] == ["shadow", "header", "split"]
    assert [rule_kind(r) for r in grpc["spec"]["rules"]] == ["header", "split"]
    shadow_rule = http["spec"]["rules"][0]
    assert shadow_rule["matches"][0]["headers"] == [
        {"type": "Exact", "name": "x-modelrail-shadow", "value": "1"}]
    assert _backends(shadow_rule) == {"iris-stable": 100, "iris-canary": 0}
    assert header_of(http) == HEADER  # the cohort header, not the shadow's
    router.set_shadow(route="iris", on=True)
    router.set_header_route(route="iris", header=HEADER, to_canary=True)
    router.set_weight(route="iris", canary_weight=0)
    http = objects.routes["httproutes"]
    validate(http)
    assert [_backends(r)["iris-canary"] for r in http["spec"]["rules"]] == [100, 100, 0]
    assert canary_weight_of(http, "iris", kind="shadow") == 100
    assert router.observed_weight(route="iris") == 0
    writes = objects.patches
    router.set_shadow(route="iris", on=True)  # idempotent: no write
    assert objects.patches == writes
    router.set_shadow(route="iris", on=False)
    assert canary_weight_of(objects.routes["httproutes"], "iris", kind="shadow") == 0
    assert canary_weight_of(objects.routes["httproutes"], "iris", header_rules=True) == 100


def test_a_route_without_the_shadow_rule_is_named() -> None:
    objects = Objects(_routes(header=False))
    with pytest.raises(NotFoundError, match="x-modelrail-shadow") as err:
        GatewayAPIRouter(objects).set_shadow(route="iris", on=True)
    assert "shadow" in err.value.accepted
