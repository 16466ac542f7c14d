"""Analysis: measurements of one interval → a verdict. Providers measure; this decides.

Rules (each check is one small function; the worst status wins):
  - no data is never success: no canary traffic, fewer than `min_requests`, no model-gate
    comparisons or no load result (when required) make the check INCONCLUSIVE, never PASS;
  - a load test that produced no requests FAILS;
  - errors are judged statistically: when the 99% Wilson lower bound of the canary's error
    rate is already above the limit, the check FAILS *decisively* — however few requests
    there were — so a clearly bad canary is stopped at once, not at the end of a step;
  - canary is compared with stable (error-rate increase, p99 ratio), not only held to
    absolute limits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum

from modelrail.rollout.core.spec import RolloutSpec

Z99 = 2.576  # two-sided 99% normal quantile for the Wilson interval


class Status(IntEnum):
    """Ordered by severity: the worst status of all checks is the verdict."""

    PASS = 0
    INCONCLUSIVE = 1
    FAIL = 2


@dataclass(frozen=True)
class TrafficSample:
    """Requests served by one track during the interval."""

    requests: int
    errors: int
    p99_ms: float | None
    # latency histogram of the interval: (upper bound in ms, cumulative count), ascending
    latency_buckets: tuple[tuple[float, float], ...] = ()

    def slower_than(self, limit_ms: float) -> int:
        """A lower bound on requests slower than `limit_ms`: those above the first bucket
        bound at or past the limit."""
        for bound, cumulative in self.latency_buckets:
            if bound >= limit_ms:
                return max(0, round(self.requests - cumulative))
        return 0


@dataclass(frozen=True)
class GateSample:
    """Canary and stable answering the same inputs (mirrored or replayed)."""

    compared: int
    disagreements: int  # labels that differ (classification) or outputs beyond tolerance
    distance: float | None = None  # distribution distance of predictions, informative
    # the whole validation sample was answered: a replayed sample smaller than
    # `min_requests` (iris has 38 held-out rows) is all the evidence there is, not "no data"
    complete: bool = False


@dataclass(frozen=True)
class LoadSample:
    """A load-verification run (Locust) against the canary during the interval."""

    requests: int
    failures: int
    error: str | None = None  # the run itself failed (not the canary): why, as the runner said
    unavailable: bool = False  # it could not start for want of input: no data, not a failure


@dataclass(frozen=True)
class ShadowSample:
    """What stable's mirror did over an interval (serving/shadow.py counters): requests
    the canary answered, failed (an error, a timeout), dropped (the bounded queue was
    full) or refused as "shadowing off"; and the answers paired with stable's."""

    answered: int = 0
    failed: int = 0
    dropped: int = 0
    off: int = 0
    pairs: int = 0
    disagreements: int = 0

    @property
    def mirrored(self) -> int:
        """Requests that reached the canary or tried to."""
        return self.answered + self.failed

    def plus(self, other: ShadowSample) -> ShadowSample:
        return ShadowSample(**{k: getattr(self, k) + getattr(other, k)
                               for k in self.as_dict()})

    def as_dict(self) -> dict[str, int]:
        return {"answered": self.answered, "failed": self.failed, "dropped": self.dropped,
                "off": self.off, "pairs": self.pairs, "disagreements": self.disagreements}


@dataclass(frozen=True)
class Measurements:
    canary: TrafficSample | None = None
    stable: TrafficSample | None = None
    gate: GateSample | None = None
    load: LoadSample | None = None
    seconds: float | None = None  # how long the interval lasted (for rates in the records)
    # the canary's header-routed requests (RolloutSpec.header_route), never in `canary`
    header: TrafficSample | None = None
    # in the shadow phase: stable's mirror over the phase so far (`canary` is then the
    # canary's mirrored requests)
    shadow: ShadowSample | None = None


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    decisive: bool = False  # a FAIL certain enough to roll back now


