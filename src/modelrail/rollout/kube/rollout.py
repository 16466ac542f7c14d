"""The Kubernetes rollout controller: reconciles one ModelRollout per call — the same engine
as the local platform, observed and acted on through the Kubernetes API.

`reconcile(obj)` is idempotent and non-blocking; the operator (operator.py) calls it on a
timer. Each call: start a rollout when `spec.version` differs from the stable version (or
restart it when the version changes mid-rollout: the old canary's analysis never counts
for the new one); carry out an action the status says was decided but not done; observe
(canary Deployment ready, weights read back from the HTTPRoute and GRPCRoute, a Locust Job
per analysis interval, Prometheus for both versions, the model gate against both
Services); `engine.decide`; write the status (before acting); act; record `executedSeq`.

State lives only in the resource's status (`status.rollout` is the engine's
RolloutStatus), so a restarted operator resumes without repeating or losing an action.
Promote a manual gate with the annotation `modelrail.dev/promote: "<status seq>"`; abort
with `spec.abort: true` (both written by `modelrail rollout … --kube`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from modelrail.infra.config import ModelSpec
from modelrail.rollout.core import engine
from modelrail.rollout.core.analysis import LoadSample, Measurements, Verdict
from modelrail.rollout.core.engine import Action, Decision, Observation
from modelrail.rollout.core.policy import RolloutPolicy
from modelrail.rollout.core.spec import Phase, RolloutSpec, RolloutStatus
from modelrail.rollout.kube.platform import KubePlatform
from modelrail.rollout.metrics.gate import Endpoint, ModelGateProvider
from modelrail.rollout.metrics.prometheus import PrometheusProvider, PromTrack
from modelrail.rollout.routers.gateway_api import GatewayAPIRouter

PROMOTE_ANNOTATION = "modelrail.dev/promote"
HISTORY_KEPT = 100
Event = tuple[str, str, str]  # type (Normal/Warning), reason, message


class InvalidRolloutError(ValueError):
    """The ModelRollout's spec is not a valid rollout policy."""


def spec_of(cr: dict[str, Any], *, stable: str, canary: str) -> RolloutSpec:
    """The engine's spec from a ModelRollout spec, validated by the stack's own rules."""
    t = cr.get("thresholds") or {}
    raw = {"steps": cr.get("steps"), "stepSeconds": cr.get("stepSeconds", 60),
           "analysisIntervalSeconds": cr.get("analysisIntervalSeconds", 10),
           "failureLimit": cr.get("failureLimit", 1),
           "progressDeadlineSeconds": cr.get("progressDeadlineSeconds", 600),
           "manualGates": cr.get("manualGates", []),
           "maxErrorRate": t.get("maxErrorRate", 0.01),
           "maxP99LatencyMs": t.get("maxP99LatencyMs", 100),
           "maxLatencyRatio": t.get("maxLatencyRatio", 1.5),
           "maxErrorRateIncrease": t.get("maxErrorRateIncrease", 0.01),
           "maxLabelDisagreement": t.get("maxLabelDisagreement", 0.05),
           "minRequestsPerStep": t.get("minRequestsPerStep", 100)}
    try:
        policy = RolloutPolicy.model_validate(raw)
    except ValueError as exc:
        raise InvalidRolloutError(str(exc).replace("\n", " ")) from None
    return replace(RolloutSpec.from_policy(policy, model=str(cr["model"]),
                                           stable_version=stable, canary_version=canary),
                   pre_traffic_analysis=True)


