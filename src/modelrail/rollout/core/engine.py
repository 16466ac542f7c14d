"""The rollout state machine: pure, deterministic, one small function per phase.

`decide(spec, status, observation)` returns the next status and the one action an adapter
must carry out. No I/O, no clock (the observation carries `now`), no Kubernetes. Every
phase change is checked against TRANSITIONS. Actions are idempotent (set a weight, promote,
roll back), and each new action bumps `status.seq`, so an adapter that persisted the
status and the last seq it executed can resume after a crash without repeating or losing
one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum

from modelrail.rollout.core.analysis import (
    Measurements,
    ShadowSample,
    Status,
    Verdict,
    analyse,
    analyse_shadow,
)
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus

# The allowed moves; staying in a phase is always allowed.
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.INITIALIZING: frozenset({Phase.SHADOWING, Phase.PROGRESSING, Phase.ROLLING_BACK,
                                   Phase.FAILED, Phase.ABORTED}),
    Phase.SHADOWING: frozenset({Phase.PROGRESSING, Phase.ROLLING_BACK, Phase.FAILED,
                                Phase.ABORTED}),
    Phase.PROGRESSING: frozenset({Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTING,
                                  Phase.ROLLING_BACK, Phase.FAILED, Phase.ABORTED}),
    Phase.PAUSED: frozenset({Phase.PROGRESSING, Phase.PROMOTING, Phase.ROLLING_BACK,
                             Phase.ABORTED}),
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED, Phase.FAILED}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK}),
    Phase.SUCCEEDED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.FAILED: frozenset(),
    Phase.ABORTED: frozenset(),
}


class Action(StrEnum):
    """What the adapter must do; HOLD means nothing new."""

    HOLD = "hold"
    SET_WEIGHT = "set_weight"  # route `weight`% to the canary, then confirm on the data plane
    PROMOTE = "promote"  # stable takes the canary version, then traffic back to stable 100
    ROLLBACK = "rollback"  # traffic to stable 100, remove the canary
    COMPLETE = "complete"  # nothing left to do; the rollout is over


@dataclass(frozen=True)
class Observation:
    """What the adapter saw since the last decision."""

    now: float
    canary_ready: bool = False
    canary_scaling: bool = False  # canary instances asked for are not ready yet (scale-up)
    observed_weight: int | None = None  # the canary weight the data plane really applies
    measurements: Measurements | None = None
    promoted: bool = False  # stable now runs the new version and is ready
    rolled_back: bool = False  # traffic is verified back on stable, canary removed
    abort: bool = False  # a person asked to abort
    resume: bool = False  # a person passed a manual gate (promote)


@dataclass(frozen=True)
class Decision:
    status: RolloutStatus
    action: Action
    weight: int
    verdict: Verdict | None = None


class IllegalTransitionError(RuntimeError):
    """A phase function tried a move the table does not allow: a bug, never user input."""


def start(now: float) -> RolloutStatus:
    return RolloutStatus(phase=Phase.INITIALIZING, started_at=now, last_progress_at=now,
                         message="waiting for the canary to become ready")


def decide(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if status.phase.terminal:
        return Decision(status, Action.COMPLETE, status.weight)
    decision = _PHASES[status.phase](spec, status, obs)
    new = decision.status
    if new.phase != status.phase and new.phase not in TRANSITIONS[status.phase]:
        raise IllegalTransitionError(f"{status.phase.value} -> {new.phase.value}")
    last = last_action(status)
    acting = decision.action not in (Action.HOLD, Action.COMPLETE)
    fresh = acting and (last is None or (decision.action.value, decision.weight) != last)
    if fresh:
        new = new.evolve(seq=status.seq + 1)
    if new.phase != status.phase or fresh:
        # the audit trail: every phase change and every new action, with its evidence
        entry = {"seq": new.seq, "at": obs.now, "from": status.phase.value,
                 "to": new.phase.value, "action": decision.action.value,
                 "weight": decision.weight, "message": new.message,
                 "verdict": decision.verdict.summary() if decision.verdict else None}
        new = new.evolve(history=(*status.history, entry))
    return Decision(new, decision.action, decision.weight, decision.verdict)


def last_action(status: RolloutStatus) -> tuple[str, int] | None:
    """The most recent action (and its weight) the status asked for: what an adapter that
    restarts re-applies if it cannot prove it already did."""
    for entry in reversed(status.history):
        if entry["action"] not in (Action.HOLD.value, Action.COMPLETE.value):
            return str(entry["action"]), int(entry["weight"])
    return None


def _hold(status: RolloutStatus, message: str | None = None,
          verdict: Verdict | None = None) -> Decision:
    return Decision(status.evolve(message=message or status.message), Action.HOLD,
                    status.weight, verdict)


def _rollback(status: RolloutStatus, phase: Phase, message: str,
              verdict: Verdict | None = None) -> Decision:
    return Decision(status.evolve(phase=phase, weight=0, message=message),
                    Action.ROLLBACK, 0, verdict)


def _deadline_passed(spec: RolloutSpec, status: RolloutStatus, now: float) -> bool:
    return now - status.last_progress_at > spec.progress_deadline_seconds


def _set_step(status: RolloutStatus, spec: RolloutSpec, index: int, now: float,
              phase: Phase = Phase.PROGRESSING, verdict: Verdict | None = None) -> Decision:
    weight = spec.steps[index]
    return Decision(status.evolve(phase=phase, step=index, weight=weight,
                                  step_started_at=None, failures=0, last_progress_at=now,
                                  message=f"step {index + 1}/{len(spec.steps)}: "
                                          f"canary weight {weight}%"),
                    Action.SET_WEIGHT, weight, verdict)


def _first_traffic(spec: RolloutSpec, status: RolloutStatus, now: float,
                   verdict: Verdict | None = None) -> Decision:
    """Out of the pre-traffic stage: into the shadow phase if the policy has one (the
    controller turns stable's mirror to the canary), else to the first weight."""
    if spec.shadow is None:
        return _set_step(status, spec, 0, now, verdict=verdict)
    return Decision(status.evolve(phase=Phase.SHADOWING, last_progress_at=now,
                                  shadow=ShadowSample().as_dict(),
                                  message=f"shadow phase: stable mirrors "
                                          f"{spec.shadow.percent:g}% of its requests to the "
                                          "canary, which answers nobody"),
                    Action.HOLD, 0, verdict)


def _initializing(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if obs.abort:
        return _rollback(status, Phase.ABORTED, "aborted before the canary took traffic")
    if obs.canary_ready and not spec.pre_traffic_analysis:
        return _first_traffic(spec, status, obs.now)
    if obs.canary_ready:
        # before any user traffic: load straight at the canary, metrics, the model gate
        verdict = analyse(spec, obs.measurements) if obs.measurements else None
        if verdict is not None and verdict.status is Status.FAIL:
            return _rollback(status, Phase.ROLLING_BACK, "pre-traffic analysis failed (no "
                             f"user traffic reached it): {verdict.summary()}", verdict)
        if verdict is not None and verdict.status is Status.PASS:
            return _first_traffic(spec, status, obs.now, verdict)
        if _deadline_passed(spec, status, obs.now):
            return _rollback(status, Phase.FAILED, "no conclusive pre-traffic analysis "
                             "before the progress deadline" +
                             (f": {verdict.summary()}" if verdict else ""), verdict)
        return _hold(status, "canary ready: pre-traffic analysis" +
                     (f": {verdict.summary()}" if verdict else ""), verdict)
    if _deadline_passed(spec, status, obs.now):
        return _rollback(status, Phase.FAILED, "the canary never became ready before the "
                                               "progress deadline")
    return _hold(status, "waiting for the canary to become ready")


def _shadowing(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    """Stable mirrors a share of real requests to the canary; its answers are paired with
    stable's. The evidence adds up over the phase (status.shadow); a certain failure rolls
    back at once, enough pairs within the limits go to the first weight, too few hold
    until the progress deadline."""
    if obs.abort:
        return _rollback(status, Phase.ABORTED, "aborted in the shadow phase (no user "
                                                "request was answered by the canary)")
    verdict = None
    if obs.measurements is not None:
        m = obs.measurements
        if m.shadow is not None:
            total = ShadowSample(**(status.shadow or {})).plus(m.shadow)
            status = status.evolve(shadow=total.as_dict())
            m = replace(m, shadow=total)
        else:  # the mirror's counters could not be read: this interval adds nothing
            m = replace(m, shadow=ShadowSample(**(status.shadow or {})))
        verdict = analyse_shadow(spec, m)
        if verdict.status is Status.FAIL:
            return _rollback(status, Phase.ROLLING_BACK, "shadow phase failed (no user "
                             f"request was answered by the canary): {verdict.summary()}",
                             verdict)
        if verdict.status is Status.PASS:
            return _set_step(status, spec, 0, obs.now, verdict=verdict)
    if _deadline_passed(spec, status, obs.now):
        return _rollback(status, Phase.FAILED, "the shadow phase was not conclusive before "
                         "the progress deadline" +
                         (f": {verdict.summary()}" if verdict else ""), verdict)
    return _hold(status, "shadow phase" + (f": {verdict.summary()}" if verdict else
                                           ": waiting for mirrored requests"), verdict)


def _progressing(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if obs.abort:
        return _rollback(status, Phase.ABORTED, "aborted: traffic returned to stable")
    if obs.observed_weight != status.weight:
        # a step counts only once the data plane applies its weight: re-issue and wait
        if _deadline_passed(spec, status, obs.now):
            return _rollback(status, Phase.FAILED,
                             f"weight {status.weight}% never confirmed before the deadline")
        return Decision(status.evolve(message=f"waiting for weight {status.weight}% to be "
                                              f"applied (seen {obs.observed_weight})"),
                        Action.SET_WEIGHT, status.weight)
    if obs.canary_scaling and not _deadline_passed(spec, status, obs.now):
        # judge and advance only at full strength (the deadline still applies)
        return _hold(status, f"canary weight {status.weight}%: waiting for the canary's "
                             "scale-up before judging or advancing")
    if status.step_started_at is None:
        status = status.evolve(step_started_at=obs.now, last_progress_at=obs.now)
    verdict = analyse(spec, obs.measurements or Measurements())
    if verdict.status is Status.FAIL:
        failures = status.failures + 1
        if verdict.decisive or failures > spec.failure_limit:
            return _rollback(status.evolve(failures=failures), Phase.ROLLING_BACK,
                             f"analysis failed at {status.weight}%: {verdict.summary()}",
                             verdict)
        return _hold(status.evolve(failures=failures),
                     f"analysis failed ({failures}/{spec.failure_limit} tolerated)", verdict)
    if verdict.status is Status.INCONCLUSIVE:
        if _deadline_passed(spec, status, obs.now):
            return _rollback(status, Phase.FAILED, "no conclusive data before the progress "
                                                   f"deadline: {verdict.summary()}", verdict)
        return _hold(status, f"holding at {status.weight}%: {verdict.summary()}", verdict)
    # PASS: counts as progress; advance once the step has held long enough
    status = status.evolve(last_progress_at=obs.now)
    assert status.step_started_at is not None
    if obs.now - status.step_started_at < spec.step_seconds:
        return _hold(status, f"healthy at {status.weight}%", verdict)
    return _advance(spec, status, obs.now, verdict)


def _advance(spec: RolloutSpec, status: RolloutStatus, now: float,
             verdict: Verdict | None) -> Decision:
    # a gate at a step pauses before leaving it, the last step's before the promotion
    if spec.steps[status.step] in spec.manual_gates and status.phase is not Phase.PAUSED:
        return Decision(status.evolve(phase=Phase.PAUSED, message=f"paused at manual gate "
                                                                  f"{status.weight}%"),
                        Action.HOLD, status.weight, verdict)
    if status.step + 1 >= len(spec.steps):
        return Decision(status.evolve(phase=Phase.PROMOTING, last_progress_at=now,
                                      message="all steps healthy: promoting"),
                        Action.PROMOTE, status.weight, verdict)
    return _set_step(status, spec, status.step + 1, now)


def _paused(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if obs.abort:
        return _rollback(status, Phase.ABORTED, "aborted at a manual gate")
    if obs.canary_scaling:  # the deadline does not run while paused
        return _hold(status.evolve(last_progress_at=obs.now), status.message)
    verdict = analyse(spec, obs.measurements or Measurements())
    if verdict.status is Status.FAIL and (verdict.decisive or
                                          status.failures + 1 > spec.failure_limit):
        return _rollback(status, Phase.ROLLING_BACK,
                         f"analysis failed while paused: {verdict.summary()}", verdict)
    if obs.resume:
        return _advance(spec, status.evolve(last_progress_at=obs.now), obs.now, verdict)
    # a person is deciding: the progress deadline does not run while paused
    return _hold(status.evolve(last_progress_at=obs.now), status.message, verdict)


def _promoting(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if obs.promoted:
        return Decision(status.evolve(phase=Phase.SUCCEEDED, weight=0,
                                      message=f"promoted {spec.canary_version}"),
                        Action.COMPLETE, 0)
    if _deadline_passed(spec, status, obs.now):
        return Decision(status.evolve(phase=Phase.FAILED,
                                      message="promotion did not finish before the deadline"),
                        Action.ROLLBACK, 0)
    return Decision(status, Action.PROMOTE, status.weight)  # idempotent: re-issue


def _rolling_back(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
    if obs.rolled_back:
        return Decision(status.evolve(phase=Phase.ROLLED_BACK, weight=0), Action.COMPLETE, 0)
    return Decision(status, Action.ROLLBACK, 0)  # idempotent: re-issue until confirmed


_PHASES: dict[Phase, Callable[[RolloutSpec, RolloutStatus, Observation], Decision]] = {
    Phase.INITIALIZING: _initializing,
    Phase.SHADOWING: _shadowing,
    Phase.PROGRESSING: _progressing,
    Phase.PAUSED: _paused,
    Phase.PROMOTING: _promoting,
    Phase.ROLLING_BACK: _rolling_back,
}
