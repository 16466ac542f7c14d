"""Every object of every stack validates against the real schemas, and each validator
provably refuses a broken object."""

from __future__ import annotations

import copy

import jsonschema
import pytest
from kubernetes_validate.utils import ValidationError as K8sValidationError

from modelrail.infra.config import load_stack
from modelrail.infra.manifests import model_deployment, render
from tests.infra.harness import ROOT
from tests.infra.schemas import K8S_VERSIONS, validate

STACKS = ("dev", "staging", "prod")


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_validates(stack: str, version: str) -> None:
    cfg = load_stack(stack, ROOT)
    objs = render(cfg)
    kinds = {o["kind"] for o in objs}
    assert {"HTTPRoute", "GRPCRoute", "ModelRollout", "Deployment"} <= kinds
    for obj in objs:
        validate(obj, version)
    # the canary the controller derives from the same builder validates too
    canary = model_deployment(cfg, cfg.models[0].model_copy(update={"version": "9"}),
                              track="canary")
    validate(canary, version)


def _first(kind: str) -> dict:  # type: ignore[type-arg]
    return copy.deepcopy(next(o for o in render(load_stack("dev", ROOT)) if o["kind"] == kind))


def test_kubernetes_validate_bites() -> None:
    bad = _first("Deployment")
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # typo'd field
    with pytest.raises(K8sValidationError):
        validate(bad)
    bad = _first("HorizontalPodAutoscaler")
    bad["spec"]["minReplicas"] = "one"
    with pytest.raises(K8sValidationError):
        validate(bad)


@pytest.mark.parametrize("kind", ["HTTPRoute", "GRPCRoute"])
def test_gateway_schema_bites(kind: str) -> None:
    bad = _first(kind)
    bad["spec"]["rules"][0]["backendRefs"][0]["weight"] = 1000001  # above the CRD's maximum
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = _first(kind)
    bad["spec"]["parentRefs"] = [{"namespace": "x"}]  # name is required
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_modelrollout_schema_bites() -> None:
    for mutate in (lambda s: s.__setitem__("steps", [10, 150]),
                   lambda s: s.__setitem__("stepz", 30),
                   lambda s: s.pop("version"),
                   lambda s: s["thresholds"].__setitem__("maxErrorRate", 2)):
        bad = _first("ModelRollout")
        mutate(bad["spec"])
        with pytest.raises(jsonschema.ValidationError):
            validate(bad)
