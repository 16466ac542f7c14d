"""Shadow-phase benchmark: what a rollout's shadow phase costs the stable servers that
mirror, what happens when the mirror's target cannot keep up, and how long the phase takes
to reach its verdict on a real local environment.

1. latency: real stable servers of iris:1 (one worker each) — without MODELRAIL_SHADOW,
   mirroring 100 % and mirroring 20 % of their answered requests to a real canary server of
   iris:2 — driven by the load generator (loadgen.py) at the same closed-loop concurrency,
   REST and gRPC, one server measured at a time in interleaved rounds (the order rotated
   each round); medians. Each stable's CPU time per answered request (all its processes,
   psutil) and the mirror's counters are read around every measurement, once its queue has
   drained. Two placements on the 2 cores: `shared` (nobody pinned: the canary competes for
   CPU with stable and the load generator, as on one small machine), and `pinned` (the
   stable servers alone on CPU 0; the load generator and the canary on CPU 1, the canary at
   nice 19 so it only takes what the load generator leaves — closer to production, where
   the canary runs in its own pod).
2. overload: the mirror's target slower than the offered load — a canary made slow by fault
   injection (MODELRAIL_FAULTS latency_ms) behind a 16-deep queue, and a black hole (a
   socket that accepts and never answers) with a short timeout — while stable is driven
   hard; every answer to users must be 200 (asserted, from the load generator and stable's
   own counters), and stable's latency is compared with an unshadowed stable's.
3. verdict: `modelrail env up` + `modelrail rollout start --wait` on a stack whose rollout
   has a shadow phase, with steady client traffic through Traefik: the time from entering
   the Shadowing phase to its verdict, for a candidate that fails (iris:2 on a shifted input
   distribution: sepal features doubled) and one that passes (iris:2, unshifted).

    .venv/bin/python benchmarks/shadow.py [--parts latency,overload,verdict]
        [--placements shared,pinned] [--levels 1,8] [--rounds 3] [--duration 2]

Results: .modelrail/bench/shadow.json and the shadow section of BENCHMARKS.md
(`--report-only` rewrites it from the JSON). Loopback only, bounded in time (~8 min).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from benchmarks.loadgen import Result, http_request, run_grpc, run_http  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402
from modelrail.processes import free_port, server_command, spawn, stop, wait_ready  # noqa: E402
from modelrail.serving._proto import oip_v2_pb2 as pb  # noqa: E402
from modelrail.serving.config import ServingConfig, ShadowSettings  # noqa: E402

GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"
SHIFT = np.array([2.0, 2.0, 1.0, 1.0])  # sepal length and width doubled upstream
OUTCOMES = ("answered", "failed", "dropped", "off")
LOGS = WORK / "logs" / "shadow"


# --- servers -------------------------------------------------------------------------------

@dataclass
class Stable:
    """One serving process under test and how to reach it."""

    name: str
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    shadow: ShadowSettings | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def cpu_seconds(self) -> float:
        """User + system CPU of the server and every process under it."""
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total


def start_server(name: str, model: str, *, shadow: ShadowSettings | None = None,
                 faults: dict[str, Any] | None = None, prefix: tuple[str, ...] = (),
                 ) -> Stable:
    """Spawn one modelrail server (one worker) of `model`, optionally under `prefix`
    (taskset, nice); not waited for."""
    hp, gp = free_port(), free_port()
    env = {"MODELRAIL_MODELS": model, "MODELRAIL_GRPC_PORT": str(gp),
           "MODELRAIL_GRPC_HOST": "127.0.0.1", "MODELRAIL_WORKERS": "1"}
    if shadow is not None:
        env["MODELRAIL_SHADOW"] = shadow.to_env()
    cfg = ServingConfig.from_env(env)
    extra = {"MODELRAIL_FAULTS": json.dumps(faults)} if faults else {}
    cmd = server_command(cfg, http_host="127.0.0.1", http_port=hp, extra_env=extra)
    if prefix:
        cmd = replace(cmd, argv=[*prefix, *cmd.argv])
    LOGS.mkdir(parents=True, exist_ok=True)
    proc = spawn(cmd, log_path=LOGS / f"{name.replace(' ', '-').replace('%', 'pc')}.log")
    return Stable(name=name, proc=proc, http_port=hp, grpc_port=gp, shadow=shadow)


def wait_all(servers: list[Stable]) -> None:
    for s in servers:
        if not wait_ready(s.url, timeout=120, proc=s.proc):
            raise RuntimeError(f"{s.name} did not become ready; see {LOGS}")


@contextlib.contextmanager
def running(servers: list[Stable]) -> Iterator[list[Stable]]:
    try:
        wait_all(servers)
        yield servers
    finally:
        for s in servers:
            stop(s.proc)


@contextlib.contextmanager
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (each held 10 s, then closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.settimeout(0.2)
    done = threading.Event()
    held: list[tuple[float, socket.socket]] = []

    def serve() -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = sock.accept()
                held.append((time.monotonic(), conn))
            while held and time.monotonic() - held[0][0] > 10:
                held.pop(0)[1].close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(sock.getsockname()[1])
    finally:
        done.set()
        thread.join(5)
        for _, conn in held:
            conn.close()
        sock.close()


def pin_self(cpus: set[int]) -> None:
    """Set this process's CPU affinity, every thread (grpc's included)."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)


