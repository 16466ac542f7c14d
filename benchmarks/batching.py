"""Adaptive batching study (issue 16): would joining concurrent single-row requests into one
onnxruntime call make modelrail's serving faster, on the example models?

Measured in one process, on the event loop a serving worker runs, so the figures are the
best case batching could ever reach (no HTTP or gRPC cost diluting them):

  - direct: each request runs its own session.run, as `inference.execute` does;
  - batched, next turn: modelrail's own batcher (serving/batching.py, what
    MODELRAIL_BATCHING=adaptive runs): one flush per event loop turn runs everything
    queued as one session.run and hands each request its rows (no waiting window, the
    batch is whatever arrived meanwhile — Triton's dynamic batcher with a zero queue delay);
  - batched, 1 ms window: the same batcher flushed 1 ms after the first row queued
    (BentoML's and Triton's usual setting).
  Calls hold at most 64 of these one-row requests.

Every request's answer from a batch is checked against its own direct answer first. The
report puts the saving per request next to what a request costs modelrail's server (from
the serving benchmark's last run, .modelrail/bench/serving.json, when there is one).

    .venv/bin/python benchmarks/batching.py [--models iris:1,breast-cancer:2,diabetes:2]
        [--levels 8,32] [--requests 20000] [--rounds 3] [--live-levels 1,8,32]
        [--duration 1.5] [--no-report]

Then live (the decision rests on this): two real modelrail servers, MODELRAIL_BATCHING=off
and adaptive, measured side by side on REST and gRPC with one-row requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

import numpy as np  # noqa: E402

from benchmarks.sections import write_section  # noqa: E402
from modelrail.serving.batching import Batcher  # noqa: E402

Run = Callable[[np.ndarray], np.ndarray]


class WindowBatcher(Batcher):
    """modelrail's batcher (serving/batching.py), flushed `window` seconds after the first
    request queued instead of on the loop's next turn."""

    def __init__(self, run: Callable[[np.ndarray], dict[str, np.ndarray]], *,
                 max_elements: int, window: float) -> None:
        super().__init__(run, max_elements=max_elements)
        self.window = window

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(self.window, self.flush)


async def drive(submit: Callable[[np.ndarray], Any], inputs: list[np.ndarray],
                concurrency: int) -> tuple[float, float, list[np.ndarray]]:
    """Run every input through `submit` from `concurrency` clients: CPU seconds, wall
    seconds and the answers."""
    answers: list[np.ndarray] = [np.empty(0)] * len(inputs)
    nxt = iter(range(len(inputs)))

    async def client() -> None:
        for i in nxt:
            answers[i] = await submit(inputs[i])

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.process_time() - cpu, time.perf_counter() - wall, answers


def measure(run: Run, inputs: list[np.ndarray], concurrency: int,
            mode: str) -> tuple[float, float, list[np.ndarray], float]:
    """CPU and wall seconds per request, the answers and the mean batch (requests per
    call). Wall time includes the window a batch waits; CPU time is what the server
    would spend."""

    async def direct(x: np.ndarray) -> np.ndarray:
        out = run(x)
        await asyncio.sleep(0)  # a server yields between requests; so does this
        return out

    calls = 0

    def counted(x: np.ndarray) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        return {"out": run(x)}

    if mode == "direct":
        submit: Callable[[np.ndarray], Any] = direct
    else:
        # modelrail's own batcher; at most 64 of these one-row requests per call
        limit = 64 * inputs[0].size
        batcher = (Batcher(counted, max_elements=limit) if mode == "next turn"
                   else WindowBatcher(counted, max_elements=limit, window=0.001))

        async def submit(x: np.ndarray) -> np.ndarray:
            return (await batcher.submit(x))["out"]

    cpu, wall, answers = asyncio.run(drive(submit, inputs, concurrency))
    mean_batch = len(inputs) / calls if calls else 1.0
    return cpu / len(inputs), wall / len(inputs), answers, mean_batch


