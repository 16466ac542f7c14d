"""The HPA algorithm: formula, tolerance, clamps, stabilisation windows, canary sizing."""

from __future__ import annotations

from modelrail.rollout.core.autoscaler import (
    ScalePolicy,
    canary_policy,
    desired_replicas,
    raw_recommendation,
)

P = ScalePolicy(min_replicas=1, max_replicas=10, target=4.0, scale_up_window=0,
                scale_down_window=30)


def test_formula_tolerance_and_clamps() -> None:
    assert raw_recommendation(P, current=2, metric=8.0) == 4  # ceil(2 × 8/4)
    assert raw_recommendation(P, current=3, metric=4.3) == 3  # within 10%: no change
    assert raw_recommendation(P, current=3, metric=4.5) == 4  # ceil(3.375)
    assert raw_recommendation(P, current=8, metric=40.0) == 10  # max
    assert raw_recommendation(P, current=3, metric=0.0) == 1  # min


def test_scale_up_is_immediate_and_scale_down_waits_for_its_window() -> None:
    replicas, hist = desired_replicas(P, current=1, metric=12.0, now=0.0)
    assert replicas == 3
    # load drops: the down-window remembers the higher recommendation for 30 s
    for t in (5.0, 15.0, 29.0):
        replicas, hist = desired_replicas(P, current=replicas, metric=1.0, now=t, history=hist)
        assert replicas == 3
    replicas, hist = desired_replicas(P, current=replicas, metric=1.0, now=31.0, history=hist)
    assert replicas == 1


def test_scale_up_window_takes_the_lowest_recommendation() -> None:
    policy = ScalePolicy(min_replicas=1, max_replicas=10, target=4.0, scale_up_window=20,
                         scale_down_window=0)
    replicas, hist = desired_replicas(policy, current=2, metric=4.0, now=0.0)
    assert replicas == 2
    replicas, hist = desired_replicas(policy, current=2, metric=16.0, now=5.0, history=hist)
    assert replicas == 2  # a spike inside the window does not scale up yet
    replicas, hist = desired_replicas(policy, current=2, metric=16.0, now=26.0, history=hist)
    assert replicas == 8


def test_canary_is_sized_by_weight_and_stable_is_untouched() -> None:
    stable = ScalePolicy(min_replicas=3, max_replicas=20, target=4.0)
    assert canary_policy(stable, 5).max_replicas == 1
    assert canary_policy(stable, 25).max_replicas == 5
    assert canary_policy(stable, 100).max_replicas == 20
    assert canary_policy(stable, 25).min_replicas == 1
    # a canary running at 50% does not change what stable may scale to
    assert stable == ScalePolicy(min_replicas=3, max_replicas=20, target=4.0)
    replicas, _ = desired_replicas(stable, current=3, metric=2.0, now=0.0)
    assert replicas == 3  # stable's own (halved) load keeps it at its minimum
