"""RolloutStatusStore: the RecordStore (ports.py) of the Kubernetes platform — the controller's
RolloutRecord kept in the ModelRollout's status, with the fields people and kubectl read.

`status.rollout` is the record itself (core/spec.py RolloutRecord.to_dict(): the engine's
status with its history, the last action carried out, the running load Job, whether the
clean-up is done), so a restarted operator resumes from it. Beside it, for `kubectl get`
and `modelrail rollout status --kube`: phase, stableVersion, canaryVersion, step,
canaryWeight, message, observedGeneration, lastAnalysis (the verdict a decision was taken
on, every check) and conditions: `Progressing`, plus one condition per cause that keeps
the analysis from passing without being the canary's fault (a Diagnosis: no metrics
provider, no validation sample, the model's task unknown). The schema is api.STATUS_SCHEMA.

The reconciler (reconciler.py) builds one store per reconciliation over the record it read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from modelrail.rollout.core.analysis import Verdict
from modelrail.rollout.core.spec import Phase, RolloutRecord
from modelrail.rollout.ports import RecordStore

HISTORY_KEPT = 100  # history entries kept in the status (the oldest go first)
PROGRESSING = "Progressing"
# the conditions a Diagnosis sets False
METRICS_AVAILABLE = "MetricsAvailable"
VALIDATION_SAMPLE = "ValidationSampleAvailable"
MODEL_TASK_KNOWN = "ModelTaskKnown"


@dataclass(frozen=True)
class Diagnosis:
    """A cause that keeps the analysis from passing and is not the canary's fault."""

    condition: str  # the status condition it sets False (METRICS_AVAILABLE, …)
    reason: str  # CamelCase: the condition's reason and the Warning event's
    message: str  # what is missing, where, and what would fix it


# condition type → its Diagnosis, or None when that cause is cleared; a type left out is
# unknown for now (its last condition stays)
Diagnoses = Mapping[str, Diagnosis | None]


class StatusWriter(Protocol):
    """Where the status goes (kube/platform.py KubeObjects)."""

    def patch_rollout_status(self, name: str, status: dict[str, Any]) -> None:
        """A merge patch of the ModelRollout's status subresource."""


class RolloutStatusStore:
    """The record of one ModelRollout's rollout of `canary` against `stable`."""

    def __init__(self, writer: StatusWriter, *, name: str, generation: int, stable: str,
                 canary: str, record: RolloutRecord | None,
                 conditions: list[dict[str, Any]], diagnoses: Callable[[], Diagnoses],
                 now: float) -> None:
        self.writer = writer
        self.name, self.generation = name, generation
        self.stable, self.canary = stable, canary
        self.record = record
        self.diagnoses = diagnoses
        self.now = now
        self.conditions = [dict(c) for c in conditions]  # as last written
        self._seen = {_key(c) for c in conditions if _diagnosis(c)}
        self._fresh = record is None  # a new rollout: the last one's analysis goes

    def load(self) -> RolloutRecord | None:
        """The record read with the resource (None: this rollout has none yet)."""
        return self.record

    def save(self, *, record: RolloutRecord, verdict: Verdict | None) -> None:
        """Write the record and the fields derived from it into the status."""
        st = record.status
        data = record.to_dict()
        data["status"]["history"] = data["status"]["history"][-HISTORY_KEPT:]
        self.conditions = self._conditions(record)
        status: dict[str, Any] = {
            "phase": st.phase.value,
            "stableVersion": self.canary if st.phase is Phase.SUCCEEDED else self.stable,
            "canaryVersion": self.canary, "step": max(st.step, 0), "canaryWeight": st.weight,
            "message": st.message[:1000], "observedGeneration": self.generation,
            "rollout": data, "conditions": self.conditions}
        if verdict is not None:
            status["lastAnalysis"] = {
                "status": verdict.status.name, "summary": verdict.summary()[:1000],
                "checks": [{"name": c.name, "status": c.status.name, "detail": c.detail,
                            "decisive": c.decisive} for c in verdict.checks]}
        elif self._fresh:
            status["lastAnalysis"] = None  # a merge patch's null removes the field
        self._fresh = False
        self.writer.patch_rollout_status(self.name, status)
        self.record = record

    def raised(self) -> list[Diagnosis]:
        """Diagnoses written since the store was built that were not in the status
        before (each is told once, as a Warning event)."""
        out = []
        for c in self.conditions:
            if _diagnosis(c) and _key(c) not in self._seen:
                self._seen.add(_key(c))
                out.append(Diagnosis(c["type"], c["reason"], c["message"]))
        return out

    def _conditions(self, record: RolloutRecord) -> list[dict[str, Any]]:
        phase = record.status.phase
        previous = {c["type"]: c for c in self.conditions}
        wanted = {PROGRESSING: ("False" if phase.terminal else "True", phase.value,
                                record.status.message[:1000])}
        diagnoses = self.diagnoses()
        for kind, c in previous.items():  # causes nobody can tell about now stay
            if kind != PROGRESSING and kind not in diagnoses:
                wanted[kind] = (c["status"], c.get("reason", ""), c.get("message", ""))
        for kind, d in diagnoses.items():
            if d is not None:
                wanted[kind] = ("False", d.reason, d.message[:1000])
        out = []
        for kind, (status, reason, message) in wanted.items():
            before = previous.get(kind)
            since = (before.get("lastTransitionTime") if before is not None
                     and before.get("status") == status else None)
            out.append({"type": kind, "status": status, "reason": reason, "message": message,
                        "lastTransitionTime": since or _timestamp(self.now)})
        return out


def _diagnosis(condition: dict[str, Any]) -> bool:
    return condition.get("type") != PROGRESSING and condition.get("status") == "False"


def _key(condition: dict[str, Any]) -> tuple[str, str, str]:
    return (condition.get("type", ""), condition.get("reason", ""),
            condition.get("message", ""))


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# mypy checks that the store implements its port
_check_store: type[RecordStore] = RolloutStatusStore