def study(ref: str, levels: list[int], n: int, rounds: int) -> dict[str, Any]:
    from benchmarks.serving import prepare_model
    from modelrail.models.runtime import new_session

    model = prepare_model(ref)  # trained and registered as the serving benchmark does
    session = new_session(model.onnx_bytes)
    output = model.output

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run([output], {"input": x})[0])

    rows = model.X_test
    inputs = [rows[i % len(rows)][None, :] for i in range(n)]  # held-out rows, one each
    # the floor: one call per row against one call for 64 rows
    one, many = inputs[0], np.concatenate(inputs[:64])
    per_call = {}
    for label, x in (("1", one), ("64", many)):
        for _ in range(200):
            run(x)
        t = []
        for _ in range(2000):
            t0 = time.perf_counter()
            run(x)
            t.append(time.perf_counter() - t0)
        per_call[label] = statistics.median(t)
    result: dict[str, Any] = {"ref": ref, "estimator": model.estimator,
                              "call_1_us": per_call["1"] * 1e6,
                              "call_64_us": per_call["64"] * 1e6, "levels": {}}
    modes = ["direct", "next turn", "1 ms window"]
    for c in levels:
        figures: dict[str, list[float]] = {m: [] for m in modes}
        walls: dict[str, list[float]] = {m: [] for m in modes}
        batch: dict[str, list[float]] = {m: [] for m in modes}
        for r in range(rounds):
            reference = None
            for m in modes[r % 3:] + modes[:r % 3]:  # rotated order each round
                per_request, wall, answers, mean_batch = measure(run, inputs, c, m)
                figures[m].append(per_request)
                walls[m].append(wall)
                batch[m].append(mean_batch)
                if m == "direct":
                    reference = answers
                elif reference is not None:
                    for a, b in zip(answers, reference, strict=True):
                        if not np.allclose(a, b, rtol=1e-6, atol=1e-7):
                            raise RuntimeError(f"{ref}: a batched answer differs from its own")
        result["levels"][str(c)] = {
            m: {"us_per_request": statistics.median(figures[m]) * 1e6,
                "wall_us_per_request": statistics.median(walls[m]) * 1e6,
                "mean_batch": statistics.median(batch[m])} for m in modes}
    return result


