"""The stack configuration: one typed model for what differs between dev, staging and prod.

Read from `Pulumi.<stack>.yaml` (key `modelrail:<field>`) by the Pulumi program (through
Pulumi's config), by `modelrail render` / `env diff` and by the local platform (directly
from the file). Parsed and validated once, before any resource is created; every error
names the stack, the key, the bad value and what is accepted.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from modelrail.errors import InvalidInputError
from modelrail.models.card import NAME_RE, VERSION_RE
from modelrail.rollout.core.policy import RolloutPolicy

PROJECT = "modelrail"
STACKS = ("dev", "staging", "prod")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]*$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True, coerce_numbers_to_str=True)


def _quantity(v: str) -> str:
    if not _QUANTITY.fullmatch(v):
        raise ValueError("must be a Kubernetes quantity such as 500m, 2, 256Mi or 1Gi")
    return v


class Resources(_Model):
    cpu_request: str
    memory_request: str
    cpu_limit: str
    memory_limit: str

    _check = field_validator("cpu_request", "memory_request", "cpu_limit",
                             "memory_limit")(_quantity)


class Autoscaling(_Model):
    min_replicas: int = Field(ge=1, le=100)
    max_replicas: int = Field(ge=1, le=500)
    target_cpu_utilization: int = Field(ge=10, le=95)
    scale_up_stabilization_seconds: int = Field(ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(ge=0, le=3600)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is above maxReplicas "
                             f"({self.max_replicas})")
        return self


class ModelSpec(_Model):
    name: str
    version: str
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError("must be 1-63 lowercase letters, digits and '-'")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not VERSION_RE.fullmatch(v) or v == "latest":
            raise ValueError("must be an exact version (lowercase letters, digits, '-', '_', "
                             "'.'; not 'latest')")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError("must be 64 lowercase hex digits (the registry's sha256)")
        return v

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}" + (f"@sha256:{self.sha256}" if self.sha256 else "")


class Quota(_Model):
    cpu: str
    memory: str
    pods: int = Field(ge=1, le=10_000)

    _check = field_validator("cpu", "memory")(_quantity)


_ADDRESS = re.compile(r"^https?://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?$")


class Gateway(_Model):
    name: str
    namespace: str
    # the gateway's HTTP listener as pods of the stack reach it (a Service URL): where the
    # stable servers' mirror sends in a shadow phase; required when rollout.shadow is set
    address: str | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _check(cls, v: str) -> str:
        return _dns(v)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _ADDRESS.fullmatch(v):
            raise ValueError("must be http(s)://host[:port] with no path, e.g. "
                             "http://modelrail-gateway.gateway-system.svc:80")
        return v


def _dns(v: str) -> str:
    if not _DNS_LABEL.fullmatch(v):
        raise ValueError("must be a DNS label: 1-63 lowercase letters, digits and '-'")
    return v


class StackConfig(_Model):
    """Everything that may differ between environments; nothing else may."""

    environment: str
    namespace: str
    image: str
    controller_image: str
    loadtest_image: str
    hostname: str
    gateway: Gateway
    monitoring_namespace: str
    workers: int = Field(ge=1, le=32)
    resources: Resources
    autoscaling: Autoscaling
    quota: Quota
    rollout: RolloutPolicy
    models: list[ModelSpec] = Field(min_length=1, max_length=50)

    @field_validator("environment", "namespace", "monitoring_namespace")
    @classmethod
    def _labels(cls, v: str) -> str:
        return _dns(v)

    @field_validator("image", "controller_image", "loadtest_image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not _IMAGE.fullmatch(v) or v.endswith(":latest") or ":" not in v.rsplit("/", 1)[-1]:
            raise ValueError("must be a pinned image reference repo/name:tag or @sha256:… "
                             "(':latest' is not reproducible)")
        return v

    @field_validator("hostname")
    @classmethod
    def _host(cls, v: str) -> str:
        if not _HOSTNAME.fullmatch(v):
            raise ValueError("must be a DNS hostname such as models.example.com")
        return v

    @model_validator(mode="after")
    def _shadow_needs_address(self) -> StackConfig:
        if self.rollout.shadow is not None and self.gateway.address is None:
            raise ValueError("rollout.shadow needs gateway.address: the URL at which the "
                             "stable servers reach the gateway to mirror requests")
        return self

    @field_validator("models")
    @classmethod
    def _unique(cls, v: list[ModelSpec]) -> list[ModelSpec]:
        names = [m.name for m in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"model {dup[0]!r} is listed twice; one version per model")
        return v


def parse(stack: str, values: dict[str, Any], *, source: str) -> StackConfig:
    """Validate `modelrail:*` config values; errors name stack, key, value and rule."""
    prefix = f"{PROJECT}:"
    foreign = [k for k in values if ":" in k and not k.startswith(prefix)
               and not k.startswith("kubernetes:")]
    if foreign:
        raise InvalidInputError(f"unknown config namespace in key {foreign[0]!r}",
                                where=f"stack {stack} ({source})",
                                accepted=f"keys named {prefix}<key> (or kubernetes:<key>)")
    data = {k[len(prefix):]: v for k, v in values.items() if k.startswith(prefix)}
    try:
        return StackConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}{loc}" if loc else prefix + "*"
        value = err.get("input")
        shown = "missing" if err["type"] == "missing" else f"{value!r}"
        raise InvalidInputError(
            f"key {key}: {err['msg'].removeprefix('Value error, ')} (value: {shown})",
            where=f"stack {stack} ({source})",
            accepted=_accepted(loc)) from exc


def _accepted(loc: str) -> str:
    field = loc.split(".", maxsplit=1)[0]
    hints = {
        "models": "a list of {name, version, sha256?} with exact versions",
        "autoscaling": "{minReplicas, maxReplicas, targetCpuUtilization, "
                       "scaleUpStabilizationSeconds, scaleDownStabilizationSeconds}",
        "rollout": "see Pulumi.dev.yaml for every rollout key and its range",
        "resources": "{cpuRequest, memoryRequest, cpuLimit, memoryLimit} as quantities",
        "quota": "{cpu, memory, pods}",
    }
    return hints.get(field, "see Pulumi.dev.yaml and the README's configuration table")


def stack_file(stack: str, root: Path) -> Path:
    return root / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, root: Path) -> StackConfig:
    """Read and validate `Pulumi.<stack>.yaml` under root (the project directory)."""
    path = stack_file(stack, root)
    if not path.is_file():
        known = sorted(p.name.split(".")[1] for p in root.glob("Pulumi.*.yaml"))
        raise InvalidInputError(f"no stack file {path.name}", where=str(root),
                                accepted=f"one of the stacks: {', '.join(known) or 'none'}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"not valid YAML: {exc}", where=str(path),
                                accepted="a Pulumi stack file") from exc
    values = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(values, dict):
        raise InvalidInputError("no 'config:' mapping", where=str(path),
                                accepted="a Pulumi stack file with config: {modelrail:<key>: …}")
    return parse(stack, values, source=path.name)


def from_pulumi(stack: str) -> StackConfig:
    """The running Pulumi program's configuration (structured values arrive as JSON)."""
    from pulumi.runtime import config as runtime_config

    raw: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = value
        if isinstance(value, str) and value[:1] in "[{":
            with contextlib.suppress(json.JSONDecodeError):
                values[key] = json.loads(value)
    return parse(stack, values, source="Pulumi config")
