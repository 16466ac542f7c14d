"""What a rollout is asked to do (RolloutSpec) and where it stands (RolloutStatus).

Both are frozen and JSON-serialisable, so a controller can persist the status after every
decision and resume from it after a restart. Built from the stack configuration's
RolloutPolicy (`from_policy`) or from a ModelRollout resource's spec.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from modelrail.rollout.core.policy import RolloutPolicy


class Phase(StrEnum):
    """Where a rollout stands; the allowed moves between phases are engine.TRANSITIONS."""

    INITIALIZING = "Initializing"  # canary starting; no traffic yet
    SHADOWING = "Shadowing"  # stable mirrors a share of its requests; canary answers nobody
    PROGRESSING = "Progressing"  # canary takes its step's weight; each interval is analysed
    PAUSED = "Paused"  # at a manual gate: waits for promote (analysis still guards it)
    PROMOTING = "Promoting"  # all steps passed: stable takes the new version
    SUCCEEDED = "Succeeded"  # terminal: new version is stable, canary gone
    ROLLING_BACK = "RollingBack"  # traffic returning to stable, canary being removed
    ROLLED_BACK = "RolledBack"  # terminal: analysis failed, stable serves everything
    FAILED = "Failed"  # terminal: progress deadline passed (no data, or stuck); on stable
    ABORTED = "Aborted"  # terminal: a person aborted; on stable

    @property
    def terminal(self) -> bool:
        return self in (Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED)


@dataclass(frozen=True)
class Thresholds:
    """Limits a canary must keep; absolute and relative to stable."""

    max_error_rate: float  # canary errors / requests
    max_p99_latency_ms: float
    max_latency_ratio: float  # canary p99 / stable p99
    max_error_rate_increase: float  # canary error rate - stable error rate
    max_label_disagreement: float  # model gate: share of inputs answered differently
    min_requests: int  # fewer canary requests in an interval is "no data"


@dataclass(frozen=True)
class ShadowSpec:
    """The shadow phase (RolloutPolicy.shadow): stable mirrors `percent`% of the requests
    it answers to the canary; `min_pairs` compared answers are needed to pass."""

    percent: float
    min_pairs: int


@dataclass(frozen=True)
class RolloutSpec:
    model: str
    stable_version: str
    canary_version: str
    steps: tuple[int, ...]  # canary weights, strictly increasing, last one usually 100
    step_seconds: float  # time a step must hold, healthy, at its weight
    thresholds: Thresholds
    failure_limit: int  # inconclusive-free failed analyses tolerated before rolling back
    progress_deadline_seconds: float  # no progress for this long ends the rollout (Failed)
    manual_gates: tuple[int, ...] = ()  # weights at which to pause for a person
    require_model_gate: bool = True  # no model-gate data is "no data"
    require_load: bool = True  # a step needs a load test that produced requests
    # analyse the ready canary under load sent straight to it (and the model gate) before it
    # takes any user traffic: a bad canary is rolled back with nobody exposed to it
    pre_traffic_analysis: bool = False
    # (header name, value): requests carrying it reach the canary at any weight while one
    # runs; analysed apart from the weighted split (None: no header routing)
    header_route: tuple[str, str] | None = None
    # after the pre-traffic analysis, before the first weight: judge the canary's answers to
    # mirrored user requests (None: no shadow phase)
    shadow: ShadowSpec | None = None

    @classmethod
    def from_policy(cls, policy: RolloutPolicy, *, model: str, stable_version: str,
                    canary_version: str) -> RolloutSpec:
        return cls(
            model=model, stable_version=stable_version, canary_version=canary_version,
            steps=tuple(policy.steps), step_seconds=policy.step_seconds,
            thresholds=Thresholds(
                max_error_rate=policy.max_error_rate,
                max_p99_latency_ms=policy.max_p99_latency_ms,
                max_latency_ratio=policy.max_latency_ratio,
                max_error_rate_increase=policy.max_error_rate_increase,
                max_label_disagreement=policy.max_label_disagreement,
                min_requests=policy.min_requests_per_step),
            failure_limit=policy.failure_limit,
            progress_deadline_seconds=policy.progress_deadline_seconds,
            manual_gates=tuple(policy.manual_gates),
            header_route=(None if policy.header_route is None else
                          (policy.header_route.name, policy.header_route.value)),
            shadow=(None if policy.shadow is None else
                    ShadowSpec(percent=policy.shadow.percent,
                               min_pairs=policy.shadow.min_pairs)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutSpec:
        data = dict(data)
        data["thresholds"] = Thresholds(**data["thresholds"])
        data["steps"] = tuple(data["steps"])
        data["manual_gates"] = tuple(data.get("manual_gates", ()))
        if data.get("header_route") is not None:
            data["header_route"] = tuple(data["header_route"])
        if data.get("shadow") is not None:
            data["shadow"] = ShadowSpec(**data["shadow"])
        return cls(**data)


@dataclass(frozen=True)
class RolloutStatus:
    """The persisted state. `seq` counts decisions that produced an action, so an adapter
    that restarts knows which actions it already carried out."""

    phase: Phase = Phase.INITIALIZING
    step: int = -1  # index into spec.steps; -1 before the first step
    weight: int = 0  # desired canary weight
    started_at: float = 0.0
    step_started_at: float | None = None  # when the data plane confirmed `weight`
    last_progress_at: float = 0.0
    failures: int = 0  # failed analyses at the current step
    seq: int = 0
    message: str = ""
    history: tuple[dict[str, Any], ...] = field(default=())
    # the shadow phase's evidence so far, summed over its intervals (analysis.ShadowSample
    # fields); None before it starts or without one
    shadow: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        data["history"] = list(self.history)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutStatus:
        data = dict(data)
        data["phase"] = Phase(data["phase"])
        data["history"] = tuple(data.get("history", ()))
        return cls(**data)

    def evolve(self, **changes: Any) -> RolloutStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class RolloutRecord:
    """What the controller persists for one rollout, before and after each action: the
    engine's status and how far the controller got in carrying it out."""

    status: RolloutStatus
    executed_seq: int = 0  # the last status.seq whose action was carried out
    load_handle: str | None = None  # the running load of the current analysis interval
    interval_started_at: float | None = None  # when that interval's load started
    # terminal and nothing left to do: an abort or a deadline ends the rollout at once, and
    # its traffic and canary are cleaned up on the ticks after
    finished: bool = False
    # the headerRoute's requests were turned to the canary (turned back when it is retired)
    header_to_canary: bool = False
    # the route's shadow rule points at the canary: stable's mirror reaches it
    shadow_on: bool = False

    def evolve(self, **changes: Any) -> RolloutRecord:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status.to_dict(), "executed_seq": self.executed_seq,
                "load_handle": self.load_handle,
                "interval_started_at": self.interval_started_at, "finished": self.finished,
                "header_to_canary": self.header_to_canary, "shadow_on": self.shadow_on}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RolloutRecord:
        return cls(status=RolloutStatus.from_dict(data["status"]),
                   executed_seq=int(data.get("executed_seq", 0)),
                   load_handle=data.get("load_handle") or None,
                   interval_started_at=data.get("interval_started_at"),
                   finished=bool(data.get("finished", False)),
                   header_to_canary=bool(data.get("header_to_canary", False)),
                   shadow_on=bool(data.get("shadow_on", False)))
