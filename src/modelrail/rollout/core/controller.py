"""The rollout controller: observe → decide → act, one non-blocking tick at a time, for
every platform.

The local daemon (local/runner.py) and the Kubernetes operator (kube/reconciler.py) build a
`RolloutController` over their backends — a Platform, a TrafficRouter, a MetricProvider, a
ModelGate, a LoadRunner, a RecordStore and a Journal (ports.py) — and call `tick()`;
nothing else decides anything. A tick
  1. carries out again an action that was decided but not recorded as done (crash resume);
  2. observes: what runs (Platform.view), the weight the data plane applies, and — when the
     canary is ready and at its weight — one analysis interval: a Locust run is started on
     one tick and its result, the metrics of both tracks over the interval and the model
     gate are read on a later one;
  3. asks the engine (engine.decide, pure);
  4. persists the record, *then* acts (each action idempotent and one sub-step: set a
     weight, start the promotion, remove the canary once no traffic reaches it), then
     records the action as done.
Nothing here waits: a weight applied, a canary or a new stable becoming ready, a load run
finishing are all seen on a later tick, so the same code drives processes on one machine
and objects an API server reconciles. Time comes in as `now`; the module reads no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelrail.rollout.core import engine
from modelrail.rollout.core.analysis import LoadSample, Measurements
from modelrail.rollout.core.engine import Action, Decision, Observation
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutSpec, RolloutStatus
from modelrail.rollout.ports import (
    GateEndpoint,
    Journal,
    LoadError,
    LoadLostError,
    LoadRunner,
    LoadTarget,
    LoadUnavailableError,
    MetricProvider,
    MetricTrack,
    ModelGate,
    Platform,
    PlatformView,
    RecordStore,
    TrafficRouter,
)


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller measures; the policy itself is in the RolloutSpec."""

    load_seconds: float = 10.0  # seconds of Locust load per analysis interval
    load_users: int = 4  # Locust users per protocol
    grpc_load: bool = True  # also send gRPC straight at the canary (where it is reachable)


@dataclass(frozen=True)
class Tick:
    """What one tick works from; rebuilt every tick, never persisted."""

    now: float  # seconds since the epoch at the tick's start: the engine's only clock
    record: RolloutRecord  # the persisted state the tick starts from
    abort: bool  # a person asked to abort since the last tick
    resume: bool  # a person passed the manual gate the rollout is paused at
    view: PlatformView  # what runs for the model now
    observed_weight: int | None  # the canary weight the data plane applies now


