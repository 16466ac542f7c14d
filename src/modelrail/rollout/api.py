"""The ModelRollout contract, once: its API group, version, plural and annotation, the spec
type with its defaults, the CRD schema built from that type, the status fields, and which
exit code a finished rollout's phase gives.

Imported by the Pulumi program's manifests (infra/manifests.py: the CRD and each model's
resource), the operator (kube/reconciler.py: parsing a resource), and `modelrail rollout …
--kube` (cli/kube.py). A field added to `ModelRolloutSpec` reaches the CRD, the parser and
the program together; a test round-trips a full spec through the schema and the parser.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from modelrail.errors import InvalidInputError
from modelrail.exit_codes import ExitCode
from modelrail.rollout.core.policy import HeaderRoute, RolloutPolicy, ShadowPolicy
from modelrail.rollout.core.spec import Phase, RolloutSpec

GROUP = "modelrail.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelRollout"
PLURAL = "modelrollouts"
SINGULAR = "modelrollout"
SHORT_NAMES = ("mro",)
# `modelrail rollout promote --kube` sets it to the seq of the pause it answers
PROMOTE_ANNOTATION = f"{GROUP}/promote"

# A finished rollout's phase → the exit code `rollout start --wait` / `status` returns.
PHASE_EXIT: dict[Phase, ExitCode] = {
    Phase.SUCCEEDED: ExitCode.OK, Phase.ROLLED_BACK: ExitCode.ROLLED_BACK,
    Phase.FAILED: ExitCode.TIMED_OUT, Phase.ABORTED: ExitCode.ABORTED,
}

Weight = Annotated[int, Field(ge=1, le=100)]


def exit_code_of(phase: str) -> int | None:
    """The exit code of a finished rollout in phase `phase` (a Phase value); None while it
    runs."""
    try:
        code = PHASE_EXIT.get(Phase(phase))
    except ValueError:  # not a phase at all: a status written by something else
        return None
    return None if code is None else int(code)


_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
_VERSION_PATTERN = r"^[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?$"


class _Camel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)


class RolloutThresholds(_Camel):
    """Limits a canary must keep (the analysis' thresholds)."""

    max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    max_p99_latency_ms: float = Field(default=100.0, gt=0.0, le=60_000.0)
    max_latency_ratio: float = Field(default=1.5, ge=1.0, le=100.0)
    max_error_rate_increase: float = Field(default=0.01, ge=0.0, le=1.0)
    max_label_disagreement: float = Field(default=0.05, ge=0.0, le=1.0)
    min_requests_per_step: int = Field(default=100, ge=1, le=1_000_000)


class ModelRolloutSpec(_Camel):
    """`spec` of a ModelRollout: which version should run, and the canary policy."""

    model: str = Field(pattern=_NAME_PATTERN, description="the model's name")
    version: str = Field(pattern=_VERSION_PATTERN, min_length=1, max_length=63,
                         description="the version that should run; a new one starts a rollout")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="the registry's sha256 of that version")
    steps: list[Weight] = Field(min_length=1, max_length=20,
                             description="canary weights, strictly increasing, 1-100")
    step_seconds: int = Field(default=60, ge=5, le=3600)
    analysis_interval_seconds: int = Field(default=10, ge=1, le=600)
    thresholds: RolloutThresholds = Field(default_factory=RolloutThresholds)
    failure_limit: int = Field(default=1, ge=0, le=100)
    progress_deadline_seconds: int = Field(default=600, ge=30, le=86_400)
    manual_gates: list[Weight] = Field(default_factory=list)
    header_route: HeaderRoute | None = Field(
        default=None, description="requests with this header and value reach the canary at "
        "any weight while one runs")
    shadow: ShadowPolicy | None = Field(
        default=None, description="a shadow phase before the first weight: stable mirrors "
        "this share of its requests to the canary, whose answers are compared with "
        "stable's")
    abort: bool = Field(default=False, description="true: return all traffic to stable now")
    pre_traffic_analysis: bool = Field(
        default=True, description="analyse the ready canary (direct load and the model gate) "
        "before it takes any user traffic; false: judge it on live traffic only")
    shadow_phase: bool = Field(
        default=True, description="run the shadow phase `shadow` describes; false: skip it "
        "for this rollout (`rollout start --kube --no-shadow`)")

    def policy(self) -> RolloutPolicy:
        """The canary policy, validated by the same rules as a stack's."""
        return RolloutPolicy(**{f: getattr(self, f) for f in _POLICY_FIELDS},
                             **self.thresholds.model_dump())

    def rollout(self, *, stable: str) -> RolloutSpec:
        """What the engine runs for this resource against the `stable` version; unless
        the spec turns it off, the canary is analysed before it takes user traffic."""
        spec = RolloutSpec.from_policy(self.policy(), model=self.model,
                                       stable_version=stable, canary_version=self.version)
        return replace(spec, pre_traffic_analysis=self.pre_traffic_analysis,
                       shadow=spec.shadow if self.shadow_phase else None)

    @classmethod
    def from_policy(cls, policy: RolloutPolicy, *, model: str, version: str,
                    sha256: str | None) -> ModelRolloutSpec:
        """The spec the Pulumi program writes for a model of a stack."""
        thresholds = RolloutThresholds(**{f: getattr(policy, f)
                                          for f in RolloutThresholds.model_fields})
        return cls(model=model, version=version, sha256=sha256, thresholds=thresholds,
                   **{f: getattr(policy, f) for f in _POLICY_FIELDS})

    def to_resource(self) -> dict[str, Any]:
        """As written into a ModelRollout's spec (camelCase, no unset optionals)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# ModelRolloutSpec fields that are RolloutPolicy fields of the same name (the thresholds
# are the rest of the policy, grouped)
_POLICY_FIELDS = ("steps", "step_seconds", "analysis_interval_seconds", "failure_limit",
                  "progress_deadline_seconds", "manual_gates", "header_route", "shadow")


class InvalidRolloutError(InvalidInputError):
    """A ModelRollout's spec breaks the contract; the message names the field."""


