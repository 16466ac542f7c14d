"""The local rollout runner with no process started: its controller over the in-memory fakes
(tests/rollout/core/fakes.py) with the real status.json store and audit journal — a promote
answers only the pause it names, an abort ends the rollout, commands are applied once across
a restart — and a rollout opened from its files takes the model's task from the registry
card."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from modelrail.errors import NotFoundError
from modelrail.models.registry import Registry
from modelrail.rollout.core.analysis import GateSample, TrafficSample
from modelrail.rollout.core.controller import ControllerSettings, RolloutController
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutSpec
from modelrail.rollout.load.locust import LocustRunner
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.runner import LocalRunner, open_rollout
from modelrail.rollout.local.store import (
    AuditJournal,
    RolloutFiles,
    RolloutStore,
    append_jsonl,
    read_jsonl,
    write_json,
)
from modelrail.rollout.metrics.gate import ModelGateProvider
from tests.models.test_registry_hardening import fake_card
from tests.rollout.core.fakes import FakeLoad, FakePlatform, FakeRouter, StaticGate, StaticProvider
from tests.rollout.core.fakes import _Track as FakeTrack
from tests.rollout.core.test_engine import GOOD, SPEC, Driver

HEALTHY = TrafficSample(requests=400, errors=0, p99_ms=5.0)
GATED = replace(SPEC, manual_gates=(50,))


def paused(spec: RolloutSpec) -> RolloutRecord:
    """The record of a rollout at its manual gate at 50%, as the engine leaves it."""
    drv = Driver(spec)
    drv.tick()
    drv.tick(canary_ready=True)
    for _ in range(100):
        if drv.status.phase is Phase.PAUSED:
            return RolloutRecord(status=drv.status, executed_seq=drv.status.seq)
        drv.tick(2.0, canary_ready=True, measurements=GOOD)
    raise AssertionError(f"never paused: {drv.status}")


class Rig:
    """A runner over fakes, resumed from a rollout paused at 50%."""

    def __init__(self, tmp_path: Path, spec: RolloutSpec = GATED) -> None:
        self.spec = spec
        self.files = RolloutFiles(tmp_path / "20250101T000000-iris-2")
        self.files.dir.mkdir(parents=True)
        write_json(self.files.request, {"id": self.files.id, "env": "dev",
                                        "spec": spec.to_dict(), "task": "classification"})
        RolloutStore(self.files).save(record=paused(spec), verdict=None)
        self.audit = tmp_path / "audit.jsonl"
        self.router = FakeRouter()
        self.router.applied["iris"] = 50
        self.platform = FakePlatform(self.router, stable="1")
        self.platform.canary = FakeTrack(version="2", replicas=1)
        self.load = FakeLoad()
        self.runner = self.open()

    def open(self) -> LocalRunner:
        """A runner as a (re)started daemon builds it: from what the files say."""
        store = RolloutStore(self.files)
        controller = RolloutController(
            spec=self.spec, platform=self.platform, router=self.router,
            metrics=StaticProvider({"1": HEALTHY, "2": HEALTHY}),
            gate=StaticGate(GateSample(compared=38, disagreements=0, complete=True)),
            load=self.load, store=store,
            journal=AuditJournal(audit_path=self.audit, files=self.files, env="dev",
                                 spec=self.spec, digests={}),
            now=time.time(), settings=ControllerSettings(load_seconds=1, load_users=1))
        return LocalRunner(files=self.files, controller=controller, store=store,
                           load=LocustRunner([[1.0]]))

    def command(self, **command: object) -> None:
        append_jsonl(self.files.commands, command)

    def tick(self) -> Phase:
        phase = self.runner.tick().phase
        self.router.advance()
        self.platform.advance()
        self.load.advance()
        return phase


def test_a_promote_answers_only_the_pause_it_names(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seq = rig.runner.controller.status.seq
    assert rig.tick() is Phase.PAUSED
    rig.command(command="promote", seq=seq - 1)  # late: issued against an earlier decision
    assert [rig.tick() for _ in range(3)] == [Phase.PAUSED] * 3
    rig.command(command="promote", seq=seq)
    assert rig.tick() is Phase.PROGRESSING
    assert rig.runner.controller.status.weight == 100
    saved = rig.files.read_status()
    assert saved is not None and saved.commands_seen == 2 == rig.runner.store.commands_seen


def test_commands_are_applied_once_across_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    seq = rig.runner.controller.status.seq
    rig.command(command="promote", seq=seq)
    assert rig.tick() is Phase.PROGRESSING
    rig.runner = rig.open()  # the daemon restarted: the promote is not seen again
    assert rig.runner.store.commands_seen == 1
    rig.command(command="abort")
    assert rig.tick() is Phase.ABORTED
    for _ in range(10):
        if rig.runner.finished:
            break
        rig.tick()
    assert rig.runner.finished and rig.files.summary()["done"]
    assert rig.platform.canary.version is None and rig.router.applied["iris"] == 0
    fresh = [e for e in read_jsonl(rig.audit) if e["action"] != "hold" and not e["reissued"]]
    assert [(e["action"], e["weight"]) for e in fresh] == [("set_weight", 100),
                                                           ("rollback", 0)]


def test_a_rollout_takes_its_task_from_the_registry_card(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    for version, task in (("1", "regression"), ("2", "regression")):
        card = fake_card("iris", version, f"model {version}".encode())
        registry.put(card.model_copy(update={"task": task}), f"model {version}".encode())
    files = RolloutFiles(tmp_path / "rollouts" / "20250101T000000-iris-2")
    files.dir.mkdir(parents=True)
    write_json(files.request, {"id": files.id, "env": "dev", "spec": SPEC.to_dict(),
                               "task": "classification"})
    write_json(files.sample, {"rows": [[5.1, 3.5, 1.4, 0.2]]})
    env = LocalEnvironment(name="dev", run_dir=tmp_path / "run")  # not started
    runner = open_rollout(files, env=env, registry=registry, audit_path=tmp_path / "a.jsonl")
    gate = runner.controller.gate
    assert isinstance(gate, ModelGateProvider) and gate.task == "regression"
    assert files.rollout_status() is not None  # the controller saved its first record
    missing = replace(SPEC, canary_version="7")
    write_json(files.request, {"id": files.id, "env": "dev", "spec": missing.to_dict(),
                               "task": "classification"})
    with pytest.raises(NotFoundError, match="7"):
        open_rollout(files, env=env, registry=registry, audit_path=tmp_path / "a.jsonl")
