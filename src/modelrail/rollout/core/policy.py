"""The canary policy: steps, pace and thresholds, validated.

The stack configuration (infra/config.py) holds one per environment
(`modelrail:rollout` in Pulumi.<env>.yaml); a ModelRollout resource carries one in its spec
(rollout/api.py parses it with this model); `RolloutSpec.from_policy` turns it into what the
engine runs. Field names are camelCase in YAML and JSON, snake_case in Python.
"""

from __future__ import annotations

import itertools

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

# request headers a gateway or the serving stack gives meaning to: never a cohort header
RESERVED_HEADERS = frozenset({
    "host", "content-length", "content-type", "content-encoding", "transfer-encoding",
    "connection", "upgrade", "te", "trailer", "keep-alive", "proxy-connection", "expect",
    "authorization", "cookie", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
    "user-agent", "accept", "accept-encoding"})

# the header the stable servers' mirror marks its requests with (serving/shadow.py); the
# route's shadow rule matches it, so no stack may use it as a cohort header
SHADOW_HEADER = "x-modelrail-shadow"


class HeaderRoute(BaseModel):
    """Requests carrying header `name` with exactly `value` reach the canary whatever its
    weight, while one runs (testers, an A/B cohort); their traffic is analysed apart from
    the weighted split's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?$",
                      description="a lowercase header name, e.g. x-model-cohort")
    value: str = Field(pattern=r"^[A-Za-z0-9._~-]{1,128}$",
                       description="the exact value that selects the canary")

    @model_validator(mode="after")
    def _not_reserved(self) -> HeaderRoute:
        if self.name in RESERVED_HEADERS or self.name.startswith(
                ("grpc-", "x-forwarded-", SHADOW_HEADER)):
            raise ValueError(f"headerRoute.name {self.name!r} is a header proxies or gRPC "
                             "give a meaning to; use one of your own, e.g. x-model-cohort")
        return self


class ShadowPolicy(BaseModel):
    """The shadow phase: after the pre-traffic analysis and before the first weight, the
    stable servers mirror `percent`% of the requests they answer to the canary (users get
    stable's answer only) and pair the canary's answers with their own. The phase passes
    once `minPairs` answers were compared and the canary kept the model gate's disagreement
    limit and the error and latency limits under that traffic; too few pairs holds it until
    the progress deadline (then it fails)."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)

    percent: float = Field(gt=0.0, le=100.0,
                           description="share of stable's answered requests mirrored")
    min_pairs: int = Field(default=200, ge=10, le=10_000_000,
                           description="answers compared before the phase can pass")
    queue: int = Field(default=256, ge=1, le=100_000,
                       description="mirror queue per server worker; full means dropped")
    timeout_seconds: float = Field(default=2.0, gt=0.0, le=60.0,
                                   description="how long the mirror waits for the canary")


class RolloutPolicy(BaseModel):
    """Canary policy written into each model's ModelRollout resource."""

    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel,
                              populate_by_name=True)

    steps: list[int] = Field(min_length=1, max_length=20)
    step_seconds: int = Field(ge=5, le=3600)
    analysis_interval_seconds: int = Field(ge=1, le=600)
    max_error_rate: float = Field(ge=0.0, le=1.0)
    max_p99_latency_ms: float = Field(gt=0.0, le=60_000.0)
    max_latency_ratio: float = Field(ge=1.0, le=100.0)
    max_error_rate_increase: float = Field(ge=0.0, le=1.0)
    max_label_disagreement: float = Field(ge=0.0, le=1.0)
    min_requests_per_step: int = Field(ge=1, le=1_000_000)
    failure_limit: int = Field(ge=0, le=100)
    progress_deadline_seconds: int = Field(ge=30, le=86_400)
    manual_gates: list[int] = Field(default_factory=list)
    header_route: HeaderRoute | None = None
    shadow: ShadowPolicy | None = None

    @model_validator(mode="after")
    def _steps(self) -> RolloutPolicy:
        s = self.steps
        if any(w <= 0 or w > 100 for w in s):
            raise ValueError(f"steps {s}: every weight must be from 1 to 100")
        if any(b <= a for a, b in itertools.pairwise(s)):
            raise ValueError(f"steps {s} are not strictly increasing")
        if self.analysis_interval_seconds > self.step_seconds:
            raise ValueError("analysisIntervalSeconds is longer than stepSeconds")
        unknown = [g for g in self.manual_gates if g not in s]
        if unknown:
            raise ValueError(f"manualGates {unknown} are not weights in steps {s}")
        return self