# --- metrics -------------------------------------------------------------------------------

@dataclass
class Counters:
    """What stable's /metrics says about its traffic and its mirror."""

    requests: float = 0.0  # answered user requests (route split), any outcome
    not_ok: float = 0.0  # of which not 2xx / OK
    mirror: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))
    pairs: float = 0.0
    disagreements: float = 0.0
    queue: float = 0.0

    def minus(self, other: Counters) -> Counters:
        return Counters(requests=self.requests - other.requests,
                        not_ok=self.not_ok - other.not_ok,
                        mirror={k: self.mirror[k] - other.mirror[k] for k in OUTCOMES},
                        pairs=self.pairs - other.pairs,
                        disagreements=self.disagreements - other.disagreements,
                        queue=self.queue)

    @property
    def sampled(self) -> float:
        return sum(self.mirror.values())


def scrape(server: Stable) -> Counters:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    c = Counters()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            lab = s.labels
            if s.name == "modelrail_requests_total" and lab.get("route") != "shadow":
                c.requests += s.value
                if lab.get("outcome") not in ("2xx", "OK"):
                    c.not_ok += s.value
            elif s.name == "modelrail_shadow_requests_total":
                c.mirror[lab["outcome"]] = c.mirror.get(lab["outcome"], 0.0) + s.value
            elif s.name == "modelrail_shadow_pairs_total":
                c.pairs += s.value
            elif s.name == "modelrail_shadow_disagreements_total":
                c.disagreements += s.value
            elif s.name == "modelrail_shadow_queue_depth":
                c.queue += s.value
    return c


def settled(server: Stable, timeout: float = 15.0) -> Counters:
    """Stable's counters once its mirror is idle: queue empty and nothing moving (the
    senders' last requests answered or timed out, every update flushed)."""
    deadline = time.monotonic() + timeout
    last = scrape(server)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = scrape(server)
        if now.queue == 0 and now.mirror == last.mirror and now.requests == last.requests:
            return now
        last = now
    return last


# --- payloads and one measurement ----------------------------------------------------------

def rest_body(row: np.ndarray) -> bytes:
    # no "outputs": every output (label and probabilities), as a client asks by default;
    # the mirror compares labels, so it needs the label in the answer
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                   "shape": list(row.shape),
                                   "data": row.reshape(-1).tolist()}]}).encode()


