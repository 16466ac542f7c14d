"""OIP v2 over gRPC: `inference.GRPCInferenceService`, run inside every BentoML worker.

Started by the service's on_startup hook on one port shared by all workers
(`grpc.so_reuseport`). Handlers receive raw bytes and parse them here, so a malformed
protobuf is INVALID_ARGUMENT (grpc's own deserializer would report INTERNAL), and every
call — failed ones included, unexpected exceptions too (answered INTERNAL) — is counted
in the metrics under its status code. Outputs come back in the form the request used:
`raw_input_contents` in → `raw_output_contents` out (tritonclient's fast path); typed
`contents` in → typed `contents` out (what KServe's client reads). Besides the six OIP v2
RPCs it serves Triton's `ModelStatistics` and `RepositoryIndex` (statistics.py, rest.py).
With MODELRAIL_SHADOW, answered ModelInfer calls are offered to the worker's mirror
(shadow.py); a mirrored call sent back to the version that mirrored it is refused
FAILED_PRECONDITION, uncounted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message

from modelrail import __version__
from modelrail.serving import metrics, statistics
from modelrail.serving._proto import oip_v2_pb2 as pb
from modelrail.serving.config import Limits
from modelrail.serving.errors import InferenceError, Kind, invalid
from modelrail.serving.inference import (
    InferRequest,
    InferResponse,
    InputTensor,
    RequestedOutput,
    execute,
)
from modelrail.serving.repository import LoadedModel, ModelRepository
from modelrail.serving.rest import (
    EXTENSIONS,
    PLATFORM,
    SERVER_NAME,
    THREAD_DECODE_BYTES,
    observe_phases,
    repository_entries,
)
from modelrail.serving.shadow import SHADOW_FROM_HEADER, SHADOW_HEADER, Mirror, refuse_loop
from modelrail.serving.tensors import (
    check_datatype,
    check_shape,
    from_raw,
    from_typed,
    to_raw,
)

log = logging.getLogger(__name__)

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


# InferTensorContents' packed float fields: the tag byte (field number << 3 | 2, length-
# delimited) and the element width. Their wire form is the little-endian array itself.
_PACKED_FLOATS = {"fp32_contents": (0x32, "<f4"), "fp64_contents": (0x3A, "<f8")}


def _packed_floats(contents: Any, field: str, count: int) -> Any:
    """`contents.<field>` as a numpy array read straight from its wire bytes (about 2 µs
    for 1,920 floats, where converting protobuf's repeated field element by element takes
    about 80), or None unless `field` is the only one set and holds exactly `count`
    values (then the caller converts the field itself)."""
    spec = _PACKED_FLOATS.get(field)
    if spec is None or count < 16:
        return None
    fields = contents.ListFields()
    if len(fields) != 1 or fields[0][0].name != field:
        return None
    wire = contents.SerializeToString()
    tag, dtype = spec
    if wire[0] != tag:
        return None
    length, i, shift = 0, 1, 0
    while i < len(wire) and i < 11:  # a varint of at most 10 bytes
        byte = wire[i]
        length |= (byte & 0x7F) << shift
        i += 1
        shift += 7
        if byte < 0x80:
            break
    width = int(dtype[-1])
    if length != count * width or len(wire) - i != length:
        return None
    return np.frombuffer(wire, dtype=dtype, offset=i)


def decode_infer(msg: Any, limits: Limits) -> InferRequest:
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
        where = f"input {t.name[:64]!r}" if t.name else f"inputs[{i}]"
        if not t.name:
            raise invalid(f"{where}: name is required")
        datatype = check_datatype(t.datatype, where)
        shape = check_shape(t.shape, where, limits)
        if raw:
            if t.HasField("contents"):
                raise invalid(f"{where}: contents must be empty when raw_input_contents is used")
            array = from_raw(raw[i], datatype, shape, where)
        else:
            if datatype in ("FP16", "BYTES"):
                raise invalid(f"{where}: {datatype} must be sent in raw_input_contents"
                              if datatype == "FP16" else f"{where}: BYTES is not accepted")
            field = CONTENTS_FIELD[datatype]
            values = getattr(t.contents, field)
            packed = _packed_floats(t.contents, field, len(values))
            array = from_typed(values if packed is None else packed, datatype, shape, where)
        inputs.append(InputTensor(name=t.name, datatype=datatype, shape=shape, array=array))
    outputs = [RequestedOutput(name=o.name) for o in msg.outputs] or None
    # raw in, raw out; typed in, typed out (binary_output carries the choice)
    return InferRequest(model_name=msg.model_name, model_version=msg.model_version or None,
                        inputs=inputs, outputs=outputs, id=msg.id or None,
                        binary_output=bool(raw))


def encode_infer(resp: InferResponse, *, raw: bool) -> Message:
    out = pb.ModelInferResponse(model_name=resp.model_name,
                                model_version=resp.model_version, id=resp.id or "")
    for o in resp.outputs:
        tensor = out.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        if raw:
            out.raw_output_contents.append(to_raw(o.array, o.datatype))
        else:
            values = o.array.reshape(-1).tolist()
            if o.datatype == "BYTES":
                values = [v if isinstance(v, bytes) else str(v).encode() for v in values]
            getattr(tensor.contents, CONTENTS_FIELD[o.datatype]).extend(values)
    return out


class InferenceServicer:
    """The six OIP v2 RPCs over a ModelRepository; each takes and returns bytes."""

    def __init__(self, repo: ModelRepository, *, limits: Limits,
                 mirror: Mirror | None = None) -> None:
        self.repo = repo
        self.limits = limits
        self.mirror = mirror  # with MODELRAIL_SHADOW: answered calls are offered to it

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

    async def model_infer(self, data: bytes, ctx: Any, labels: dict[str, str] | None = None,
                          route: str = "split") -> Message:
        msg = _parse(pb.ModelInferRequest, data)
        if not msg.model_name:
            raise invalid("model_name is required")
        # resolve first, so a request that fails decoding is counted under its model
        model = self.repo.resolve(msg.model_name, msg.model_version or None)
        if labels is not None:
            labels.update(model=model.name, version=model.version)
        if route == "shadow":  # mirrored here: refused if it came back to its sender
            refuse_loop(version=model.version, sent_from=_metadata(ctx, SHADOW_FROM_HEADER))
        if len(data) > THREAD_DECODE_BYTES:  # a large decode leaves the event loop free
            req = await asyncio.to_thread(decode_infer, msg, self.limits)
        else:
            req = decode_infer(msg, self.limits)
        _, resp = await execute(self.repo, req, max_rows=self.limits.max_rows)
        encode_started = time.perf_counter()
        out = encode_infer(resp, raw=req.binary_output)
        observe_phases(resp, time.perf_counter() - encode_started)
        if self.mirror is not None and route != "shadow":
            self.mirror.offer(model=model.name, version=model.version, task=model.card.task,
                              inputs=req.inputs, outputs=resp.outputs)
        return out

    async def model_statistics(self, data: bytes, ctx: Any) -> Message:
        msg = _parse(pb.ModelStatisticsRequest, data)
        models: list[LoadedModel]
        if not msg.name:
            models = list(self.repo.models.values())
        elif msg.version:
            models = [self.repo.resolve(msg.name, msg.version)]
        else:
            self.repo.resolve(msg.name, None)  # NOT_FOUND for an unknown name
            models = [self.repo.models[(msg.name, v)] for v in self.repo.versions(msg.name)]
        metrics.flush()
        figures = await asyncio.to_thread(statistics.collect, models)
        out = pb.ModelStatisticsResponse()
        for s in figures:
            entry = out.model_stats.add(
                name=s.name, version=s.version, last_inference=s.last_inference_ms,
                inference_count=s.inference_count, execution_count=s.execution_count)
            for stat in statistics.STATS:
                d = s.durations.get(stat, statistics.Duration())
                getattr(entry.inference_stats, stat).CopyFrom(
                    pb.StatisticDuration(count=d.count, ns=d.ns))
        return out

    async def repository_index(self, data: bytes, ctx: Any) -> Message:
        msg = _parse(pb.RepositoryIndexRequest, data)
        if msg.repository_name:
            raise invalid(f"unknown repository {msg.repository_name[:64]!r}; this server has "
                          "one, unnamed (leave repository_name empty)")
        out = pb.RepositoryIndexResponse()
        for entry in repository_entries(self.repo):
            if not msg.ready or entry["state"] == "READY":
                out.models.add(**entry)
        return out


def _route(ctx: grpc.aio.ServicerContext[bytes, bytes]) -> str:
    """"shadow" when the call was mirrored here (shadow.SHADOW_HEADER), "header" when it
    carries the rollout's headerRoute (metrics.header_route), else "split"."""
    header = metrics.header_route()
    route = "split"
    for key, value in ctx.invocation_metadata() or ():
        if key == SHADOW_HEADER:
            return "shadow"
        if header is not None and key == header[0] and value == header[1]:
            route = "header"
    return route


