"""Offline validators: the official Kubernetes schemas (kubernetes-validate, strict) for
built-in kinds, the Gateway API v1.6.1 CRD schemas for routes, and modelrail's own CRD
schema for ModelRollout. Shared by the infrastructure, contract and operator tests."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from modelrail.infra.manifests import peering_crd, rollout_crd

DATA = Path(__file__).resolve().parents[1] / "data" / "gateway-api-v1.6.1"
K8S_VERSIONS = ("1.33.0", "1.37.0")
CUSTOM = {"HTTPRoute", "GRPCRoute", "ModelRollout"}


def _crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return dict(v["schema"]["openAPIV3Schema"])
    raise KeyError(version)


@cache
def gateway_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((DATA / f"{kind.lower()}s.yaml").read_text())
    return _crd_schema(crd, "v1")


def validate(obj: dict[str, Any], k8s_version: str = K8S_VERSIONS[-1]) -> None:
    """Raise if `obj` is not valid for its kind; strict: unknown fields are errors."""
    kind = obj["kind"]
    if kind in ("HTTPRoute", "GRPCRoute"):
        jsonschema.validate(obj, gateway_schema(kind))
    elif kind == "KopfPeering":
        jsonschema.validate(obj, _crd_schema(peering_crd(), "v1"))
    elif kind == "ModelRollout":
        schema = _crd_schema(rollout_crd(), "v1alpha1")
        # structural schemas prune unknown fields; be strict instead and refuse them
        jsonschema.validate(obj, _closed(schema))
    else:
        kubernetes_validate.validate(obj, k8s_version, strict=True)


def _closed(schema: Any) -> Any:
    """Add additionalProperties: false to every object schema that lists its properties
    (and read OpenAPI v3.0's boolean exclusive bounds as JSON Schema's numbers)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            if out.get(bound) is True:  # OpenAPI v3.0's boolean form, as jsonschema reads it
                out[bound] = out.pop(limit)
        if out.get("type") == "object" and "properties" in out and \
                not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
            out["properties"].setdefault("apiVersion", {"type": "string"})
            out["properties"].setdefault("kind", {"type": "string"})
            out["properties"].setdefault("metadata", {"type": "object"})
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema
