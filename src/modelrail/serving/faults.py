"""Fault injection, for testing rollouts against bad candidates (never set in production).

`MODELRAIL_FAULTS` holds JSON mapping a model reference to its faults, e.g.
  {"iris:3": {"error_rate": 0.2}, "iris:4": {"latency_ms": 250}, "iris:5": {"never_ready": true}}
  error_rate   share of inference requests answered with an internal error (500 / INTERNAL)
  crash_rate   share of inference requests that raise an unexpected exception (a bug rather
               than a refusal), to prove such errors are answered 500 / INTERNAL and counted
  latency_ms   added to every inference request
  never_ready  the model's warm-up fails, so the server never reports ready
The REST and gRPC paths apply them identically, after validation, where a real fault of the
model would show. The serving process logs a warning at start when any fault is set.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelrail.errors import InvalidInputError


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    crash_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    never_ready: bool = False


@dataclass
class FaultInjector:
    faults: dict[str, Fault]
    rng: random.Random

    def for_model(self, tag: str) -> Fault | None:
        return self.faults.get(tag)

    def should_fail(self, fault: Fault) -> bool:
        return fault.error_rate > 0 and self.rng.random() < fault.error_rate

    def should_crash(self, fault: Fault) -> bool:
        return fault.crash_rate > 0 and self.rng.random() < fault.crash_rate


def parse_faults(raw: str | None, *, seed: int | None = None) -> FaultInjector:
    faults: dict[str, Fault] = {}
    if raw:
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError("not an object")
            faults = {str(k): Fault.model_validate(v) for k, v in data.items()}
        except (ValueError, TypeError, ValidationError) as exc:
            raise InvalidInputError(f"bad fault spec: {exc}", where="MODELRAIL_FAULTS",
                                    accepted='JSON like {"iris:3": {"error_rate": 0.2}}') from exc
    return FaultInjector(faults=faults, rng=random.Random(seed))
