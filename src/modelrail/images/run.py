"""Run one container of a pod spec with podman+runc, the way a kubelet would.

`PodContainer.start(run)` checks the image against the pod's runAsNonRoot (the image's own
USER must be numeric and non-zero when the spec sets no user, as a kubelet checks), creates
the termination-message file, starts the container detached on the `modelrail` network
and finds its address; `wait_ready()` runs the startup probe, then the readiness probe,
with their periods and thresholds; `stop()` is a kubelet's kill: SIGTERM, the pod's grace
period, SIGKILL, and the container removed. Between a start and a stop, `poll()` is cheap:
it checks the container's init process on the host, no podman call.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from modelrail.images import podman
from modelrail.images.podman import ContainerError
from modelrail.images.podspec import ContainerRun, Probe
from modelrail.processes import pid_alive


def image_user(image: str) -> str:
    return str(podman.inspect_image(image).get("User") or
               podman.inspect_image(image).get("Config", {}).get("User") or "")


def check_non_root(run: ContainerRun) -> None:
    """A kubelet's runAsNonRoot check: without runAsUser, the image's USER must be a
    non-zero number (a name cannot be verified without running the image)."""
    if run.user > 0:
        return
    user = image_user(run.image).split(":")[0]
    if not user.isdigit() or int(user) == 0:
        raise ContainerError(f"the image runs as {user or 'root'!r}; runAsNonRoot needs a "
                             "numeric non-root USER", where=run.image,
                             accepted="USER <uid> with uid > 0 in the image")


class PodContainer:
    def __init__(self, run: ContainerRun, *, pid: int, ip: str | None,
                 workdir: Path | None) -> None:
        self.run = run
        self.name = run.name
        self.pid = pid
        self.ip = ip
        self.workdir = workdir
        self.returncode: int | None = None

    # --- start -----------------------------------------------------------------------
    @classmethod
    def start(cls, run: ContainerRun, *, workdir: Path | None = None,
              extra_args: tuple[str, ...] = ()) -> PodContainer:
        """`extra_args`: podman options that are not the pod's (e.g. where its log goes)."""
        check_non_root(run)
        podman.ensure_network()
        podman.remove_container(run.name)  # a leftover of the same name
        podman.podman("run", "--detach", *podman.label_args(), *podman.ULIMITS, *extra_args,
                      *run.args,
                      what=f"starting {run.name}", timeout=120)
        info = podman.inspect_container(run.name)
        if info is None:
            raise ContainerError(f"{run.name} vanished right after it started")
        return cls(run, pid=int(info["State"].get("Pid") or 0),
                   ip=podman.container_ip(run.name), workdir=workdir)

    @classmethod
    def adopt(cls, run: ContainerRun, *, workdir: Path | None = None) -> PodContainer:
        """A container started earlier (by a process that has died since)."""
        info = podman.inspect_container(run.name)
        pid = int(info["State"].get("Pid") or 0) if info else 0
        return cls(run, pid=pid, ip=podman.container_ip(run.name) if info else None,
                   workdir=workdir)

    # --- state -----------------------------------------------------------------------
    def poll(self) -> int | None:
        if self.returncode is None and (self.pid <= 0 or not pid_alive(self.pid)):
            info = podman.inspect_container(self.name)
            state = info["State"] if info else {}
            self.returncode = int(state.get("ExitCode", -1)) if state else -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.name, timeout or 0.0)
            time.sleep(0.1)
        assert self.returncode is not None
        return self.returncode

    def url(self, port: str | int) -> str:
        number = self.run.ports[port] if isinstance(port, str) else port
        return f"http://{self.ip}:{number}"

    def target(self, port: str | int) -> str:
        number = self.run.ports[port] if isinstance(port, str) else port
        return f"{self.ip}:{number}"

    # --- probes ------------------------------------------------------------------------
    def probe_once(self, probe: Probe) -> bool:
        if self.ip is None:
            return False
        try:
            code = httpx.get(f"http://{self.ip}:{probe.port}{probe.path}",
                             timeout=probe.timeout).status_code
        except httpx.HTTPError:
            return False
        return 200 <= code < 400

    def wait_ready(self, *, timeout: float = 120.0) -> bool:
        """The startup probe until it succeeds (failing it failureThreshold times in a row
        is a failed start), then the readiness probe; False if the container exits, a
        probe gives up, or `timeout` passes."""
        deadline = time.monotonic() + timeout
        for probe in (self.run.startup, self.run.readiness):
            if probe is None:
                continue
            time.sleep(probe.initial_delay)
            failures = 0
            while True:
                if self.poll() is not None or time.monotonic() > deadline:
                    return False
                if self.probe_once(probe):
                    break
                failures += 1
                if probe is self.run.startup and failures >= probe.failure_threshold:
                    return False
                time.sleep(min(probe.period, 0.5))  # poll faster than the kubelet, same rule
        return self.poll() is None

    # --- stop ---------------------------------------------------------------------------
    def stop(self, *, grace: int | None = None) -> int:
        """The preStop sleep (still serving), SIGTERM, the rest of the grace period,
        SIGKILL; then the container is removed. `grace` overrides both (0: kill now)."""
        seconds = self.run.grace_seconds if grace is None else grace
        if grace is None and self.run.pre_stop_seconds and self.poll() is None:
            time.sleep(self.run.pre_stop_seconds)
            seconds = max(seconds - self.run.pre_stop_seconds, 1)
        if self.poll() is None:
            podman.podman("stop", "--time", str(seconds), self.name, check=False,
                          timeout=seconds + 60)
        code = self.poll()
        podman.remove_container(self.name)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return -1 if code is None else code

    def kill(self, signal: str = "TERM") -> None:
        podman.podman("kill", "--signal", signal, self.name, check=False)

    def logs(self) -> str:
        return podman.podman("logs", self.name, check=False).stdout + \
            podman.podman("logs", self.name, check=False).stderr

    def termination_message(self) -> str:
        """What the container wrote to its termination message path (4 KiB at most, as a
        kubelet keeps), or its last log lines under FallbackToLogsOnError."""
        text = ""
        if self.workdir is not None:
            with contextlib.suppress(OSError):
                text = (self.workdir / "termination-log").read_text()[:4096]
        if not text and self.run.fallback_to_logs and (self.returncode or 0) != 0:
            text = "\n".join(self.logs().splitlines()[-80:])[-4096:]
        return text

    def exec(self, *argv: str, user: str | None = None, timeout: float = 60.0) -> podman.Result:
        args = ["exec"]
        if user is not None:
            args += ["--user", user]
        return podman.podman(*args, self.name, *argv, check=False, timeout=timeout)


def termination_workdir(prefix: str = "modelrail-pod-") -> tuple[Path, Path]:
    """A private folder with an empty termination-log file, world-writable like the
    file a kubelet creates for the container's user."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    log = work / "termination-log"
    log.touch()
    os.chmod(log, 0o666)
    return work, log
