"""The local rollout controller: a thin adapter that observes the local platform, asks the
engine, and carries out its one action — nothing else decides anything.

Each tick: observe (canary ready? weight Traefik applies; metrics scraped from both
tracks; the model gate on a validation sample; a Locust run through the proxy for the
analysis interval) → `engine.decide` → act (set weight / promote / roll back) → persist the
status as JSON, so a restarted controller resumes where it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from modelrail.rollout import engine
from modelrail.rollout.analysis import Measurements
from modelrail.rollout.engine import Action, Decision, Observation
from modelrail.rollout.load import run_load
from modelrail.rollout.metrics.gate import Endpoint, ModelGateProvider
from modelrail.rollout.metrics.scrape import ScrapeProvider, Track
from modelrail.rollout.platforms.local import LocalEnvironment
from modelrail.rollout.spec import RolloutSpec, RolloutStatus
from modelrail.serving.config import ModelRef
from modelrail.serving.process import wait_ready


@dataclass
class LocalRollout:
    env: LocalEnvironment
    spec: RolloutSpec
    rows: npt.NDArray[np.float64]  # validation sample: model gate and load requests
    task: str
    state_path: Path
    interval: float = 3.0  # seconds of Locust load per tick (the analysis interval)
    load_users: int = 2
    canary_replicas: int = 1
    on_decision: Callable[[Decision], None] | None = None

    def __post_init__(self) -> None:
        self.stable_ref = ModelRef(self.spec.model, self.spec.stable_version)
        self.canary_ref = ModelRef(self.spec.model, self.spec.canary_version)
        self.scrape = ScrapeProvider({})
        self.gate = ModelGateProvider(self.rows, task=self.task, batch=64)
        self._promoted = self._rolled_back = False

    # --- the loop ----------------------------------------------------------------------
    def run(self, *, deadline_seconds: float = 600.0) -> RolloutStatus:
        status = self._load() or engine.start(time.monotonic())
        self._save(status)
        self.env.scale(self.spec.model, "canary", ref=self.canary_ref,
                       replicas=self.canary_replicas, wait=False)
        give_up = time.monotonic() + deadline_seconds
        while not status.phase.terminal and time.monotonic() < give_up:
            decision = engine.decide(self.spec, status, self._observe(status))
            status = decision.status
            self._save(status)  # persisted before acting: a crash re-applies, never skips
            self._act(decision)
            if self.on_decision is not None:
                self.on_decision(decision)
        return status

    def _observe(self, status: RolloutStatus) -> Observation:
        model = self.spec.model
        canary = self.env.track(model, "canary").instances
        stable = self.env.track(model, "stable").instances
        ready = bool(canary) and all(wait_ready(i.url, timeout=0.5) for i in canary)
        measurements = None
        if status.phase.value in ("Progressing", "Paused") and ready:
            self.scrape.set_track("stable", Track(model, self.stable_ref.version,
                                                  tuple(i.url for i in stable)))
            self.scrape.set_track("canary", Track(model, self.canary_ref.version,
                                                  tuple(i.url for i in canary)))
            self.scrape.sample(track="stable")
            self.scrape.sample(track="canary")  # baselines for this interval
            load = run_load(protocol="rest", target=f"http://127.0.0.1:"
                                                    f"{self.env.router.http_port}",
                            model=model, rows=self.rows.tolist(), users=self.load_users,
                            seconds=self.interval)
            time.sleep(0.3)  # servers flush their metrics every 0.1 s
            gate = self.gate.compare(
                stable=Endpoint(stable[0].url, model, self.stable_ref.version),
                canary=Endpoint(canary[0].url, model, self.canary_ref.version))
            measurements = Measurements(canary=self.scrape.sample(track="canary"),
                                        stable=self.scrape.sample(track="stable"),
                                        gate=gate, load=load.sample)
        else:
            time.sleep(0.5)
        return Observation(now=time.monotonic(), canary_ready=ready,
                           observed_weight=self.env.router.observed_weight(route=model),
                           measurements=measurements, promoted=self._promoted,
                           rolled_back=self._rolled_back)

    def _act(self, d: Decision) -> None:
        model = self.spec.model
        if d.action is Action.SET_WEIGHT:
            self.env.router.set_weight(route=model, canary_weight=d.weight)
        elif d.action is Action.PROMOTE and not self._promoted:
            replicas = max(1, len(self.env.track(model, "stable").instances))
            self.env.scale(model, "stable", ref=self.canary_ref, replicas=replicas)
            self.env.router.wait_applied(route=model)
            self.env.router.set_weight(route=model, canary_weight=0)
            self._wait_weight(0)
            self.env.scale(model, "canary", ref=self.canary_ref, replicas=0)
            self._promoted = True
        elif d.action is Action.ROLLBACK and not self._rolled_back:
            self.env.router.set_weight(route=model, canary_weight=0)
            self._wait_weight(0)
            self.env.scale(model, "canary", ref=self.canary_ref, replicas=0)
            self._rolled_back = True

    def _wait_weight(self, weight: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.env.router.observed_weight(route=self.spec.model) != weight:
            if time.monotonic() > deadline:
                raise RuntimeError(f"traefik never applied weight {weight}")
            time.sleep(0.1)

    def _save(self, status: RolloutStatus) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status.to_dict(), indent=2))
        tmp.replace(self.state_path)

    def _load(self) -> RolloutStatus | None:
        if not self.state_path.exists():
            return None
        return RolloutStatus.from_dict(json.loads(self.state_path.read_text()))
