"""A test session checks itself: nothing it started may outlive it.

tests/conftest.py marks the session at import (`mark_session()`: MODELRAIL_TEST_SESSION=<uuid>
in os.environ, inherited by every process the tests start and every process those start)
and registers a `LeakCheck`. At the very end, after the session's fixtures are torn down,
the check gives stops still in flight a few seconds, then:
- kills and lists (pid, command line) every process still carrying the marker;
- removes and lists every private BentoML home (modelrail-bentoml-home-* in the temp dir)
  whose model store lies in one of the session's directories (homes of concurrent sessions
  on the same machine point elsewhere);
- removes the session's own directories (its BentoML home);
and turns a passing session into a failing one (exit status 1) if it found anything.

Any pytest session can use it: tests/serving/test_process_ownership.py runs small inner
sessions with it to prove that it bites.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelrail.processes import HOME_PREFIX, pid_alive, processes_with_env

SESSION_ENV = "MODELRAIL_TEST_SESSION"


CONTAINER_LABEL = "modelrail.test-session"


def mark_session() -> str:
    """Put a fresh session marker into this process's environment; returns it. Containers
    started by modelrail carry it as a label (podman.LABELS_ENV): they run under conmon,
    not as the session's descendants."""
    marker = uuid.uuid4().hex
    os.environ[SESSION_ENV] = marker
    os.environ["MODELRAIL_CONTAINER_LABELS"] = f"{CONTAINER_LABEL}={marker}"
    return marker


@dataclass(frozen=True)
class LeftProcess:
    """A process of the session found alive at its end (and then killed)."""

    pid: int
    cmdline: str


def cmdline_of(pid: int) -> str:
    """The command line of `pid`, or "?" if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or "?"


class LeakCheck:
    """A pytest plugin: fails the session if it leaves processes or private homes behind."""

    def __init__(self, *, marker: str, stores: Iterable[Path] = (),
                 remove: Iterable[Path] = (), grace: float = 5.0) -> None:
        self.marker = marker
        self.stores = [p.resolve() for p in stores]
        self.remove = list(remove)
        self.grace = grace
        self.temp_before = set(self._temp_dirs())

    @staticmethod
    def _temp_dirs() -> list[Path]:
        return sorted(p for p in Path(tempfile.gettempdir()).glob("modelrail-*")
                      if not p.name.startswith(HOME_PREFIX))

    def leftover_temp_dirs(self) -> list[Path]:
        """modelrail's temporary folders that appeared during the session and are still
        there (test harnesses' kubeconfigs, scratch copies), removed before returning."""
        keep = {p.resolve() for p in self.remove}
        left = [p for p in self._temp_dirs()
                if p not in self.temp_before and p.resolve() not in keep]
        for path in left:
            shutil.rmtree(path, ignore_errors=True)
        return left

    def add_store(self, path: Path) -> None:
        """Count private homes whose model store lies under `path` as the session's."""
        self.stores.append(path.resolve())

    def leftover_processes(self) -> list[LeftProcess]:
        """Processes carrying the marker after the grace period, killed before returning."""
        deadline = time.monotonic() + self.grace
        pids = processes_with_env(SESSION_ENV, self.marker)
        while pids and time.monotonic() < deadline:
            time.sleep(0.1)
            pids = processes_with_env(SESSION_ENV, self.marker)
        left = [LeftProcess(pid=p, cmdline=cmdline_of(p)) for p in pids]
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
            time.sleep(0.05)
        return left

    def leftover_homes(self) -> list[Path]:
        """The session's private BentoML homes still in the temp dir, removed before
        returning."""
        left = []
        for home in sorted(Path(tempfile.gettempdir()).glob(f"{HOME_PREFIX}*")):
            try:
                store = Path(os.readlink(home / "models"))
            except OSError:  # not a home as process.py makes them, or removed meanwhile
                continue
            if any(store.is_relative_to(root) for root in self.stores):
                left.append(home)
                shutil.rmtree(home, ignore_errors=True)  # unlinks the store, never follows
        return left

    def leftover_containers(self) -> list[str]:
        """The session's containers (running or not), removed before returning."""
        from modelrail.images import podman

        if not podman.available():
            return []
        found = podman.containers(f"{CONTAINER_LABEL}={self.marker}")
        left = [f"{c.get('Names', ['?'])[0]} ({c.get('Image', '?')}, {c.get('State', '?')})"
                for c in found]
        for c in found:
            podman.remove_container(str(c["Id"]))
        return left

    @pytest.hookimpl(trylast=True)  # after the runner has torn the session fixtures down
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        containers = self.leftover_containers()
        processes = self.leftover_processes()
        homes = self.leftover_homes()
        temps = self.leftover_temp_dirs()
        for path in self.remove:
            shutil.rmtree(path, ignore_errors=True)
        if not processes and not homes and not temps and not containers:
            return
        lines = [f"process {p.pid} still running (killed now): {p.cmdline}" for p in processes]
        lines += [f"container not removed (removed now): {c}" for c in containers]
        lines += [f"private BentoML home not removed (removed now): {h}" for h in homes]
        lines += [f"temporary folder not removed (removed now): {d}" for d in temps]
        lines.append("whatever starts a server must stop it: processes.stop() ends its "
                     "workers and removes its home")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("")
            reporter.write_sep("=", "leak check: the session left things behind", red=True)
            for line in lines:
                reporter.write_line(line)
        else:
            print("leak check: the session left things behind", *lines, sep="\n")
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