def live(refs: list[str], levels: list[int], rounds: int, duration: float) -> list[dict[str, Any]]:
    """Two real modelrail servers (one worker each), batching off and adaptive, measured
    one at a time in interleaved rounds with the serving benchmark's load generator and
    one-row requests; answers checked against each other first."""
    from benchmarks.serving import (
        Case,
        check_answers,
        measure_once,
        prepare_model,
        start_modelrail,
    )
    from modelrail.processes import stop

    models = [prepare_model(r) for r in refs]
    logs = WORK / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    servers = [start_modelrail(models, 1, logs, {"MODELRAIL_BATCHING": mode}, label=label)
               for mode, label in (("off", "modelrail"), ("adaptive", "modelrail+batching"))]
    out: list[dict[str, Any]] = []
    try:
        for server in servers:
            server.wait()
        for model in models:
            case = Case(model=model, batch=1, levels=levels)
            targets = [t for server in servers for t in server.targets(case)]
            check_answers(case, targets)
            figures: dict[tuple[str, int], list[Any]] = {}
            for r in range(rounds):
                cells = [(t, c) for c in levels for t in targets]
                shift = r * len(cells) // rounds
                for t, c in cells[shift:] + cells[:shift]:
                    figures.setdefault((t.name, c), []).append(
                        measure_once(t, c, 0.4, duration))
            for (name, c), results in figures.items():
                out.append({"model": model.ref, "target": name, "level": c,
                            "rps": statistics.median(x.requests / x.seconds for x in results),
                            "p50_ms": statistics.median(
                                sorted(x.latencies)[len(x.latencies) // 2] * 1000
                                for x in results)})
    finally:
        for server in servers:
            stop(server.proc)
    return out


def serving_cost_us() -> dict[str, float]:
    """µs of server per request (1 worker, REST and gRPC, one row, c=8) from the serving
    benchmark's last full run, per model."""
    path = WORK / "serving.json"
    if not path.exists():
        return {}
    out: dict[str, float] = {}
    for cell in json.loads(path.read_text()).get("cells", []):
        if (cell.get("target") == "modelrail gRPC" and cell.get("workers") == 1
                and cell.get("batch") == 1 and cell.get("level") == 8
                and not cell.get("scaling") and cell.get("rps")):
            out[cell["model"]] = 1e6 / cell["rps"]
    return out


def report(results: list[dict[str, Any]], minutes: float) -> str:
    cost = serving_cost_us()
    lines = ["## Adaptive batching study (`benchmarks/batching.py`)", "",
             f"Command: `.venv/bin/python benchmarks/batching.py` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
             f"{os.cpu_count()} cores, {minutes:.1f} min). In one process on one event loop: "
             "single-row requests from concurrent clients, each answered by its own "
             "session.run (direct, what modelrail does) or joined with the others queued "
             "(modelrail's batcher; next turn: flushed on the loop's next turn; 1 ms window: "
             "flushed 1 ms after the first; at most 64 requests per call). Every batched "
             "answer was checked against the request's own. Median of interleaved rounds.", "",
             "CPU µs per request is what a server would spend; wall µs per request (in "
             "brackets) also counts the time batches wait, which the clients feel.", "",
             "| model | onnxruntime per call: 1 row / 64 rows (per row) | clients | direct "
             "CPU µs/request (wall) | next turn CPU µs/request (wall; rows per call) | "
             "1 ms window CPU µs/request (wall; rows per call) | best CPU saving per "
             "request | modelrail gRPC server µs/request (c=8) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for c, lv in r["levels"].items():
            d, n, w = lv["direct"], lv["next turn"], lv["1 ms window"]
            best = d["us_per_request"] - min(n["us_per_request"], w["us_per_request"])
            server = cost.get(r["ref"])
            lines.append(
                f"| {r['ref']} ({r['estimator']}) | {r['call_1_us']:.1f} µs / "
                f"{r['call_64_us']:.1f} µs ({r['call_64_us'] / 64:.2f} µs) | {c} | "
                f"{d['us_per_request']:.1f} ({d['wall_us_per_request']:.1f}) | "
                f"{n['us_per_request']:.1f} ({n['wall_us_per_request']:.1f}; "
                f"{n['mean_batch']:.1f}) | {w['us_per_request']:.1f} "
                f"({w['wall_us_per_request']:.1f}; {w['mean_batch']:.1f}) | "
                f"{best:.1f} µs | {f'{server:.0f}' if server else '–'} |")
    lines.append("")
    return "\n".join(lines)


def live_report(rows: list[dict[str, Any]], levels: list[int]) -> str:
    by = {(r["model"], r["target"], r["level"]): r for r in rows}
    lines = ["Live, two real modelrail servers (one worker each: `MODELRAIL_BATCHING=off` and "
             "`adaptive`), one-row requests, the serving benchmark's load generator on the "
             "same 2 cores, median of interleaved rounds: adaptive ÷ off. Only REST "
             "requests are batched (gRPC's batches were of one: grpc.aio hands the loop one "
             "call per turn), so the gRPC rows run the same code on both servers: their "
             "spread is this comparison's noise.", "",
             "| model | protocol | " + " | ".join(f"req/s c={c}" for c in levels)
             + " | p50 latency c=1 |", "|---|---|" + "---|" * len(levels) + "---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        for proto in ("REST", "gRPC"):
            off = [by.get((model, f"modelrail {proto}", c)) for c in levels]
            on = [by.get((model, f"modelrail+batching {proto}", c)) for c in levels]
            cells = [f"{b['rps']:.0f} vs {a['rps']:.0f} ({b['rps'] / a['rps']:.2f}×)"
                     if a and b else "–" for a, b in zip(off, on, strict=True)]
            lat = "–"
            if off[0] and on[0] and levels[0] == 1:
                lat = f"{on[0]['p50_ms']:.3f} vs {off[0]['p50_ms']:.3f} ms " \
                      f"({on[0]['p50_ms'] / off[0]['p50_ms']:.2f}×)"
            lines.append(f"| {model} | {proto} | " + " | ".join(cells) + f" | {lat} |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="iris:1,breast-cancer:2,diabetes:2")
    ap.add_argument("--levels", default="8,32")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--live-levels", default="1,8,32",
                    help="concurrency levels of the live A/B ('' to skip it)")
    ap.add_argument("--duration", type=float, default=1.5,
                    help="seconds measured per live cell")
    args = ap.parse_args()
    started = time.perf_counter()
    levels = [int(v) for v in args.levels.split(",")]
    results = [study(ref, levels, args.requests, args.rounds)
               for ref in args.models.split(",")]
    live_levels = [int(v) for v in args.live_levels.split(",")] if args.live_levels else []
    served = live(args.models.split(","), live_levels, args.rounds, args.duration) \
        if live_levels else []
    (WORK / "batching.json").write_text(json.dumps({"inprocess": results, "live": served},
                                                   indent=1))
    section = report(results, (time.perf_counter() - started) / 60)
    if served:
        section += "\n" + live_report(served, live_levels)
    if args.no_report:
        print(section)
    else:
        write_section("batching", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
