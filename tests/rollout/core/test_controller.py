"""The one controller ticked through whole rollouts on the in-memory platform (fakes.py):
the same RolloutController the local daemon and the Kubernetes operator run, with every
port faked by hand — promotion, every kind of rollback, restarts and crash resume, a failed
load run named, a scale-up holding the weights, an abort mid-interval."""

from __future__ import annotations

from dataclasses import replace

from modelrail.rollout.core.analysis import GateSample, LoadSample, TrafficSample
from modelrail.rollout.core.controller import ControllerSettings, RolloutController
from modelrail.rollout.core.spec import Phase, RolloutSpec
from tests.rollout.core.fakes import (
    FakeLoad,
    FakePlatform,
    FakeRouter,
    ListJournal,
    MemoryStore,
    StaticGate,
    StaticProvider,
)
from tests.rollout.core.test_engine import SPEC

HEALTHY = TrafficSample(requests=400, errors=0, p99_ms=5.0)
ERRORING = TrafficSample(requests=400, errors=80, p99_ms=5.0)
AGREE = GateSample(compared=38, disagreements=0, complete=True)
PRE = replace(SPEC, pre_traffic_analysis=True)


class Rig:
    """A controller over fresh fakes, ticked one second at a time."""

    def __init__(self, spec: RolloutSpec = PRE, *, canary: TrafficSample = HEALTHY,
                 gate: GateSample | None = AGREE, load: FakeLoad | None = None,
                 store: MemoryStore | None = None, never_ready: bool = False,
                 ready_after: int = 1, platform: FakePlatform | None = None,
                 router: FakeRouter | None = None) -> None:
        self.spec = spec
        self.router = router or FakeRouter()
        self.platform = platform or FakePlatform(self.router, stable=spec.stable_version,
                                                 ready_after=ready_after,
                                                 never_ready=never_ready)
        self.metrics = StaticProvider({spec.stable_version: HEALTHY,
                                       spec.canary_version: canary})
        self.gate = StaticGate(gate)
        self.load = load or FakeLoad()
        self.store = store or MemoryStore()
        self.journal = ListJournal()
        self.now = 1000.0
        self.controller = self.build()

    def build(self) -> RolloutController:
        return RolloutController(spec=self.spec, platform=self.platform, router=self.router,
                                 metrics=self.metrics, gate=self.gate, load=self.load,
                                 store=self.store, journal=self.journal, now=self.now,
                                 settings=ControllerSettings(load_seconds=1, load_users=1))

    def tick(self, *, abort: bool = False, resume: bool = False) -> Phase:
        phase = self.controller.tick(now=self.now, abort=abort, resume=resume).phase
        self.router.advance()
        self.platform.advance()
        self.load.advance()
        self.now += 1.0
        return phase

    def run(self, limit: int = 500) -> Phase:
        for _ in range(limit):
            self.tick()
            if self.controller.finished:
                return self.controller.status.phase
        raise AssertionError(f"no end after {limit} ticks: {self.controller.status}")

    def weights(self) -> list[int]:
        return [w for _, w in self.router.sets]


def test_a_good_canary_is_analysed_before_traffic_then_promoted_step_by_step() -> None:
    rig = Rig()
    assert rig.run() is Phase.SUCCEEDED
    # pre-traffic: the first load went straight at the canary, later ones through the split
    targets = [run[0] for run in rig.load.runs.values()]
    assert targets[0].http_url == "http://canary.test"  # type: ignore[attr-defined]
    assert all(t.http_url == "http://entry.test" for t in targets[1:])  # type: ignore[attr-defined]
    assert rig.weights()[:3] == [10, 50, 100] and rig.weights()[-1] == 0
    assert rig.platform.stable.version == "2" and rig.platform.canary.version is None
    assert ("promote", "2", 0) in rig.platform.calls
    assert rig.platform.calls[-1][0] == "remove_canary"
    assert rig.store.record is not None and rig.store.record.status.phase is Phase.SUCCEEDED
    assert rig.store.record.executed_seq == rig.store.record.status.seq
    # every analysis read both tracks over its interval and the model gate
    assert {v for v, _ in rig.metrics.calls} == {"1", "2"}
    assert rig.gate.compared and set(rig.gate.compared) == {("1", "2")}


def test_an_erroring_canary_is_rolled_back_before_any_user_traffic() -> None:
    rig = Rig(canary=ERRORING)
    assert rig.run() is Phase.ROLLED_BACK
    assert max(rig.weights(), default=0) == 0  # never took a share of user traffic
    assert rig.platform.canary.version is None and rig.platform.stable.version == "1"
    assert "pre-traffic analysis failed" in rig.controller.status.message


HEADER = ("x-model-cohort", "canary")


def test_header_requests_reach_the_canary_from_ready_until_it_is_retired() -> None:
    """Testers and a cohort reach the canary before it has any weight; the header is
    turned back to the split before the canary is removed (the fake platform checks)."""
    rig = Rig(replace(PRE, header_route=HEADER))
    assert rig.run() is Phase.SUCCEEDED
    turns = [e for e in rig.router.events if e[0] == "header"]
    assert turns[0] == ("header", True) and turns[-1] == ("header", False)
    first_weight = next(i for i, e in enumerate(rig.router.events)
                        if e[0] == "weight" and e[1] != 0)
    assert rig.router.events.index(("header", True)) < first_weight  # at weight 0
    assert {h for _, h, _ in rig.router.header_calls} == {HEADER}
    assert rig.store.record is not None and not rig.store.record.header_to_canary


