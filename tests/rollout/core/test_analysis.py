"""The analysis of a rollout's header-routed requests (RolloutSpec.header_route): judged
apart from the weighted split by the same absolute limits; optional traffic, so too few
requests never hold a rollout, while a failure certain at 99 % fails it at once."""

from __future__ import annotations

from dataclasses import replace

from modelrail.rollout.core.analysis import (
    Measurements,
    Status,
    TrafficSample,
    analyse,
    check_header_traffic,
)
from tests.rollout.core.test_engine import GOOD, SPEC

HEADERED = replace(SPEC, header_route=("x-model-cohort", "canary"))
FAST = ((5.0, 200.0), (float("inf"), 200.0))


def test_no_header_route_no_check() -> None:
    assert check_header_traffic(SPEC, replace(GOOD, header=TrafficSample(50, 50, 5.0))) is None
    assert [c.name for c in analyse(SPEC, GOOD).checks if c.name == "header traffic"] == []


def test_no_header_requests_do_not_hold_the_rollout() -> None:
    verdict = analyse(HEADERED, GOOD)
    check = next(c for c in verdict.checks if c.name == "header traffic")
    assert check.status is Status.PASS and "no header-routed requests" in check.detail
    assert verdict.status is Status.PASS


def test_header_requests_failing_fail_the_rollout_whatever_the_split_says() -> None:
    bad = replace(GOOD, header=TrafficSample(200, 60, 5.0, FAST))
    verdict = analyse(HEADERED, bad)
    check = next(c for c in verdict.checks if c.name == "header traffic")
    assert check.status is Status.FAIL and check.decisive, check
    assert "30.00% of 200" in check.detail
    assert verdict.status is Status.FAIL
    # the split's own checks saw none of it
    assert next(c for c in verdict.checks if c.name == "errors").status is Status.PASS


def test_slow_header_requests_fail_it() -> None:
    limit = HEADERED.thresholds.max_p99_latency_ms
    slow = TrafficSample(200, 0, 900.0, ((5.0, 0.0), (limit, 0.0), (1000.0, 200.0),
                                         (float("inf"), 200.0)))
    check = check_header_traffic(HEADERED, Measurements(header=slow))
    assert check is not None and check.status is Status.FAIL and "slower than" in check.detail
    assert check.decisive
    # a p99 over the limit without a histogram fails too, once there are enough requests
    check = check_header_traffic(HEADERED, Measurements(header=TrafficSample(200, 0, 900.0)))
    assert check is not None and check.status is Status.FAIL and "p99" in check.detail


def test_healthy_header_requests_pass_with_their_figures() -> None:
    check = check_header_traffic(HEADERED, Measurements(header=TrafficSample(
        200, 0, 4.0, FAST)))
    assert check is not None and check.status is Status.PASS
    assert check.detail == "200 requests, error rate 0.00%, p99 4.0 ms"
