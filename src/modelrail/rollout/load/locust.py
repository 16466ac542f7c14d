"""Load verification with Locust, always as a subprocess (never imported: its gevent
monkey-patching breaks processes that already use ssl or asyncio), from the
locustfiles in services/inference/loadtest/.

- `LocustRunner`: the rollout controller's LoadRunner (ports.py) on the local platform.
  `start` launches one analysis interval's Locust processes — OIP REST at the target's URL
  and, when it names one, OIP gRPC straight at the canary, side by side — and returns a
  handle at once; `result` is None while they run, then a LoadSample, or a LoadError with
  Locust's own words when a run failed to run. Built per rollout by local/runner.py.
- `run_load`: one blocking run (the Kubernetes load Job, load/job.py; tests).
- `BackgroundLoad`: continuous load until stopped (the demo's "production traffic").

A run that produced no requests is reported as such — the analysis fails the step on it (a
load test that sent nothing proves nothing; Flagger issue 931).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrail.errors import InvalidInputError
from modelrail.processes import find_service_dir
from modelrail.rollout.core.analysis import LoadSample
from modelrail.rollout.ports import LoadError, LoadLostError, LoadRunner, LoadTarget

LOCUSTFILES = {"rest": "oip_rest.py", "grpc": "oip_grpc.py"}


@dataclass(frozen=True)
class LoadResult:
    sample: LoadSample
    p99_ms: float | None
    exit_code: int
    output_tail: str


def _command(*, protocol: str, target: str, model: str, rows: list[list[float]],
             version: str | None, users: int, spawn_rate: float, seconds: float,
             workdir: Path, wait: float = 0.0) -> tuple[list[str], dict[str, str], Path]:
    if protocol not in LOCUSTFILES:
        raise InvalidInputError(f"unknown load protocol {protocol!r}", where="protocol",
                                accepted=", ".join(LOCUSTFILES))
    if not rows:
        raise InvalidInputError("no rows to send", where="rows",
                                accepted="at least one feature row")
    locustfile = find_service_dir() / "loadtest" / LOCUSTFILES[protocol]
    host = target if protocol == "rest" else f"grpc://{target.removeprefix('grpc://')}"
    rows_file = workdir / "rows.json"
    rows_file.write_text(json.dumps(rows))
    out_file = workdir / "stats.json"
    env = {**os.environ, "MODELRAIL_LOAD_MODEL": model, "MODELRAIL_LOAD_VERSION": version or "",
           "MODELRAIL_LOAD_ROWS": str(rows_file), "MODELRAIL_LOAD_WAIT": str(wait)}
    argv = [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
            "--host", host, "-u", str(users), "-r", str(spawn_rate),
            "-t", f"{max(1, round(seconds))}s", "--stop-timeout", "5", "--only-summary",
            "--json-file", str(out_file.with_suffix("")), "--loglevel", "WARNING"]
    return argv, env, out_file


def _stats(out_file: Path) -> list[dict[str, Any]] | None:
    """Locust's per-endpoint stats; None when it wrote none (it failed to run)."""
    stats_path = out_file if out_file.exists() else out_file.with_suffix("")
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        return None
    return stats if isinstance(stats, list) else None


def _read_stats(out_file: Path, exit_code: int, output: str) -> LoadResult:
    stats = _stats(out_file) or []
    return LoadResult(sample=_sample(stats), p99_ms=_p99(stats), exit_code=exit_code,
                      output_tail=output[-2000:])


def _sample(stats: list[dict[str, Any]]) -> LoadSample:
    return LoadSample(requests=sum(int(s.get("num_requests", 0)) for s in stats),
                      failures=sum(int(s.get("num_failures", 0)) for s in stats))


def run_load(*, protocol: str, target: str, model: str, rows: list[list[float]],
             version: str | None = None, users: int = 4, spawn_rate: float = 50.0,
             seconds: float = 5.0) -> LoadResult:
    """Run Locust against `target` (http://host:port or host:port for gRPC)."""
    with tempfile.TemporaryDirectory(prefix="modelrail-locust-") as tmp:
        argv, env, out_file = _command(protocol=protocol, target=target, model=model,
                                       rows=rows, version=version, users=users,
                                       spawn_rate=spawn_rate, seconds=seconds,
                                       workdir=Path(tmp))
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False,
                              timeout=seconds + 60)
        return _read_stats(out_file, proc.returncode, proc.stdout + proc.stderr)


@dataclass
class _Run:
    """One analysis interval's Locust processes, by protocol."""

    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]]
    stats: dict[str, Path]  # where each process writes its stats
    logs: dict[str, Path]  # each process's output
    give_up_at: float  # time.monotonic(): past it, a process still running is killed