@dataclass
class KubeRollout:
    platform: KubePlatform
    router: GatewayAPIRouter
    metrics: PrometheusProvider | None
    service_url: str = "http://{service}.{namespace}.svc:3000"  # in-cluster Services
    load_seconds: int = 10
    load_users: int = 4
    clock: Callable[[], float] = time.time
    _tasks: dict[str, str] = field(default_factory=dict)  # model → its task, asked once

    # --- one reconciliation ---------------------------------------------------------------
    def reconcile(self, seen: dict[str, Any]) -> list[Event]:
        # read it fresh: the watch stream that delivered `seen` may not carry this
        # controller's own last status writes yet, and a stale executedSeq would replay
        obj = self.platform.rollout(seen["metadata"]["name"])
        if obj is None:
            return []
        meta, cr, st = obj["metadata"], obj["spec"], dict(obj.get("status") or {})
        name, model, desired = meta["name"], str(cr["model"]), str(cr["version"])
        now = self.clock()
        events: list[Event] = []
        stable = st.get("stableVersion") or self.platform.version_of(model, "stable")
        if stable is None:
            self._write(name, {"message": f"no stable Deployment {model}-stable to roll out "
                                          "against", "observedGeneration": meta.get(
                                              "generation", 1)})
            return [("Warning", "NoStable", f"Deployment {model}-stable not found")]
        rs = RolloutStatus.from_dict(st["rollout"]) if st.get("rollout") else None
        canary = st.get("canaryVersion")
        executed = int(st.get("executedSeq") or 0)
        job = st.get("analysisJob") or None
        fresh = False
        if rs is None or rs.phase.terminal:
            if desired == stable or (rs is not None and canary == desired):
                if st.get("stableVersion") != stable or rs is None:
                    self._write(name, {"stableVersion": stable, "phase": rs.phase.value
                                       if rs else "Succeeded", "canaryWeight": 0,
                                       "observedGeneration": meta.get("generation", 1),
                                       "message": f"{model}:{stable} is stable"})
                return events
            rs, canary, executed, job, fresh = engine.start(now), desired, 0, None, True
            events.append(("Normal", "Started", f"canary {model}:{desired} against stable "
                                                f"{model}:{stable}"))
        elif desired != canary:
            events.append(("Normal", "Restarted", f"version changed to {desired} during the "
                                                  f"rollout of {canary}: analysis restarts"))
            self._clear_canary(model, job)
            rs, canary, executed, job, fresh = engine.start(now), desired, 0, None, True
        assert canary is not None
        try:
            rspec = spec_of(cr, stable=stable, canary=canary)
        except InvalidRolloutError as exc:
            self._write(name, {"message": f"invalid spec: {exc}"})
            return [*events, ("Warning", "InvalidSpec", str(exc)[:500])]
        if fresh:
            self._write(name, self._status(obj, rs, stable, canary, executed, job))
        if rs.seq > executed:  # decided before a restart, maybe not carried out: again
            last = engine.last_action(rs)
            if last is not None:
                self._act(rspec, Action(last[0]), last[1], cr)
            executed = rs.seq
            self._write(name, {"executedSeq": executed})
        return events + self._step(obj, rspec, rs, stable, canary, executed, job, now)

    def _step(self, obj: dict[str, Any], rspec: RolloutSpec, rs: RolloutStatus, stable: str,
              canary: str, executed: int, job: str | None, now: float) -> list[Event]:
        name, cr = obj["metadata"]["name"], obj["spec"]
        model = rspec.model
        abort = bool(cr.get("abort"))
        promote = (obj["metadata"].get("annotations") or {}).get(PROMOTE_ANNOTATION)
        resume = rs.phase is Phase.PAUSED and promote == str(rs.seq)
        if (rs.phase is Phase.INITIALIZING and not abort
                and self.platform.deployment(f"{model}-canary") is None):
            self.platform.apply_track(ModelSpec(name=model, version=canary,
                                                sha256=cr.get("sha256")), "canary")
            self.platform.apply_canary_hpa(model, 1)
        dep = self.platform.deployment(f"{model}-canary")
        ready = self.platform.ready(dep)
        observed = self.router.observed_weight(route=model)
        measurements = None
        pending = (rs.phase in (Phase.PROGRESSING, Phase.PAUSED) and not abort
                   and self.platform.scale_up_pending(dep)
                   and now - rs.last_progress_at <= rspec.progress_deadline_seconds)
        if pending:  # judge and advance only at full strength (the deadline still applies)
            self._write(name, {"message": f"canary weight {rs.weight}%: waiting for the "
                                          "canary's scale-up before judging or advancing"})
            return []
        analysing = ready and not abort and (
            (rs.phase in (Phase.PROGRESSING, Phase.PAUSED) and observed == rs.weight)
            or (rs.phase is Phase.INITIALIZING and rspec.pre_traffic_analysis))
        if analysing:
            if job is None:
                job = self._start_load(rspec, rs, cr)
                self._write(name, {"analysisJob": job, "message": f"{rs.message} "
                                   f"(analysis: load test {job} running)"})
                return []
            result = self.platform.load_result(job)
            if result is None:
                return []  # the load test still runs
            measurements = self._measure(rspec, result)
            self.platform.delete_job(job)
            job = None
        decision = engine.decide(rspec, rs, Observation(
            now=now, canary_ready=ready, observed_weight=observed,
            measurements=measurements, promoted=self._promoted(rspec),
            rolled_back=self._rolled_back(rspec), abort=abort, resume=resume))
        new = decision.status
        stable_now = canary if new.phase is Phase.SUCCEEDED else stable
        status = self._status(obj, new, stable_now, canary, executed, job, decision.verdict)
        self._write(name, status)  # persisted before acting
        self._act(rspec, decision.action, decision.weight, cr)
        self._write(name, {"executedSeq": new.seq})
        return self._events(rs, decision)

    # --- observe -------------------------------------------------------------------------
    def _start_load(self, rspec: RolloutSpec, rs: RolloutStatus, cr: dict[str, Any]) -> str:
        from modelrail.infra import manifests

        model = rspec.model
        rows = self.platform.sample(model) or []
        target = self._url(f"{model}-canary")
        name = f"{model}-load-{rs.seq}-{int(self.clock() * 1000) % 10**8}"
        body = manifests.load_job(self.platform.cfg, name=name, model=model,
                                  version=rspec.canary_version, target=target, rows=rows,
                                  seconds=self.load_seconds, users=self.load_users)
        return self.platform.start_load(body)

    def _measure(self, rspec: RolloutSpec, result: dict[str, Any]) -> Measurements:
        model, ns = rspec.model, self.platform.ns
        load = (LoadSample(requests=int(result.get("requests", 0)),
                           failures=int(result.get("failures", 0)))
                if "error" not in result else LoadSample(requests=0, failures=0))
        window = self.load_seconds + 5
        canary = stable = None
        if self.metrics is not None:
            canary = self.metrics.sample(PromTrack(ns, model, rspec.canary_version),
                                         window_seconds=window)
            stable = self.metrics.sample(PromTrack(ns, model, rspec.stable_version),
                                         window_seconds=window)
        gate = None
        rows = self.platform.sample(model)
        if rows:
            gate = ModelGateProvider(np.asarray(rows, dtype=np.float64),
                                     task=self._task(rspec), batch=64).compare(
                stable=Endpoint(self._url(f"{model}-stable"), model, rspec.stable_version),
                canary=Endpoint(self._url(f"{model}-canary"), model, rspec.canary_version))
        return Measurements(canary=canary, stable=stable, gate=gate, load=load)

    def _task(self, rspec: RolloutSpec) -> str:
        """Classification or regression, from the stable version's OIP metadata (asked once
        per model: a model's task does not change between versions)."""
        import httpx

        if rspec.model in self._tasks:
            return self._tasks[rspec.model]
        try:
            meta = httpx.get(f"{self._url(rspec.model + '-stable')}/v2/models/{rspec.model}",
                             timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return "classification"
        outputs = {o.get("name") for o in meta.get("outputs", [])}
        task = "regression" if "predictions" in outputs else "classification"
        self._tasks[rspec.model] = task
        return task

    def _url(self, service: str) -> str:
        return self.service_url.format(service=service, namespace=self.platform.ns)

    def _promoted(self, rspec: RolloutSpec) -> bool:
        model = rspec.model
        stable = self.platform.deployment(f"{model}-stable")
        return (stable is not None and self.platform.ready(stable)
                and self.platform.version_of(model, "stable") == rspec.canary_version
                and self.platform.deployment(f"{model}-canary") is None
                and self.router.observed_weight(route=model) == 0)

    def _rolled_back(self, rspec: RolloutSpec) -> bool:
        return (self.platform.deployment(f"{rspec.model}-canary") is None
                and self.router.observed_weight(route=rspec.model) == 0)

    # --- act -------------------------------------------------------------------------------
    def _act(self, rspec: RolloutSpec, action: Action, weight: int, cr: dict[str, Any]) -> None:
        """Idempotent, non-blocking: each call moves the action one sub-step on; the engine
        re-issues PROMOTE / ROLLBACK until it observes them done."""
        model = rspec.model
        if action is Action.SET_WEIGHT:
            self.router.set_weight(route=model, canary_weight=weight)
            self.platform.apply_canary_hpa(model, weight)
        elif action is Action.PROMOTE:
            if self.platform.version_of(model, "stable") != rspec.canary_version:
                self.platform.apply_track(ModelSpec(name=model, version=rspec.canary_version,
                                                    sha256=cr.get("sha256")), "stable")
                return
            if not self.platform.ready(self.platform.deployment(f"{model}-stable")):
                return  # the new stable is not ready yet: traffic stays where it is
            self.router.set_weight(route=model, canary_weight=0)
            if self.router.observed_weight(route=model) == 0:
                self.platform.delete_canary(model)
        elif action is Action.ROLLBACK:
            self.router.set_weight(route=model, canary_weight=0)
            if self.router.observed_weight(route=model) == 0:
                self.platform.delete_canary(model)

    def _clear_canary(self, model: str, job: str | None) -> None:
        self.router.set_weight(route=model, canary_weight=0)
        self.platform.delete_canary(model)
        if job:
            self.platform.delete_job(job)

    # --- status and events -------------------------------------------------------------------
    def _write(self, name: str, status: dict[str, Any]) -> None:
        self.platform.patch_status(name, status)

    def _status(self, obj: dict[str, Any], rs: RolloutStatus, stable: str, canary: str,
                executed: int, job: str | None, verdict: Verdict | None = None,
                ) -> dict[str, Any]:
        data = rs.to_dict()
        data["history"] = data["history"][-HISTORY_KEPT:]
        status: dict[str, Any] = {
            "phase": rs.phase.value, "stableVersion": stable, "canaryVersion": canary,
            "step": max(rs.step, 0), "canaryWeight": rs.weight, "message": rs.message[:1000],
            "observedGeneration": obj["metadata"].get("generation", 1), "rollout": data,
            "executedSeq": executed, "analysisJob": job or "",
            "conditions": [{"type": "Progressing",
                            "status": "False" if rs.phase.terminal else "True",
                            "reason": rs.phase.value, "message": rs.message[:1000],
                            "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime())}]}
        if verdict is not None:
            status["lastAnalysis"] = {
                "status": verdict.status.name, "summary": verdict.summary()[:1000],
                "checks": [{"name": c.name, "status": c.status.name, "detail": c.detail,
                            "decisive": c.decisive} for c in verdict.checks]}
        return status

    @staticmethod
    def _events(before: RolloutStatus, d: Decision) -> list[Event]:
        if len(d.status.history) == len(before.history):
            return []
        entry = d.status.history[-1]
        bad = d.status.phase in (Phase.ROLLING_BACK, Phase.ROLLED_BACK, Phase.FAILED,
                                 Phase.ABORTED)
        reason = {"set_weight": "WeightChanged", "promote": "Promoting",
                  "rollback": "RollingBack", "complete": d.status.phase.value,
                  "hold": d.status.phase.value}[entry["action"]]
        return [("Warning" if bad else "Normal", reason, str(entry["message"])[:1000])]