def test_header_requests_leave_a_rolled_back_canary_first() -> None:
    rig = Rig(replace(PRE, header_route=HEADER), canary=ERRORING)
    assert rig.run() is Phase.ROLLED_BACK
    assert [to for _, _, to in rig.router.header_calls][:1] == [True]
    assert rig.router.header_calls[-1][2] is False
    assert rig.platform.canary.version is None


def test_no_header_route_no_header_calls() -> None:
    rig = Rig()
    assert rig.run() is Phase.SUCCEEDED
    assert rig.router.header_calls == []


def test_a_wrong_canary_is_stopped_by_the_model_gate() -> None:
    rig = Rig(gate=GateSample(compared=38, disagreements=20, complete=True))
    assert rig.run() is Phase.ROLLED_BACK
    assert "model gate: FAIL" in rig.controller.status.message


def test_a_failed_load_run_is_named_not_dropped() -> None:
    rig = Rig(load=FakeLoad(fail="Job modelrail-load-1 failed: ImagePullBackOff"))
    assert rig.run() is Phase.ROLLED_BACK
    assert "ImagePullBackOff" in rig.controller.status.message
    assert any("load run failed" in c.detail for v in rig.store.verdicts for c in v.checks)


def test_a_canary_that_never_becomes_ready_fails_at_the_deadline_on_stable() -> None:
    rig = Rig(never_ready=True)
    assert rig.run() is Phase.FAILED
    assert max(rig.weights(), default=0) == 0
    assert rig.platform.canary.version is None and rig.platform.stable.version == "1"


def test_weights_hold_while_the_canary_scales_up() -> None:
    rig = Rig(spec=SPEC)  # no pre-traffic: straight to the first weight
    while not rig.weights():
        rig.tick()
    rig.tick()  # weight 10 applied
    rig.platform.canary.ready_in = 5  # a scale-up: new instances not ready yet
    held = [rig.tick() for _ in range(4)]
    assert held == [Phase.PROGRESSING] * 4
    assert rig.weights() == [10]
    assert "scale-up" in rig.controller.status.message
    assert rig.run() is Phase.SUCCEEDED


def test_a_restarted_controller_resumes_with_each_action_once() -> None:
    rig = Rig()
    while rig.weights() != [10, 50]:
        rig.tick()
    seq = rig.controller.status.seq
    rig.controller = rig.build()  # a new process: the same store, platform and router
    assert rig.controller.status.seq == seq
    assert rig.run() is Phase.SUCCEEDED
    assert rig.weights()[:3] == [10, 50, 100]  # no weight set twice by the restart
    promotes = [c for c in rig.platform.calls if c[0] == "promote"]
    assert promotes and all(c[1] == "2" for c in promotes)


def test_a_decision_persisted_but_not_carried_out_is_carried_out_on_resume() -> None:
    rig = Rig(spec=SPEC)
    while not rig.weights():
        rig.tick()
    assert rig.store.record is not None
    # the controller died after saving the decision to set 10%, before acting on it
    rig.store.record = rig.store.record.evolve(executed_seq=rig.store.record.status.seq - 1)
    rig.router.sets.clear()
    rig.router.pending.clear()
    rig.controller = rig.build()
    rig.tick()
    assert rig.weights() == [10]  # carried out again, once, before anything else
    assert rig.store.record.executed_seq == rig.store.record.status.seq


def test_a_lost_load_run_starts_the_interval_again() -> None:
    rig = Rig()
    rig.tick()  # canary asked for
    rig.tick()  # ready: the pre-traffic load starts
    assert rig.controller.record.load_handle == "load-1"
    rig.load.runs.clear()  # the runner restarted and forgot it
    rig.tick()
    assert rig.controller.record.load_handle is None
    assert rig.run() is Phase.SUCCEEDED
    assert len(rig.load.runs) >= 2


def test_abort_mid_interval_cancels_the_load_and_returns_traffic() -> None:
    rig = Rig(spec=SPEC)
    while 10 not in rig.weights():
        rig.tick()
    while rig.controller.record.load_handle is None:
        rig.tick()
    handle = rig.controller.record.load_handle
    rig.tick(abort=True)
    assert handle in rig.load.cancelled
    assert rig.run() is Phase.ABORTED
    assert rig.weights()[-1] == 0 and rig.platform.canary.version is None


def test_a_manual_gate_pauses_until_resumed() -> None:
    rig = Rig(spec=replace(PRE, manual_gates=(50,)))
    for _ in range(300):
        if rig.tick() is Phase.PAUSED:
            break
    assert rig.controller.status.phase is Phase.PAUSED
    for _ in range(30):  # the deadline does not run while a person decides
        rig.tick()
    assert rig.controller.status.phase is Phase.PAUSED
    rig.tick(resume=True)
    assert rig.run() is Phase.SUCCEEDED


def test_load_sample_without_requests_fails() -> None:
    rig = Rig(load=FakeLoad(LoadSample(requests=0, failures=0)))
    assert rig.run() is Phase.ROLLED_BACK
    assert "produced no requests" in rig.controller.status.message
