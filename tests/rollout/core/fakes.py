"""Hand-written in-memory backends for every port (ports.py), so the one controller can be
ticked through whole rollouts with no process, network or cluster: a platform whose
instances become ready some ticks after they are asked for, a router that applies a weight
one tick late, metrics and a gate that answer what a test sets, a load runner that finishes
one tick after it starts, a record store that can be "restarted", and a journal.

Each fake refuses what a real backend would refuse (an unknown handle, removing a canary
that still takes traffic), so a controller bug shows up as a failure, not as silence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from modelrail.rollout.core.analysis import (
    GateSample,
    LoadSample,
    ShadowSample,
    TrafficSample,
    Verdict,
)
from modelrail.rollout.core.engine import Decision, Observation
from modelrail.rollout.core.spec import RolloutRecord, RolloutStatus
from modelrail.rollout.ports import (
    GateEndpoint,
    Journal,
    LoadError,
    LoadLostError,
    LoadRunner,
    LoadTarget,
    MetricProvider,
    MetricTrack,
    ModelGate,
    Platform,
    PlatformView,
    RecordStore,
    TrackState,
    TrafficRouter,
)


@dataclass
class _Track:
    version: str | None = None
    ready_in: int = 0  # ticks until its instances answer readiness
    replicas: int = 0


class FakeRouter:
    """Applies a weight one `advance()` after it was set."""

    def __init__(self) -> None:
        self.applied: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.sets: list[tuple[str, int]] = []
        self.header_calls: list[tuple[str, tuple[str, str], bool]] = []
        self.events: list[tuple[str, object]] = []  # weights, header and shadow turns
        self.shadow_calls: list[tuple[str, bool]] = []

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        self.sets.append((route, canary_weight))
        self.events.append(("weight", canary_weight))
        self.pending[route] = canary_weight

    def set_header_route(self, *, route: str, header: tuple[str, str],
                         to_canary: bool) -> None:
        self.header_calls.append((route, header, to_canary))
        self.events.append(("header", to_canary))

    def set_shadow(self, *, route: str, on: bool) -> None:
        self.shadow_calls.append((route, on))
        self.events.append(("shadow", on))

    @property
    def shadowing(self) -> bool:
        return bool(self.shadow_calls) and self.shadow_calls[-1][1]

    def observed_weight(self, *, route: str) -> int | None:
        return self.applied.get(route, 0)

    def advance(self) -> None:
        self.applied.update(self.pending)
        self.pending.clear()


class FakePlatform:
    """Stable and canary tracks of one model; new instances are ready `ready_after` ticks
    after they are asked for (never, with `never_ready`)."""

    def __init__(self, router: FakeRouter, *, stable: str, ready_after: int = 1,
                 never_ready: bool = False) -> None:
        self.router = router
        self.ready_after = ready_after
        self.never_ready = never_ready
        self.stable = _Track(version=stable, replicas=1)
        self.canary = _Track()
        self.calls: list[tuple[str, str, int]] = []

    def _state(self, t: _Track, name: str) -> TrackState:
        if t.version is None:
            return TrackState(version=None, ready=False)
        ready = t.ready_in <= 0 and not (self.never_ready and name == "canary")
        url = f"http://{name}.test"
        return TrackState(version=t.version, ready=ready, scaling=not ready, http_url=url,
                          grpc_target=f"{name}.test:8001", instance_urls=(url,))

    def view(self, *, model: str) -> PlatformView:
        return PlatformView(stable=self._state(self.stable, "stable"),
                            canary=self._state(self.canary, "canary"),
                            entry_url="http://entry.test")

    def run_canary(self, *, model: str, version: str, weight: int) -> None:
        self.calls.append(("run_canary", version, weight))
        if self.canary.version != version:
            self.canary = _Track(version=version, ready_in=self.ready_after, replicas=1)

    def promote(self, *, model: str, version: str) -> None:
        self.calls.append(("promote", version, 0))
        if self.stable.version != version:
            self.stable = _Track(version=version, ready_in=self.ready_after, replicas=1)

    def remove_canary(self, *, model: str) -> None:
        if self.router.observed_weight(route=model) != 0:
            raise AssertionError("canary removed while the data plane still routes to it")
        if self.router.header_calls and self.router.header_calls[-1][2]:
            raise AssertionError("canary removed while header requests still go to it")
        if self.router.shadowing:
            raise AssertionError("canary removed while stable's mirror still reaches it")
        self.calls.append(("remove_canary", self.canary.version or "", 0))
        self.canary = _Track()

    def advance(self) -> None:
        for t in (self.stable, self.canary):
            t.ready_in -= 1


class StaticProvider:
    """Metrics a test sets per version; every call is recorded."""

    def __init__(self, samples: dict[str, TrafficSample | None],
                 shadow: ShadowSample | None = None) -> None:
        self.samples = samples
        self.shadow_sample = shadow  # what stable's mirror did per interval
        self.calls: list[tuple[str, float]] = []
        self.routes: list[str] = []
        self.shadow_calls: list[tuple[str, float]] = []

    def sample(self, *, track: MetricTrack, window_seconds: float) -> TrafficSample | None:
        self.calls.append((track.version, window_seconds))
        self.routes.append(track.route)
        return self.samples.get(track.version)

    def shadow(self, *, track: MetricTrack, window_seconds: float) -> ShadowSample | None:
        self.shadow_calls.append((track.version, window_seconds))
        return self.shadow_sample


class StaticGate:
    def __init__(self, sample: GateSample | None) -> None:
        self.sample = sample
        self.compared: list[tuple[str, str]] = []

    def compare(self, *, stable: GateEndpoint, canary: GateEndpoint) -> GateSample | None:
        self.compared.append((stable.version, canary.version))
        return self.sample


HEALTHY_LOAD = LoadSample(300, 0)


class FakeLoad:
    """A run finishes one `advance()` after it starts; `fail` makes it a failed run."""

    def __init__(self, sample: LoadSample = HEALTHY_LOAD, *,
                 fail: str | None = None) -> None:
        self.sample = sample
        self.fail = fail
        self.runs: dict[str, list[object]] = {}  # handle -> [target, done]
        self.cancelled: list[str] = []

    def start(self, *, target: LoadTarget) -> str:
        handle = f"load-{len(self.runs) + 1}"
        self.runs[handle] = [target, False]
        return handle

    def result(self, *, handle: str) -> LoadSample | None:
        if handle not in self.runs:
            raise LoadLostError(f"unknown load run {handle!r}")
        if not self.runs[handle][1]:
            return None
        if self.fail:
            raise LoadError(self.fail)
        return self.sample

    def cancel(self, *, handle: str) -> None:
        self.cancelled.append(handle)
        self.runs.pop(handle, None)

    def advance(self) -> None:
        for run in self.runs.values():
            run[1] = True


@dataclass
class MemoryStore:
    record: RolloutRecord | None = None
    saves: int = 0
    verdicts: list[Verdict] = field(default_factory=list)

    def load(self) -> RolloutRecord | None:
        return self.record

    def save(self, *, record: RolloutRecord, verdict: Verdict | None) -> None:
        # round-trip through the persisted form, as a file or a resource status would
        self.record = RolloutRecord.from_dict(record.to_dict())
        self.saves += 1
        if verdict is not None:
            self.verdicts.append(verdict)


@dataclass
class ListJournal:
    entries: list[tuple[RolloutStatus, Decision, Observation]] = field(default_factory=list)

    def decided(self, *, before: RolloutStatus, decision: Decision,
                observation: Observation) -> None:
        self.entries.append((before, decision, observation))


# mypy checks that each fake implements its port
_platform: Platform = FakePlatform(FakeRouter(), stable="1")
_router: TrafficRouter = FakeRouter()
_metrics: MetricProvider = StaticProvider({})
_gate: ModelGate = StaticGate(None)
_load: LoadRunner = FakeLoad()
_store: RecordStore = MemoryStore()
_journal: Journal = ListJournal()
