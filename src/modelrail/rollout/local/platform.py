"""The local platform: one environment as real processes on this machine, behind Traefik.

Per model, a stable and a canary track of serving instances (each a BentoML process with
its gRPC server, on loopback ports) behind one Traefik router that splits HTTP and gRPC by
weight. `LocalEnvironment` is the rollout controller's Platform (ports.py): `view`,
`run_canary`, `promote` and `remove_canary` only record what a track should run and return
at once. `supervise()` — the environment's daemon calls it every second — converges every
track to that, like a Deployment's rolling update:
  - an instance that died is replaced;
  - missing instances of the wanted version are started, and each joins the router's pools
    once it answers readiness;
  - once every wanted instance serves, instances of another version and surplus ones leave
    the pools, and each is stopped only once Traefik's own API shows the pools without it
    (`TraefikRouter.applied_pools`) and DRAIN_SECONDS have passed for its in-flight
    requests: Traefik applies a file change 1-2 s late, and stopping after a fixed wait
    instead lost 21 of 5,433 requests.
`scale()` sets a track's wanted version and size (the daemon's autoscaler) and, with
`wait`, converges it before returning (`env up`, tests).

The whole environment round-trips through `to_state()` / `adopt()`: instances and the
proxy run in their own sessions, so when the daemon that started them dies they keep
serving, and a new daemon adopts them from the saved state. Every change goes through one
lock: the supervisor, the autoscaler and the rollouts run in threads of one daemon.

Used by the local daemon (daemon.py: `modelrail env up|status|down`) and the rollout
runner (runner.py); tests drive it directly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from modelrail.errors import ModelrailError
from modelrail.processes import free_port
from modelrail.rollout.local.runtime import (
    ProcessRuntime,
    Runtime,
    Started,
    runtime_from_state,
)
from modelrail.rollout.ports import Platform, PlatformView, TrackState
from modelrail.rollout.routers.traefik import TraefikRouter
from modelrail.serving.config import ModelRef, parse_model_ref

log = logging.getLogger(__name__)
TRACKS = ("stable", "canary")
DRAIN_SECONDS = 0.5  # after Traefik shows an instance gone: for requests it still serves
GIVE_UP_RESTARTS = 3  # `scale(wait=True)` fails once an instance died this many times


class Stage(StrEnum):
    """Where an instance is in its life; only SERVING ones are in the router's pools."""

    STARTING = "starting"  # started, not answering readiness yet
    SERVING = "serving"  # ready, in the pool
    LEAVING = "leaving"  # out of the pool; waits for Traefik's API to show it gone
    DRAINING = "draining"  # Traefik routes nothing to it; stopped after DRAIN_SECONDS


