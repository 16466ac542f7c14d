"""OIP v2 over gRPC: `inference.GRPCInferenceService`, run inside every BentoML worker.

Started by the service's on_startup hook on one port shared by all workers
(`grpc.so_reuseport`). Handlers receive raw bytes and parse them here, so a malformed
protobuf is INVALID_ARGUMENT (grpc's own deserializer would report INTERNAL), and every
call — failed ones included — is counted in the metrics under its status code. Outputs
are always returned in `raw_output_contents`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from modelrail import __version__
from modelrail.serving import metrics
from modelrail.serving._proto import oip_v2_pb2 as pb
from modelrail.serving.errors import InferenceError, invalid
from modelrail.serving.inference import InferRequest, InputTensor, RequestedOutput, execute
from modelrail.serving.repository import ModelRepository
from modelrail.serving.rest import EXTENSIONS, PLATFORM, SERVER_NAME
from modelrail.serving.tensors import (
    check_datatype,
    check_shape,
    from_json,
    from_raw,
    to_raw,
)

SERVICE = "inference.GRPCInferenceService"
# Which InferTensorContents field carries each datatype (OIP v2 specification).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}


def _parse(message_type: type[Message], data: bytes) -> Any:
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        raise invalid(f"request is not a valid {message_type.__name__} protobuf: {exc}") from exc
    return msg


def decode_infer(msg: Any) -> InferRequest:
    if not msg.model_name:
        raise invalid("model_name is required")
    if not msg.inputs:
        raise invalid("inputs must hold at least one tensor")
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(msg.inputs)} "
                      "inputs; give one per input, in order")
    inputs = []
    for i, t in enumerate(msg.inputs):
        where = f"input {t.name!r}" if t.name else f"inputs[{i}]"
        if not t.name:
            raise invalid(f"{where}: name is required")
        datatype = check_datatype(t.datatype, where)
        shape = check_shape(list(t.shape), where)
        if raw:
            if t.HasField("contents"):
                raise invalid(f"{where}: contents must be empty when raw_input_contents is used")
            array = from_raw(raw[i], datatype, shape, where)
        else:
            if datatype in ("FP16", "BYTES"):
                raise invalid(f"{where}: {datatype} must be sent in raw_input_contents"
                              if datatype == "FP16" else f"{where}: BYTES is not accepted")
            values = list(getattr(t.contents, CONTENTS_FIELD[datatype]))
            if datatype.startswith(("FP",)):
                values = [float(v) for v in values]
            array = from_json(values, datatype, shape, where)
        inputs.append(InputTensor(name=t.name, datatype=datatype, shape=shape, array=array))
    outputs = [RequestedOutput(name=o.name) for o in msg.outputs] or None
    return InferRequest(model_name=msg.model_name, model_version=msg.model_version or None,
                        inputs=inputs, outputs=outputs, id=msg.id or None)


class InferenceServicer:
    """The six OIP v2 RPCs over a ModelRepository; each takes and returns bytes."""

    def __init__(self, repo: ModelRepository, *, max_rows: int) -> None:
        self.repo = repo
        self.max_rows = max_rows

    async def server_live(self, data: bytes, ctx: Any) -> Message:
        _parse(pb.ServerLiveRequest, data)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, data: bytes, ctx: Any) -> Message:
        _parse(pb.ServerReadyRequest, data)
        return pb.ServerReadyResponse(ready=self.repo.ready)

    async def model_ready(self, data: bytes, ctx: Any) -> Message:
        msg = _parse(pb.ModelReadyRequest, data)
        model = self.repo.resolve(msg.name, msg.version or None)
        return pb.ModelReadyResponse(ready=model.ready)

    async def server_metadata(self, data: bytes, ctx: Any) -> Message:
        _parse(pb.ServerMetadataRequest, data)
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__,
                                         extensions=EXTENSIONS)

    async def model_metadata(self, data: bytes, ctx: Any) -> Message:
        msg = _parse(pb.ModelMetadataRequest, data)
        card = self.repo.resolve(msg.name, msg.version or None).card
        tm = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=card.name, versions=self.repo.versions(card.name), platform=PLATFORM,
            inputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape) for t in card.inputs],
            outputs=[tm(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in card.outputs])

    async def model_infer(self, data: bytes, ctx: Any,
                          labels: dict[str, str] | None = None) -> Message:
        msg = _parse(pb.ModelInferRequest, data)
        if not msg.model_name:
            raise invalid("model_name is required")
        # resolve first, so a request that fails decoding is counted under its model
        model = self.repo.resolve(msg.model_name, msg.model_version or None)
        if labels is not None:
            labels.update(model=model.name, version=model.version)
        req = decode_infer(msg)
        _, resp = await execute(self.repo, req, max_rows=self.max_rows)
        out = pb.ModelInferResponse(model_name=resp.model_name,
                                    model_version=resp.model_version, id=resp.id or "")
        for o in resp.outputs:
            out.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
            out.raw_output_contents.append(to_raw(o.array, o.datatype))
        return out


def _unary(fn: Callable[..., Awaitable[Message]], *, counted: bool) -> Any:
    async def handler(data: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        code = "OK"
        if counted:
            metrics.request_started("grpc")
        try:
            reply = await (fn(data, ctx, labels) if counted else fn(data, ctx))
            return reply.SerializeToString()
        except InferenceError as err:
            code = err.kind.grpc_code
            await ctx.abort(getattr(grpc.StatusCode, code), err.message)
            raise  # unreachable: abort raises
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = "INTERNAL"
            await ctx.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc}")
            raise
        finally:
            if counted:
                metrics.request_finished("grpc")
                metrics.observe_request(model=labels["model"], version=labels["version"],
                                        protocol="grpc", outcome=code,
                                        seconds=time.perf_counter() - started)

    return grpc.unary_unary_rpc_method_handler(handler)


HEALTH_SERVICE = "grpc.health.v1.Health"
# grpc.health.v1.HealthCheckResponse{status: SERVING (1) | NOT_SERVING (2)}, encoded by hand:
# field 1, varint. The standard health protocol that Kubernetes gRPC probes and proxies
# (Traefik's gRPC health checks on the local platform) call.
_SERVING, _NOT_SERVING = b"\x08\x01", b"\x08\x02"


def health_handler(repo: ModelRepository) -> grpc.GenericRpcHandler:
    async def check(data: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return _SERVING if repo.ready else _NOT_SERVING

    return grpc.method_handlers_generic_handler(
        HEALTH_SERVICE, {"Check": grpc.unary_unary_rpc_method_handler(check)})


def generic_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerLive": _unary(servicer.server_live, counted=False),
        "ServerReady": _unary(servicer.server_ready, counted=False),
        "ModelReady": _unary(servicer.model_ready, counted=False),
        "ServerMetadata": _unary(servicer.server_metadata, counted=False),
        "ModelMetadata": _unary(servicer.model_metadata, counted=False),
        "ModelInfer": _unary(servicer.model_infer, counted=True),
    })


async def start_server(repo: ModelRepository, *, host: str, port: int, max_rows: int,
                       max_message_bytes: int) -> grpc.aio.Server:
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
    ])
    server.add_generic_rpc_handlers((
        generic_handler(InferenceServicer(repo, max_rows=max_rows)), health_handler(repo)))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    return server

