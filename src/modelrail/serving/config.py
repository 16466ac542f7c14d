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
  MODELRAIL_SHADOW             a rollout's shadow phase (shadow.py), unset = no mirror:
                               percent=P,target=URL[,host=H][,queue=N][,concurrency=N]
                               [,timeout=S] — P% (0 < P <= 100) of the answered inference
                               requests are also sent, after answering, to the gateway at
                               URL (http(s)://host[:port], Host header H if given), which
                               routes them to the canary; queue (1-100000, default 256)
                               bounds the samples waiting (full: dropped, counted),
                               concurrency (1-64, default 4) senders per worker, timeout
                               (0 < S <= 60 seconds, default 2) per mirrored request
  MODELRAIL_BATCHING           off (default) or adaptive: REST requests reaching inference in
                               the same event-loop turn share one onnxruntime call, each
                               still validated alone (batching.py; BENCHMARKS.md has where
                               it wins)
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

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
    shadow: ShadowSettings | None = None
    batching: bool = False

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
            batching=parse_batching(env.get("MODELRAIL_BATCHING")),
            shadow=parse_shadow(env.get("MODELRAIL_SHADOW")),
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
            "MODELRAIL_BATCHING": "adaptive" if self.batching else "off",
            **({} if self.header_route is None else
               {"MODELRAIL_HEADER_ROUTE": "=".join(self.header_route)}),
            **({} if self.shadow is None else {"MODELRAIL_SHADOW": self.shadow.to_env()}),
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


BATCHING_MODES = ("off", "adaptive")


def parse_batching(raw: str | None) -> bool:
    """MODELRAIL_BATCHING: off (default) or adaptive."""
    value = (raw or "off").strip().lower()
    if value not in BATCHING_MODES:
        raise InvalidInputError(f"unknown batching mode {str(raw)[:40]!r}",
                                where="MODELRAIL_BATCHING",
                                accepted=" or ".join(BATCHING_MODES))
    return value == "adaptive"


SHADOW_ACCEPTED = ("comma-separated KEY=VALUE: percent=P (required, 0 < P <= 100), "
                   "target=http(s)://HOST[:PORT] (required), host=HOSTNAME, "
                   "queue=1..100000 (default 256), concurrency=1..64 (default 4), "
                   "timeout=SECONDS (0 < S <= 60, default 2)")
_SHADOW_KEYS = ("percent", "target", "host", "queue", "concurrency", "timeout")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:[0-9]{1,5})?$")


@dataclass(frozen=True)
class ShadowSettings:
    """A rollout's shadow phase as this server takes part in it (MODELRAIL_SHADOW): the
    share of answered requests mirrored and where to. Checked when built, so a settings
    object (whether parsed or made by the code that writes the environment) is valid."""

    percent: float  # share of answered inference requests mirrored, 0 < percent <= 100
    target: str  # the gateway's base URL, http(s)://host[:port], no path
    host: str | None = None  # Host header of mirrored requests (a Gateway routes by it)
    queue: int = 256  # samples waiting to be sent; when full, new ones are dropped
    concurrency: int = 4  # sender tasks per worker process
    timeout: float = 2.0  # seconds one mirrored request may take, in all

    def __post_init__(self) -> None:
        if not (_is_number(self.percent) and math.isfinite(self.percent)
                and 0 < self.percent <= 100):
            _shadow_error(f"percent {self.percent!r} is out of range",
                          "percent=P with 0 < P <= 100 (a share of requests, in percent)")
        url = urlsplit(self.target)
        try:
            port = url.port
        except ValueError:
            port = -1
        if (url.scheme not in ("http", "https") or not url.hostname or port == -1
                or url.path or url.query or url.fragment or url.username
                or url.password is not None):
            _shadow_error(f"target {self.target!r} is not a base URL",
                          "target=http(s)://HOST[:PORT], without a path, query or "
                          "credentials (the gateway; /v2/models/NAME/infer is added)")
        if self.host is not None and not _HOSTNAME.match(self.host):
            _shadow_error(f"host {self.host!r} is not a host name",
                          "host=HOSTNAME[:PORT] (letters, digits, '.' and '-'), or no host "
                          "key to send none")
        if not (_is_int(self.queue) and 1 <= self.queue <= 100_000):
            _shadow_error(f"queue {self.queue!r} is out of range",
                          "queue=N, an integer from 1 to 100000")
        if not (_is_int(self.concurrency) and 1 <= self.concurrency <= 64):
            _shadow_error(f"concurrency {self.concurrency!r} is out of range",
                          "concurrency=N, an integer from 1 to 64")
        if not (_is_number(self.timeout) and math.isfinite(self.timeout)
                and 0 < self.timeout <= 60):
            _shadow_error(f"timeout {self.timeout!r} is out of range",
                          "timeout=S, seconds with 0 < S <= 60")

    def to_env(self) -> str:
        """The MODELRAIL_SHADOW value; parse_shadow(s.to_env()) == s."""
        parts = [f"percent={_number(self.percent)}", f"target={self.target}"]
        if self.host is not None:
            parts.append(f"host={self.host}")
        parts += [f"queue={self.queue}", f"concurrency={self.concurrency}",
                  f"timeout={_number(self.timeout)}"]
        return ",".join(parts)


