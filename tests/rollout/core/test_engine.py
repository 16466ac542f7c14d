"""Scenario tests: tick the pure engine one observation at a time, Flagger-style —
initialise → ready → advance → (pause) → promote, and every way it can end otherwise."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from modelrail.infra.config import load_stack
from modelrail.rollout.core import engine
from modelrail.rollout.core.analysis import GateSample, LoadSample, Measurements, TrafficSample
from modelrail.rollout.core.engine import Action, Decision, Observation, decide, start
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus, Thresholds
from tests.infra.harness import ROOT

T = Thresholds(max_error_rate=0.01, max_p99_latency_ms=50, max_latency_ratio=1.5,
               max_error_rate_increase=0.01, max_label_disagreement=0.05, min_requests=100)
SPEC = RolloutSpec(model="iris", stable_version="1", canary_version="2", steps=(10, 50, 100),
                   step_seconds=10, thresholds=T, failure_limit=1,
                   progress_deadline_seconds=60)

GOOD = Measurements(canary=TrafficSample(200, 0, 5.0), stable=TrafficSample(1800, 1, 5.0),
                    gate=GateSample(200, 0, 0.01), load=LoadSample(300, 0))


class Driver:
    """Holds the status and feeds observations, as an adapter would."""

    def __init__(self, spec: RolloutSpec = SPEC, now: float = 0.0) -> None:
        self.spec = spec
        self.status = start(now)
        self.now = now
        self.applied_weight = 0
        self.decisions: list[Decision] = []

    def tick(self, dt: float = 1.0, **obs: object) -> Decision:
        self.now += dt
        obs.setdefault("observed_weight", self.applied_weight)
        d = decide(self.spec, self.status, Observation(now=self.now, **obs))  # type: ignore[arg-type]
        self.status = d.status
        if d.action is Action.SET_WEIGHT:
            self.applied_weight = d.weight  # the data plane applies it (confirmed next tick)
        self.decisions.append(d)
        return d


def run_to_step_end(drv: Driver, m: Measurements = GOOD) -> Decision:
    d = drv.tick(measurements=m)  # confirms the weight, starts the step clock
    while d.action is Action.HOLD and drv.status.phase is Phase.PROGRESSING:
        d = drv.tick(2.0, measurements=m)
    return d


def test_good_canary_is_promoted_step_by_step() -> None:
    drv = Driver()
    assert drv.tick().action is Action.HOLD  # canary not ready yet
    d = drv.tick(canary_ready=True)
    assert (d.action, d.weight, drv.status.phase) == (Action.SET_WEIGHT, 10, Phase.PROGRESSING)
    weights = [10]
    for _ in range(2):
        d = run_to_step_end(drv)
        assert d.action is Action.SET_WEIGHT
        weights.append(d.weight)
    assert weights == [10, 50, 100]
    d = run_to_step_end(drv)
    assert (d.action, drv.status.phase) == (Action.PROMOTE, Phase.PROMOTING)
    assert drv.tick().action is Action.PROMOTE  # re-issued until confirmed ...
    seq = drv.status.seq
    d = drv.tick(promoted=True)
    assert (d.action, drv.status.phase) == (Action.COMPLETE, Phase.SUCCEEDED)
    assert drv.status.seq == seq  # ... without counting as a new action
    assert [h["to"] for h in drv.status.history] == [
        "Progressing", "Progressing", "Progressing", "Promoting", "Succeeded"]
    # each step held, healthy, for at least step_seconds
    assert drv.tick().action is Action.COMPLETE  # terminal


def test_no_data_holds_then_fails_at_the_deadline() -> None:
    drv = Driver()
    drv.tick(canary_ready=True)
    d = drv.tick(measurements=Measurements())  # nothing measured: never a pass
    assert d.action is Action.HOLD and "no canary requests" in drv.status.message
    for _ in range(55):
        d = drv.tick(measurements=Measurements(canary=TrafficSample(3, 0, 1.0)))
        assert d.action is Action.HOLD and drv.status.weight == 10
    d = drv.tick(10.0, measurements=Measurements())
    assert (d.action, d.weight, drv.status.phase) == (Action.ROLLBACK, 0, Phase.FAILED)
    assert "no conclusive data before the progress deadline" in drv.status.message


def test_clearly_bad_canary_is_stopped_at_once() -> None:
    drv = Driver()
    drv.tick(canary_ready=True)
    # only 30 requests (min is 100) but 10 errors: certainly above 1%
    bad = replace(GOOD, canary=TrafficSample(30, 10, 5.0))
    d = drv.tick(measurements=bad)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.ROLLING_BACK)
    assert d.verdict is not None and d.verdict.decisive
    assert drv.tick().action is Action.ROLLBACK  # until confirmed
    d = drv.tick(rolled_back=True)
    assert (d.action, drv.status.phase) == (Action.COMPLETE, Phase.ROLLED_BACK)


def test_marginal_failures_are_tolerated_up_to_the_limit() -> None:
    drv = Driver()
    drv.tick(canary_ready=True)
    marginal = replace(GOOD, canary=TrafficSample(200, 3, 5.0))  # 1.5%: over, not certain
    d = drv.tick(measurements=marginal)
    assert d.action is Action.HOLD and drv.status.failures == 1
    d = drv.tick(measurements=marginal)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.ROLLING_BACK)


@pytest.mark.parametrize("bad,reason", [
    (replace(GOOD, canary=TrafficSample(200, 0, 80.0)), "p99 80.0 ms > 50.0 ms"),
    (replace(GOOD, canary=TrafficSample(200, 0, 12.0)), "p99 2.40x stable"),
    (replace(GOOD, gate=GateSample(200, 60, 0.4)), "30.0% of 200 answers differ"),
    (replace(GOOD, load=LoadSample(0, 0)), "the load test produced no requests"),
    # under the absolute limit (5%) but 0.9 points worse than stable (limit 0.5)
    (replace(GOOD, canary=TrafficSample(1000, 9, 5.0), stable=TrafficSample(5000, 0, 5.0)),
     "+0.90% > +0.50% over stable"),
])
def test_each_kind_of_bad_canary_is_rolled_back(bad: Measurements, reason: str) -> None:
    relaxed = replace(T, max_error_rate=0.05, max_error_rate_increase=0.005)
    drv = Driver(replace(SPEC, failure_limit=0, thresholds=relaxed))
    drv.tick(canary_ready=True)
    d = drv.tick(measurements=bad)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.ROLLING_BACK)
    assert reason in drv.status.message


def test_clearly_slow_canary_is_stopped_before_min_requests() -> None:
    drv = Driver()
    drv.tick(canary_ready=True)
    # 20 requests (min 100), all in the (250 ms, 500 ms] bucket: p99 limit 50 ms
    slow = replace(GOOD, canary=TrafficSample(20, 0, None, ((50.0, 0.0), (250.0, 0.0),
                                                            (500.0, 20.0))))
    d = drv.tick(measurements=slow)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.ROLLING_BACK)
    assert "20 of 20 requests slower than 50 ms" in drv.status.message


def test_manual_gate_pauses_until_promoted_without_a_deadline() -> None:
    drv = Driver(replace(SPEC, manual_gates=(50,)))
    drv.tick(canary_ready=True)
    run_to_step_end(drv)  # 10 -> 50
    d = run_to_step_end(drv)
    assert (d.action, drv.status.phase) == (Action.HOLD, Phase.PAUSED)
    for _ in range(10):  # far past the progress deadline: a person is deciding
        assert drv.tick(30.0, measurements=GOOD).action is Action.HOLD
    assert drv.status.phase is Phase.PAUSED
    d = drv.tick(measurements=GOOD, resume=True)
    assert (d.action, d.weight, drv.status.phase) == (Action.SET_WEIGHT, 100,
                                                      Phase.PROGRESSING)


def test_a_gate_at_the_last_step_pauses_before_the_promotion() -> None:
    """A gate at 100 % holds the canary at full weight until a person promotes (it used to
    promote straight through: the gate was only checked between steps)."""
    drv = Driver(replace(SPEC, manual_gates=(100,)))
    drv.tick(canary_ready=True)
    run_to_step_end(drv)  # 10 -> 50
    run_to_step_end(drv)  # 50 -> 100
    d = run_to_step_end(drv)
    assert (d.action, d.weight, drv.status.phase) == (Action.HOLD, 100, Phase.PAUSED)
    d = drv.tick(measurements=GOOD, resume=True)
    assert (d.action, drv.status.phase) == (Action.PROMOTE, Phase.PROMOTING)


def test_failing_analysis_while_paused_rolls_back() -> None:
    drv = Driver(replace(SPEC, manual_gates=(10,)))
    drv.tick(canary_ready=True)
    run_to_step_end(drv)
    assert drv.status.phase is Phase.PAUSED
    d = drv.tick(measurements=replace(GOOD, canary=TrafficSample(200, 50, 5.0)))
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.ROLLING_BACK)


@pytest.mark.parametrize("where", ["initializing", "progressing", "paused"])
def test_abort_always_returns_traffic_to_stable(where: str) -> None:
    drv = Driver(replace(SPEC, manual_gates=(10,)))
    if where != "initializing":
        drv.tick(canary_ready=True)
    if where == "paused":
        run_to_step_end(drv)
        assert drv.status.phase is Phase.PAUSED
    d = drv.tick(abort=True)
    assert (d.action, d.weight, drv.status.phase) == (Action.ROLLBACK, 0, Phase.ABORTED)


def test_a_step_counts_only_once_its_weight_is_confirmed() -> None:
    drv = Driver()
    drv.tick(canary_ready=True)
    seq = drv.status.seq
    for _ in range(5):  # the proxy still applies 0%: re-issue, do not analyse or advance
        d = drv.tick(observed_weight=0, measurements=GOOD)
        assert (d.action, d.weight) == (Action.SET_WEIGHT, 10)
        assert drv.status.step_started_at is None
    assert drv.status.seq == seq  # the same action, not a new one
    d = drv.tick(observed_weight=0, dt=60.0)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.FAILED)


def test_canary_that_never_becomes_ready_fails_at_the_deadline() -> None:
    drv = Driver()
    for _ in range(5):
        assert drv.tick(10.0).action is Action.HOLD
    d = drv.tick(15.0)
    assert (d.action, drv.status.phase) == (Action.ROLLBACK, Phase.FAILED)
    assert "never became ready" in drv.status.message


def test_resume_after_restart_continues_exactly() -> None:
    straight, restarted = Driver(), Driver()
    for drv in (straight, restarted):
        drv.tick(canary_ready=True)
        run_to_step_end(drv)
    # the controller dies: its status survives only as JSON
    saved = json.dumps(restarted.status.to_dict())
    revived = RolloutStatus.from_dict(json.loads(saved))
    assert revived == restarted.status
    assert engine.last_action(revived) == ("set_weight", 50)  # what to re-apply if unsure
    restarted.status = revived
    for drv in (straight, restarted):
        while not drv.status.phase.terminal:
            drv.tick(2.0, measurements=GOOD, promoted=drv.status.phase is Phase.PROMOTING)
    assert restarted.status == straight.status
    assert restarted.status.phase is Phase.SUCCEEDED


def test_transition_table_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Phase.SUCCEEDED not in engine.TRANSITIONS[Phase.ROLLING_BACK]

    def broken(spec: RolloutSpec, status: RolloutStatus, obs: Observation) -> Decision:
        return Decision(status.evolve(phase=Phase.SUCCEEDED), Action.COMPLETE, 0)

    monkeypatch.setitem(engine._PHASES, Phase.ROLLING_BACK, broken)
    drv = Driver()
    drv.status = drv.status.evolve(phase=Phase.ROLLING_BACK)
    with pytest.raises(engine.IllegalTransitionError, match="RollingBack -> Succeeded"):
        drv.tick()
    assert set(engine.TRANSITIONS) == set(Phase)


def test_last_step_passes_without_stable_traffic() -> None:
    # at weight 100 stable serves nothing: relative checks do not apply, absolute ones do
    drv = Driver()
    drv.tick(canary_ready=True)
    run_to_step_end(drv)
    run_to_step_end(drv)
    only_canary = replace(GOOD, stable=TrafficSample(0, 0, None))
    d = run_to_step_end(drv, only_canary)
    assert d.action is Action.PROMOTE


def test_spec_from_stack_policy() -> None:
    cfg = load_stack("prod", ROOT)
    spec = RolloutSpec.from_policy(cfg.rollout, model="iris", stable_version="1",
                                   canary_version="2")
    assert spec.steps == (5, 10, 25, 50, 75, 100) and spec.manual_gates == (50,)
    assert spec.thresholds.min_requests == 200


def test_a_fully_replayed_small_sample_is_evidence_not_no_data() -> None:
    """iris has 38 held-out rows: the gate compares all of them. That is the whole sample,
    so it judges (pass or fail); a partial answer below min_requests stays inconclusive."""
    from modelrail.rollout.core.analysis import Status, check_model_gate

    small = GateSample(38, 0, 0.0, complete=True)
    assert check_model_gate(SPEC, replace(GOOD, gate=small)).status is Status.PASS
    wrong = GateSample(38, 25, 0.6, complete=True)
    verdict = check_model_gate(SPEC, replace(GOOD, gate=wrong))
    assert verdict.status is Status.FAIL and verdict.decisive
    partial = GateSample(38, 0, 0.0, complete=False)
    assert check_model_gate(SPEC, replace(GOOD, gate=partial)).status is Status.INCONCLUSIVE


PRE = replace(SPEC, pre_traffic_analysis=True)


def test_pre_traffic_analysis_passes_then_the_first_step_starts() -> None:
    drv = Driver(PRE)
    assert drv.tick(canary_ready=True).action is Action.HOLD  # ready, no analysis yet
    assert "pre-traffic" in drv.status.message and drv.status.weight == 0
    d = drv.tick(canary_ready=True, measurements=GOOD)
    assert d.action is Action.SET_WEIGHT and d.weight == 10
    assert drv.status.phase is Phase.PROGRESSING


@pytest.mark.parametrize("bad", [
    replace(GOOD, canary=TrafficSample(200, 60, 5.0)),  # errors
    replace(GOOD, gate=GateSample(200, 60, 0.4)),  # wrong answers
    replace(GOOD, canary=TrafficSample(200, 0, 400.0)),  # slow
])
def test_a_bad_canary_is_rolled_back_before_any_user_traffic(bad: Measurements) -> None:
    drv = Driver(PRE)
    d = drv.tick(canary_ready=True, measurements=bad)
    assert d.action is Action.ROLLBACK and d.weight == 0
    assert drv.status.phase is Phase.ROLLING_BACK
    assert "pre-traffic analysis failed" in drv.status.message
    assert not [x for x in drv.decisions if x.action is Action.SET_WEIGHT]  # never exposed
    assert drv.tick(rolled_back=True).status.phase is Phase.ROLLED_BACK


def test_pre_traffic_without_data_holds_then_fails_at_the_deadline() -> None:
    drv = Driver(PRE)
    d = drv.tick(canary_ready=True, measurements=Measurements())
    assert d.action is Action.HOLD and drv.status.phase is Phase.INITIALIZING
    d = drv.tick(61.0, canary_ready=True, measurements=Measurements())
    assert drv.status.phase is Phase.FAILED and d.action is Action.ROLLBACK