def grpc_body(row: np.ndarray) -> bytes:
    msg = pb.ModelInferRequest(model_name="iris", model_version="1")
    t = msg.inputs.add(name="input", datatype="FP32", shape=list(row.shape))
    t.contents.fp32_contents.extend(row.reshape(-1).tolist())
    return msg.SerializeToString()


@dataclass
class Cell:
    """One measurement of one server: latency, throughput, CPU and its mirror's work."""

    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float  # stable's CPU per answered request, mirroring included
    requests: float  # answered by stable over the run (warm-up included)
    errors: int
    mirror: dict[str, float]
    pairs: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measure(server: Stable, proto: str, c: int, row: np.ndarray, warmup: float,
            duration: float) -> Cell:
    before = scrape(server)
    cpu0 = server.cpu_seconds()
    res: Result
    if proto == "REST":
        path = "/v2/models/iris/versions/1/infer"
        req = http_request("127.0.0.1", server.http_port, path, rest_body(row))
        res = asyncio.run(run_http("127.0.0.1", server.http_port, req, concurrency=c,
                                   warmup=warmup, duration=duration))
    else:
        res = asyncio.run(run_grpc(f"127.0.0.1:{server.grpc_port}", GRPC_INFER,
                                   grpc_body(row), concurrency=c, warmup=warmup,
                                   duration=duration))
    after = settled(server)
    cpu = server.cpu_seconds() - cpu0
    d = after.minus(before)
    return Cell(rps=res.throughput, p50_ms=res.percentile(0.5) * 1000,
                p99_ms=res.percentile(0.99) * 1000,
                cpu_us=cpu / d.requests * 1e6 if d.requests else float("nan"),
                requests=d.requests, errors=res.errors + int(d.not_ok), mirror=d.mirror,
                pairs=d.pairs)


def median_cells(cells: list[Cell]) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(statistics.median(getattr(c, k) for c in cells))
                           for k in ("rps", "p50_ms", "p99_ms", "cpu_us")}
    # counts are summed over the rounds (what the mirror did with everything offered)
    out["requests"] = sum(c.requests for c in cells)
    out["errors"] = sum(c.errors for c in cells)
    out["mirror"] = {k: sum(c.mirror[k] for c in cells) for k in OUTCOMES}
    out["pairs"] = sum(c.pairs for c in cells)
    return out


def rounds(servers: list[Stable], protos: list[str], levels: list[int], row: np.ndarray,
           n: int, warmup: float, duration: float) -> dict[str, dict[str, dict[str, Any]]]:
    """Interleaved rounds; {proto: {"c=N": {server: medians}}}."""
    cells: dict[tuple[str, int, str], list[Cell]] = {}
    for r in range(n):
        order = servers[r % len(servers):] + servers[:r % len(servers)]
        for proto in protos:
            for c in levels:
                for s in order:
                    cell = measure(s, proto, c, row, warmup, duration)
                    cells.setdefault((proto, c, s.name), []).append(cell)
                    m = cell.mirror
                    print(f"  round {r + 1}/{n} {proto:<4} c={c:<3} {s.name:<26} "
                          f"{cell.rps:7.0f} req/s  p50 {cell.p50_ms:.3f} ms  "
                          f"p99 {cell.p99_ms:.3f} ms  cpu {cell.cpu_us:5.0f} µs/req  mirror "
                          f"ans {m['answered']:.0f} drop {m['dropped']:.0f} "
                          f"fail {m['failed']:.0f}", flush=True)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (proto, c, name), cs in cells.items():
        out.setdefault(proto, {}).setdefault(f"c={c}", {})[name] = median_cells(cs)
    return out


# --- 1. latency with and without shadowing --------------------------------------------------

PLAIN = "stable, no shadow"


def shadowed(percent: float) -> str:
    return f"stable, shadow {percent:g}%"