@dataclass(frozen=True)
class Verdict:
    status: Status
    checks: tuple[Check, ...]

    @property
    def decisive(self) -> bool:
        return any(c.decisive for c in self.checks)

    def summary(self) -> str:
        return "; ".join(f"{c.name}: {c.status.name} ({c.detail})" for c in self.checks)


def wilson(k: int, n: int, z: float = Z99) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def check_errors(spec: RolloutSpec, m: Measurements) -> Check:
    t = spec.thresholds
    c = m.canary
    if c is None or c.requests == 0:
        return Check("errors", Status.INCONCLUSIVE, "no canary requests")
    rate = c.errors / c.requests
    low, _ = wilson(c.errors, c.requests)
    if low > t.max_error_rate:
        return Check("errors", Status.FAIL, f"error rate {rate:.2%} of {c.requests}, "
                     f"certainly above {t.max_error_rate:.2%}", decisive=True)
    if c.requests < t.min_requests:
        return Check("errors", Status.INCONCLUSIVE,
                     f"{c.requests} requests < {t.min_requests} needed")
    if rate > t.max_error_rate:
        return Check("errors", Status.FAIL, f"error rate {rate:.2%} > {t.max_error_rate:.2%}")
    return Check("errors", Status.PASS, f"error rate {rate:.2%} of {c.requests}")


def check_error_increase(spec: RolloutSpec, m: Measurements) -> Check | None:
    """Relative to stable; not applicable while stable has too little traffic to compare
    (at weight 100 it has none), inconclusive while the canary has too little."""
    t = spec.thresholds
    c, s = m.canary, m.stable
    if s is None or s.requests < t.min_requests:
        return None
    if c is None or c.requests < t.min_requests:
        return Check("error increase", Status.INCONCLUSIVE, "not enough canary traffic")
    increase = c.errors / c.requests - s.errors / s.requests
    canary_low, _ = wilson(c.errors, c.requests)
    _, stable_high = wilson(s.errors, s.requests)
    if canary_low - stable_high > t.max_error_rate_increase:
        return Check("error increase", Status.FAIL, f"+{increase:.2%} over stable",
                     decisive=True)
    if increase > t.max_error_rate_increase:
        return Check("error increase", Status.FAIL,
                     f"+{increase:.2%} > +{t.max_error_rate_increase:.2%} over stable")
    return Check("error increase", Status.PASS, f"{increase:+.2%} vs stable")


def check_latency(spec: RolloutSpec, m: Measurements) -> Check:
    """p99 above the limit means more than 1% of requests are slower than it: when the
    Wilson lower bound of the slow share already exceeds 1%, fail at once (a slow canary
    also starves the analysis of requests, so waiting for min_requests would take long)."""
    t = spec.thresholds
    c, s = m.canary, m.stable
    if c is not None and c.requests > 0 and c.latency_buckets:
        slow = c.slower_than(t.max_p99_latency_ms)
        low, _ = wilson(slow, c.requests)
        if low > 0.01:
            return Check("latency", Status.FAIL,
                         f"{slow} of {c.requests} requests slower than "
                         f"{t.max_p99_latency_ms:.0f} ms", decisive=True)
    if c is None or c.p99_ms is None or c.requests < t.min_requests:
        return Check("latency", Status.INCONCLUSIVE, "not enough canary requests for a p99")
    if c.p99_ms > t.max_p99_latency_ms:
        return Check("latency", Status.FAIL,
                     f"p99 {c.p99_ms:.1f} ms > {t.max_p99_latency_ms:.1f} ms")
    if s is not None and s.p99_ms and s.requests >= t.min_requests:
        ratio = c.p99_ms / s.p99_ms
        if ratio > t.max_latency_ratio:
            return Check("latency", Status.FAIL,
                         f"p99 {ratio:.2f}x stable > {t.max_latency_ratio:.2f}x")
        return Check("latency", Status.PASS, f"p99 {c.p99_ms:.1f} ms, {ratio:.2f}x stable")
    return Check("latency", Status.PASS, f"p99 {c.p99_ms:.1f} ms")