def parse_spec(data: Any, *, where: str = "ModelRollout spec") -> ModelRolloutSpec:
    """A resource's spec, with the contract's defaults, checked by its rules and the
    policy's (strictly increasing steps, gates among the steps, …)."""
    try:
        spec = ModelRolloutSpec.model_validate(data)
        spec.policy()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(spec)'}: {e['msg']}"
            for e in exc.errors())
        raise InvalidRolloutError(problems, where=where,
                                  accepted="a ModelRollout spec as the CRD describes "
                                           "(kubectl explain modelrollout.spec)") from None
    return spec


# --- the CRD, built from the types above ------------------------------------------------

_KEPT = ("type", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
         "maxLength", "pattern", "minItems", "maxItems", "enum", "description", "format")


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's JSON schema as a Kubernetes structural schema: references inlined,
    optionals unwrapped, only the keywords the API server accepts."""
    if "$ref" in schema:
        return _structural(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    options = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(options) == 1:
        merged = {**options[0], **{k: v for k, v in schema.items() if k != "anyOf"}}
        return _structural(merged, defs)
    out = {k: v for k, v in schema.items() if k in _KEPT}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), (int, float)) and not isinstance(out[bound], bool):
            out[limit], out[bound] = out[bound], True  # OpenAPI v3.0 form
    if "items" in schema:
        out["items"] = _structural(schema["items"], defs)
    if "properties" in schema:
        out["type"] = "object"
        out["properties"] = {name: _structural(s, defs)
                             for name, s in schema["properties"].items()}
        if schema.get("required"):
            out["required"] = list(schema["required"])
    return out


def spec_schema() -> dict[str, Any]:
    """The structural schema of `spec`, from ModelRolloutSpec."""
    raw = ModelRolloutSpec.model_json_schema(by_alias=True)
    return _structural(raw, raw.get("$defs", {}))


def _int(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


STATUS_SCHEMA: dict[str, Any] = {"type": "object", "properties": {
    "phase": {"type": "string", "enum": [p.value for p in Phase]},
    "stableVersion": {"type": "string"}, "canaryVersion": {"type": "string"},
    "step": _int(0, 20), "canaryWeight": _int(0, 100),
    "message": {"type": "string"},
    "observedGeneration": {"type": "integer", "format": "int64"},
    # the controller's record (core/spec.py RolloutRecord): what a restarted operator
    # resumes from
    "rollout": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    "lastAnalysis": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    "conditions": {"type": "array", "items": {
        "type": "object", "required": ["type", "status"],
        "properties": {"type": {"type": "string"},
                       "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                       "reason": {"type": "string"}, "message": {"type": "string"},
                       "lastTransitionTime": {"type": "string", "format": "date-time"}}}}}}


def crd(labels: dict[str, str] | None = None) -> dict[str, Any]:
    """The ModelRollout CustomResourceDefinition."""
    columns = [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Stable", "type": "string", "jsonPath": ".status.stableVersion"},
        {"name": "Canary", "type": "string", "jsonPath": ".status.canaryVersion"},
        {"name": "Weight", "type": "integer", "jsonPath": ".status.canaryWeight"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{PLURAL}.{GROUP}", "labels": dict(labels or {})},
            "spec": {"group": GROUP, "scope": "Namespaced",
                     "names": {"plural": PLURAL, "singular": SINGULAR, "kind": KIND,
                               "shortNames": list(SHORT_NAMES)},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "additionalPrinterColumns": columns,
                                   "schema": {"openAPIV3Schema": {
                                       "type": "object",
                                       "properties": {"spec": spec_schema(),
                                                      "status": STATUS_SCHEMA}}}}]}}
