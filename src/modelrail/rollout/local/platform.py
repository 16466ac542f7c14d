"""The local platform: one environment as real processes on this machine.

Per model, a stable and a canary track of serving instances (each a BentoML process with
its gRPC server, on loopback ports), behind one Traefik router that splits HTTP and gRPC by
weight. `supervise()` restarts instances that died and reports what it did; `scale()` brings
a track to N instances, adding new ones before removing old ones, and the router's pools
follow (Traefik's health checks keep traffic off instances until they are ready).

The whole environment round-trips through `to_state()` / `adopt()`: instances and the
proxy run in their own sessions, so when the controller process that started them dies they
keep serving, and a new controller adopts them from the saved state (a dead one is replaced
by `supervise()`). Every change goes through one lock: the supervisor, the autoscaler and
rollouts run in threads of one controller.

Used by the local controller daemon (`modelrail env up|status|down`, platforms/daemon.py)
and by the rollout controller; tests drive it directly.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelrail.processes import (
    Adopted,
    Proc,
    free_port,
    home_of,
    instance_id_of,
    server_command,
    spawn,
    stop,
    wait_ready,
)
from modelrail.rollout.routers.traefik import TraefikRouter
from modelrail.serving.config import ModelRef, ServingConfig, parse_model_ref

log = logging.getLogger(__name__)
TRACKS = ("stable", "canary")


@dataclass
class Instance:
    ref: ModelRef
    http_port: int
    grpc_port: int
    proc: Proc
    log_path: Path
    restarts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ports(self) -> tuple[int, int]:
        return self.http_port, self.grpc_port

    def alive(self) -> bool:
        return self.proc.poll() is None

    def to_state(self) -> dict[str, Any]:
        home = home_of(self.proc)
        return {"ref": str(self.ref), "http_port": self.http_port,
                "grpc_port": self.grpc_port, "pid": self.proc.pid,
                "log_path": str(self.log_path), "restarts": self.restarts,
                "home": str(home) if home else None,
                # finds its workers after a restart of the controller, even if it died
                "instance_id": instance_id_of(self.proc)}

    @classmethod
    def adopt(cls, state: dict[str, Any]) -> Instance:
        home = Path(state["home"]) if state.get("home") else None
        return cls(ref=parse_model_ref(state["ref"]), http_port=state["http_port"],
                   grpc_port=state["grpc_port"],
                   proc=Adopted(state["pid"], home=home, instance_id=state.get("instance_id")),
                   log_path=Path(state["log_path"]), restarts=state["restarts"])


@dataclass
class Track:
    ref: ModelRef | None = None
    instances: list[Instance] = field(default_factory=list)


class LocalEnvironment:
    def __init__(self, *, name: str, run_dir: Path, extra_env: dict[str, str] | None = None,
                 workers: int = 1, grpc_models: tuple[str, ...] = ()) -> None:
        self.name = name
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.extra_env = dict(extra_env or {})
        self.workers = workers
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
                    stop(inst.proc)
                track.instances.clear()
            self.router.stop()

    # --- persistence ---------------------------------------------------------------
    def to_state(self) -> dict[str, Any]:
        with self.lock:
            return {"name": self.name, "run_dir": str(self.run_dir), "workers": self.workers,
                    "extra_env": self.extra_env, "router": self.router.to_state(),
                    "tracks": [{"model": m, "track": t, "ref": str(tr.ref) if tr.ref else None,
                                "instances": [i.to_state() for i in tr.instances]}
                               for (m, t), tr in self.tracks.items()]}

    @classmethod
    def adopt(cls, state: dict[str, Any], *, start_router: bool = True) -> LocalEnvironment:
        """The environment a dead controller left running; start the router again if it
        died (`supervise()` replaces dead instances)."""
        env = cls(name=state["name"], run_dir=Path(state["run_dir"]),
                  extra_env=state["extra_env"], workers=state["workers"])
        env.router = TraefikRouter.adopt(state["router"])
        for t in state["tracks"]:
            env.tracks[(t["model"], t["track"])] = Track(
                ref=parse_model_ref(t["ref"]) if t["ref"] else None,
                instances=[Instance.adopt(i) for i in t["instances"]])
        if start_router and not env.router.running:
            env.router.start()
        return env

    # --- instances -----------------------------------------------------------------
    def _spawn(self, ref: ModelRef, extra_env: dict[str, str] | None = None) -> Instance:
        http_port, grpc_port = free_port(), free_port()
        config = ServingConfig(models=(ref,), grpc_port=grpc_port, grpc_host="127.0.0.1",
                               workers=self.workers)
        log_path = self.run_dir / f"{ref.name}-{ref.version}-{http_port}.log"
        cmd = server_command(config, http_host="127.0.0.1", http_port=http_port,
                             extra_env={**self.extra_env, **(extra_env or {})})
        return Instance(ref=ref, http_port=http_port, grpc_port=grpc_port,
                        proc=spawn(cmd, log_path=log_path), log_path=log_path)

    def track(self, model: str, track: str) -> Track:
        if track not in TRACKS:
            raise ValueError(f"unknown track {track!r}; known: {', '.join(TRACKS)}")
        return self.tracks.setdefault((model, track), Track())

    def scale(self, model: str, track: str, *, ref: ModelRef, replicas: int,
              wait: bool = True, timeout: float = 120.0) -> list[Instance]:
        """Run `replicas` instances of `ref` on the track; new ones first, then the rest go.
        A different ref replaces every instance (new ones ready before old ones stop)."""
        with self.lock:
            return self._scale(model, track, ref=ref, replicas=replicas, wait=wait,
                               timeout=timeout)

    def _scale(self, model: str, track: str, *, ref: ModelRef, replicas: int,
               wait: bool, timeout: float) -> list[Instance]:
        t = self.track(model, track)
        keep = [i for i in t.instances if i.ref == ref and i.alive()]
        retire = [i for i in t.instances if i not in keep]
        new = [self._spawn(ref) for _ in range(max(0, replicas - len(keep)))]
        if wait:
            for inst in new:
                if not wait_ready(inst.url, timeout=timeout, proc=inst.proc):
                    raise RuntimeError(f"{inst.ref} on :{inst.http_port} did not become "
                                       f"ready; log: {inst.log_path}")
        keep += new
        retire += keep[replicas:]
        keep = keep[:replicas]
        t.ref, t.instances = ref, keep
        self._publish(model)
        if retire:
            # Traefik applies a file change 1-2 s late: stop an instance only once the
            # router's own API shows it gone, then let its in-flight requests drain
            self.router.wait_applied(route=model)
            time.sleep(0.5)
            for inst in retire:
                stop(inst.proc)
        return keep

    def supervise(self) -> list[str]:
        """Restart every instance that died; returns what was restarted."""
        with self.lock:
            return self._supervise()

    def _supervise(self) -> list[str]:
        restarted = []
        for (model, _track), t in self.tracks.items():
            for idx, inst in enumerate(t.instances):
                if inst.alive():
                    continue
                stop(inst.proc)  # reap it and remove its private BentoML home
                fresh = self._spawn(inst.ref)
                fresh.restarts = inst.restarts + 1
                t.instances[idx] = fresh
                restarted.append(f"{inst.ref} :{inst.http_port} -> :{fresh.http_port}")
                log.warning("restarted %s (exit %s)", inst.ref, inst.proc.returncode)
            self._publish(model)
        return restarted

    def _publish(self, model: str) -> None:
        self.router.set_pools(
            route=model,
            stable=[i.ports for i in self.track(model, "stable").instances],
            canary=[i.ports for i in self.track(model, "canary").instances])