class LocustRunner:
    """Runs Locust against a canary for one analysis interval at a time, in subprocesses;
    `close()` ends whatever still runs (the rollout runner calls it when it stops)."""

    def __init__(self, rows: list[list[float]], *, spawn_rate: float = 50.0,
                 grace_seconds: float = 60.0) -> None:
        if not rows:
            raise InvalidInputError("no rows to send", where="rows",
                                    accepted="at least one feature row")
        self.rows = rows
        self.spawn_rate = spawn_rate
        self.grace_seconds = grace_seconds  # past the run's length, before it is killed
        self._runs: dict[str, _Run] = {}

    def start(self, *, target: LoadTarget) -> str:
        """Launch REST (and gRPC, if the target names it) side by side; returns at once."""
        handle = f"locust-{uuid.uuid4().hex[:12]}"
        workdir = Path(tempfile.mkdtemp(prefix=f"modelrail-{handle}-"))
        legs: list[tuple[str, str, str | None]] = [("rest", target.http_url, None)]
        if target.grpc_target is not None:
            legs.append(("grpc", target.grpc_target, target.version))
        run = _Run(workdir=workdir, procs={}, stats={}, logs={},
                   give_up_at=time.monotonic() + target.seconds + self.grace_seconds)
        self._runs[handle] = run
        try:
            for protocol, address, version in legs:
                leg_dir = workdir / protocol
                leg_dir.mkdir()
                argv, env, out_file = _command(
                    protocol=protocol, target=address, model=target.model, rows=self.rows,
                    version=version, users=target.users, spawn_rate=self.spawn_rate,
                    seconds=target.seconds, workdir=leg_dir)
                run.stats[protocol], run.logs[protocol] = out_file, leg_dir / "locust.log"
                with run.logs[protocol].open("wb") as log:
                    run.procs[protocol] = subprocess.Popen(
                        argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            self.cancel(handle=handle)
            raise
        return handle

    def result(self, *, handle: str) -> LoadSample | None:
        """None while a process runs; the interval's LoadSample once all ended (then the
        handle is forgotten); LoadError if one failed to run or overran its time."""
        run = self._runs.get(handle)
        if run is None:
            raise LoadLostError(f"no Locust run {handle!r} in this process (a restarted "
                                "controller starts the interval again)")
        if any(p.poll() is None for p in run.procs.values()):
            if time.monotonic() < run.give_up_at:
                return None
            self.cancel(handle=handle)
            raise LoadError(f"Locust run {handle} was still running {self.grace_seconds:.0f}s "
                            "past its time limit and was killed")
        try:
            samples = {protocol: self._leg(run, protocol) for protocol in run.procs}
        finally:
            self.cancel(handle=handle)
        # every leg must have produced requests: one that sent nothing proves nothing
        empty = any(s.requests == 0 for s in samples.values())
        return LoadSample(requests=0 if empty else sum(s.requests for s in samples.values()),
                          failures=sum(s.failures for s in samples.values()))

    def cancel(self, *, handle: str) -> None:
        """Kill the run's processes (if they still run) and forget it; idempotent."""
        run = self._runs.pop(handle, None)
        if run is None:
            return
        for proc in run.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(run.workdir, ignore_errors=True)

    def close(self) -> None:
        """End every run still going."""
        for handle in list(self._runs):
            self.cancel(handle=handle)

    @staticmethod
    def _leg(run: _Run, protocol: str) -> LoadSample:
        stats, code = _stats(run.stats[protocol]), run.procs[protocol].returncode
        # Locust exits 0, or 1 when requests failed (the canary's doing); anything else, or
        # no stats at all, means it did not run as asked: its last words say why
        if stats is None or code not in (0, 1):
            with run.logs[protocol].open("rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
                said = log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise LoadError(f"Locust ({protocol}) failed to run (exit {code}): "
                            f"{' | '.join(line.strip() for line in said) or 'no output'}")
        return _sample(stats)


class BackgroundLoad:
    """Continuous Locust load in the background (the demo's "production traffic"): at most
    `max_seconds`, stopped early by `stop()`, which returns what it did."""

    def __init__(self, *, protocol: str, target: str, model: str, rows: list[list[float]],
                 users: int = 2, wait: float = 0.02, max_seconds: float = 900.0) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="modelrail-locust-")
        argv, env, self._out = _command(protocol=protocol, target=target, model=model,
                                        rows=rows, version=None, users=users, spawn_rate=50,
                                        seconds=max_seconds, workdir=Path(self._tmp.name),
                                        wait=wait)
        self._log = Path(self._tmp.name) / "locust.log"
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)

    def stop(self) -> LoadResult:
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)  # Locust writes its stats on SIGTERM
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        try:
            return _read_stats(self._out, self._proc.returncode or 0,
                               self._log.read_text(errors="replace"))
        finally:
            self._tmp.cleanup()


def _p99(stats: list[dict[str, object]]) -> float | None:
    """p99 from Locust's response-time histogram (ms, rounded buckets)."""
    counts: dict[float, int] = {}
    for s in stats:
        times = s.get("response_times") or {}
        assert isinstance(times, dict)
        for ms, n in times.items():
            counts[float(ms)] = counts.get(float(ms), 0) + int(n)
    total = sum(counts.values())
    if total == 0:
        return None
    seen = 0
    for ms in sorted(counts):
        seen += counts[ms]
        if seen >= 0.99 * total:
            return ms
    return max(counts)


def _check_runner(runner: LocustRunner) -> LoadRunner:
    return runner  # mypy checks that LocustRunner implements the LoadRunner port
