"""The shadow phase in the pure core: the analysis of mirrored answers (check_shadow), the
engine's Shadowing phase, and the one controller turning the route's shadow rule to the
canary exactly for that phase — on the in-memory fakes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modelrail.rollout.core import engine
from modelrail.rollout.core.analysis import (
    Measurements,
    ShadowSample,
    Status,
    TrafficSample,
    analyse_shadow,
)
from modelrail.rollout.core.engine import Action, Observation
from modelrail.rollout.core.policy import RolloutPolicy
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutSpec, ShadowSpec
from tests.rollout.core.fakes import StaticProvider
from tests.rollout.core.test_controller import HEALTHY, PRE, Rig

SHADOW = replace(PRE, shadow=ShadowSpec(percent=50, min_pairs=200))
FAST = TrafficSample(requests=300, errors=0, p99_ms=4.0)
AGREEING = ShadowSample(answered=150, pairs=150, disagreements=1)
WRONG = ShadowSample(answered=150, pairs=150, disagreements=60)


def m(shadow: ShadowSample | None, canary: TrafficSample | None = FAST) -> Measurements:
    return Measurements(canary=canary, stable=FAST, shadow=shadow, seconds=10)


# --- analysis --------------------------------------------------------------------------

def test_enough_agreeing_pairs_pass() -> None:
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=300, pairs=300, disagreements=2)))
    assert v.status is Status.PASS, v.summary()
    assert "300 pairs" in v.summary() and "99% bound" in v.summary()


def test_too_few_pairs_is_no_data_not_success() -> None:
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=50, pairs=50)))
    assert v.status is Status.INCONCLUSIVE
    assert "50 pairs < 200 needed" in v.summary()
    assert analyse_shadow(SHADOW, m(None)).status is Status.INCONCLUSIVE
    assert analyse_shadow(SHADOW, m(ShadowSample())).status is Status.INCONCLUSIVE


def test_certain_disagreement_fails_decisively_before_min_pairs() -> None:
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=60, pairs=60, disagreements=30)))
    assert v.status is Status.FAIL and v.decisive
    assert "above 5.0%" in v.summary()


def test_mirror_failures_count_against_the_error_limit() -> None:
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=100, failed=100, pairs=100)))
    assert v.status is Status.FAIL and v.decisive
    assert "mirror failures" in v.summary()


def test_drops_are_reported_not_judged() -> None:
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=300, dropped=900, pairs=300)))
    assert v.status is Status.PASS and "900 dropped" in v.summary()


def test_a_slow_canary_under_mirrored_traffic_fails() -> None:
    slow = TrafficSample(requests=300, errors=0, p99_ms=500.0,
                         latency_buckets=((10.0, 0.0), (1000.0, 300.0)))
    v = analyse_shadow(SHADOW, m(ShadowSample(answered=300, pairs=300), canary=slow))
    assert v.status is Status.FAIL and any(c.name == "latency" for c in v.checks)


# --- engine ------------------------------------------------------------------------------

def _into_shadow(spec: RolloutSpec = SHADOW) -> engine.RolloutStatus:
    st = engine.start(0.0)
    good = Measurements(canary=FAST, stable=FAST, gate=None, load=None)
    d = engine.decide(replace(spec, pre_traffic_analysis=False), st,
                      Observation(now=1.0, canary_ready=True, measurements=good))
    assert d.status.phase is Phase.SHADOWING and d.action is Action.HOLD and d.weight == 0
    return d.status


def test_evidence_adds_up_over_intervals_then_the_first_weight() -> None:
    st = _into_shadow()
    d = engine.decide(SHADOW, st, Observation(now=2.0, canary_ready=True,
                                              measurements=m(AGREEING)))
    assert d.status.phase is Phase.SHADOWING and d.status.shadow is not None
    assert d.status.shadow["pairs"] == 150  # 150 < 200: holds
    d = engine.decide(SHADOW, d.status, Observation(now=3.0, canary_ready=True,
                                                    measurements=m(AGREEING)))
    assert d.status.phase is Phase.PROGRESSING and d.action is Action.SET_WEIGHT
    assert d.weight == SHADOW.steps[0]
    assert d.status.shadow == {"answered": 300, "failed": 0, "dropped": 0, "off": 0,
                               "pairs": 300, "disagreements": 2}
    assert "shadow: PASS" in (d.status.history[-1]["verdict"] or "")


def test_a_wrong_canary_is_rolled_back_from_the_shadow_phase_at_weight_0() -> None:
    st = _into_shadow()
    d = engine.decide(SHADOW, st, Observation(now=2.0, canary_ready=True,
                                              measurements=m(WRONG)))
    assert d.status.phase is Phase.ROLLING_BACK and d.action is Action.ROLLBACK
    assert d.weight == 0 and "shadow phase failed" in d.status.message


def test_no_mirrored_traffic_holds_then_fails_at_the_deadline() -> None:
    st = _into_shadow()
    d = engine.decide(SHADOW, st, Observation(now=30.0, canary_ready=True,
                                              measurements=m(ShadowSample())))
    assert d.status.phase is Phase.SHADOWING and d.action is Action.HOLD
    d = engine.decide(SHADOW, d.status, Observation(now=100.0, canary_ready=True,
                                                    measurements=m(ShadowSample())))
    assert d.status.phase is Phase.FAILED and "not conclusive" in d.status.message


def test_abort_in_the_shadow_phase() -> None:
    d = engine.decide(SHADOW, _into_shadow(), Observation(now=2.0, abort=True))
    assert d.status.phase is Phase.ABORTED and d.action is Action.ROLLBACK


def test_shadow_from_the_stack_policy_and_back_through_json() -> None:
    policy = RolloutPolicy.model_validate({
        "steps": [10, 100], "stepSeconds": 10, "analysisIntervalSeconds": 5,
        "maxErrorRate": 0.01, "maxP99LatencyMs": 50, "maxLatencyRatio": 2,
        "maxErrorRateIncrease": 0.01, "maxLabelDisagreement": 0.05,
        "minRequestsPerStep": 50, "failureLimit": 1, "progressDeadlineSeconds": 60,
        "shadow": {"percent": 25, "minPairs": 500}})
    spec = RolloutSpec.from_policy(policy, model="iris", stable_version="1",
                                   canary_version="2")
    assert spec.shadow == ShadowSpec(percent=25, min_pairs=500)
    assert RolloutSpec.from_dict(spec.to_dict()) == spec
    st = _into_shadow()
    assert engine.RolloutStatus.from_dict(st.to_dict()) == st
    rec = RolloutRecord(status=st, shadow_on=True)
    assert RolloutRecord.from_dict(rec.to_dict()) == rec


@pytest.mark.parametrize("bad", [{"percent": 0}, {"percent": 101}, {"percent": 5,
                                                                    "minPairs": 1},
                                 {"percent": 5, "mirror": 1}])
def test_bad_shadow_policy_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="shadow"):
        RolloutPolicy.model_validate({
            "steps": [10, 100], "stepSeconds": 10, "analysisIntervalSeconds": 5,
            "maxErrorRate": 0.01, "maxP99LatencyMs": 50, "maxLatencyRatio": 2,
            "maxErrorRateIncrease": 0.01, "maxLabelDisagreement": 0.05,
            "minRequestsPerStep": 50, "failureLimit": 1, "progressDeadlineSeconds": 60,
            "shadow": bad})


def test_the_shadow_header_cannot_be_a_cohort_header() -> None:
    from modelrail.rollout.core.policy import HeaderRoute
    with pytest.raises(ValueError, match="x-modelrail-shadow"):
        HeaderRoute(name="x-modelrail-shadow", value="1")


# --- the controller ----------------------------------------------------------------------

def shadow_rig(sample: ShadowSample | None) -> Rig:
    rig = Rig(SHADOW)
    rig.metrics = StaticProvider({SHADOW.stable_version: HEALTHY,
                                  SHADOW.canary_version: FAST}, shadow=sample)
    rig.controller = rig.build()
    return rig


def test_the_mirror_reaches_the_canary_only_in_the_shadow_phase() -> None:
    rig = shadow_rig(AGREEING)
    assert rig.run() is Phase.SUCCEEDED
    events = rig.router.events
    on, off = events.index(("shadow", True)), events.index(("shadow", False))
    first_weight = next(i for i, e in enumerate(events) if e[0] == "weight" and e[1] != 0)
    assert on < first_weight  # shadowing before any user request reaches the canary
    assert off < first_weight + 3  # and off as the weights start
    phases = [h["to"] for h in rig.controller.status.history]
    assert phases.index("Shadowing") < phases.index("Progressing")
    # the shadow intervals read the canary's mirrored requests and stable's mirror
    assert "shadow" in rig.metrics.routes and rig.metrics.shadow_calls
    assert rig.store.record is not None and not rig.store.record.shadow_on


def test_the_shadow_phase_sends_no_synthetic_load() -> None:
    """The traffic judged in the shadow phase is the users': no Locust run starts in it."""
    rig = shadow_rig(AGREEING)
    while rig.controller.status.phase is not Phase.SHADOWING:
        rig.tick()
    runs = len(rig.load.runs)
    while rig.controller.status.phase is Phase.SHADOWING:
        rig.tick()
    assert rig.controller.status.phase is Phase.PROGRESSING
    assert len(rig.load.runs) == runs