def parse_shadow(raw: str | None) -> ShadowSettings | None:
    """MODELRAIL_SHADOW: `percent=P,target=URL[,host=H][,queue=N][,concurrency=N]
    [,timeout=S]`, or unset (None: no mirror)."""
    if raw is None or not raw.strip():
        return None
    values: dict[str, str] = {}
    for part in raw.split(","):
        key, sep, value = part.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            _shadow_error(f"{part.strip()[:80]!r} is not KEY=VALUE", SHADOW_ACCEPTED)
        if key not in _SHADOW_KEYS:
            _shadow_error(f"unknown key {key[:40]!r}", SHADOW_ACCEPTED)
        if key in values:
            _shadow_error(f"key {key!r} is given twice", "each key once")
        if not value:
            _shadow_error(f"key {key!r} has no value",
                          "a value after '=' (leave out an optional key to take its default)")
        values[key] = value
    for required in ("percent", "target"):
        if required not in values:
            _shadow_error(f"{required} is missing", SHADOW_ACCEPTED)
    return ShadowSettings(
        percent=_shadow_number(values, "percent", "percent=P with 0 < P <= 100"),
        target=values["target"].rstrip("/"),
        host=values.get("host"),
        queue=_shadow_int(values, "queue", 256, "queue=N, an integer from 1 to 100000"),
        concurrency=_shadow_int(values, "concurrency", 4,
                                "concurrency=N, an integer from 1 to 64"),
        timeout=_shadow_number(values, "timeout", "timeout=S, seconds with 0 < S <= 60",
                               default=2.0),
    )


def _shadow_error(what: str, accepted: str) -> NoReturn:
    raise InvalidInputError(what, where="MODELRAIL_SHADOW", accepted=accepted)


def _shadow_number(values: dict[str, str], key: str, accepted: str,
                   default: float | None = None) -> float:
    raw = values.get(key)
    if raw is None and default is not None:
        return default
    try:
        return float(raw or "")
    except ValueError:
        _shadow_error(f"{key} {raw!r} is not a number", accepted)


def _shadow_int(values: dict[str, str], key: str, default: int, accepted: str) -> int:
    raw = values.get(key)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        _shadow_error(f"{key} {raw[:40]!r} is not an integer", accepted)
    if len(raw) > 9:  # int() of thousands of digits raises; any of these is out of range
        _shadow_error(f"{key} {raw[:40]!r} is out of range", accepted)
    return int(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: float) -> str:
    """A float as written in the environment: 20 for 20.0, else repr (exact round trip)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


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
