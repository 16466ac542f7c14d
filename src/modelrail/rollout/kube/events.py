"""EventJournal: the Journal (ports.py) of the Kubernetes platform — each decision of the
controller that moved the rollout (a new action or phase) becomes a Kubernetes Event on the
ModelRollout, as `kubectl describe` shows them.

Reasons: WeightChanged, Promoting, RollingBack, and the phase a rollout ends in (Succeeded,
RolledBack, Failed, Aborted) from the decisions; the reconciler (reconciler.py) adds its
own (Started, Restarted, NoStable, InvalidSpec, Blocked, and each Diagnosis). The journal
only collects them; the operator (operator.py) posts them through kopf.
"""

from __future__ import annotations

from modelrail.rollout.core.engine import Action, Decision, Observation
from modelrail.rollout.core.spec import Phase, RolloutStatus
from modelrail.rollout.ports import Journal

Event = tuple[str, str, str]  # type (Normal/Warning), reason, message
BAD = (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED, Phase.ABORTED)
REASONS = {Action.SET_WEIGHT: "WeightChanged", Action.PROMOTE: "Promoting",
           Action.ROLLBACK: "RollingBack"}  # COMPLETE and HOLD: the phase's name


class EventJournal:
    """The Events of one reconciliation, in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def decided(self, *, before: RolloutStatus, decision: Decision,
                observation: Observation) -> None:
        """An Event for a decision that added to the rollout's history; none for a hold."""
        if len(decision.status.history) == len(before.history):
            return
        entry = decision.status.history[-1]
        phase = decision.status.phase
        reason = REASONS.get(Action(entry["action"]), phase.value)
        self.tell("Warning" if phase in BAD else "Normal", reason, str(entry["message"]))

    def tell(self, kind: str, reason: str, message: str) -> None:
        """Any other Event (messages are cut to 1000 characters)."""
        self.events.append((kind, reason, message[:1000]))


# mypy checks that the journal implements its port
_check_journal: type[Journal] = EventJournal
