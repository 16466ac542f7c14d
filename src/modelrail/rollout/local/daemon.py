"""The controller of one local environment: what `modelrail env up ENV` starts in the
background — the local stand-in for the Kubernetes control plane.

It brings the environment to what its stack file declares (`Pulumi.<env>.yaml`: models,
workers, autoscaling bounds) and waits until every stable instance serves, then loops once
a second:
  - supervise: converge every track (platform.py): restart instances that died, start the
    ones asked for, let them into the proxy's pools once ready, retire the others safely;
  - autoscale: each settled track follows its in-flight requests per instance with the HPA
    algorithm (core/autoscaler.py); the canary is sized by its weight, stable keeps its own
    bounds;
  - rollouts: every rollout under rollouts/ that has not finished gets a worker thread
    running the rollout controller over the local platform (runner.py) until it has; a
    rollout whose files cannot be read (torn, malformed) or that cannot be set up is
    skipped alone, logged once with the file and the reason, and picked up again once it
    can be read;
  - publish: env.json (for `env status` and the CLI) and plane.json (to re-adopt).

Instances are processes, or, with `--image` (`env up --runtime container`), containers of
the inference image started as the stack's Deployment says (runtime.py).

Killed (even with SIGKILL), it leaves the instances and the proxy serving; started again,
it adopts them from plane.json and its rollouts resume from their saved status. SIGTERM
(`env down`) aborts running rollouts (traffic back to stable), then stops everything.

    python -m modelrail.rollout.local.daemon --env dev --project . --state-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import httpx

from modelrail.errors import CorruptStateError
from modelrail.infra import manifests
from modelrail.infra.config import StackConfig, load_stack
from modelrail.models.registry import Registry
from modelrail.rollout.core.autoscaler import (
    Recommendation,
    ScalePolicy,
    canary_policy,
    desired_replicas,
)
from modelrail.rollout.local.platform import LocalEnvironment
from modelrail.rollout.local.runner import LocalRunner, open_rollout
from modelrail.rollout.local.runtime import ContainerRuntime
from modelrail.rollout.local.store import (
    EnvStore,
    RolloutFiles,
    append_jsonl,
    read_json,
    write_json,
)
from modelrail.serving.config import ModelRef

log = logging.getLogger("modelrail.env")
TICK = 1.0
METRIC_WINDOW = 5  # in-flight samples averaged per decision


class Daemon:
    def __init__(self, *, env: str, project: Path, state_dir: Path, models: list[str],
                 max_replicas: int | None, target_in_flight: float,
                 image: str | None = None) -> None:
        self.store = EnvStore(env, state_dir)
        self.project = project
        self.config: StackConfig = load_stack(env, project)
        self.models = [m for m in self.config.models if not models or m.name in models]
        self.registry = Registry()
        a = self.config.autoscaling
        cap = max_replicas or a.max_replicas
        self.policy = ScalePolicy(
            min_replicas=min(a.min_replicas, cap), max_replicas=min(a.max_replicas, cap),
            target=target_in_flight * self.config.workers,
            scale_up_window=a.scale_up_stabilization_seconds,
            scale_down_window=a.scale_down_stabilization_seconds)
        self.stopping = threading.Event()
        self.workers: dict[str, threading.Thread] = {}
        self.rollouts: dict[str, LocalRunner] = {}
        self.finished: set[str] = set()  # rollout ids known to have finished
        self.skipped: dict[str, str] = {}  # rollout id -> why it cannot run (logged once)
        self.history: dict[tuple[str, str], tuple[Recommendation, ...]] = {}
        self.in_flight: dict[tuple[str, str], deque[float]] = {}
        self.started_at = time.time()
        self.env: LocalEnvironment | None = None
        self.image = image  # set: instances run as containers of this image

    # --- start -----------------------------------------------------------------------------
    def start(self) -> None:
        self._publish("Starting", "checking models and starting instances")
        for m in self.models:
            self.registry.get(m.name, m.version)  # fail fast, naming what is missing
        plane = self.store.plane_file
        if plane.exists():
            self.env = adopt_plane(self.store)
            log.info("adopted the running environment from %s", plane)
        else:
            runtime = None
            if self.image:
                # a container gets no environment of ours: pass on the fault switches
                passed = {k: os.environ[k] for k in ("MODELRAIL_FAULTS",) if k in os.environ}
                runtime = ContainerRuntime(image=self.image, project=self.project,
                                           stack=self.store.env, env_name=self.store.env,
                                           extra_env=passed)
            # the servers' environment a Deployment of the stack gets for its headerRoute
            header_env = {e["name"]: e["value"]
                          for e in manifests.header_route_env(self.config)}
            self.env = LocalEnvironment(name=self.store.env, run_dir=self.store.run_dir,
                                        extra_env=header_env, workers=self.config.workers,
                                        grpc_models=tuple(m.name for m in self.models),
                                        runtime=runtime)
            self.env.start()
            if runtime is None:  # stable's mirror, to this environment's Traefik
                for m in self.models:
                    self.env.track(m.name, "stable").env = {
                        e["name"]: e["value"] for e in manifests.shadow_env(
                            self.config, m.name,
                            target=f"http://127.0.0.1:{self.env.router.http_port}")}
        self._save_plane()
        for m in self.models:
            track = self.env.track(m.name, "stable")
            # an adopted track keeps its version: a promotion may have changed it
            ref = track.ref or ModelRef(m.name, m.version, m.sha256)
            self.env.scale(m.name, "stable", ref=ref,
                           replicas=max(self.policy.min_replicas, track.replicas))
            self.env.router.wait_applied(route=m.name)
            self._save_plane()
        self._publish("Ready", "serving")
        log.info("environment %s ready: http %s grpc %s", self.store.env,
                 self.env.router.http_port, self.env.router.grpc_route_ports)

    # --- loop ------------------------------------------------------------------------------
    def loop(self) -> None:
        assert self.env is not None
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                for line in self.env.supervise():
                    log.warning("supervisor: restarted %s", line)
                self._autoscale()
                self._start_rollouts()
                self._save_plane()
                self._publish("Ready", "serving")
            except Exception:  # keep the control loop alive; the log says what failed
                log.exception("control loop iteration failed")
            self.stopping.wait(max(0.05, TICK - (time.monotonic() - started)))

    def shutdown(self) -> None:
        assert self.env is not None
        self._publish("Stopping", "aborting running rollouts, stopping instances")
        for rid, worker in self.workers.items():
            if worker.is_alive():
                append_jsonl(RolloutFiles(self.store.rollouts_dir / rid).commands,
                             {"command": "abort", "at": time.time(), "by": "env down"})
        # the platform keeps converging while the rollouts take their canaries away
        deadline = time.monotonic() + 60
        while (any(t.is_alive() for t in self.workers.values())
               and time.monotonic() < deadline):
            self.env.supervise()
            time.sleep(0.5)
        self.env.stop()
        self.store.plane_file.unlink(missing_ok=True)
        self._publish("Stopped", "stopped by env down", running=False)

    # --- autoscaling -------------------------------------------------------------------------
    def _autoscale(self) -> None:
        assert self.env is not None
        now = time.monotonic()
        for m in self.models:
            weight = self._canary_weight(m.name)
            for track_name in ("stable", "canary"):
                track = self.env.track(m.name, track_name)
                if track.ref is None or track.replicas == 0 or not track.settled:
                    continue  # absent, or still converging: its size is not known yet
                if track_name == "canary" and weight is None:
                    continue  # only a running rollout sizes a canary
                policy = (self.policy if track_name == "stable"
                          else canary_policy(self.policy, weight or 0))
                key = (m.name, track_name)
                samples = self.in_flight.setdefault(key, deque(maxlen=METRIC_WINDOW))
                value = self._in_flight([i.url for i in track.instances])
                if value is None:
                    continue
                samples.append(value)
                current = track.replicas
                if current == 0:
                    continue  # scaled to nothing meanwhile (the rollout removes its canary)
                metric = sum(samples) / len(samples) / current
                want, self.history[key] = desired_replicas(
                    policy, current=current, metric=metric, now=now,
                    history=self.history.get(key, ()))
                if want != current:
                    log.info("autoscaler: %s %s %d -> %d (in-flight %.2f per instance, "
                             "target %.2f)", m.name, track_name, current, want, metric,
                             policy.target)
                    append_jsonl(self.store.root / "scaling.jsonl", {
                        "at": time.time(), "model": m.name, "track": track_name,
                        "from": current, "to": want, "metric": metric,
                        "target": policy.target})
                    self.env.scale(m.name, track_name, ref=track.ref, replicas=want,
                                   wait=False)  # converged by the next supervise() calls
                    samples.clear()

    def _in_flight(self, urls: list[str]) -> float | None:
        """Requests in flight summed over the instances (from their /metrics)."""
        total = 0.0
        for url in urls:
            try:
                text = httpx.get(f"{url}/metrics", timeout=1.0).text
            except httpx.HTTPError:
                return None
            for line in text.splitlines():
                if line.startswith("modelrail_requests_in_flight"):
                    total += float(line.rsplit(" ", 1)[-1])
        return total

    def _canary_weight(self, model: str) -> int | None:
        for runner in self.rollouts.values():
            status = runner.controller.status
            if runner.spec.model == model and not status.phase.terminal:
                return max(status.weight, 1)
        return None

    # --- rollouts ------------------------------------------------------------------------------
    def _start_rollouts(self) -> None:
        """Start a worker for each rollout that should run; one that cannot be read or set
        up is skipped (and retried next tick) without holding up the others."""
        for files in self.store.rollouts():
            if files.id in self.finished or (files.id in self.workers
                                             and self.workers[files.id].is_alive()):
                continue
            try:
                if files.finished():  # read once, not every second for the life of the env
                    self.finished.add(files.id)
                    self.skipped.pop(files.id, None)
                    continue
                runner = self._rollout(files)
            except CorruptStateError as exc:
                self._skip(files, f"unreadable: {exc}")
                continue
            except Exception as exc:  # e.g. a version no longer registered
                self._skip(files, f"cannot start: {type(exc).__name__}: {exc}", error=exc)
                continue
            if self.skipped.pop(files.id, None) is not None:
                log.info("rollout %s is readable again: resuming it", files.id)
            self.rollouts[files.id] = runner
            self._launch(runner)

    def _skip(self, files: RolloutFiles, reason: str,
              error: BaseException | None = None) -> None:
        if self.skipped.get(files.id) != reason:  # once per reason, not every second
            log.error("rollout %s skipped, the others go on: %s", files.id, reason,
                      exc_info=error)
            self.skipped[files.id] = reason

    def _launch(self, runner: LocalRunner) -> None:
        thread = threading.Thread(target=self._run_rollout, args=(runner,),
                                  name=f"rollout-{runner.files.id}", daemon=True)
        self.workers[runner.files.id] = thread
        thread.start()

    def _rollout(self, files: RolloutFiles) -> LocalRunner:
        assert self.env is not None
        return open_rollout(files, env=self.env, registry=self.registry,
                            audit_path=self.store.audit_file)

    def _run_rollout(self, runner: LocalRunner) -> None:
        spec = runner.spec
        log.info("rollout %s: %s %s -> %s", runner.files.id, spec.model, spec.stable_version,
                 spec.canary_version)
        status = runner.run()
        log.info("rollout %s ended: %s", runner.files.id, status.phase.value)

    # --- publishing ------------------------------------------------------------------------------
    def _save_plane(self) -> None:
        assert self.env is not None
        write_json(self.store.plane_file, self.env.to_state())

    def _publish(self, phase: str, message: str, *, running: bool = True) -> None:
        env = self.env
        models: dict[str, Any] = {}
        if env is not None:
            for m in self.models:
                s, c = env.track(m.name, "stable"), env.track(m.name, "canary")
                route = env.router.routes.get(m.name)
                models[m.name] = {
                    "stable": str(s.ref) if s.ref else None, "stable_instances": len(s.instances),
                    "canary": str(c.ref) if c.ref and c.instances else None,
                    "canary_instances": len(c.instances),
                    "canary_weight": route.canary_weight if route else 0}
        write_json(self.store.env_file, {
            "env": self.store.env, "pid": os.getpid() if running else None,
            "phase": phase, "message": message, "project": str(self.project.resolve()),
            "http": f"http://127.0.0.1:{env.router.http_port}" if env else None,
            "grpc": ({m: f"127.0.0.1:{p}" for m, p in env.router.grpc_route_ports.items()}
                     if env else None),
            "proxy_api": f"http://127.0.0.1:{env.router.api_port}" if env else None,
            "autoscaling": {"min": self.policy.min_replicas, "max": self.policy.max_replicas,
                            "target_in_flight_per_instance": self.policy.target},
            "models": models, "started_at": self.started_at, "updated_at": time.time()})


def adopt_plane(store: EnvStore, *, start_router: bool = True) -> LocalEnvironment:
    """The environment plane.json describes (instances and proxy a controller left running);
    a torn or malformed plane.json is a CorruptStateError saying how to recover."""
    repair = (f"stop the instances and the proxy it lists by hand (their pids are in the "
              f"file and in {store.run_dir}), remove {store.plane_file}, then: modelrail "
              f"env up {store.env}")
    state = read_json(store.plane_file, repair=repair)
    try:
        return LocalEnvironment.adopt(state, start_router=start_router)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptStateError(f"plane.json is unreadable: {type(exc).__name__}: {exc}",
                                where=str(store.plane_file), repair=repair) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modelrail-env-controller")
    p.add_argument("--env", required=True)
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--models", default="")
    p.add_argument("--max-replicas", type=int, default=None)
    p.add_argument("--target-in-flight", type=float, default=2.0)
    p.add_argument("--image", default=None,
                   help="run instances as containers of this inference image")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    daemon = Daemon(env=args.env, project=args.project, state_dir=args.state_dir,
                    models=[m for m in args.models.split(",") if m],
                    max_replicas=args.max_replicas, target_in_flight=args.target_in_flight,
                    image=args.image)
    signal.signal(signal.SIGTERM, lambda *_: daemon.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: daemon.stopping.set())
    try:
        daemon.start()
    except Exception as exc:
        log.exception("environment %s failed to start", args.env)
        daemon._publish("Failed", str(exc), running=False)
        if daemon.env is not None:
            daemon.env.stop()
            daemon.store.plane_file.unlink(missing_ok=True)
        return 1
    daemon.loop()
    daemon.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
