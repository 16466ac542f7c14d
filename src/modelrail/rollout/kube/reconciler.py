"""The reconciler: one ModelRollout per call, on the one rollout controller
(core/controller.py) over the Kubernetes backends.

`Reconciler.reconcile(obj)` is what the operator (operator.py) calls on a timer; it is
idempotent, never waits, and returns the Events to post. Each call
  1. reads the resource fresh (the watch event that triggered it may predate this
     operator's own last status write) and parses its spec with the contract
     (api.parse_spec; an invalid spec is an InvalidSpec Warning and a status message,
     nothing else);
  2. finds what to do: no rollout running and `spec.version` is stable → nothing (the
     status says so); no stable Deployment → NoStable; a new version → Started; a version
     changed mid-rollout → Restarted, once the old canary's traffic, Deployment and load Job
     are gone (its analysis never counts for the new one);
  3. builds a RolloutController over the ports — KubePlatform, GatewayAPIRouter,
     PrometheusProvider (or none: a Diagnosis says so), ServiceModelGate, JobLoadRunner, the
     status store and the event journal — and ticks it once, with abort = `spec.abort` and
     resume = the promote annotation naming the paused rollout's seq.
All rollout state lives in the resource's status (status.py), so any operator replica
resumes where another stopped. A platform object that is not as the program writes it
(a Deployment without its version label, a missing route) is a Blocked Warning naming it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelrail.errors import ModelrailError
from modelrail.rollout import api
from modelrail.rollout.core.controller import ControllerSettings, RolloutController
from modelrail.rollout.core.spec import Phase, RolloutRecord, RolloutStatus
from modelrail.rollout.kube.events import Event, EventJournal
from modelrail.rollout.kube.gate import ServiceModelGate
from modelrail.rollout.kube.platform import KubePlatform
from modelrail.rollout.kube.status import (
    METRICS_AVAILABLE,
    Diagnoses,
    Diagnosis,
    RolloutStatusStore,
)
from modelrail.rollout.ports import LoadRunner, MetricProvider, TrafficRouter

NO_METRICS = Diagnosis(
    METRICS_AVAILABLE, "NoMetricsProvider",
    "no metrics provider configured (MODELRAIL_PROMETHEUS_URL is unset on the operator): "
    "the error and latency checks have no data, so the analysis never passes")


@dataclass(frozen=True)
class _Seen:
    """One ModelRollout as read at the start of a reconciliation."""

    name: str
    generation: int
    spec: api.ModelRolloutSpec
    status: dict[str, Any]
    annotations: dict[str, str]
    record: RolloutRecord | None  # the controller's record (status.rollout), if any

    @property
    def running(self) -> bool:
        """A rollout whose clean-up is not done yet."""
        return self.record is not None and not self.record.finished


class Reconciler:
    """Reconciles the ModelRollouts of one namespace."""

    def __init__(self, *, platform: KubePlatform, router: TrafficRouter,
                 metrics: MetricProvider | None, gate: ServiceModelGate, load: LoadRunner,
                 settings: ControllerSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.platform = platform
        self.router = router
        self.metrics = metrics
        self.gate = gate
        self.load = load
        self.settings = settings
        self.clock = clock

    def reconcile(self, obj: dict[str, Any]) -> list[Event]:
        """One step of the ModelRollout `obj` names; the Events to post."""
        fresh = self.platform.objects.rollout(obj["metadata"]["name"])
        if fresh is None:
            return []  # deleted meanwhile
        meta, status = fresh["metadata"], dict(fresh.get("status") or {})
        name = meta["name"]
        try:
            spec = api.parse_spec(fresh.get("spec"),
                                  where=f"ModelRollout {self.platform.ns}/{name} spec")
        except api.InvalidRolloutError as exc:
            return self._refuse(name, status, "InvalidSpec", f"invalid spec: {exc}",
                                generation=None)
        try:
            record = _record(status)
        except (KeyError, TypeError, ValueError) as exc:
            return self._refuse(
                name, status, "Blocked", f"status.rollout of ModelRollout {name} is "
                f"unreadable ({type(exc).__name__}: {exc}); to start over, remove it: kubectl "
                f"patch {api.PLURAL} {name} --subresource=status --type=merge "
                "-p '{\"status\":{\"rollout\":null}}'", generation=None)
        seen = _Seen(name=name, generation=int(meta.get("generation") or 1), spec=spec,
                     status=status, annotations=dict(meta.get("annotations") or {}),
                     record=record)
        journal = EventJournal()
        try:
            self._reconcile(seen, journal)
        except ModelrailError as exc:  # a platform object the operator cannot work with
            return [*journal.events, *self._refuse(name, status, "Blocked", str(exc),
                                                   generation=seen.generation)]
        return journal.events

    def _reconcile(self, seen: _Seen, journal: EventJournal) -> None:
        spec, model = seen.spec, seen.spec.model
        self.platform.pin(model=model, version=spec.version, sha256=spec.sha256)
        canary = seen.status.get("canaryVersion")
        if seen.running and seen.record is not None:
            if spec.version == canary:  # against the stable it started with
                self._tick(seen, journal, stable=str(seen.status["stableVersion"]),
                           record=seen.record)
                return
            if not self._clear(model, seen.record):
                return  # the old canary still takes traffic: cleared on a later call
            journal.tell("Normal", "Restarted", f"version changed to {spec.version} during "
                                                f"the rollout of {canary}: analysis restarts")
        stable = self.platform.view(model=model).stable.version
        if stable is None:
            self._refuse(seen.name, seen.status, "NoStable",
                         f"no stable Deployment {model}-stable to roll out against",
                         generation=seen.generation, journal=journal)
            return
        finished = None if seen.running else seen.record  # the last rollout, if over
        if spec.version == stable or (finished is not None and spec.version == canary):
            self._idle(seen, stable, finished)  # nothing to do, or this version already ended
            return
        if not seen.running:
            journal.tell("Normal", "Started", f"canary {model}:{spec.version} against "
                                              f"stable {model}:{stable}")
        self._tick(seen, journal, stable=stable, record=None)

    def _tick(self, seen: _Seen, journal: EventJournal, *, stable: str,
              record: RolloutRecord | None) -> None:
        spec, now = seen.spec, self.clock()
        store = RolloutStatusStore(
            self.platform.objects, name=seen.name, generation=seen.generation, stable=stable,
            canary=spec.version, record=record,
            conditions=list(seen.status.get("conditions") or []) if record else [],
            diagnoses=lambda: self._diagnoses(spec.model), now=now)
        controller = RolloutController(
            spec=spec.rollout(stable=stable), platform=self.platform, router=self.router,
            metrics=self.metrics, gate=self.gate, load=self.load, store=store,
            journal=journal, now=now, settings=self.settings)
        status = controller.status
        resume = (status.phase is Phase.PAUSED
                  and seen.annotations.get(api.PROMOTE_ANNOTATION) == str(status.seq))
        controller.tick(now=now, abort=spec.abort, resume=resume)
        for d in store.raised():
            journal.tell("Warning", d.reason, d.message)

    def _diagnoses(self, model: str) -> Diagnoses:
        return {METRICS_AVAILABLE: NO_METRICS if self.metrics is None else None,
                **self.gate.diagnoses(model)}

    def _clear(self, model: str, record: RolloutRecord) -> bool:
        """Take the old rollout's canary out: traffic, load Job, Deployment; True once the
        data plane sends it nothing and it is gone."""
        self.router.set_weight(route=model, canary_weight=0)
        if record.load_handle is not None:
            self.load.cancel(handle=record.load_handle)
        if self.router.observed_weight(route=model) != 0:
            return False
        self.platform.remove_canary(model=model)
        return True

    def _idle(self, seen: _Seen, stable: str, record: RolloutRecord | None) -> None:
        """No rollout to run: the status names the stable version (written on change)."""
        phase = record.status.phase.value if record is not None else Phase.SUCCEEDED.value
        want: dict[str, Any] = {"stableVersion": stable, "phase": phase, "canaryWeight": 0,
                                "observedGeneration": seen.generation}
        if record is None:
            want["message"] = f"{seen.spec.model}:{stable} is stable"
            if seen.record is not None:  # a rollout restarted back to the stable version
                want.update(rollout=None, canaryVersion=None, lastAnalysis=None)
        if any(seen.status.get(k) != v for k, v in want.items()):
            self.platform.objects.patch_rollout_status(seen.name, want)

    def _refuse(self, name: str, status: dict[str, Any], reason: str, message: str, *,
                generation: int | None, journal: EventJournal | None = None) -> list[Event]:
        """Nothing can be done: the status message says why, and a Warning tells it once
        (not again while the message stays the same)."""
        journal = journal or EventJournal()
        if status.get("message") != message:
            patch: dict[str, Any] = {"message": message[:1000]}
            if generation is not None:
                patch["observedGeneration"] = generation
            self.platform.objects.patch_rollout_status(name, patch)
            journal.tell("Warning", reason, message)
        return journal.events


def _record(status: dict[str, Any]) -> RolloutRecord | None:
    """The controller's record in the status; an operator before the one controller kept
    the engine's status there and the rest beside it (executedSeq, analysisJob)."""
    data = status.get("rollout")
    if not data:
        return None
    if "status" not in data:  # that earlier form, read once and rewritten on the next save
        return RolloutRecord(status=RolloutStatus.from_dict(data),
                             executed_seq=int(status.get("executedSeq") or 0),
                             load_handle=status.get("analysisJob") or None)
    return RolloutRecord.from_dict(data)
