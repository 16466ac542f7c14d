"""The ports of the rollout controller: what a platform must offer for the one controller
(core/controller.py) to run a canary rollout on it.

Each port is a small Protocol with keyword-only methods; each backend implements one port
in a module of its own (routers/, metrics/, load/, local/, kube/), and mypy checks that it
does (see the `_check_*` assignments at the end of each backend). The controller names no
backend: it is given these.

Every method returns at once. Progress that takes time — a canary becoming ready, a weight
reaching the data plane, a load test finishing — is *observed* on a later tick, never
waited for; so one controller serves a local platform (processes on this machine) and
Kubernetes (objects an API server reconciles) alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from modelrail.rollout.core.analysis import (
    GateSample,
    LoadSample,
    ShadowSample,
    TrafficSample,
    Verdict,
)
from modelrail.rollout.core.engine import Decision, Observation
from modelrail.rollout.core.spec import RolloutRecord, RolloutStatus


@dataclass(frozen=True)
class TrackState:
    """What one track (stable or canary) of a model runs now."""

    version: str | None  # the model version its instances run; None: the track is absent
    ready: bool  # every wanted instance answers readiness (and at least one exists)
    scaling: bool = False  # instances were asked for and are not ready yet (a scale-up)
    http_url: str | None = None  # where to reach the track directly over OIP v2 REST
    grpc_target: str | None = None  # host:port of the track's OIP v2 gRPC
    instance_urls: tuple[str, ...] = ()  # each instance's REST URL (for direct scraping)


@dataclass(frozen=True)
class PlatformView:
    """One model on a platform, read once per tick."""

    stable: TrackState
    canary: TrackState
    # where users reach the model through the traffic split (REST), if the controller can
    # reach it too; None: load is sent straight to the canary
    entry_url: str | None = None


class Platform(Protocol):
    """Runs the model's stable and canary tracks."""

    def view(self, *, model: str) -> PlatformView:
        """What runs now for `model` (no waiting)."""

    def run_canary(self, *, model: str, version: str, weight: int) -> None:
        """Ensure a canary of `version` exists, sized for `weight`% of the traffic
        (idempotent; readiness is observed later through `view`)."""

    def promote(self, *, model: str, version: str) -> None:
        """Start moving the stable track to `version` (idempotent; the new stable being
        ready is observed later through `view`)."""

    def remove_canary(self, *, model: str) -> None:
        """Remove the canary track (idempotent); call only once no traffic goes to it."""


class TrafficRouter(Protocol):
    """Splits a model's traffic between stable and canary, and says what it really does."""

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        """Ask the data plane to send `canary_weight`% of the route's traffic to the
        canary (returns at once)."""

    def set_header_route(self, *, route: str, header: tuple[str, str],
                         to_canary: bool) -> None:
        """Send the requests that carry `header` (name, exact value: the rollout's
        RolloutSpec.header_route) to the canary whatever its weight, or back to the split
        (idempotent; returns at once). Called only for rollouts that have one."""

    def set_shadow(self, *, route: str, on: bool) -> None:
        """Point the route's shadow rule (requests carrying `x-modelrail-shadow: 1`: stable's
        mirror) at the canary, or back at stable, which refuses them, so the mirror pauses
        (idempotent; returns at once). Called only for rollouts with a shadow phase."""

    def observed_weight(self, *, route: str) -> int | None:
        """The canary weight the data plane applies now (None: the route is unknown to
        it): a weight change is done only when this shows it."""


@dataclass(frozen=True)
class MetricTrack:
    """Whose traffic to measure: a model version, and where its instances are."""

    model: str
    version: str
    urls: tuple[str, ...] = ()  # instance URLs, for providers that scrape them directly
    # "split": requests the weighted split sent (all but the header-routed ones);
    # "header": only those of the rollout's headerRoute; "shadow": only those stable's
    # mirror sent (the serving metrics' route label)
    route: str = "split"


class MetricProvider(Protocol):
    """Requests, server errors and latency a track served (providers measure, the
    analysis decides)."""

    def sample(self, *, track: MetricTrack, window_seconds: float) -> TrafficSample | None:
        """What `track` served over the last `window_seconds`; None when the backend
        cannot say (no data, never success). The controller calls it at the start and at
        the end of each analysis interval, so a provider that counts increases between
        scrapes takes the first call as its baseline."""

    def shadow(self, *, track: MetricTrack, window_seconds: float) -> ShadowSample | None:
        """What the mirror of `track` (stable, in a shadow phase) did over the last
        `window_seconds`: requests mirrored, failed, dropped, answers paired and differing;
        None when the backend cannot say. Called like `sample`: first call the baseline."""


@dataclass(frozen=True)
class GateEndpoint:
    """One side of the model gate: a version answering at a URL."""

    url: str
    model: str
    version: str


class ModelGate(Protocol):
    """Does the canary answer like stable on the same inputs?"""

    def compare(self, *, stable: GateEndpoint, canary: GateEndpoint) -> GateSample | None:
        """Both sides' answers to the validation sample, compared; None when a side could
        not answer (no data, never success)."""


@dataclass(frozen=True)
class LoadTarget:
    """Where one analysis interval's load goes."""

    model: str
    version: str  # the canary version (gRPC calls name it)
    http_url: str  # OIP v2 REST: through the traffic split, or straight at the canary
    grpc_target: str | None  # OIP v2 gRPC straight at the canary (None: REST only)
    seconds: float
    users: int


class LoadError(RuntimeError):
    """A load run failed to run (not: the canary failed requests). Its message says why;
    the controller records it and counts the interval as a failed load run."""


class LoadUnavailableError(LoadError):
    """The run could not start for want of what a person must supply (a validation sample):
    no data, which holds the rollout until its deadline — not a failure of the canary."""


class LoadLostError(LoadError):
    """The runner does not know the handle (it restarted): the interval starts again."""


class LoadRunner(Protocol):
    """Runs Locust against a canary for one analysis interval."""

    def start(self, *, target: LoadTarget) -> str:
        """Start a run; returns its handle (persisted by the controller)."""

    def result(self, *, handle: str) -> LoadSample | None:
        """The run's sample once it finished, None while it runs; LoadError if it failed
        or the handle is unknown (a controller restarted mid-run starts a new one)."""

    def cancel(self, *, handle: str) -> None:
        """Stop a run and forget it (idempotent)."""


class RecordStore(Protocol):
    """Where the controller keeps its RolloutRecord (a local file; a ModelRollout's
    status). Saved before each action and after it, so a restarted controller resumes."""

    def load(self) -> RolloutRecord | None:
        """The saved record, None before the first save."""

    def save(self, *, record: RolloutRecord, verdict: Verdict | None) -> None:
        """Persist `record` (durably) with the verdict that led to it, if any."""


class Journal(Protocol):
    """Where decisions are told: the local audit log, Kubernetes Events."""

    def decided(self, *, before: RolloutStatus, decision: Decision,
                observation: Observation) -> None:
        """One decision of the engine, holds included, with the evidence it was taken on."""