def latency_part(placement: str, percents: list[float], levels: list[int], row: np.ndarray,
                 args: argparse.Namespace) -> dict[str, Any]:
    stable_prefix: tuple[str, ...] = ()
    canary_prefix: tuple[str, ...] = ()
    if placement == "pinned":
        stable_prefix = ("taskset", "-c", "0")
        canary_prefix = ("taskset", "-c", "1", "nice", "-n", "19")
    print(f"latency, placement {placement}", flush=True)
    canary = start_server(f"canary-{placement}", "iris:2", prefix=canary_prefix)
    try:
        wait_all([canary])
        servers = [start_server(f"{PLAIN} {placement}", "iris:1", prefix=stable_prefix)]
        for p in percents:
            servers.append(start_server(
                f"{shadowed(p)} {placement}", "iris:1", prefix=stable_prefix,
                shadow=ShadowSettings(percent=p, target=canary.url)))
        with running(servers):
            for s in servers:  # measured under their short names
                s.name = s.name.rsplit(" ", 1)[0]
            if placement == "pinned":
                pin_self({1})
            canary_cpu0 = canary.cpu_seconds()
            try:
                by = rounds(servers, ["REST", "gRPC"], levels, row, args.rounds,
                            args.warmup, args.duration)
            finally:
                pin_self(set(range(os.cpu_count() or 1)))
            canary_cpu = canary.cpu_seconds() - canary_cpu0
        shadow = servers[1].shadow
        assert shadow is not None
        return {"placement": placement, "results": by, "canary_cpu_s": canary_cpu,
                "queue": shadow.queue, "concurrency": shadow.concurrency,
                "timeout": shadow.timeout}
    finally:
        stop(canary.proc)


# --- 2. mirror overload ----------------------------------------------------------------------

SLOW_MS = 20.0
OVERLOAD_QUEUE = 16
HOLE_TIMEOUT = 0.25


