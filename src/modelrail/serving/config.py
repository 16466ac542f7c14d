"""Serving configuration, read once per worker from the environment.

BentoML starts workers by importing the service module, so environment variables are the
one channel that reaches every worker (and the one a Kubernetes Deployment sets):
  MODELRAIL_MODELS             comma-separated NAME:VERSION[@sha256:HEX] (required)
  MODELRAIL_GRPC_PORT          gRPC port, default 8001 (HTTP is BentoML's --port)
  MODELRAIL_GRPC_HOST          gRPC bind address, default 0.0.0.0
  MODELRAIL_WORKERS            worker processes, default 1
  MODELRAIL_MAX_REQUEST_BYTES  payload limit for REST and gRPC, default 8 MiB
  MODELRAIL_MAX_ROWS           rows per request, default 65536
  MODELRAIL_MAX_DIMS           dimensions per tensor shape, default 8 (checked before the shape
                               is read any further)
  MODELRAIL_MAX_ELEMENTS       elements per tensor (and per dimension), default 4194304; the
                               element count is never computed beyond it
  MODELRAIL_HEADER_TIMEOUT     seconds a connection may take to send a request's headers,
                               default 10 (slow or idle clients are disconnected)
  MODELRAIL_BODY_TIMEOUT       seconds a client may take to send a request's body, default 30
  MODELRAIL_MAX_CONNECTIONS    open HTTP connections per worker, default 1000; more are
                               answered 503 and closed
  MODELRAIL_DRAIN_SECONDS      grace period for in-flight gRPC calls at shutdown, default 10
  MODELRAIL_ACCESS_LOG         1 to log every request (default 0: /metrics counts them all)
  MODELRAIL_TRACING            1 to keep BentoML's OpenTelemetry spans on inference routes
                               (default 0: a span per request costs more than the inference)
  MODELRAIL_FAULTS             fault injection for rollout tests (faults.py); unset in production
  MODELRAIL_HEADER_ROUTE       NAME=VALUE: requests carrying that header and exact value are
                               counted with route="header" (a rollout's headerRoute: testers,
                               a cohort), the others route="split"; set from the stack
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from modelrail.errors import InvalidInputError
from modelrail.models.card import parse_ref

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelRef:
    """A pinned model to serve; `sha256`, when given, must match the registered one."""

    name: str
    version: str
    sha256: str | None = None

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def __str__(self) -> str:
        return self.tag + (f"@sha256:{self.sha256}" if self.sha256 else "")


def parse_model_ref(text: str) -> ModelRef:
    ref, _, digest = text.strip().partition("@")
    name, version = parse_ref(ref)
    sha: str | None = None
    if digest:
        algo, _, hexdigest = digest.partition(":")
        if algo != "sha256" or not _SHA_RE.fullmatch(hexdigest):
            raise InvalidInputError(f"bad digest in {text!r}", where="model reference",
                                    accepted="NAME:VERSION or NAME:VERSION@sha256:<64 hex>")
        sha = hexdigest
    return ModelRef(name=name, version=version, sha256=sha)


@dataclass(frozen=True)
class Limits:
    """What one request may cost, checked before anything proportional to it runs."""

    max_rows: int = 65536
    max_dims: int = 8
    max_elements: int = 4 * 1024 * 1024
    max_request_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True)
class ServingConfig:
    models: tuple[ModelRef, ...]
    grpc_port: int = 8001
    grpc_host: str = "0.0.0.0"
    workers: int = 1
    max_request_bytes: int = 8 * 1024 * 1024
    max_rows: int = 65536
    max_dims: int = 8
    max_elements: int = 4 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000
    drain_seconds: float = 10.0
    access_log: bool = False
    tracing: bool = False
    header_route: tuple[str, str] | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingConfig:
        env = dict(os.environ) if env is None else env
        raw = env.get("MODELRAIL_MODELS", "")
        if not raw.strip():
            raise InvalidInputError("no models to serve", where="MODELRAIL_MODELS",
                                    accepted="comma-separated NAME:VERSION[@sha256:HEX]")
        models = tuple(parse_model_ref(p) for p in raw.split(",") if p.strip())
        if len({m.tag for m in models}) != len(models):
            raise InvalidInputError(f"a model is listed twice: {raw}",
                                    where="MODELRAIL_MODELS", accepted="each NAME:VERSION once")
        return cls(
            models=models,
            grpc_port=_int(env, "MODELRAIL_GRPC_PORT", 8001, 1, 65535),
            grpc_host=env.get("MODELRAIL_GRPC_HOST") or "0.0.0.0",
            workers=_int(env, "MODELRAIL_WORKERS", 1, 1, 64),
            max_request_bytes=_int(env, "MODELRAIL_MAX_REQUEST_BYTES", 8 * 1024 * 1024,
                                   1024, 1 << 31),
            max_rows=_int(env, "MODELRAIL_MAX_ROWS", 65536, 1, 10_000_000),
            max_dims=_int(env, "MODELRAIL_MAX_DIMS", 8, 2, 32),
            max_elements=_int(env, "MODELRAIL_MAX_ELEMENTS", 4 * 1024 * 1024, 1, 1 << 30),
            header_timeout=float(_int(env, "MODELRAIL_HEADER_TIMEOUT", 10, 1, 3600)),
            body_timeout=float(_int(env, "MODELRAIL_BODY_TIMEOUT", 30, 1, 3600)),
            max_connections=_int(env, "MODELRAIL_MAX_CONNECTIONS", 1000, 1, 100_000),
            drain_seconds=float(_int(env, "MODELRAIL_DRAIN_SECONDS", 10, 0, 3600)),
            access_log=bool(_int(env, "MODELRAIL_ACCESS_LOG", 0, 0, 1)),
            tracing=bool(_int(env, "MODELRAIL_TRACING", 0, 0, 1)),
            header_route=parse_header_route(env.get("MODELRAIL_HEADER_ROUTE")),
        )

    @property
    def limits(self) -> Limits:
        return Limits(max_rows=self.max_rows, max_dims=self.max_dims,
                      max_elements=self.max_elements,
                      max_request_bytes=self.max_request_bytes)

    def to_env(self) -> dict[str, str]:
        return {
            "MODELRAIL_MODELS": ",".join(str(m) for m in self.models),
            "MODELRAIL_GRPC_PORT": str(self.grpc_port),
            "MODELRAIL_GRPC_HOST": self.grpc_host,
            "MODELRAIL_WORKERS": str(self.workers),
            "MODELRAIL_MAX_REQUEST_BYTES": str(self.max_request_bytes),
            "MODELRAIL_MAX_ROWS": str(self.max_rows),
            "MODELRAIL_MAX_DIMS": str(self.max_dims),
            "MODELRAIL_MAX_ELEMENTS": str(self.max_elements),
            "MODELRAIL_HEADER_TIMEOUT": str(int(self.header_timeout)),
            "MODELRAIL_BODY_TIMEOUT": str(int(self.body_timeout)),
            "MODELRAIL_MAX_CONNECTIONS": str(self.max_connections),
            "MODELRAIL_DRAIN_SECONDS": str(int(self.drain_seconds)),
            "MODELRAIL_ACCESS_LOG": str(int(self.access_log)),
            "MODELRAIL_TRACING": str(int(self.tracing)),
            **({} if self.header_route is None else
               {"MODELRAIL_HEADER_ROUTE": "=".join(self.header_route)}),
        }


_HEADER_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$")
_HEADER_VALUE = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")


def parse_header_route(raw: str | None) -> tuple[str, str] | None:
    """MODELRAIL_HEADER_ROUTE: `name=value` (the stack's headerRoute), or unset."""
    if not raw:
        return None
    name, sep, value = raw.partition("=")
    if not sep or not _HEADER_NAME.match(name) or not _HEADER_VALUE.match(value):
        raise InvalidInputError(f"bad header route {raw!r}", where="MODELRAIL_HEADER_ROUTE",
                                accepted="NAME=VALUE: a lowercase header name and a value "
                                         "of letters, digits and ._~-")
    return name, value


def _int(env: dict[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise InvalidInputError(f"bad value {raw!r}", where=key,
                                accepted=f"an integer from {lo} to {hi}")
    return value