def _metadata(ctx: Any, key: str) -> str | None:
    """The value of one invocation metadata key (the first), or None."""
    for k, value in ctx.invocation_metadata() or ():
        if k == key:
            return str(value)
    return None


def _unary(fn: Callable[..., Awaitable[Message]], *, counted: bool) -> Any:
    async def handler(data: bytes, ctx: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        code = "OK"
        observed = counted
        route = _route(ctx) if counted else "split"
        if counted:
            metrics.request_started("grpc")
        try:
            reply = await (fn(data, ctx, labels, route) if counted else fn(data, ctx))
            return reply.SerializeToString()
        except InferenceError as err:
            code = err.kind.grpc_code
            if err.kind is Kind.SHADOW_LOOP:
                observed = False  # not traffic: uncounted
            await ctx.abort(getattr(grpc.StatusCode, code), err.message)
            raise  # unreachable: abort raises
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            code = "INTERNAL"  # a fault of ours: answered, counted, logged
            log.exception("unexpected error in %s", getattr(fn, "__name__", "rpc"))
            await ctx.abort(grpc.StatusCode.INTERNAL,
                            f"internal error: {type(exc).__name__}: {str(exc)[:200]}")
            raise
        finally:
            if counted:
                metrics.request_finished("grpc")
            if observed:
                metrics.observe_request(model=labels["model"], version=labels["version"],
                                        protocol="grpc", outcome=code,
                                        seconds=time.perf_counter() - started,
                                        route=route)

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
        "ModelStatistics": _unary(servicer.model_statistics, counted=False),
        "RepositoryIndex": _unary(servicer.repository_index, counted=False),
    })


async def start_server(repo: ModelRepository, *, host: str, port: int, limits: Limits,
                       handshake_timeout: float = 10.0,
                       mirror: Mirror | None = None) -> grpc.aio.Server:
    max_message_bytes = limits.max_request_bytes
    server = grpc.aio.server(options=[
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max(max_message_bytes, 64 * 1024 * 1024)),
        # a connection that has not completed the HTTP/2 handshake in time is closed
        ("grpc.server_handshake_timeout_ms", int(handshake_timeout * 1000)),
        # idle connections are closed after a while (clients reconnect transparently)
        ("grpc.max_connection_idle_ms", 5 * 60 * 1000),
    ])
    server.add_generic_rpc_handlers((
        generic_handler(InferenceServicer(repo, limits=limits, mirror=mirror)),
        health_handler(repo)))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    return server

