"""modelrail's own cost per request, in process: the REST app and the gRPC handler called
directly (no sockets, no load generator, no other process sharing the cores), beside a
bare echo on the same frameworks. The serving benchmark measures whole servers; this one
isolates what modelrail's code adds to each request, so a change to the hot path can be
measured in microseconds rather than read through the noise of a loaded 2-core machine.

    .venv/bin/python benchmarks/handler.py [--cases iris:1x1,breast-cancer:2x64,diabetes:2x64]
        [--requests 5000] [--rounds 5] [--json PATH] [--no-report]

To measure an older revision's code with this script: check it out into a worktree and run
with PYTHONPATH=<worktree>/src (modules are imported from there first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from benchmarks.sections import write_section  # noqa: E402
from benchmarks.serving import Case, oip_grpc, oip_json, prepare_model  # noqa: E402

Call = Callable[[], Awaitable[None]]


async def _echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


ECHO_APP = Starlette(routes=[Route("/echo", _echo, methods=["POST"])])


def asgi_call(app: Any, path: str, body: bytes) -> Call:
    """One POST through an ASGI app; the answer must be 200."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    first = {"type": "http.request", "body": body, "more_body": False}

    async def call() -> None:
        given = False
        status = 0

        async def receive() -> dict[str, Any]:
            nonlocal given
            if given:
                return {"type": "http.disconnect"}
            given = True
            return first

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")

    return call


class _Context:
    """What the gRPC handler reads of a grpc.aio ServicerContext."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"aborted {code}: {details}")


def grpc_call(handler: Any, payload: bytes) -> Call:
    ctx = _Context()

    async def call() -> None:
        await handler(payload, ctx)

    return call


async def per_request(call: Call, n: int) -> float:
    for _ in range(min(300, n)):
        await call()
    started = time.perf_counter()
    for _ in range(n):
        await call()
    return (time.perf_counter() - started) / n


def measure(spec: str, n: int, rounds: int) -> dict[str, Any]:
    from modelrail.serving.config import Limits
    from modelrail.serving.grpc_server import InferenceServicer, generic_handler
    from modelrail.serving.repository import ModelRepository
    from modelrail.serving.rest import create_app

    ref, _, rows = spec.partition("x")
    model = prepare_model(ref)
    case = Case(model=model, batch=int(rows or 1), levels=[1])
    from modelrail.models.registry import Registry

    card, onnx_bytes = Registry().read_verified(model.name, model.version)
    repo = ModelRepository()
    repo.add(card, onnx_bytes)
    limits = Limits()
    body = oip_json("input", case.rows, model.output)
    payload = oip_grpc(model.name, model.version, "input", case.rows, model.output)
    infer = generic_handler(InferenceServicer(repo, limits=limits)).service(
        _Details("/inference.GRPCInferenceService/ModelInfer")).unary_unary
    calls = {
        "echo REST app": asgi_call(ECHO_APP, "/echo", body),
        "modelrail REST app": asgi_call(create_app(repo, limits=limits),
                                        f"/v2/models/{model.name}/versions/{model.version}"
                                        "/infer", body),
        "modelrail gRPC handler": grpc_call(infer, payload),
    }
    session = repo.models[(model.name, model.version)]
    figures: dict[str, list[float]] = {k: [] for k in calls}

    async def run_all() -> None:
        for r in range(rounds):
            names = list(calls)
            for name in names[r % len(names):] + names[:r % len(names)]:
                figures[name].append(await per_request(calls[name], n))

    asyncio.run(run_all())
    x = case.rows
    for _ in range(300):
        session.run(x)
    started = time.perf_counter()
    for _ in range(n):
        session.run(x)
    run_us = (time.perf_counter() - started) / n * 1e6
    return {"case": f"{ref} ×{case.batch}", "request_bytes": {"rest": len(body),
                                                             "grpc": len(payload)},
            "onnxruntime_us": run_us,
            "us": {k: statistics.median(v) * 1e6 for k, v in figures.items()}}


class _Details:
    """grpc.HandlerCallDetails for looking a method up in a generic handler."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="iris:1x1,breast-cancer:2x64,diabetes:2x64")
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-report", action="store_true",
                    help="print the table only (BENCHMARKS.md is left alone)")
    args = ap.parse_args()
    import modelrail

    started = time.perf_counter()
    results = [measure(c, args.requests, args.rounds) for c in args.cases.split(",")]
    source = Path(modelrail.__file__).parent
    lines = ["## modelrail's own cost per request (`benchmarks/handler.py`)", "",
             f"Command: `.venv/bin/python benchmarks/handler.py` "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{(time.perf_counter() - started) / 60:.1f} min; modelrail from "
             f"`{source.relative_to(ROOT) if source.is_relative_to(ROOT) else source}`). "
             "In one process, no sockets: the REST app (Starlette, as BentoML mounts it) "
             "and the gRPC ModelInfer handler called directly with the serving benchmark's "
             "payloads, beside an echo route on the same framework; median µs per request "
             f"over {args.rounds} interleaved rounds of {args.requests}.", "",
             "| case | onnxruntime alone | echo REST app | modelrail REST app | "
             "modelrail REST − echo | modelrail gRPC handler |", "|---|---|---|---|---|---|"]
    for r in results:
        us = r["us"]
        lines.append(
            f"| {r['case']} | {r['onnxruntime_us']:.1f} | {us['echo REST app']:.1f} | "
            f"{us['modelrail REST app']:.1f} | "
            f"{us['modelrail REST app'] - us['echo REST app']:.1f} | "
            f"{us['modelrail gRPC handler']:.1f} |")
    lines.append("")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.no_report:
        print("\n".join(lines))
    else:
        write_section("handler", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