def test_a_wrong_canary_never_gets_a_weight() -> None:
    rig = shadow_rig(WRONG)
    assert rig.run() is Phase.ROLLED_BACK
    assert max(rig.weights(), default=0) == 0
    assert rig.router.shadow_calls[0][1] is True and rig.router.shadow_calls[-1][1] is False
    assert rig.platform.canary.version is None
    assert "shadow phase failed" in rig.controller.status.message


def test_without_user_traffic_the_shadow_phase_fails_at_the_deadline() -> None:
    rig = shadow_rig(ShadowSample())
    assert rig.run() is Phase.FAILED
    assert max(rig.weights(), default=0) == 0 and not rig.router.shadowing


def test_no_shadow_phase_no_shadow_calls() -> None:
    rig = Rig()
    assert rig.run() is Phase.SUCCEEDED
    assert rig.router.shadow_calls == [] and rig.metrics.shadow_calls == []



def test_a_controller_rebuilt_every_tick_still_finishes_the_shadow_phase() -> None:
    """The operator builds a controller per reconcile (kube/reconciler.py): an interval
    started by one is finished by the next."""
    rig = shadow_rig(AGREEING)
    for _ in range(500):
        rig.controller = rig.build()
        rig.tick()
        if rig.controller.finished:
            break
    assert rig.controller.status.phase is Phase.SUCCEEDED
    assert "Shadowing" in [h["to"] for h in rig.controller.status.history]
