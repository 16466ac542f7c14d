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
