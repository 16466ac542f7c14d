"""Load verification with Locust, always as a subprocess (never imported: its gevent
monkey-patching breaks processes that already use ssl or asyncio; DESIGN.md).

`run_load` drives OIP REST or gRPC at one target for a bounded time, from the locustfiles in
services/inference/loadtest/, and returns a LoadSample. A run that produced no requests is
reported as such — the analysis fails the step on it (a load test that sent nothing proves
nothing; Flagger issue 931).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelrail.errors import InvalidInputError
from modelrail.processes import find_service_dir
from modelrail.rollout.core.analysis import LoadSample

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


def _read_stats(out_file: Path, exit_code: int, output: str) -> LoadResult:
    stats_path = out_file if out_file.exists() else out_file.with_suffix("")
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else []
    requests = sum(int(s.get("num_requests", 0)) for s in stats)
    failures = sum(int(s.get("num_failures", 0)) for s in stats)
    return LoadResult(sample=LoadSample(requests=requests, failures=failures),
                      p99_ms=_p99(stats), exit_code=exit_code, output_tail=output[-2000:])


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