def check_model_gate(spec: RolloutSpec, m: Measurements) -> Check | None:
    if not spec.require_model_gate and m.gate is None:
        return None
    g = m.gate
    if g is None or g.compared == 0:
        return Check("model gate", Status.INCONCLUSIVE, "no comparisons of canary and stable")
    limit = spec.thresholds.max_label_disagreement
    rate = g.disagreements / g.compared
    low, _ = wilson(g.disagreements, g.compared)
    distance = f", distance {g.distance:.3f}" if g.distance is not None else ""
    if low > limit:
        return Check("model gate", Status.FAIL,
                     f"{rate:.1%} of {g.compared} answers differ{distance}", decisive=True)
    if g.compared < spec.thresholds.min_requests and not g.complete:
        return Check("model gate", Status.INCONCLUSIVE,
                     f"{g.compared} comparisons < {spec.thresholds.min_requests}")
    if rate > limit:
        return Check("model gate", Status.FAIL, f"{rate:.1%} > {limit:.1%} answers differ")
    return Check("model gate", Status.PASS, f"{rate:.1%} of {g.compared} differ{distance}")


def check_load(spec: RolloutSpec, m: Measurements) -> Check | None:
    if not spec.require_load and m.load is None:
        return None
    if m.load is None:
        return Check("load", Status.INCONCLUSIVE, "no load-test result yet")
    if m.load.error is not None and m.load.unavailable:
        return Check("load", Status.INCONCLUSIVE, f"no load run: {m.load.error[:300]}")
    if m.load.error is not None:
        return Check("load", Status.FAIL, f"the load run failed: {m.load.error[:300]}",
                     decisive=True)
    if m.load.requests == 0:
        return Check("load", Status.FAIL, "the load test produced no requests", decisive=True)
    return Check("load", Status.PASS,
                 f"{m.load.requests} requests, {m.load.failures} failed")


def check_header_traffic(spec: RolloutSpec, m: Measurements) -> Check | None:
    """The canary's header-routed requests (testers, a cohort), judged apart from the
    split by the same absolute limits. They are optional traffic: too few to judge is not
    "no data" (it does not hold the rollout), but a failure certain at 99 % fails it."""
    if spec.header_route is None:
        return None
    t, h = spec.thresholds, m.header
    if h is None or h.requests == 0:
        return Check("header traffic", Status.PASS, "no header-routed requests to judge")
    rate = h.errors / h.requests
    if wilson(h.errors, h.requests)[0] > t.max_error_rate:
        return Check("header traffic", Status.FAIL, f"error rate {rate:.2%} of {h.requests}, "
                     f"certainly above {t.max_error_rate:.2%}", decisive=True)
    slow = h.slower_than(t.max_p99_latency_ms)
    if h.latency_buckets and wilson(slow, h.requests)[0] > 0.01:
        return Check("header traffic", Status.FAIL, f"{slow} of {h.requests} requests slower "
                     f"than {t.max_p99_latency_ms:.0f} ms", decisive=True)
    if h.requests >= t.min_requests and rate > t.max_error_rate:
        return Check("header traffic", Status.FAIL,
                     f"error rate {rate:.2%} > {t.max_error_rate:.2%}")
    if h.requests >= t.min_requests and h.p99_ms is not None \
            and h.p99_ms > t.max_p99_latency_ms:
        return Check("header traffic", Status.FAIL,
                     f"p99 {h.p99_ms:.1f} ms > {t.max_p99_latency_ms:.1f} ms")
    p99 = "–" if h.p99_ms is None else f"{h.p99_ms:.1f} ms"
    return Check("header traffic", Status.PASS,
                 f"{h.requests} requests, error rate {rate:.2%}, p99 {p99}")


