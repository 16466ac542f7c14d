"""Locust: OIP v2 gRPC ModelInfer with a custom User (gRPC made gevent-friendly), firing
Locust's request events so results count like HTTP ones. Run only as a subprocess.

Environment: as oip_rest.py; the host is given as grpc://HOST:PORT.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, task

from modelrail.serving._proto import oip_v2_pb2 as pb

grpc_gevent.init_gevent()

MODEL = os.environ["MODELRAIL_LOAD_MODEL"]
VERSION = os.environ.get("MODELRAIL_LOAD_VERSION", "")
WAIT = float(os.environ.get("MODELRAIL_LOAD_WAIT", "0"))  # seconds between a user's requests
with open(os.environ["MODELRAIL_LOAD_ROWS"]) as fh:
    ROWS = json.load(fh)


def _request(row: list[float]) -> bytes:
    msg = pb.ModelInferRequest(model_name=MODEL, model_version=VERSION)
    t = msg.inputs.add(name="input", datatype="FP64", shape=[1, len(row)])
    t.contents.fp64_contents.extend(row)
    return bytes(msg.SerializeToString())


PAYLOADS = [_request(r) for r in ROWS]


class OIPGrpcUser(User):
    wait_time = constant(WAIT)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        target = (self.host or "").removeprefix("grpc://")
        self.channel = grpc.insecure_channel(target)
        self.call = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

    @task
    def infer(self) -> None:
        payload = random.choice(PAYLOADS)
        started = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            length = len(self.call(payload, timeout=10))
        except grpc.RpcError as exc:
            error = exc
        self.environment.events.request.fire(
            request_type="grpc", name="ModelInfer",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length, exception=error, context={})

    def on_stop(self) -> None:
        self.channel.close()
