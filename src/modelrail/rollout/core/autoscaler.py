"""The HPA algorithm, pure, for the local platform's autoscaler (one per track).

Kubernetes' rule: desired = ceil(current × metric / target), skipped while the ratio is
within the tolerance (10%); clamped to [min, max]; scale-up follows the *lowest* and
scale-down the *highest* recommendation of its stabilisation window, so load spikes and
dips do not make instances flap. The metric is a per-instance average (CPU utilisation, or
in-flight requests per instance on the local platform).

During a rollout the canary gets its own policy sized by its weight (`canary_policy`) and
the stable policy is left exactly as configured: a running canary never pushes stable to
its maximum (the opposite of Argo Rollouts issue 2857).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalePolicy:
    min_replicas: int
    max_replicas: int
    target: float  # per-instance metric value to aim for
    scale_up_window: float = 0.0  # seconds
    scale_down_window: float = 300.0
    tolerance: float = 0.1


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


def raw_recommendation(policy: ScalePolicy, *, current: int, metric: float) -> int:
    """The formula alone (clamped), before stabilisation."""
    if current <= 0:
        return policy.min_replicas
    ratio = metric / policy.target
    desired = current if abs(ratio - 1.0) <= policy.tolerance else math.ceil(current * ratio)
    return max(policy.min_replicas, min(policy.max_replicas, desired))


def desired_replicas(policy: ScalePolicy, *, current: int, metric: float, now: float,
                     history: tuple[Recommendation, ...] = (),
                     ) -> tuple[int, tuple[Recommendation, ...]]:
    """The replica count to run now, and the recommendation history to keep."""
    rec = raw_recommendation(policy, current=current, metric=metric)
    keep = max(policy.scale_up_window, policy.scale_down_window)
    history = (*(h for h in history if now - h.at <= keep), Recommendation(now, rec))
    if rec > current:
        window = [h.replicas for h in history if now - h.at <= policy.scale_up_window]
        return max(current, min(window)), history
    if rec < current:
        window = [h.replicas for h in history if now - h.at <= policy.scale_down_window]
        return min(current, max(window)), history
    return current, history


def canary_policy(stable: ScalePolicy, weight: int) -> ScalePolicy:
    """The canary's bounds follow its share of traffic; its target is stable's."""
    share = max(0, min(100, weight)) / 100
    return ScalePolicy(
        min_replicas=1,
        max_replicas=max(1, math.ceil(stable.max_replicas * share)),
        target=stable.target, scale_up_window=stable.scale_up_window,
        scale_down_window=stable.scale_down_window, tolerance=stable.tolerance)
