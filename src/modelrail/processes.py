"""The processes modelrail runs on this machine, started, adopted and stopped in one
place: serving instances (the one place that builds `bentoml serve`'s command), the
Traefik proxy and Locust runs of the local platform.

Used by `modelrail serve` (foreground), by the local platform of the rollout controller
(one process per instance, the proxy), by the tests and the benchmarks. A BentoML worker
itself uses only `pid_alive` and `set_parent_death_signal` (serving/lifeline.py).

Every server gets a private BentoML home and a unique MODELRAIL_INSTANCE_ID in its
environment, which every process it starts inherits (BentoML's workers run in sessions of
their own, out of reach of the server's process group): `stop()` ends the server, then
every process still carrying its id, then removes its home.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import modelrail
from modelrail.errors import InvalidInputError
from modelrail.serving.config import ServingConfig

SERVICE_TARGET = "service:InferenceService"
INSTANCE_ENV = "MODELRAIL_INSTANCE_ID"
HOME_PREFIX = "modelrail-bentoml-home-"


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

    @property
    def instance_id(self) -> str | None:
        """The marker every process of this server carries in its environment."""
        return self.env.get(INSTANCE_ENV)


def shared_bentoml_home(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    return Path(env.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().resolve()


def private_bentoml_home(shared: Path) -> Path:
    """A BentoML home of this process's own whose `models` is the shared model store.

    BentoML empties `$BENTOML_HOME/prometheus_multiproc_dir` whenever a server starts, so
    servers sharing a home erase each other's metrics (found by the metrics tests with two
    servers on one machine). A private home per server keeps them apart.
    """
    home = Path(tempfile.mkdtemp(prefix=HOME_PREFIX))
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
    env[INSTANCE_ENV] = uuid.uuid4().hex
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET, "--host", http_host,
            "--port", str(http_port)]
    return ServerCommand(argv=argv, env=env, cwd=find_service_dir(service_dir))


# private BentoML homes and instance ids of the processes spawned (or adopted) here, until
# they are stopped
_HOMES: dict[int, Path] = {}
_IDS: dict[int, str] = {}


def spawn(cmd: ServerCommand, *, log_path: Path | None = None, inherit_output: bool = False,
          tie_to_caller: bool = False) -> subprocess.Popen[bytes]:
    """Start a serving process in its own process group and session.

    Output goes to `log_path`, else to this process's stdout/stderr if `inherit_output`,
    else nowhere. With `tie_to_caller` the server gets SIGTERM when this process dies (for
    a foreground command; an instance of the local platform must outlive its controller).
    """
    log = log_path.open("ab") if log_path else None
    out: IO[bytes] | int | None = (log if log is not None else None if inherit_output
                                   else subprocess.DEVNULL)
    preexec = _tie_to(os.getpid()) if tie_to_caller else None
    try:
        # the preexec hook only makes a syscall through an already loaded libc: safe after
        # a fork even if the caller runs threads
        proc = subprocess.Popen(cmd.argv, env=cmd.env, cwd=cmd.cwd, stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None,
                                start_new_session=True, preexec_fn=preexec)  # noqa: PLW1509
    finally:
        if log is not None:
            log.close()  # the child holds its own descriptor
    home = Path(cmd.env["BENTOML_HOME"])
    if home.name.startswith(HOME_PREFIX):
        _HOMES[proc.pid] = home
    if cmd.instance_id:
        _IDS[proc.pid] = cmd.instance_id
    return proc


def _tie_to(caller: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec
        set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != caller:  # the caller died before the kernel was watching
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec


class Adopted:
    """A process this one did not start (its starter died and it was re-adopted from a
    state file): the parts of Popen's interface that wait_ready() and stop() use."""

    def __init__(self, pid: int, *, home: Path | None = None,
                 instance_id: str | None = None) -> None:
        self.pid = pid
        self.returncode: int | None = None
        if home is not None and home.name.startswith(HOME_PREFIX):
            _HOMES[pid] = home
        instance_id = instance_id or environ_of(pid).get(INSTANCE_ENV)
        if instance_id:
            _IDS[pid] = instance_id

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


def home_of(proc: Proc) -> Path | None:
    """The private BentoML home of a process spawned (or adopted) here."""
    return _HOMES.get(proc.pid)


def instance_id_of(proc: Proc) -> str | None:
    """The MODELRAIL_INSTANCE_ID of a process spawned (or adopted) here."""
    return _IDS.get(proc.pid)


def environ_of(pid: int) -> dict[str, str]:
    """The environment `pid` was started with ({} if it is gone or not ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.partition(b"=") for entry in raw.split(b"\0") if entry)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, _, v in pairs}


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes (this one excepted) started with `name=value` in their environment."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return sorted(found)


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
    """SIGTERM the process group (graceful drain), SIGKILL after `timeout`; then end every
    process still carrying the server's instance id (workers whose lifeline did not fire)
    the same way, and remove the private BentoML home. Returns the server's exit code."""
    deadline = time.monotonic() + timeout
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    instance_id = _IDS.pop(proc.pid, None)
    if instance_id:
        _end_all(processes_with_env(INSTANCE_ENV, instance_id),
                 grace=max(1.0, deadline - time.monotonic()))
    home = _HOMES.pop(proc.pid, None)
    if home is not None:
        _remove_home(home)
    return -1 if proc.returncode is None else int(proc.returncode)


def _end_all(pids: list[int], *, grace: float) -> None:
    """SIGTERM `pids` (not our children: nobody to reap but init), SIGKILL whoever is
    still there after `grace`, and wait until they are gone."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while pids := [p for p in pids if pid_alive(p)]:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:  # all gone: no SIGKILL needed
            return


def run_in_foreground(cmd: ServerCommand) -> int:
    """Run a server as this process's child until it exits; returns its exit status.

    SIGINT, SIGTERM and SIGHUP sent to this process are forwarded to the server as a
    graceful stop (HUP as TERM); a second one kills it. On every way out (a signal, an
    error, the server's own exit) `stop()` then ends whatever is left and removes the
    private home. If this process is SIGKILLed the server still gets SIGTERM
    (`tie_to_caller`), but its home stays behind.
    """
    received: list[int] = []
    proc: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if proc is not None:
            _signal_server(proc, received)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, forward) for s in handled}  # before spawn: none is lost
    try:
        try:
            proc = spawn(cmd, inherit_output=True, tie_to_caller=True)
        except BaseException:
            _remove_home(Path(cmd.env["BENTOML_HOME"]))
            raise
        if received:  # arrived while starting
            _signal_server(proc, received)
        code = proc.wait()
    finally:
        if proc is not None:
            stop(proc, timeout=2.0 if len(received) > 1 else 15.0)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 128 - code if code < 0 else code


def _signal_server(proc: subprocess.Popen[bytes], received: list[int]) -> None:
    sig = signal.SIGKILL if len(received) > 1 else (
        received[0] if received[0] in (signal.SIGINT, signal.SIGTERM) else signal.SIGTERM)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _remove_home(home: Path) -> None:
    if home.name.startswith(HOME_PREFIX):  # the symlinked model store is shared: unlink only
        shutil.rmtree(home, ignore_errors=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _load_prctl() -> Any:
    """libc's prctl, resolved once here: a preexec hook (spawn) runs in a forked
    child, where looking a symbol up could wait on a lock held by another thread."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # this process's own libc
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies; False if the
    platform cannot (not Linux)."""
    return _PRCTL is not None and _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0


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
