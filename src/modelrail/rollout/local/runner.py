"""One rollout on the local platform: the rollout controller (core/controller.py) built over
the local backends from the rollout's files, fed its commands and ticked until it finished.

`open_rollout` reads the rollout's request (spec and options), its validation sample and
the model's registry cards (the task, for the model gate; the sha256 digests, for the
audit), and wires: the LocalEnvironment as platform, its TraefikRouter, a ScrapeProvider,
a ModelGateProvider, a LocustRunner, status.json as record store and the audit log as
journal. The daemon (daemon.py) runs each rollout's `LocalRunner.run` in a thread of its
own; tests and the benchmark tick it themselves.

Each tick first consumes new lines of commands.jsonl: `abort`, and `promote`, which counts
only for the pause it names (the status seq it was issued against), so a late or repeated
one can never pass a later gate. How many were consumed is saved with the record
(RolloutStore.commands_seen), so each command is applied once across restarts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrail.models.registry import Registry
from modelrail.rollout.core.controller import ControllerSettings, RolloutController
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus
from modelrail.rollout.load.locust import LocustRunner
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.store import AuditJournal, RolloutFiles, RolloutStore, read_jsonl
from modelrail.rollout.metrics.gate import ModelGateProvider
from modelrail.rollout.metrics.scrape import ScrapeProvider

log = logging.getLogger(__name__)
TICK_SECONDS = 0.5  # between two ticks of a rollout
GATE_BATCH = 64  # validation rows per inference request of the model gate


@dataclass
class LocalRunner:
    """A rollout's controller, its commands and the Locust runs it owns."""

    files: RolloutFiles
    controller: RolloutController
    store: RolloutStore
    load: LocustRunner

    @property
    def spec(self) -> RolloutSpec:
        return self.controller.spec

    @property
    def finished(self) -> bool:
        return self.controller.finished

    def tick(self) -> RolloutStatus:
        """Consume new commands, then one controller tick (returns at once)."""
        new = read_jsonl(self.files.commands)[self.store.commands_seen:]
        self.store.commands_seen += len(new)  # saved with the record on the next save
        status = self.controller.status
        abort = any(c.get("command") == "abort" for c in new)
        resume = status.phase is Phase.PAUSED and any(
            c.get("command") == "promote" and c.get("seq") == status.seq for c in new)
        return self.controller.tick(now=time.time(), abort=abort, resume=resume)

    def run(self) -> RolloutStatus:
        """Tick until the controller finished; a failing tick is logged and retried with a
        growing pause. Ends the Locust runs it started on every path."""
        rid, failures, last = self.files.id, 0, None
        try:
            while not self.finished:
                try:
                    status = self.tick()
                except Exception:
                    failures += 1
                    log.exception("rollout %s: tick failed (%d in a row)", rid, failures)
                    time.sleep(min(5.0, failures))
                    continue
                failures = 0
                line = (status.phase, status.weight, status.message)
                if line != last:
                    log.info("rollout %s: %s %d%% %s", rid, *line)
                    last = line
                if not self.finished:
                    time.sleep(TICK_SECONDS)
        finally:
            self.close()
        return self.controller.status

    def close(self) -> None:
        """End every Locust run still going (a restarted runner starts the interval again)."""
        self.load.close()


def open_rollout(files: RolloutFiles, *, env: LocalEnvironment, registry: Registry,
                 audit_path: Path) -> LocalRunner:
    """The runner of one rollout from its files; a file that cannot be read is a
    CorruptStateError naming it, a version missing from the registry a NotFoundError."""
    request = files.read_request()
    spec, options = request.spec, request.options
    rows = files.read_sample()
    cards = {v: registry.get(spec.model, v) for v in (spec.stable_version, spec.canary_version)}
    store = RolloutStore(files)
    load = LocustRunner(rows)
    controller = RolloutController(
        spec=spec, platform=env, router=env.router, metrics=ScrapeProvider(),
        gate=ModelGateProvider(np.asarray(rows, dtype=np.float64),
                               task=cards[spec.canary_version].task, batch=GATE_BATCH),
        load=load, store=store,
        journal=AuditJournal(audit_path=audit_path, files=files, env=env.name, spec=spec,
                             digests={v: c.sha256 for v, c in cards.items()}),
        now=time.time(),
        settings=ControllerSettings(load_seconds=options.interval,
                                    load_users=options.load_users,
                                    grpc_load=options.grpc_load))
    return LocalRunner(files=files, controller=controller, store=store, load=load)