def overload_part(row: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    print("overload", flush=True)
    c = args.overload_concurrency
    slow = start_server("canary-slow", "iris:2", faults={"iris:2": {"latency_ms": SLOW_MS}})
    try:
        wait_all([slow])
        with black_hole() as hole:
            slow_name = f"shadow 100% → canary +{SLOW_MS:g} ms"
            hole_name = "shadow 100% → black hole"
            servers = [
                start_server(PLAIN, "iris:1"),
                start_server(slow_name, "iris:1", shadow=ShadowSettings(
                    percent=100, target=slow.url, queue=OVERLOAD_QUEUE)),
                start_server(hole_name, "iris:1", shadow=ShadowSettings(
                    percent=100, target=f"http://127.0.0.1:{hole}", queue=OVERLOAD_QUEUE,
                    timeout=HOLE_TIMEOUT)),
            ]
            with running(servers):
                before = {s.name: scrape(s) for s in servers}
                by = rounds(servers, ["REST", "gRPC"], [c], row, args.rounds, args.warmup,
                            args.duration)
                totals = {s.name: settled(s).minus(before[s.name]) for s in servers}
                alive = {s.name: s.proc.poll() is None for s in servers}
    finally:
        stop(slow.proc)
    for name, t in totals.items():
        # the point of the design: the mirror's overload never fails a user's request
        assert t.not_ok == 0, f"{name}: {t.not_ok:.0f} user requests not answered 200/OK"
        assert alive[name], f"{name} died"
    for proto in by.values():
        for cells in proto.values():
            for name, cell in cells.items():
                assert cell["errors"] == 0, f"{name}: {cell['errors']} errors"
    return {"concurrency": c, "slow_ms": SLOW_MS, "queue": OVERLOAD_QUEUE,
            "hole_timeout": HOLE_TIMEOUT, "mirror_concurrency": 4, "results": by,
            "totals": {name: {"requests": t.requests, "not_ok": t.not_ok,
                              "mirror": t.mirror, "pairs": t.pairs}
                       for name, t in totals.items()},
            "names": {"plain": PLAIN, "slow": slow_name, "hole": hole_name}}


# --- 3. time from shadow start to verdict ---------------------------------------------------

ENV = "bench-shadow"


def cli(*args: str, state: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELRAIL_STATE_DIR": str(state)}
    return subprocess.run([sys.executable, "-m", "modelrail", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def write_stack(project: Path, percent: float, min_pairs: int) -> None:
    doc = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())
    values = doc["config"]
    values["modelrail:environment"] = ENV
    values["modelrail:models"] = [{"name": "iris", "version": "1"}]
    values["modelrail:rollout"] = {**values["modelrail:rollout"],
                                   "shadow": {"percent": percent, "minPairs": min_pairs}}
    project.mkdir(parents=True, exist_ok=True)
    (project / f"Pulumi.{ENV}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def bodies(rows: np.ndarray, per: int, n: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """`n` requests of `per` rows drawn at random: a client's inputs in no fixed order. (The
    mirror samples deterministically — every 100/percent-th request — so a client cycling
    through a short fixed list aliases with it: at 20 % and ten bodies in turn it mirrors
    the same two bodies again and again.)"""
    rng = np.random.default_rng(seed)
    return [{"inputs": [{"name": "input", "datatype": "FP32", "shape": [per, 4],
                         "data": rows[rng.integers(0, len(rows), per)].reshape(-1).tolist()}]}
            for _ in range(n)]


def verdict_part(rows: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    print("verdict", flush=True)
    base = WORK / "shadow-env"
    shutil.rmtree(base, ignore_errors=True)
    project = base / "project"
    write_stack(project, args.shadow_percent, args.min_pairs)
    runs: list[dict[str, Any]] = []
    for i in range(args.verdict_runs):  # a fresh environment each: stable is iris:1 again
        state = base / f"state-{i}"
        up = cli("env", "up", ENV, "--project", str(project), state=state)
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            info = json.loads((state / ENV / "env.json").read_text())
            url = f"{info['http']}/v2/models/iris/infer"
            # the failing candidate first: the passing one is promoted, ending the pair
            for label, data in (("shifted (sepal ×2)", rows * SHIFT), ("unshifted", rows)):
                runs.append(verdict_run(label, bodies(data, args.rows_per_request, seed=i),
                                        url, state, args))
                r = runs[-1]
                print(f"  {label:<20} {r['phase']:<11} shadow → verdict "
                      f"{r['shadow_s']:.1f} s, pairs {r['pairs']}, client "
                      f"{r['client_rps']:.0f} req/s, failed {r['client_failed']}", flush=True)
        finally:
            down = cli("env", "down", ENV, state=state)
            if down.returncode != 0:
                print(down.stdout + down.stderr, file=sys.stderr)
    return {"percent": args.shadow_percent, "min_pairs": args.min_pairs,
            "interval": args.interval, "pause": args.pause,
            "rows_per_request": args.rows_per_request, "runs": runs}


def verdict_run(label: str, sent: list[dict[str, Any]], url: str, state: Path,
                args: argparse.Namespace) -> dict[str, Any]:
    from modelrail.rollout.load.client import ClientTraffic

    traffic = ClientTraffic(url, sent[0], bodies=sent, pause=args.pause,
                            max_seconds=240).start()
    t0 = time.monotonic()
    run = cli("rollout", "start", "--env", ENV, "--model", "iris:2", "--wait", "--interval",
              str(args.interval), "--steps", "50,100", "--step-seconds", "5", "-o", "json",
              state=state)
    elapsed = time.monotonic() - t0
    results = traffic.stop()
    try:
        summary = json.loads(run.stdout)
    except ValueError:
        raise RuntimeError(f"rollout start: {run.stdout}{run.stderr}") from None
    hist = cli("rollout", "history", "--env", ENV, "--id", summary["id"], "-o", "json",
               state=state)
    assert hist.returncode == 0, hist.stderr
    return read_run(label, summary, json.loads(hist.stdout), results, traffic, elapsed,
                    run.returncode)


def read_run(label: str, summary: dict[str, Any], audit: list[dict[str, Any]],
             results: Any, traffic: Any, elapsed: float, code: int) -> dict[str, Any]:
    hist = summary["history"]
    entered = next(h for h in hist if h["to"] == "Shadowing")
    left = next((h for h in hist if h["from"] == "Shadowing" and h["to"] != "Shadowing"),
                None)
    measured = [e for e in audit if e["from"] == "Shadowing"
                and (e.get("measurements") or {}).get("shadow") is not None]
    first_pairs = next((e for e in measured if (e["measurements"]["shadow_total"] or {})
                        .get("pairs")), None)
    shadow = summary.get("shadow") or {}
    failed = sum(n for k, n in results.items() if k != 200)
    total = sum(results.values())
    return {
        "case": label, "phase": summary["phase"], "exit_code": code,
        "message": summary["message"][:200],
        "start_to_shadow_s": entered["at"] - summary["started_at"],
        "shadow_s": (left["at"] - entered["at"]) if left else None,
        "first_pairs_s": (first_pairs["at"] - entered["at"]) if first_pairs else None,
        "intervals": len(measured), "verdict_to": left["to"] if left else None,
        "pairs": shadow.get("pairs"), "disagreements": shadow.get("disagreements"),
        "disagreement": shadow.get("disagreement"), "mirrored": shadow.get("mirrored"),
        "dropped": shadow.get("dropped"), "mirror_failed": shadow.get("failed"),
        "start_to_end_s": elapsed, "client_requests": total, "client_failed": failed,
        "client_rps": total / elapsed if elapsed else 0.0,
        "answered_by": dict(traffic.versions),
    }


# --- report ----------------------------------------------------------------------------------

def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}×" if b else "–"


def _latency_table(part: dict[str, Any]) -> list[str]:
    lines = ["| placement | protocol | c | stable | req/s | p50 ms | p99 ms | CPU µs/req "
             "| mirrored: answered / dropped / failed | req/s ÷ plain | p50 ÷ plain "
             "| p99 ÷ plain | CPU ÷ plain |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for proto, by_level in part["results"].items():
        for level, cells in by_level.items():
            plain = cells[PLAIN]
            for name, v in cells.items():
                m = v["mirror"]
                mirrored = ("–" if name == PLAIN else
                            f"{m['answered']:.0f} / {m['dropped']:.0f} / {m['failed']:.0f}")
                ratios = (["–"] * 4 if name == PLAIN else
                          [_ratio(v["rps"], plain["rps"]), _ratio(v["p50_ms"], plain["p50_ms"]),
                           _ratio(v["p99_ms"], plain["p99_ms"]),
                           _ratio(v["cpu_us"], plain["cpu_us"])])
                lines.append(f"| {part['placement']} | {proto} | {level[2:]} | {name} | "
                             f"{v['rps']:.0f} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | "
                             f"{v['cpu_us']:.0f} | {mirrored} | " + " | ".join(ratios) + " |")
    return lines


def write_report(results: dict[str, Any]) -> None:
    lines = ["## Shadow phase (`benchmarks/shadow.py`)", "",
             f"Command: `{results['command']}` ({results['date']}, {results['machine']}, "
             f"{results['seconds']:.0f} s in all). Absolute numbers on a shared 2-core "
             "machine are noisy; read the ratios.", ""]
    lat = results.get("latency") or []
    if lat:
        first = lat[0]
        lines += [
            "**Stable's cost of mirroring.** Stable servers of `iris:1` (one worker each): "
            "one without `MODELRAIL_SHADOW` (\"plain\"), one per mirrored share, each "
            f"mirroring to a real canary server of `iris:2` (queue {first['queue']}, "
            f"{first['concurrency']} senders, timeout {first['timeout']:g} s: the defaults); "
            "one row per request (every output asked for, so the label is there to "
            "compare), closed-loop load generator (`benchmarks/loadgen.py`), "
            f"{results['args']['duration']:g} s per cell after {results['args']['warmup']:g} s "
            f"of warm-up, median of {results['args']['rounds']} interleaved rounds (the "
            "order rotated each round). CPU µs/req: user+system time of all the stable "
            "server's processes over the cell (mirroring after the answer included, the "
            "queue drained) ÷ requests it answered. Mirrored counts are summed over the "
            "rounds, warm-up included. Placement `shared`: nobody pinned — on 2 cores the "
            "canary answering mirrored requests competes for CPU with stable and the load "
            "generator. `pinned`: the stable servers alone on CPU 0 (`taskset -c 0`); load "
            "generator and canary on CPU 1, the canary at `nice -n 19` so it takes only "
            "what the load generator leaves (in production it has a pod of its own); a "
            "canary that cannot keep up shows as drops, as it would in production.", ""]
        for part in lat:
            lines += _latency_table(part)
        lines.append("")
    ov = results.get("overload")
    if ov:
        n = ov["names"]
        lines += [
            f"**Mirror overload.** Stable driven at c={ov['concurrency']} (REST and gRPC, "
            f"same rounds as above) while mirroring 100 % to a target slower than that: the "
            f"canary with `MODELRAIL_FAULTS` latency_ms={ov['slow_ms']:g} "
            f"({ov['mirror_concurrency']} senders: at most "
            f"{ov['mirror_concurrency'] * 1000 / ov['slow_ms']:.0f} mirrored req/s) behind a "
            f"queue of {ov['queue']}, and a black hole (accepts, never answers) with timeout "
            f"{ov['hole_timeout']:g} s. Every user request was answered 200/OK (asserted: "
            "the load generator's errors and stable's own request counters).", "",
            "| stable | user requests answered | not 200/OK | mirrored: answered | dropped "
            "| failed | drop rate (dropped ÷ sampled) |",
            "|---|---|---|---|---|---|---|"]
        for name, t in ov["totals"].items():
            m = t["mirror"]
            sampled = sum(m.values())
            rate = f"{m['dropped'] / sampled:.1%}" if sampled else "–"
            figs = (["–"] * 4 if name == n["plain"] else
                    [f"{m[k]:.0f}" for k in ("answered", "dropped", "failed")] + [rate])
            lines.append(f"| {name} | {t['requests']:.0f} | {t['not_ok']:.0f} | "
                         + " | ".join(figs) + " |")
        lines += ["", "| protocol | stable | req/s | p50 ms | p99 ms | CPU µs/req "
                      "| req/s ÷ plain | p50 ÷ plain | p99 ÷ plain |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for proto, by_level in ov["results"].items():
            for cells in by_level.values():
                plain = cells[n["plain"]]
                for name, v in cells.items():
                    r = (["–"] * 3 if name == n["plain"] else
                         [_ratio(v["rps"], plain["rps"]), _ratio(v["p50_ms"], plain["p50_ms"]),
                          _ratio(v["p99_ms"], plain["p99_ms"])])
                    lines.append(f"| {proto} | {name} | {v['rps']:.0f} | {v['p50_ms']:.3f} | "
                                 f"{v['p99_ms']:.3f} | {v['cpu_us']:.0f} | " + " | ".join(r)
                                 + " |")
        lines.append("")
    vd = results.get("verdict")
    if vd:
        lines += [
            f"**Time to the shadow phase's verdict.** `modelrail env up` (local platform, "
            "processes, Traefik) with the dev stack's rollout policy plus `shadow: {percent: "
            f"{vd['percent']:g}, minPairs: {vd['min_pairs']}}}`, then `modelrail rollout "
            f"start --model iris:2 --wait --interval {vd['interval']:g} --steps 50,100 "
            "--step-seconds 5` (the analysis interval, also the shadow phase's, is "
            f"{vd['interval']:g} s) while one client (`ClientTraffic`, {vd['rows_per_request']} "
            f"rows per request, {vd['pause'] * 1000:.0f} ms between requests) calls through "
            "Traefik. Shadowing → verdict: the status history's timestamps of entering and "
            "leaving the Shadowing phase (the controller turns the route's shadow rule to "
            "the canary on entering; Traefik's file provider applies it 1–2 s later); first "
            "pairs: the first interval whose audit entry had compared answers.", "",
            "| candidate inputs | outcome | start → Shadowing | Shadowing → verdict | first "
            "pairs after | intervals | pairs at verdict | differ | mirrored / dropped / "
            "failed | client req/s | client failed | answered by |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in vd["runs"]:
            def s(v: float | None) -> str:
                return "–" if v is None else f"{v:.1f} s"
            lines.append(
                f"| {r['case']} | {r['phase']} (→ {r['verdict_to']}) | "
                f"{s(r['start_to_shadow_s'])} | {s(r['shadow_s'])} | {s(r['first_pairs_s'])} "
                f"| {r['intervals']} | {r['pairs']} | {r['disagreement']:.1%} | "
                f"{r['mirrored']} / {r['dropped']} / {r['mirror_failed']} | "
                f"{r['client_rps']:.0f} | {r['client_failed']} | "
                + ", ".join(f"v{k}: {v}" for k, v in sorted(r["answered_by"].items())) + " |")
        lines.append("")
    write_section("shadow", "\n".join(lines))


# --- main ------------------------------------------------------------------------------------

def prepare() -> tuple[np.ndarray, np.ndarray]:
    """Register iris:1 and iris:2; one test row (latency) and the held-out rows (verdict)."""
    from modelrail.models.dataset import load_split
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    trained = train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train",
                        ["iris:1", "iris:2"])
    for t in trained:
        register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                       version=t.version, registry=Registry())
    X = load_split(trained[0].data_path).X_test
    return X[:1].astype(np.float32), X


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--parts", default="latency,overload,verdict")
    p.add_argument("--placements", default="shared,pinned")
    p.add_argument("--percents", default="100,20", help="mirrored shares measured")
    p.add_argument("--levels", default="1,8")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--duration", type=float, default=2.0)
    p.add_argument("--overload-concurrency", type=int, default=16)
    p.add_argument("--shadow-percent", type=float, default=20.0,
                   help="verdict: the stack's shadow.percent")
    p.add_argument("--min-pairs", type=int, default=200, help="verdict: shadow.minPairs")
    p.add_argument("--interval", type=float, default=3.0,
                   help="verdict: rollout start --interval (the CLI's default)")
    p.add_argument("--pause", type=float, default=0.01,
                   help="verdict: the client's pause between requests (s)")
    p.add_argument("--rows-per-request", type=int, default=4)
    p.add_argument("--verdict-runs", type=int, default=1)
    p.add_argument("--report-only", action="store_true",
                   help="rewrite BENCHMARKS.md from the last run's shadow.json")
    args = p.parse_args()
    out = WORK / "shadow.json"
    if args.report_only:
        write_report(json.loads(out.read_text()))
        return 0
    started = time.monotonic()
    parts = args.parts.split(",")
    row, rows = prepare()
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "benchmarks/shadow.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "args": vars(args)}
    if "latency" in parts:
        percents = [float(v) for v in args.percents.split(",")]
        levels = [int(v) for v in args.levels.split(",")]
        results["latency"] = [latency_part(pl, percents, levels, row, args)
                              for pl in args.placements.split(",")]
    if "overload" in parts:
        results["overload"] = overload_part(row, args)
    if "verdict" in parts:
        results["verdict"] = verdict_part(rows, args)
    results["seconds"] = time.monotonic() - started
    out.write_text(json.dumps(results, indent=2))
    write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
