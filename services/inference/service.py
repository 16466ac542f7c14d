"""The modelrail inference service: OIP v2 over REST and gRPC, as a BentoML service.

A thin shell over `modelrail.serving`: each BentoML worker loads the configured models
(exact NAME:VERSION from BentoML's model store, sha256-checked, warmed up) in `__init__`,
serves the OIP v2 REST app mounted at "/" and starts the gRPC server on the shared port
in its on_startup hook, with the shadow mirror when MODELRAIL_SHADOW is set (a rollout's
shadow phase: modelrail.serving.shadow). Configuration comes from the environment (see
modelrail.serving.config). Run it with `modelrail serve NAME:VERSION …`, or
`bentoml serve service:InferenceService` with MODELRAIL_MODELS set; package it with
`modelrail bento build` or `bentoml build`.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import bentoml

from modelrail.serving import metrics
from modelrail.serving.config import ServingConfig
from modelrail.serving.faults import parse_faults
from modelrail.serving.grpc_server import start_server
from modelrail.serving.http_guard import GuardSettings, install
from modelrail.serving.lifeline import bind_to_parent
from modelrail.serving.repository import ModelRepository
from modelrail.serving.rest import create_app
from modelrail.serving.shadow import Mirror

log = logging.getLogger("modelrail.service")

bind_to_parent()  # a worker never outlives its instance, however the instance dies
CONFIG = ServingConfig.from_env()
# before BentoML builds the worker's uvicorn config: deadlines and a cap for HTTP clients
install(GuardSettings(header_timeout=CONFIG.header_timeout, body_timeout=CONFIG.body_timeout,
                      max_connections=CONFIG.max_connections))
metrics.set_header_route(CONFIG.header_route)  # its requests are counted route="header"
REPOSITORY = ModelRepository(faults=parse_faults(os.environ.get("MODELRAIL_FAULTS")),
                             batching=CONFIG.batching)
# one per worker (each imports this module); its senders start with the worker's loop
MIRROR = Mirror(CONFIG.shadow) if CONFIG.shadow is not None else None
REST_APP = create_app(REPOSITORY, limits=CONFIG.limits, mirror=MIRROR)


@bentoml.service(
    name="modelrail-inference",
    workers=CONFIG.workers,
    traffic={"timeout": 30},
    logging={"access": {"enabled": CONFIG.access_log}},
    # BentoML's request metrics duplicate modelrail's (served by the REST app at /metrics)
    # and cost a multiprocess write per request.
    metrics={"enabled": False},
    # OpenTelemetry spans on the OIP routes cost more than the inference itself (measured in
    # BENCHMARKS.md); they stay on for BentoML's own routes, and all come back with
    # MODELRAIL_TRACING=1.
    tracing={"excluded_urls": None if CONFIG.tracing else "v2,predict"},
)
@bentoml.asgi_app(REST_APP, path="/")
class InferenceService:
    def __init__(self) -> None:
        if REPOSITORY.faults.faults:
            log.warning("fault injection is ON: %s", sorted(REPOSITORY.faults.faults))
        REPOSITORY.load_all(CONFIG.models)
        for model in REPOSITORY.models.values():
            metrics.set_model_info(model=model.name, version=model.version,
                                   sha256=model.card.sha256, ready=model.ready)
        self._grpc: Any = None
        self._flusher: Any = None

    @bentoml.on_startup
    async def start_grpc(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(metrics.flush_forever())
        if MIRROR is not None:
            MIRROR.start()
        self._grpc = await start_server(
            REPOSITORY, host=CONFIG.grpc_host, port=CONFIG.grpc_port, limits=CONFIG.limits,
            handshake_timeout=CONFIG.header_timeout, mirror=MIRROR)
        log.info("gRPC OIP v2 listening on %s:%d", CONFIG.grpc_host, CONFIG.grpc_port)

    @bentoml.on_shutdown
    async def stop_grpc(self) -> None:
        if self._grpc is not None:
            # stop accepting, let in-flight calls finish within the grace period
            await self._grpc.stop(grace=CONFIG.drain_seconds)
        if MIRROR is not None:  # after the drain (its calls offer samples), before the
            await MIRROR.close()  # last flush, which then counts what it sent
        if self._flusher is not None:
            self._flusher.cancel()

    def __is_ready__(self) -> bool:
        return REPOSITORY.ready