def check_shadow(spec: RolloutSpec, m: Measurements) -> Check:
    """The shadow phase's answers, judged by the model gate's rule: the share of mirrored
    inputs the canary answers differently from stable, with its 99 % Wilson bound. A bound
    already above the limit fails at once; fewer than `min_pairs` compared is no data; the
    mirror's own failures (a canary error or timeout on a mirrored request) count against
    the error limit."""
    assert spec.shadow is not None
    t, sh = spec.thresholds, m.shadow
    if sh is None or (sh.mirrored == 0 and sh.pairs == 0):
        return Check("shadow", Status.INCONCLUSIVE,
                     "no mirrored requests yet (the shadow phase needs user traffic)")
    limit = t.max_label_disagreement
    rate = sh.disagreements / sh.pairs if sh.pairs else 0.0
    low, high = wilson(sh.disagreements, sh.pairs)
    facts = (f"{sh.mirrored} mirrored, {sh.pairs} pairs, {rate:.1%} differ "
             f"(99% bound {low:.1%}–{high:.1%}), {sh.failed} failed, {sh.dropped} dropped")
    if sh.pairs and low > limit:
        return Check("shadow", Status.FAIL, f"{facts}: above {limit:.1%}", decisive=True)
    if sh.mirrored and wilson(sh.failed, sh.mirrored)[0] > t.max_error_rate:
        return Check("shadow", Status.FAIL, f"{facts}: mirror failures certainly above "
                     f"{t.max_error_rate:.2%}", decisive=True)
    if sh.pairs < spec.shadow.min_pairs:
        return Check("shadow", Status.INCONCLUSIVE,
                     f"{facts}; {sh.pairs} pairs < {spec.shadow.min_pairs} needed")
    if rate > limit:
        return Check("shadow", Status.FAIL, f"{facts}: {rate:.1%} > {limit:.1%}")
    if sh.failed / sh.mirrored > t.max_error_rate:
        return Check("shadow", Status.FAIL,
                     f"{facts}: mirror failures above {t.max_error_rate:.2%}")
    return Check("shadow", Status.PASS, facts)


def shadow_summary(totals: dict[str, int] | None) -> dict[str, float | int] | None:
    """A shadow phase's evidence for people (`rollout status`, the report): requests
    mirrored, pairs compared, the share that differ with its 99 % Wilson bound, drops."""
    if totals is None:
        return None
    sh = ShadowSample(**totals)
    low, high = wilson(sh.disagreements, sh.pairs)
    return {**sh.as_dict(), "mirrored": sh.mirrored,
            "disagreement": sh.disagreements / sh.pairs if sh.pairs else 0.0,
            "disagreement_low": low, "disagreement_high": high}


def describe_shadow(s: dict[str, float | int] | None) -> str | None:
    """One line of a `shadow_summary`."""
    if not s:
        return None
    return (f"shadow phase: {s['mirrored']} requests mirrored, {s['pairs']} answers "
            f"compared, {s['disagreement']:.1%} differ (99% bound "
            f"{s['disagreement_low']:.1%}–{s['disagreement_high']:.1%}), {s['failed']} "
            f"failed, {s['dropped']} dropped")


def analyse_shadow(spec: RolloutSpec, m: Measurements) -> Verdict:
    """The shadow phase: the canary's answers to mirrored requests and the mirror's
    failures over the phase so far (check_shadow), and its latency under that traffic over
    the interval (`m.canary`: the mirrored requests only) — judged when the interval had
    enough of them for a p99, a certain failure at once."""
    checks = [check_shadow(spec, m)]
    latency = check_latency(spec, m)
    if latency.status is not Status.INCONCLUSIVE:
        checks.append(latency)
    return Verdict(status=max(c.status for c in checks), checks=tuple(checks))


def analyse(spec: RolloutSpec, m: Measurements) -> Verdict:
    optional = (check_error_increase(spec, m), check_model_gate(spec, m), check_load(spec, m),
                check_header_traffic(spec, m))
    checks = [check_errors(spec, m), check_latency(spec, m),
              *(c for c in optional if c is not None)]
    return Verdict(status=max(c.status for c in checks), checks=tuple(checks))