class RolloutController:
    """One rollout of one model, on whatever platform the ports reach."""

    def __init__(self, *, spec: RolloutSpec, platform: Platform, router: TrafficRouter,
                 metrics: MetricProvider | None, gate: ModelGate | None, load: LoadRunner,
                 store: RecordStore, journal: Journal, now: float,
                 settings: ControllerSettings = ControllerSettings()) -> None:
        self.spec = spec
        self.platform = platform
        self.router = router
        self.metrics = metrics
        self.gate = gate
        self.load = load
        self.store = store
        self.journal = journal
        self.settings = settings
        saved = store.load()
        self.record = saved or RolloutRecord(status=engine.start(now))
        if saved is None:
            store.save(record=self.record, verdict=None)

    @property
    def status(self) -> RolloutStatus:
        return self.record.status

    @property
    def finished(self) -> bool:
        """Terminal, and its traffic and canary cleaned up: nothing left to tick for."""
        return self.record.finished

    # --- the tick --------------------------------------------------------------------------
    def tick(self, *, now: float, abort: bool = False, resume: bool = False) -> RolloutStatus:
        """One observe → decide → act cycle; returns at once."""
        if self.status.phase.terminal:
            if not self.record.finished:
                self._clean_up()
            return self.status
        if self.record.executed_seq < self.status.seq:
            self._resume_action()
        model = self.spec.model
        if self.status.phase is Phase.INITIALIZING and not abort:
            self.platform.run_canary(model=model, version=self.spec.canary_version,
                                     weight=self.status.weight)
        t = Tick(now=now, record=self.record, abort=abort, resume=resume,
                 view=self.platform.view(model=model),
                 observed_weight=self.router.observed_weight(route=model))
        self._route_header(t)
        self._route_shadow(t)
        if (abort or resume) and self.record.load_handle is not None:
            self._end_interval(cancel=True)  # a person's command is decided on now
        measurements = None
        if self._analysing(t) and self.status.phase is Phase.SHADOWING:
            measurements = self._shadow_interval(t)
            if measurements is None:
                return self.status  # the interval still runs
        elif self._analysing(t):
            if self.record.load_handle is None:
                self._start_interval(t)
                return self.status  # the result is read on a later tick
            measurements = self._finish_interval(t)
            if measurements is None:
                return self.status  # the load still runs
        self._decide(t, measurements)
        return self.status

    def _route_header(self, t: Tick) -> None:
        """With a headerRoute, its requests reach the canary from when it is ready (before
        any weight: testers, a cohort) until it is retired."""
        header = self.spec.header_route
        if (header is None or self.record.header_to_canary or t.abort
                or not t.view.canary.ready
                or self.status.phase not in (Phase.INITIALIZING, Phase.PROGRESSING,
                                             Phase.PAUSED)):
            return
        self.router.set_header_route(route=self.spec.model, header=header, to_canary=True)
        self._save(self.record.evolve(header_to_canary=True), None)

    def _route_shadow(self, t: Tick) -> None:
        """With a shadow phase, the route's shadow rule points at the canary exactly while
        the rollout is in it and the canary is ready (stable's mirror reaches it), and at
        stable otherwise (the mirror finds its requests refused and pauses)."""
        if self.spec.shadow is None:
            return
        want = (self.status.phase is Phase.SHADOWING and t.view.canary.ready
                and not t.abort)
        if want != self.record.shadow_on:
            self.router.set_shadow(route=self.spec.model, on=want)
            self._save(self.record.evolve(shadow_on=want), None)

    def _analysing(self, t: Tick) -> bool:
        canary, phase = t.view.canary, self.status.phase
        if t.abort or t.resume or not canary.ready or canary.scaling or not t.view.stable.ready:
            return False
        if phase is Phase.INITIALIZING:
            return self.spec.pre_traffic_analysis
        if phase is Phase.SHADOWING:
            return self.record.shadow_on
        return (phase in (Phase.PROGRESSING, Phase.PAUSED)
                and t.observed_weight == self.status.weight)

    def _decide(self, t: Tick, measurements: Measurements | None) -> None:
        before = self.status
        obs = Observation(now=t.now, canary_ready=t.view.canary.ready,
                          canary_scaling=t.view.canary.scaling,
                          observed_weight=t.observed_weight, measurements=measurements,
                          promoted=self._promoted(t), rolled_back=self._rolled_back(t),
                          abort=t.abort, resume=t.resume)
        decision = engine.decide(self.spec, before, obs)
        self._save(self.record.evolve(status=decision.status), decision)  # before acting
        self.journal.decided(before=before, decision=decision, observation=obs)
        self._act(decision.action, decision.weight, t.view, t.observed_weight)
        self._save(self.record.evolve(executed_seq=decision.status.seq), None)

    # --- analysis intervals ----------------------------------------------------------------
    def _tracks(self, view: PlatformView) -> tuple[MetricTrack, ...]:
        """Stable and canary over the split; with a headerRoute, the canary's header-routed
        requests too, measured apart."""
        s = self.spec
        tracks = (MetricTrack(s.model, s.stable_version, view.stable.instance_urls),
                  MetricTrack(s.model, s.canary_version, view.canary.instance_urls))
        if s.header_route is None:
            return tracks
        return (*tracks, MetricTrack(s.model, s.canary_version, view.canary.instance_urls,
                                     route="header"))

    def _start_interval(self, t: Tick) -> None:
        if self.metrics is not None:  # the baseline of providers that count increases
            for track in self._tracks(t.view):
                self.metrics.sample(track=track, window_seconds=self.settings.load_seconds)
        canary = t.view.canary
        assert canary.http_url is not None
        pre_traffic = self.status.phase is Phase.INITIALIZING
        # before it takes traffic the canary is loaded directly; later through the split
        rest = canary.http_url if pre_traffic or t.view.entry_url is None else t.view.entry_url
        handle = self.load.start(target=LoadTarget(
            model=self.spec.model, version=self.spec.canary_version, http_url=rest,
            grpc_target=canary.grpc_target if self.settings.grpc_load else None,
            seconds=self.settings.load_seconds, users=self.settings.load_users))
        self._save(self.record.evolve(load_handle=handle, interval_started_at=t.now), None)

    def _finish_interval(self, t: Tick) -> Measurements | None:
        handle = self.record.load_handle
        assert handle is not None
        try:
            load = self.load.result(handle=handle)
        except LoadLostError:
            self._end_interval(cancel=False)  # started again on the next tick
            return None
        except LoadUnavailableError as exc:
            load = LoadSample(requests=0, failures=0, error=str(exc), unavailable=True)
        except LoadError as exc:
            load = LoadSample(requests=0, failures=0, error=str(exc))
        if load is None:
            return None
        started = self.record.interval_started_at or t.now
        window = max(1.0, t.now - started)
        canary = stable = header = None
        if self.metrics is not None:
            stable_track, canary_track, *header_track = self._tracks(t.view)
            stable = self.metrics.sample(track=stable_track, window_seconds=window)
            canary = self.metrics.sample(track=canary_track, window_seconds=window)
            if header_track:
                header = self.metrics.sample(track=header_track[0], window_seconds=window)
        gate = None
        if (self.gate is not None and t.view.stable.http_url is not None
                and t.view.canary.http_url is not None):
            s = self.spec
            gate = self.gate.compare(
                stable=GateEndpoint(t.view.stable.http_url, s.model, s.stable_version),
                canary=GateEndpoint(t.view.canary.http_url, s.model, s.canary_version))
        self._end_interval(cancel=False)
        return Measurements(canary=canary, stable=stable, gate=gate, load=load,
                            seconds=window, header=header)

    def _shadow_interval(self, t: Tick) -> Measurements | None:
        """The shadow phase's interval: no load (the traffic is the users'), the mirror's
        counters on stable and the canary's mirrored requests over `load_seconds`; each
        interval's end is the next one's start."""
        s = self.spec
        stable_track = MetricTrack(s.model, s.stable_version, t.view.stable.instance_urls)
        canary_track = MetricTrack(s.model, s.canary_version, t.view.canary.instance_urls,
                                   route="shadow")
        started = self.record.interval_started_at
        if started is None or self.metrics is None:
            if self.metrics is not None:  # the baseline of providers that count increases
                for track in (stable_track, canary_track):
                    self.metrics.sample(track=track, window_seconds=self.settings.load_seconds)
                self.metrics.shadow(track=stable_track,
                                    window_seconds=self.settings.load_seconds)
            self._save(self.record.evolve(interval_started_at=t.now), None)
            return None if self.metrics is not None else Measurements()
        if t.now - started < self.settings.load_seconds:
            return None
        window = max(1.0, t.now - started)
        stable = self.metrics.sample(track=stable_track, window_seconds=window)
        canary = self.metrics.sample(track=canary_track, window_seconds=window)
        shadow = self.metrics.shadow(track=stable_track, window_seconds=window)
        self._save(self.record.evolve(interval_started_at=t.now), None)
        return Measurements(canary=canary, stable=stable, shadow=shadow, seconds=window)

    def _end_interval(self, *, cancel: bool) -> None:
        if cancel and self.record.load_handle is not None:
            self.load.cancel(handle=self.record.load_handle)
        self.record = self.record.evolve(load_handle=None, interval_started_at=None)

    # --- what the data plane shows ----------------------------------------------------------
    def _promoted(self, t: Tick) -> bool:
        stable, canary = t.view.stable, t.view.canary
        return (stable.version == self.spec.canary_version and stable.ready
                and not stable.scaling and canary.version is None
                and t.observed_weight == 0)

    def _rolled_back(self, t: Tick) -> bool:
        return t.view.canary.version is None and t.observed_weight == 0

    # --- act ------------------------------------------------------------------------------
    def _act(self, action: Action, weight: int, view: PlatformView,
             observed: int | None) -> None:
        """One idempotent sub-step; the engine re-issues PROMOTE and ROLLBACK every tick
        until it observes them done."""
        model = self.spec.model
        if action is Action.SET_WEIGHT:
            self.router.set_weight(route=model, canary_weight=weight)
            self.platform.run_canary(model=model, version=self.spec.canary_version,
                                     weight=weight)
        elif action is Action.PROMOTE:
            if view.stable.version != self.spec.canary_version:
                self.platform.promote(model=model, version=self.spec.canary_version)
            elif view.stable.ready and not view.stable.scaling:
                self._retire_canary(observed)  # traffic stays put until the new stable is up
        elif action is Action.ROLLBACK:
            self._retire_canary(observed)

    def _retire_canary(self, observed: int | None) -> None:
        if self.record.load_handle is not None:
            self._end_interval(cancel=True)
        model = self.spec.model
        self.router.set_weight(route=model, canary_weight=0)
        if self.spec.shadow is not None:  # every time, like the headerRoute below
            self.router.set_shadow(route=model, on=False)
            if self.record.shadow_on:
                self._save(self.record.evolve(shadow_on=False), None)
        if self.spec.header_route is not None:  # every time: a crash may have hidden it
            self.router.set_header_route(route=model, header=self.spec.header_route,
                                         to_canary=False)
            if self.record.header_to_canary:
                self._save(self.record.evolve(header_to_canary=False), None)
        if observed == 0:  # no traffic reaches the canary any more
            self.platform.remove_canary(model=model)

    def _clean_up(self) -> None:
        """After a terminal decision: traffic back on stable and no canary, on this tick or
        a later one (an abort or a deadline does not wait for the data plane)."""
        model = self.spec.model
        view = self.platform.view(model=model)
        observed = self.router.observed_weight(route=model)
        done = (self.status.phase in (Phase.SUCCEEDED, Phase.ROLLED_BACK)
                or (view.canary.version is None and observed == 0))
        if done:
            self._save(self.record.evolve(finished=True), None)
        else:
            self._retire_canary(observed)

    def _resume_action(self) -> None:
        """A controller that died between persisting a decision and recording it done
        carries it out again (every action is idempotent) before observing anything."""
        last = engine.last_action(self.status)
        if last is not None:
            model = self.spec.model
            self._act(Action(last[0]), last[1], self.platform.view(model=model),
                      self.router.observed_weight(route=model))
        self._save(self.record.evolve(executed_seq=self.status.seq), None)

    def _save(self, record: RolloutRecord, decision: Decision | None) -> None:
        self.record = record
        self.store.save(record=record, verdict=decision.verdict if decision else None)
