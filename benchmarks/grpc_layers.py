"""Where a gRPC ModelInfer call's CPU goes, layer by layer, in live servers. One grpc.aio
server process per layer, each adding one part of modelrail's ModelInfer path to the one
before: a bare echo; parsing the request (a fixed reply); + `decode_infer` (validation into
numpy); onnxruntime alone on the parsed call (no validation); + `execute` (validation, the
run, output shaping, prediction metrics); then modelrail's own server (`start_server`, the
handler exactly as served: + encoding, request metrics, routing, error mapping). Each is
driven by the one load generator (loadgen.py) and its CPU read per thread from /proc: the
event-loop (main) thread, gRPC's C-core threads, and the rest (grpc.aio's completion-queue
poller), with the main thread's context switches. With two or more cores the servers run on
core 1 and the load generator on core 0, so a server's figures are its own. The same echo
and modelrail servers also run with every thread under SCHED_BATCH (no wake-up
preemption) to show what gRPC's thread hand-offs cost.

    .venv/bin/python benchmarks/grpc_layers.py [--model iris:1] [--rows 1]
        [--concurrency 8] [--duration 2] [--rounds 3] [--no-report]

In-process figures for the same code (no sockets) are in the `handler` section; this one
shows what the same work costs between gRPC's own calls. Loopback only; about 2 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "bench"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

from benchmarks.loadgen import run_grpc  # noqa: E402
from benchmarks.sections import write_section  # noqa: E402

# (layer, what it adds) in the order each builds on the one before
LAYERS = [
    ("echo", "grpc.aio alone: the request bytes sent back"),
    ("parse", "+ ModelInferRequest parsed (a fixed reply, serialized once)"),
    ("decode", "+ decode_infer: names, datatype, shape, contents into numpy"),
    ("onnxruntime", "parse + onnxruntime's run on ready rows (no validation)"),
    ("execute", "parse + decode_infer + execute: validation, run, outputs, prediction metrics"),
    ("modelrail", "modelrail's server as served: + encoding, request metrics, routing, errors"),
]
# the same work done twice in one call: what the second costs shows how much of the first
# is warming caches that grpc.aio's own work between calls left cold
TWICE = [("decode", "decode_infer twice on the parsed call"),
         ("onnxruntime", "onnxruntime's run twice")]
BATCH_LAYERS = ("echo", "modelrail")  # measured again with every thread SCHED_BATCH
GRPC_INFER = "/inference.GRPCInferenceService/ModelInfer"


# --- the server side (run as `grpc_layers.py --serve LAYER PORT MODEL ROWS [--batch]`) ----

def serve(layer: str, port: int, ref: str, rows: int, batch: bool) -> None:
    if batch:  # before any thread starts: every thread inherits it
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    import grpc
    import numpy as np

    from modelrail.models.registry import Registry
    from modelrail.serving._proto import oip_v2_pb2 as pb
    from modelrail.serving.config import Limits
    from modelrail.serving.grpc_server import SERVICE, start_server
    from modelrail.serving.repository import ModelRepository

    name, version = ref.split(":")
    card, onnx_bytes = Registry().read_verified(name, version)
    repo = ModelRepository()
    repo.add(card, onnx_bytes)
    limits = Limits()
    model = repo.models[(name, version)]
    x = np.zeros((rows, card.inputs[0].shape[-1]), dtype=np.float32)
    fixed = pb.ModelInferResponse(model_name=name, model_version=version)
    out = fixed.outputs.add(name=card.outputs[-1].name, datatype="FP32", shape=[rows, 1])
    out.contents.fp32_contents.extend([0.5] * rows)

    handlers = layer_handlers(repo, limits, model, x, fixed.SerializeToString())

    async def main() -> None:
        if layer == "modelrail":
            server = await start_server(repo, host="127.0.0.1", port=port, limits=limits)
        else:
            server = grpc.aio.server()
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
                SERVICE, {"ModelInfer": grpc.unary_unary_rpc_method_handler(
                    handlers[layer])}),))
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def layer_handlers(repo: Any, limits: Any, model: Any, x: Any, reply: bytes,
                   ) -> dict[str, Callable[[bytes, Any], Awaitable[bytes]]]:
    """The handler of every layer but modelrail's own server."""
    from modelrail.serving._proto import oip_v2_pb2 as pb
    from modelrail.serving.grpc_server import decode_infer
    from modelrail.serving.inference import execute

    async def echo(data: bytes, ctx: Any) -> bytes:
        return data

    async def parse(data: bytes, ctx: Any) -> bytes:
        pb.ModelInferRequest.FromString(data)
        return reply

    async def decode(data: bytes, ctx: Any) -> bytes:
        decode_infer(pb.ModelInferRequest.FromString(data), limits)
        return reply

    async def onnxruntime(data: bytes, ctx: Any) -> bytes:
        pb.ModelInferRequest.FromString(data)
        model.run(x)
        return reply

    async def decode_twice(data: bytes, ctx: Any) -> bytes:
        msg = pb.ModelInferRequest.FromString(data)
        decode_infer(msg, limits)
        decode_infer(msg, limits)
        return reply

    async def onnxruntime_twice(data: bytes, ctx: Any) -> bytes:
        pb.ModelInferRequest.FromString(data)
        model.run(x)
        model.run(x)
        return reply

    async def execute_(data: bytes, ctx: Any) -> bytes:
        req = decode_infer(pb.ModelInferRequest.FromString(data), limits)
        await execute(repo, req, max_rows=limits.max_rows)
        return reply

    return {
        "echo": echo, "parse": parse, "decode": decode, "onnxruntime": onnxruntime,
        "execute": execute_, "decode twice": decode_twice,
        "onnxruntime twice": onnxruntime_twice}


