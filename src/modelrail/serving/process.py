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


class Adopted:
    """A process this one did not start (its starter died and it was re-adopted from a
    state file): the parts of Popen's interface that wait_ready() and stop() use."""

    def __init__(self, pid: int, *, home: Path | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        if home is not None and home.name.startswith("modelrail-bentoml-home-"):
            _HOMES[pid] = home

    def poll(self) -> int | None:
        if self.returncode is None and not pid_alive(self.pid):
            self.returncode = -1  # not our child: its real exit status is not ours to read
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout or 0.0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode


Proc = subprocess.Popen[bytes] | Adopted


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, exited but not reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def home_of(proc: Proc) -> Path | None:
    """The private BentoML home of a process spawned (or adopted) here."""
    return _HOMES.get(proc.pid)


def wait_ready(http_url: str, *, timeout: float = 60.0, proc: Proc | None = None) -> bool:
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


def stop(proc: Proc, *, timeout: float = 15.0) -> int:
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
    return -1 if proc.returncode is None else int(proc.returncode)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
