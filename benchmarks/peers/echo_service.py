"""Floor: a bare echo on the same stacks as modelrail — a BentoML service with a mounted
Starlette route, and a grpc.aio server started in the worker's on_startup hook — so the
benchmark can show what the HTTP and gRPC layers cost with no inference at all."""

from __future__ import annotations

import os
from typing import Any

import bentoml
import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelrail.serving.http_guard import GuardSettings, install


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


APP = Starlette(routes=[Route("/echo", echo, methods=["POST"])])


async def _echo_rpc(data: bytes, ctx: Any) -> bytes:
    return data


# The same stack settings as services/inference/service.py: the guarded httptools protocol
# (header and body deadlines, connection cap), the same traffic timeout, no BentoML request
# metrics, no per-request access log, no OpenTelemetry span on the hot route; uvloop and
# httptools as installed for modelrail.
install(GuardSettings())


@bentoml.service(name="echo", workers=int(os.environ.get("ECHO_WORKERS", "1")),
                 traffic={"timeout": 30},
                 logging={"access": {"enabled": False}},
                 metrics={"enabled": False},
                 tracing={"excluded_urls": "echo"})
@bentoml.asgi_app(APP, path="/")
class EchoService:
    def __init__(self) -> None:
        self._grpc: Any = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo_rpc)}),))
        server.add_insecure_port(f"127.0.0.1:{os.environ['ECHO_GRPC_PORT']}")
        await server.start()
        self._grpc = server

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=1)
