"""The local rollout controller: a thin adapter that observes the local platform, asks the
engine, and carries out its one action — nothing else decides anything.

Each tick: read new commands (promote / abort) → observe (canary ready? the weight Traefik
really applies; both tracks' metrics scraped over the interval; Locust load for the
analysis interval — OIP REST through the proxy and OIP gRPC straight at the canary, side by
side; the model gate on the validation sample) → `engine.decide` → persist → act → record
that the action was carried out. With `spec.pre_traffic_analysis` the ready canary is
first analysed the same way with all load sent straight to it, before any user request.

Crash safety: the status is persisted *before* acting and `executed_seq` *after*. A
controller that restarts finds `status.seq > executed_seq` exactly when it died between the
two, and carries out that one action again (every action is idempotent) before observing
anything — an action is never lost and, since the engine issues each action once per seq,
never decided twice. Commands are consumed by count (`commands_seen`), so a promote or
abort is applied once. A status.json that cannot be read is a CorruptStateError when the
rollout is built (store.py validates it): the daemon then skips that rollout alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modelrail.processes import wait_ready
from modelrail.rollout.core import engine
from modelrail.rollout.core.analysis import LoadSample, Measurements, TrafficSample
from modelrail.rollout.core.engine import Action, Decision, Observation
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus
from modelrail.rollout.load.locust import run_load
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.store import RolloutFiles, append_jsonl, read_jsonl, write_json
from modelrail.rollout.metrics.gate import Endpoint, ModelGateProvider
from modelrail.rollout.metrics.scrape import ScrapeProvider, Track
from modelrail.serving.config import ModelRef

log = logging.getLogger(__name__)


@dataclass
class LocalRollout:
    env: LocalEnvironment
    files: RolloutFiles
    spec: RolloutSpec
    rows: npt.NDArray[np.float64]  # validation sample: model gate and load requests
    task: str
    interval: float = 3.0  # seconds of Locust load per analysis interval
    load_users: int = 2
    grpc_load: bool = True  # also drive gRPC straight at the canary
    canary_replicas: int = 1
    audit_path: Path | None = None  # the environment's audit log (None: no audit)
    digests: dict[str, str] = field(default_factory=dict)  # version -> sha256, for the audit
    on_decision: Callable[[Decision], None] | None = None

    def __post_init__(self) -> None:
        self.stable_ref = ModelRef(self.spec.model, self.spec.stable_version)
        self.canary_ref = ModelRef(self.spec.model, self.spec.canary_version)
        self.scrape = ScrapeProvider({})
        self.gate = ModelGateProvider(self.rows, task=self.task, batch=64)
        saved = self.files.read_status()
        if saved is None:
            self.status = engine.start(time.time())
            self.executed_seq = 0
            self.commands_seen = 0
            self._persist()
        else:  # validated on read: a corrupt file raises CorruptStateError, naming it
            self.status = saved.status
            self.executed_seq = saved.executed_seq
            self.commands_seen = saved.commands_seen
        self._resumed = saved is not None

    # --- the loop ----------------------------------------------------------------------
    def run(self, *, deadline_seconds: float = 600.0) -> RolloutStatus:
        give_up = time.monotonic() + deadline_seconds
        while not self.status.phase.terminal and time.monotonic() < give_up:
            self.tick()
        return self.status

    def tick(self) -> RolloutStatus:
        """One observe → decide → act cycle."""
        if self.status.phase.terminal:
            return self.status
        if self._resumed:
            self._resumed = False
            self._finish_interrupted_action()
        abort, resume = self._commands()
        before = self.status
        obs = self._observe(before, abort=abort, resume=resume)
        decision = engine.decide(self.spec, before, obs)
        self.status = decision.status
        self._persist()  # persisted before acting: a crash re-applies, never skips
        self._audit(before, decision, obs)
        self._act(decision)
        self.executed_seq = self.status.seq
        self._persist()
        if self.on_decision is not None:
            self.on_decision(decision)
        return self.status

    # --- commands and crash recovery ------------------------------------------------------
    def _commands(self) -> tuple[bool, bool]:
        new = read_jsonl(self.files.commands)[self.commands_seen:]
        self.commands_seen += len(new)
        abort = any(c.get("command") == "abort" for c in new)
        # a promote counts only for the pause it was issued against
        promote = any(c.get("command") == "promote" and c.get("seq") == self.status.seq
                      and self.status.phase is Phase.PAUSED for c in new)
        return abort, promote

    def _finish_interrupted_action(self) -> None:
        if self.status.seq <= self.executed_seq:
            return
        last = engine.last_action(self.status)
        if last is not None:
            action, weight = last
            log.warning("resuming: carrying out %s (weight %s) of seq %s again", action,
                        weight, self.status.seq)
            self._act(Decision(self.status, Action(action), weight))
        self.executed_seq = self.status.seq
        self._persist()

    # --- observe ---------------------------------------------------------------------------
    def _observe(self, status: RolloutStatus, *, abort: bool, resume: bool) -> Observation:
        model = self.spec.model
        if status.phase is Phase.INITIALIZING and not abort:
            # idempotent: instances already running this version are kept
            self.env.scale(model, "canary", ref=self.canary_ref,
                           replicas=max(self.canary_replicas,
                                        len(self.env.track(model, "canary").instances)),
                           wait=False)
        canary = list(self.env.track(model, "canary").instances)
        stable = list(self.env.track(model, "stable").instances)
        ready = bool(canary) and all(wait_ready(i.url, timeout=0.5) for i in canary)
        measurements = None
        analysing = (status.phase in (Phase.PROGRESSING, Phase.PAUSED) and ready and stable
                     and not abort)
        pre_traffic = (status.phase is Phase.INITIALIZING and self.spec.pre_traffic_analysis
                       and ready and stable and not abort)
        if analysing or pre_traffic:
            # before it takes traffic the canary is loaded directly, not through the proxy
            rest = canary[0].url if pre_traffic else (
                f"http://127.0.0.1:{self.env.router.http_port}")
            measurements = self._measure(stable, canary, status.weight, rest_target=rest)
        else:
            time.sleep(0.5)
        return Observation(now=time.time(), canary_ready=ready,
                           observed_weight=self.env.router.observed_weight(route=model),
                           measurements=measurements, promoted=self._promoted(),
                           rolled_back=self._rolled_back(), abort=abort, resume=resume)

    def _measure(self, stable: list[Any], canary: list[Any], weight: int, *,
                 rest_target: str) -> Measurements:
        model, rows = self.spec.model, self.rows.tolist()
        self.scrape.set_track("stable", Track(model, self.stable_ref.version,
                                              tuple(i.url for i in stable)))
        self.scrape.set_track("canary", Track(model, self.canary_ref.version,
                                              tuple(i.url for i in canary)))
        self.scrape.sample(track="stable")
        self.scrape.sample(track="canary")  # baselines for this interval
        started = time.time()
        with ThreadPoolExecutor(2) as pool:
            rest = pool.submit(run_load, protocol="rest", target=rest_target,
                               model=model, rows=rows, users=self.load_users,
                               seconds=self.interval)
            grpc = (pool.submit(run_load, protocol="grpc",
                                target=f"127.0.0.1:{canary[0].grpc_port}", model=model,
                                rows=rows, version=self.canary_ref.version, users=1,
                                seconds=self.interval) if self.grpc_load else None)
            runs = [rest.result()] + ([grpc.result()] if grpc else [])
        time.sleep(0.3)  # servers flush their metrics every 0.1 s
        gate = self.gate.compare(
            stable=Endpoint(stable[0].url, model, self.stable_ref.version),
            canary=Endpoint(canary[0].url, model, self.canary_ref.version))
        # every load run must have produced requests: one that sent nothing proves nothing
        requests = (0 if any(r.sample.requests == 0 for r in runs)
                    else sum(r.sample.requests for r in runs))
        load = LoadSample(requests=requests, failures=sum(r.sample.failures for r in runs))
        m = Measurements(canary=self.scrape.sample(track="canary"),
                         stable=self.scrape.sample(track="stable"), gate=gate, load=load)
        seconds = max(time.time() - started, 1e-3)
        append_jsonl(self.files.series, {
            "at": time.time(), "weight": weight, "seconds": round(seconds, 3),
            "stable": _traffic(m.stable, seconds), "canary": _traffic(m.canary, seconds),
            "gate": asdict(gate) if gate else None,
            "load": {"requests": load.requests, "failures": load.failures,
                     "by_protocol": {("rest", "grpc")[i]: asdict(r.sample)
                                     for i, r in enumerate(runs)}}})
        return m

    def _promoted(self) -> bool:
        model = self.spec.model
        stable = self.env.track(model, "stable")
        return (stable.ref == self.canary_ref and bool(stable.instances)
                and not self.env.track(model, "canary").instances
                and self.env.router.observed_weight(route=model) == 0)

    def _rolled_back(self) -> bool:
        model = self.spec.model
        return (not self.env.track(model, "canary").instances
                and self.env.router.observed_weight(route=model) == 0)

    # --- act ---------------------------------------------------------------------------------
    def _act(self, d: Decision) -> None:
        model, router = self.spec.model, self.env.router
        if d.action is Action.SET_WEIGHT:
            router.set_weight(route=model, canary_weight=d.weight)
        elif d.action is Action.PROMOTE and not self._promoted():
            stable = self.env.track(model, "stable")
            if stable.ref != self.canary_ref:
                replicas = max(1, len(stable.instances))
                self.env.scale(model, "stable", ref=self.canary_ref, replicas=replicas)
                router.wait_applied(route=model)
            router.set_weight(route=model, canary_weight=0)
            self._wait_weight(0)
            self.env.scale(model, "canary", ref=self.canary_ref, replicas=0)
        elif d.action is Action.ROLLBACK and not self._rolled_back():
            router.set_weight(route=model, canary_weight=0)
            self._wait_weight(0)
            self.env.scale(model, "canary", ref=self.canary_ref, replicas=0)

    def _wait_weight(self, weight: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.env.router.observed_weight(route=self.spec.model) != weight:
            if time.monotonic() > deadline:
                raise RuntimeError(f"traefik never applied weight {weight}")
            time.sleep(0.1)

    # --- records -----------------------------------------------------------------------
    def _persist(self) -> None:
        write_json(self.files.status, {"id": self.files.id, "status": self.status.to_dict(),
                                       "executed_seq": self.executed_seq,
                                       "commands_seen": self.commands_seen,
                                       "updated_at": time.time()})

    def _audit(self, before: RolloutStatus, d: Decision, obs: Observation) -> None:
        """Every decision, holds included, with the evidence it was taken on."""
        if self.audit_path is None:
            return
        m = obs.measurements
        append_jsonl(self.audit_path, {
            "at": obs.now, "rollout": self.files.id, "env": self.env.name,
            "seq": d.status.seq, "from": before.phase.value, "to": d.status.phase.value,
            "action": d.action.value, "weight": d.weight, "message": d.status.message,
            "verdict": d.verdict.summary() if d.verdict else None,
            "model": self.spec.model,
            "stable": {"version": self.spec.stable_version,
                       "sha256": self.digests.get(self.spec.stable_version)},
            "canary": {"version": self.spec.canary_version,
                       "sha256": self.digests.get(self.spec.canary_version)},
            "observed_weight": obs.observed_weight,
            "checks": ([{"name": c.name, "status": c.status.name, "detail": c.detail,
                         "decisive": c.decisive} for c in d.verdict.checks]
                       if d.verdict else []),
            "measurements": None if m is None else {
                "canary": asdict(m.canary) if m.canary else None,
                "stable": asdict(m.stable) if m.stable else None,
                "gate": asdict(m.gate) if m.gate else None,
                "load": asdict(m.load) if m.load else None}})


def _traffic(sample: TrafficSample | None, seconds: float) -> dict[str, Any] | None:
    if sample is None:
        return None
    return {"requests": sample.requests, "errors": sample.errors, "p99_ms": sample.p99_ms,
            "rps": round(sample.requests / seconds, 2),
            "error_rate": (sample.errors / sample.requests) if sample.requests else None}