# --- the driver -----------------------------------------------------------------------------

def thread_figures(pid: int) -> dict[str, list[int]]:
    """Per thread group of `pid`: [CPU ticks, voluntary, involuntary context switches]."""
    out: dict[str, list[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the thread ended meanwhile
            continue
        group = ("main" if tid == str(pid)
                 else "grpc core" if comm.startswith(("event_engine", "grpc")) else "other")
        acc = out.setdefault(group, [0, 0, 0])
        acc[0] += int(stat[11]) + int(stat[12])
        acc[1] += int(status["voluntary_ctxt_switches"])
        acc[2] += int(status["nonvoluntary_ctxt_switches"])
    return out


def measure(pid: int, port: int, payload: bytes, c: int, duration: float,
            ) -> dict[str, float]:
    before = thread_figures(pid)
    res = asyncio.run(run_grpc(f"127.0.0.1:{port}", GRPC_INFER, payload, concurrency=c,
                               warmup=0.5, duration=duration))
    after = thread_figures(pid)
    if res.errors:
        raise RuntimeError(f"{res.errors} errors from the server on port {port}")
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    n = res.completed

    def delta(group: str, i: int) -> float:
        return (after.get(group, [0, 0, 0])[i] - before.get(group, [0, 0, 0])[i]) / n

    groups = ("main", "grpc core", "other")
    return {"rps": res.throughput,
            "cpu_us": sum(delta(g, 0) for g in groups) * tick_us,
            **{f"{g}_us": delta(g, 0) * tick_us for g in groups},
            "main_voluntary": delta("main", 1), "main_involuntary": delta("main", 2),
            "switches": sum(delta(g, 1) + delta(g, 2) for g in groups)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", nargs=4, metavar=("LAYER", "PORT", "MODEL", "ROWS"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--batch", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="iris:1")
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-report", action="store_true",
                    help="print the section only (BENCHMARKS.md is left alone)")
    args = ap.parse_args()
    if args.serve:
        layer, port, ref, rows = args.serve
        serve(layer, int(port), ref, int(rows), args.batch)
        return 0

    from benchmarks.serving import Case, oip_grpc, prepare_model
    from modelrail.processes import free_port, stop

    began = time.perf_counter()
    model = prepare_model(args.model)  # registered where the servers read it
    case = Case(model, args.rows, [args.concurrency])
    payload = oip_grpc(model.name, model.version, "input", case.rows, model.output)
    pinned = (os.cpu_count() or 1) >= 2
    if pinned:
        os.sched_setaffinity(0, {0})
    variants = ([(layer, False) for layer, _ in LAYERS]
                + [(f"{layer} twice", False) for layer, _ in TWICE]
                + [(layer, True) for layer in BATCH_LAYERS])
    servers: dict[tuple[str, bool], tuple[int, subprocess.Popen[bytes]]] = {}
    try:
        for layer, batch in variants:
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", layer, str(port), model.ref,
                 str(args.rows), *(["--batch"] if batch else [])],
                stdout=subprocess.PIPE, start_new_session=True)
            servers[(layer, batch)] = (port, proc)
        for (layer, _), (_, proc) in servers.items():
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"the {layer} server did not start")
            if pinned:
                for tid in os.listdir(f"/proc/{proc.pid}/task"):
                    os.sched_setaffinity(int(tid), {1})
        figures: dict[tuple[str, bool], list[dict[str, float]]] = {v: [] for v in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                port, proc = servers[v]
                # threads started since (gRPC grows its pools) inherit the affinity
                figures[v].append(measure(proc.pid, port, payload, args.concurrency,
                                          args.duration))
                f = figures[v][-1]
                print(f"round {r + 1} {v[0]:<12}{' batch' if v[1] else '      '} "
                      f"{f['rps']:7.0f} req/s  {f['cpu_us']:5.0f} µs CPU/req  main "
                      f"{f['main_us']:5.0f} µs", flush=True)
    finally:
        for _, proc in servers.values():
            stop(proc)
    med = {v: {k: statistics.median(f[k] for f in fs) for k in fs[0]}
           for v, fs in figures.items()}
    report(med, args, model.ref, pinned, time.perf_counter() - began)
    (WORK / "grpc_layers.json").write_text(json.dumps(
        [{"layer": v[0], "sched_batch": v[1], **m} for v, m in med.items()], indent=1))
    return 0


def report(med: dict[tuple[str, bool], dict[str, float]], args: argparse.Namespace,
           ref: str, pinned: bool, seconds: float) -> None:
    lines = ["## gRPC ModelInfer, layer by layer (`benchmarks/grpc_layers.py`)", "",
             f"Command: `.venv/bin/python benchmarks/grpc_layers.py` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{seconds / 60:.1f} min). `{ref}`, {args.rows} row(s) per call, "
             f"c={args.concurrency} on one channel, median of {args.rounds} interleaved rounds "
             f"of {args.duration:g} s"
             + (" (servers on core 1, the load generator on core 0)" if pinned else "")
             + ". CPU is user + system time per answered call, from /proc, per thread group: "
             "the event loop's (main) thread, gRPC's C-core threads, the rest (grpc.aio's "
             "completion-queue poller). Each layer adds one part of modelrail's path to the "
             "one above it; \"added\" is its main-thread CPU over the row above (onnxruntime: over "
             "parse). The \"twice\" rows do one part twice per call: the second's cost, "
             "against the first's, is what cold caches add.", "",
             "| layer | what it runs | req/s | CPU µs/call | main thread µs | added µs | "
             "gRPC core threads µs | other threads µs | main thread preempted /call | "
             "context switches /call |", "|---" * 10 + "|"]
    previous = None
    for layer, what in LAYERS:
        m = med[(layer, False)]
        base = med[("parse", False)] if layer == "onnxruntime" else previous
        added = f"{m['main_us'] - base['main_us']:+.0f}" if base else "–"
        lines.append(f"| {layer} | {what} | {m['rps']:.0f} | {m['cpu_us']:.0f} | "
                     f"{m['main_us']:.0f} | {added} | {m['grpc core_us']:.0f} | "
                     f"{m['other_us']:.0f} | {m['main_involuntary']:.2f} | "
                     f"{m['switches']:.1f} |")
        if layer != "onnxruntime":
            previous = m
    for layer, what in TWICE:
        m, once = med[(f"{layer} twice", False)], med[(layer, False)]
        lines.append(f"| {layer} twice | {what} | {m['rps']:.0f} | {m['cpu_us']:.0f} | "
                     f"{m['main_us']:.0f} | second: {m['main_us'] - once['main_us']:+.0f} | "
                     f"{m['grpc core_us']:.0f} | {m['other_us']:.0f} | "
                     f"{m['main_involuntary']:.2f} | {m['switches']:.1f} |")
    for layer in BATCH_LAYERS:
        m = med[(layer, True)]
        lines.append(f"| {layer}, SCHED_BATCH | the same, no wake-up preemption | "
                     f"{m['rps']:.0f} | {m['cpu_us']:.0f} | {m['main_us']:.0f} | – | "
                     f"{m['grpc core_us']:.0f} | {m['other_us']:.0f} | "
                     f"{m['main_involuntary']:.2f} | {m['switches']:.1f} |")
    lines.append("")
    if args.no_report:
        print("\n".join(lines))
    else:
        write_section("grpc-layers", "\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