@dataclass
class Instance:
    ref: ModelRef
    http_port: int
    grpc_port: int
    proc: Started
    log_path: Path
    host: str = "127.0.0.1"
    restarts: int = 0
    stage: Stage = Stage.STARTING
    draining_since: float = 0.0  # time.monotonic() when it began DRAINING

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def ports(self) -> tuple[str, int, int]:
        return self.host, self.http_port, self.grpc_port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def answers_ready(self) -> bool:
        """One short readiness probe (no waiting)."""
        try:
            return httpx.get(f"{self.url}/v2/health/ready", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def to_state(self, runtime: Runtime) -> dict[str, Any]:
        # the drain clock does not survive a restart: a draining instance is checked
        # against Traefik's API again
        stage = Stage.LEAVING if self.stage is Stage.DRAINING else self.stage
        return {"ref": str(self.ref), "host": self.host, "http_port": self.http_port,
                "grpc_port": self.grpc_port, "log_path": str(self.log_path),
                "restarts": self.restarts, "stage": stage.value,
                **runtime.handle_state(self.proc)}

    @classmethod
    def adopt(cls, state: dict[str, Any], runtime: Runtime) -> Instance:
        return cls(ref=parse_model_ref(state["ref"]), http_port=state["http_port"],
                   grpc_port=state["grpc_port"], host=state.get("host", "127.0.0.1"),
                   proc=runtime.adopt(state), log_path=Path(state["log_path"]),
                   restarts=state["restarts"], stage=Stage(state["stage"]))


@dataclass
class Track:
    """What one track should run (`ref`, `replicas`) and the instances it has."""

    ref: ModelRef | None = None
    replicas: int = 0
    instances: list[Instance] = field(default_factory=list)
    # the environment this track's instances get beyond the environment's own (stable's
    # mirror in a shadow phase: manifests.shadow_env, as the stable Deployment gets it)
    env: dict[str, str] = field(default_factory=dict)

    def wanted(self) -> list[Instance]:
        """Instances of the wanted version that are starting or serving."""
        return [i for i in self.instances
                if i.ref == self.ref and i.stage in (Stage.STARTING, Stage.SERVING)]

    def serving(self) -> list[Instance]:
        return [i for i in self.instances if i.stage is Stage.SERVING]

    @property
    def settled(self) -> bool:
        """Exactly `replicas` instances of `ref`, all serving, nothing else left."""
        return (len(self.instances) == self.replicas
                and all(i.ref == self.ref and i.stage is Stage.SERVING
                        for i in self.instances))

    def state(self) -> TrackState:
        """The track as the controller sees it (ready: every wanted instance serves)."""
        if self.ref is None:
            return TrackState(version=None, ready=False)
        ready = [i for i in self.wanted() if i.stage is Stage.SERVING]
        first = ready[0] if ready else None
        return TrackState(version=self.ref.version,
                          ready=self.replicas > 0 and len(ready) >= self.replicas,
                          scaling=len(ready) < self.replicas,
                          http_url=first.url if first else None,
                          grpc_target=first.grpc_target if first else None,
                          instance_urls=tuple(i.url for i in self.serving()))


class LocalEnvironment:
    """The tracks of every model of one environment, their instances and the proxy."""

    def __init__(self, *, name: str, run_dir: Path, extra_env: dict[str, str] | None = None,
                 workers: int = 1, grpc_models: tuple[str, ...] = (),
                 runtime: Runtime | None = None) -> None:
        self.name = name
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        self.workers = workers
        self.runtime: Runtime = runtime or ProcessRuntime(workers=workers,
                                                          extra_env=self.extra_env)
        self.router = TraefikRouter(http_port=free_port(), grpc_port=free_port(),
                                    api_port=free_port(), workdir=run_dir / "traefik",
                                    grpc_route_ports={m: free_port() for m in grpc_models})
        self.tracks: dict[tuple[str, str], Track] = {}
        self.lock = threading.RLock()

    # --- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.router.start()

    def stop(self) -> None:
        with self.lock:
            for track in self.tracks.values():
                for inst in track.instances:
                    self.runtime.stop(inst.proc)
                track.instances.clear()
            self.router.stop()

    # --- persistence ---------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        with self.lock:
            return {"name": self.name, "run_dir": str(self.run_dir), "workers": self.workers,
                    "extra_env": self.extra_env, "router": self.router.to_state(),
                    "runtime": self.runtime.to_state(),
                    "tracks": [{"model": m, "track": t, "ref": str(tr.ref) if tr.ref else None,
                                "replicas": tr.replicas, "env": tr.env,
                                "instances": [i.to_state(self.runtime)
                                              for i in tr.instances]}
                               for (m, t), tr in self.tracks.items()]}

    @classmethod
    def adopt(cls, state: dict[str, Any], *, start_router: bool = True) -> LocalEnvironment:
        """The environment a dead daemon left running; start the router again if it died
        (`supervise()` replaces dead instances)."""
        runtime = runtime_from_state(state.get("runtime"), workers=state["workers"],
                                     extra_env=state["extra_env"])
        env = cls(name=state["name"], run_dir=Path(state["run_dir"]),
                  extra_env=state["extra_env"], workers=state["workers"], runtime=runtime)
        env.router = TraefikRouter.adopt(state["router"])
        for t in state["tracks"]:
            env.tracks[(t["model"], t["track"])] = Track(
                ref=parse_model_ref(t["ref"]) if t["ref"] else None,
                replicas=int(t["replicas"]),
                instances=[Instance.adopt(i, runtime) for i in t["instances"]],
                env=dict(t.get("env") or {}))
        if start_router and not env.router.running:
            env.router.start()
        return env

    # --- the Platform port ---------------------------------------------------------
    def view(self, *, model: str) -> PlatformView:
        """What both tracks of `model` run now, from the supervisor's last look."""
        with self.lock:
            return PlatformView(stable=self.track(model, "stable").state(),
                                canary=self.track(model, "canary").state(),
                                entry_url=f"http://{self.router.host}:{self.router.http_port}")

    def run_canary(self, *, model: str, version: str, weight: int) -> None:
        """A canary of `version` with at least one instance; the daemon's autoscaler sizes
        it for `weight` from then on."""
        with self.lock:
            t = self.track(model, "canary")
            if t.ref is None or t.ref.version != version:
                t.ref = ModelRef(model, version)
            t.replicas = max(1, t.replicas)

    def promote(self, *, model: str, version: str) -> None:
        """Stable moves to `version` at its current size (a rolling replacement)."""
        with self.lock:
            t = self.track(model, "stable")
            if t.ref is None or t.ref.version != version:
                t.ref = ModelRef(model, version)
            t.replicas = max(1, t.replicas)

    def remove_canary(self, *, model: str) -> None:
        """The canary's instances leave the pools, then stop (see `supervise`)."""
        with self.lock:
            self.track(model, "canary").replicas = 0

    # --- tracks --------------------------------------------------------------------
    def track(self, model: str, track: str) -> Track:
        if track not in TRACKS:
            raise ValueError(f"unknown track {track!r}; known: {', '.join(TRACKS)}")
        return self.tracks.setdefault((model, track), Track())

    def scale(self, model: str, track: str, *, ref: ModelRef, replicas: int,
              wait: bool = True, timeout: float = 120.0) -> list[Instance]:
        """Run `replicas` instances of `ref` on the track (a different ref replaces every
        instance, new ones serving before old ones go); with `wait`, converge it first.
        Returns the instances serving now."""
        with self.lock:
            t = self.track(model, track)
            t.ref, t.replicas = ref, replicas
        if wait:
            self.settle(model, track, timeout=timeout)
        with self.lock:
            return t.serving()

    def settle(self, model: str, track: str, *, timeout: float = 120.0) -> None:
        """Supervise until the track runs exactly what it should; an error naming the
        instance's log if it does not within `timeout` or keeps dying."""
        deadline = time.monotonic() + timeout
        while True:
            self.supervise()
            with self.lock:
                t = self.track(model, track)
                if t.settled:
                    return
                lagging = next((i for i in t.wanted() if i.stage is Stage.STARTING), None)
                crashing = lagging is not None and lagging.restarts >= GIVE_UP_RESTARTS
            if lagging is not None and (crashing or time.monotonic() > deadline):
                why = (f"exited {lagging.restarts} times" if crashing
                       else f"did not become ready within {timeout:.0f}s")
                raise ModelrailError(f"{lagging.ref} on :{lagging.http_port} {why}",
                                     where=str(lagging.log_path),
                                     accepted="see the instance's log")
            if time.monotonic() > deadline:
                raise ModelrailError(f"the {track} track of {model} did not settle within "
                                     f"{timeout:.0f}s", where=str(self.run_dir))
            time.sleep(0.2)

    # --- the supervisor --------------------------------------------------------------
    def supervise(self) -> list[str]:
        """One convergence step for every track (see the module docstring); returns the
        instances it restarted."""
        ending: list[Instance] = []
        with self.lock:
            restarted: list[str] = []
            for t in self.tracks.values():
                restarted += self._replace_dead(t, ending)
                self._converge(t, ending)
            for model in {m for m, _ in self.tracks}:
                self._publish(model)
                self._release(model, ending)
        for inst in ending:  # outside the lock: a graceful stop takes a moment
            self.runtime.stop(inst.proc)
        return restarted

    def _spawn(self, ref: ModelRef, env: dict[str, str]) -> Instance:
        log_path = self.run_dir / f"{ref.name}-{ref.version}-{uuid.uuid4().hex[:8]}.log"
        host, http_port, grpc_port, handle = self.runtime.start(ref, log_path, env=env)
        return Instance(ref=ref, host=host, http_port=http_port, grpc_port=grpc_port,
                        proc=handle, log_path=log_path)

    def _replace_dead(self, t: Track, ending: list[Instance]) -> list[str]:
        restarted = []
        for inst in list(t.instances):
            if inst.alive():
                continue
            ending.append(inst)  # reaped, its workers ended and its home removed
            if inst.ref != t.ref or inst.stage in (Stage.LEAVING, Stage.DRAINING):
                t.instances.remove(inst)  # on its way out anyway
                continue
            fresh = self._spawn(inst.ref, t.env)
            fresh.restarts = inst.restarts + 1
            t.instances[t.instances.index(inst)] = fresh
            restarted.append(f"{inst.ref} :{inst.http_port} -> :{fresh.http_port}")
            log.warning("restarted %s (exit %s)", inst.ref, inst.proc.returncode)
        return restarted

    def _converge(self, t: Track, ending: list[Instance]) -> None:
        if t.ref is None:
            return
        wanted = t.wanted()
        for _ in range(t.replicas - len(wanted)):
            fresh = self._spawn(t.ref, t.env)
            t.instances.append(fresh)
            wanted.append(fresh)
        for inst in wanted:
            if inst.stage is Stage.STARTING and inst.answers_ready():
                inst.stage = Stage.SERVING
        # surplus: instances not serving yet go first, then the newest serving ones
        surplus = sorted(reversed(wanted), key=lambda i: i.stage is Stage.SERVING)
        for inst in surplus[:max(0, len(wanted) - t.replicas)]:
            self._retire(t, inst, ending)
        ready = len([i for i in t.wanted() if i.stage is Stage.SERVING]) >= t.replicas
        for inst in [i for i in t.instances if i.ref != t.ref]:
            if inst.stage is Stage.STARTING or (ready and inst.stage is Stage.SERVING):
                self._retire(t, inst, ending)  # replaced: once the new ones all serve

    def _retire(self, t: Track, inst: Instance, ending: list[Instance]) -> None:
        if inst.stage is Stage.STARTING:  # never in a pool: stopped at once
            t.instances.remove(inst)
            ending.append(inst)
        elif inst.stage is Stage.SERVING:
            inst.stage = Stage.LEAVING

    def _release(self, model: str, ending: list[Instance]) -> None:
        """Instances out of the pools: draining once Traefik shows them gone, stopped after
        DRAIN_SECONDS; a track with nothing left to run is absent again."""
        now = time.monotonic()
        tracks = [self.track(model, name) for name in TRACKS]
        for t in tracks:
            for inst in [i for i in t.instances if i.stage is Stage.DRAINING]:
                if now - inst.draining_since >= DRAIN_SECONDS:
                    t.instances.remove(inst)
                    ending.append(inst)
        leaving = [i for t in tracks for i in t.instances if i.stage is Stage.LEAVING]
        if leaving and self.router.applied_pools(route=model):
            for inst in leaving:
                inst.stage, inst.draining_since = Stage.DRAINING, now
        for t in tracks:
            if t.replicas == 0 and not t.instances:
                t.ref = None

    def _publish(self, model: str) -> None:
        self.router.set_pools(
            route=model,
            stable=[i.ports for i in self.track(model, "stable").serving()],
            canary=[i.ports for i in self.track(model, "canary").serving()])


def _check_platform(env: LocalEnvironment) -> Platform:
    return env  # mypy checks that LocalEnvironment implements the Platform port
