"""The shadow phase in the stack: `rollout.shadow` needs the gateway's in-cluster address;
with it, only the stable Deployment's servers mirror (MODELRAIL_SHADOW, to the gateway with
the model's hostname), a NetworkPolicy lets them reach the gateway, and the HTTPRoute has
the shadow rule (tests/rollout/routers/test_gateway_api.py turns it)."""

from __future__ import annotations

from typing import Any

import pytest

from modelrail.errors import InvalidInputError
from modelrail.infra.config import ModelSpec, load_stack, parse
from modelrail.infra.manifests import model_deployment, network_policies, shadow_env
from modelrail.serving.config import parse_shadow
from tests.infra.harness import ROOT
from tests.infra.schemas import validate

ADDRESS = "http://modelrail-gateway.gateway-system.svc:80"


def _values(shadow: dict[str, Any] | None, address: str | None) -> dict[str, Any]:
    """The dev stack's values (as its file holds them) with a shadow phase and address."""
    import yaml
    values: dict[str, Any] = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"]
    if shadow is not None:
        values["modelrail:rollout"] = {**values["modelrail:rollout"], "shadow": shadow}
    gateway = dict(values["modelrail:gateway"])
    if address is not None:
        gateway["address"] = address
    else:
        gateway.pop("address", None)
    values["modelrail:gateway"] = gateway
    return values


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    c = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"]}


def test_only_stable_mirrors_to_the_gateway_with_the_models_hostname() -> None:
    cfg = parse("dev", _values({"percent": 20, "minPairs": 300, "queue": 128}, ADDRESS),
                source="test")
    model = ModelSpec(name="iris", version="1")
    stable, canary = model_deployment(cfg, model), model_deployment(cfg, model, track="canary")
    validate(stable)
    settings = parse_shadow(_env(stable)["MODELRAIL_SHADOW"])
    assert settings is not None
    assert (settings.percent, settings.target, settings.host, settings.queue) == (
        20, ADDRESS, f"iris.{cfg.hostname}", 128)
    assert "MODELRAIL_SHADOW" not in _env(canary)
    egress = [p for p in network_policies(cfg) if p["metadata"]["name"] == "allow-shadow-egress"]
    assert len(egress) == 1
    assert egress[0]["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": cfg.gateway.namespace}
    local = shadow_env(cfg, "iris", target="http://127.0.0.1:8080")
    assert parse_shadow(local[0]["value"]).target == "http://127.0.0.1:8080"  # type: ignore[union-attr]


def test_without_a_shadow_phase_nothing_mirrors() -> None:
    cfg = load_stack("dev", ROOT)
    assert cfg.rollout.shadow is None
    assert "MODELRAIL_SHADOW" not in _env(model_deployment(cfg, ModelSpec(name="iris",
                                                                          version="1")))
    assert not any(p["metadata"]["name"] == "allow-shadow-egress"
                   for p in network_policies(cfg))


@pytest.mark.parametrize("shadow,address,fragment", [
    ({"percent": 20}, None, "rollout.shadow needs gateway.address"),
    ({"percent": 0}, ADDRESS, "key modelrail:rollout.shadow.percent"),
    ({"percent": 20, "minPairs": 5}, ADDRESS, "key modelrail:rollout.shadow.minPairs"),
    (None, "modelrail-gateway:80", "key modelrail:gateway.address: must be http(s)://"),
])
def test_bad_shadow_configuration_is_named(shadow: dict[str, Any] | None,
                                           address: str | None, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse("dev", _values(shadow, address), source="test")
    assert fragment in str(info.value), str(info.value)
