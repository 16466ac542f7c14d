"""How a serving process is started: the one place that builds `bentoml serve`'s command.

Used by `modelrail serve` (foreground), by the tests and benchmarks, and by the local
platform of the rollout engine (one process per instance).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import modelrail
from modelrail.errors import InvalidInputError
from modelrail.serving.config import ServingConfig

SERVICE_TARGET = "service:InferenceService"


def find_service_dir(explicit: Path | None = None) -> Path:
    """services/inference: given, under the current directory, or beside the package's
    checkout (editable install)."""
    candidates = [explicit] if explicit else [
        Path.cwd() / "services" / "inference",
        Path(modelrail.__file__).resolve().parents[2] / "services" / "inference",
    ]
    for c in candidates:
        if c is not None and (c / "service.py").is_file():
            return c.resolve()
    raise InvalidInputError(
        "cannot find the inference service (services/inference/service.py)",
        where=str(explicit) if explicit else "current directory",
        accepted="run from the modelrail checkout, or pass --service-dir")


@dataclass(frozen=True)
class ServerCommand:
    argv: list[str]
    env: dict[str, str]
    cwd: Path


def shared_bentoml_home(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().resolve()


def private_bentoml_home(shared: Path) -> Path:
    """A BentoML home of this process's own whose `models` is the shared model store.

    BentoML empties `$BENTOML_HOME/prometheus_multiproc_dir` whenever a server starts, so
    servers sharing a home erase each other's metrics (found by the metrics tests with two
    servers on one machine). A private home per server keeps them apart.
    """
    home = Path(tempfile.mkdtemp(prefix="modelrail-bentoml-home-"))
    (shared / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared / "models", target_is_directory=True)
    return home


def server_command(config: ServingConfig, *, http_host: str, http_port: int,
                   service_dir: Path | None = None, extra_env: dict[str, str] | None = None,
                   ) -> ServerCommand:
    """The argv, environment and working directory of one serving process."""
    env = {**os.environ, **config.to_env(), **(extra_env or {})}
    env["BENTOML_HOME"] = str(private_bentoml_home(shared_bentoml_home(env)))
    env["ORT_DISABLE_TELEMETRY"] = "1"
    env["BENTOML_DO_NOT_TRACK"] = "true"
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--host", http_host,
            "--port", str(http_port)]
    return ServerCommand(argv=argv, env=env, cwd=find_service_dir(service_dir))


# private BentoML homes of the processes spawned here, removed when they are stopped
_HOMES: dict[int, Path] = {}


def spawn(cmd: ServerCommand, *, log_path: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a serving process in its own process group (so stop() reaches its workers)."""
    out = log_path.open("ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd.argv, env=cmd.env, cwd=cmd.cwd, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    home = Path(cmd.env["BENTOML_HOME"])
    if home.name.startswith("modelrail-bentoml-home-"):
        _HOMES[proc.pid] = home
    return proc


def wait_ready(http_url: str, *, timeout: float = 60.0,
               proc: subprocess.Popen[bytes] | None = None) -> bool:
    """Poll /v2/health/ready until 200; False on timeout or if the process exits."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{http_url}/v2/health/ready", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 15.0) -> int:
    """SIGTERM the process group (graceful drain), SIGKILL after `timeout`."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    home = _HOMES.pop(proc.pid, None)
    if home is not None:  # the symlinked model store is shared: unlink, never follow
        shutil.rmtree(home, ignore_errors=True)
    return int(proc.returncode)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
