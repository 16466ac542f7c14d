"""The cluster's processes: started in their own session inside the namespace, recorded
with their start time (so a recycled pid is never mistaken for ours), stopped with SIGTERM
then SIGKILL, and waited for.

Each component writes its output to <state>/logs/<name>.log; an error raised while it
starts carries the tail of that log. The record is a plain dict kept in the state file
(node.py): pid, start time (field 22 of /proc/<pid>/stat), argv, log path.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from modelrail.cluster import netns
from modelrail.cluster.errors import ClusterError
from modelrail.processes import pid_alive


@dataclass(frozen=True)
class Record:
    """One running component, as the state file keeps it."""

    name: str
    pid: int
    starttime: int
    argv: list[str]
    log: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        return cls(name=str(data["name"]), pid=int(data["pid"]),
                   starttime=int(data["starttime"]), argv=[str(a) for a in data["argv"]],
                   log=str(data["log"]))


_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def starttime(pid: int) -> int | None:
    """Clock ticks after boot at which `pid` started (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def alive(record: Record) -> bool:
    """The recorded process still runs (same pid *and* same start time)."""
    return pid_alive(record.pid) and starttime(record.pid) == record.starttime


def start(name: str, argv: list[str], *, log: Path, in_netns: bool = True,
          env: Mapping[str, str] | None = None) -> Record:
    """Start `argv` (inside the namespace unless told) in a session of its own."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full = netns.argv_in(argv) if in_netns else list(argv)
    with log.open("ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(env) if env is not None else None)
        except OSError as exc:
            raise ClusterError(f"cannot start {name}: {exc}", where=argv[0]) from exc
    _CHILDREN[proc.pid] = proc  # kept, so that it is reaped and never warned about
    # nsenter execs the component: the pid stays the component's
    st = starttime(proc.pid)
    return Record(name=name, pid=proc.pid, starttime=st or 0, argv=full, log=str(log))


def log_tail(path: str | Path, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(check: Callable[[], bool], *, timeout: float, what: str,
               record: Record | None = None, interval: float = 0.2) -> float:
    """Poll `check` until it is true; the seconds it took. Raises ClusterError (with the
    component's log tail) on timeout or if `record`'s process exits meanwhile."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        if record is not None and not alive(record):
            _reap(record.pid)
            raise ClusterError(f"{record.name} exited while waiting for {what}:\n"
                               f"{log_tail(record.log)}", where=record.log)
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - t0
        if time.monotonic() > deadline:
            tail = f":\n{log_tail(record.log)}" if record is not None else ""
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{tail}",
                               where=record.log if record is not None else None)
        time.sleep(interval)


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop(record: Record, *, grace: float = 10.0) -> bool:
    """SIGTERM the component's process group, SIGKILL after `grace`; True if it had to be
    killed. A process whose pid now belongs to someone else is left alone."""
    if not alive(record):
        return False
    killed = False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not pid_alive(record.pid):
                _reap(record.pid)  # it may have become a zombie since the last look
                return killed
            time.sleep(0.05)
        killed = True
    if pid_alive(record.pid):
        raise ClusterError(f"{record.name} (pid {record.pid}) survived SIGKILL")
    return killed


def kill_pids(pids: list[int], *, grace: float = 5.0) -> list[int]:
    """SIGTERM, then SIGKILL after `grace`, processes we did not record (strays found in
    the namespace or the cgroups); returns those that needed SIGKILL."""
    me = os.getpid()
    pids = [p for p in pids if p != me]
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        for p in pids:
            _reap(p)
        time.sleep(0.05)
    stubborn = [p for p in pids if pid_alive(p)]
    for p in stubborn:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(pid_alive(p) for p in stubborn):
        for p in stubborn:
            _reap(p)
        time.sleep(0.05)
    return stubborn
