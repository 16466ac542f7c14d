"""OIP v2 over REST: a Starlette app that BentoML mounts at "/".

Routes (KServe / Triton "V2" REST, plus one convenience route):
  GET  /v2/health/live · /v2/health/ready · /v2
  GET  /v2/models/{name}[/versions/{version}]           model metadata
  GET  /v2/models/{name}[/versions/{version}]/ready
  POST /v2/models/{name}[/versions/{version}]/infer     JSON tensors or binary extension
  POST /predict/{name}[/{version}]                      records with feature names in,
                                                        labels and class probabilities out
  GET  /v2/models[/{name}[/versions/{version}]]/stats   statistics extension (Triton's)
  POST /v2/repository/index                             model repository index (read-only;
                                                        load/unload answer 403)
  GET  /metrics                                         Prometheus (metrics.py)
Thin: decode → inference.execute → encode, then, with MODELRAIL_SHADOW, the answered
request is offered to the shadow mirror (shadow.py: it only enqueues). Every answer that
is not a success is JSON {"error": "..."}: 400, 403, 404, 405, 413, 415 or 503 for what
the client sent or asked (409: a mirrored request sent back to the version that mirrored
it, shadow.py); a 500 only ever means a fault of the server or model, never of the input,
and is counted in the metrics like every other inference outcome (an unexpected exception
included: it is answered here, never left to the ASGI server, so the keep-alive
connection survives).
Request bodies may be gzip or deflate encoded; the size limit applies to the decoded bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelrail import __version__
from modelrail.serving import metrics, statistics
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
from modelrail.serving.shadow import SHADOW_FROM_HEADER, SHADOW_HEADER, Mirror, refuse_loop
from modelrail.serving.tensors import (
    check_datatype,
    check_shape,
    from_json,
    from_raw,
    to_json_data,
    to_raw,
)

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics",
              "modelrail_predict_records"]
SERVER_NAME = "modelrail"
PLATFORM = "onnx_onnxv1"  # the OIP v2 specification's name for an ONNX model
# Above this many body bytes the decode runs in a thread, so the event loop keeps serving.
THREAD_DECODE_BYTES = 64 * 1024
ENCODINGS = ("gzip", "deflate", "identity")


def error_response(err: InferenceError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.kind.http_status)


class GuardMiddleware:
    """The last line: any exception a route lets out is answered 500 JSON here (and
    counted), instead of reaching the ASGI server, which would log a traceback and drop
    the keep-alive connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
            metrics.observe_request(model="", version="", protocol="rest", outcome="5xx",
                                    seconds=0.0)
            if not started:
                response = JSONResponse({"error": f"internal error: {type(exc).__name__}"},
                                        status_code=500)
                await response(scope, receive, send)


async def _unrouted(request: Request) -> Response:
    """The last route: JSON 405 if another route takes the path with another method, else
    JSON 404 (BentoML's mount would otherwise answer an unknown path in plain text)."""
    app = request.scope["app"]
    for route in app.router.routes:
        if route.endpoint is not _unrouted and route.matches(request.scope)[0] == Match.PARTIAL:
            return await _http_error(request, HTTPException(405))
    return await _http_error(request, HTTPException(404))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = (f"no route {request.url.path!r}; OIP v2 routes are under /v2 (see GET /v2 "
                   "for the extensions served)")
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path!r}"
    else:
        message = str(exc.detail)
    return JSONResponse({"error": message}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


class RestApi:
    """The route handlers over one repository (the caller loads the models)."""

    def __init__(self, repo: ModelRepository, limits: Limits,
                 mirror: Mirror | None = None) -> None:
        self.repo = repo
        self.limits = limits
        self.mirror = mirror  # with MODELRAIL_SHADOW: answered requests are offered to it

    async def live(self, _: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, _: Request) -> Response:
        if self.repo.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "errors": self.repo.errors}, status_code=503)

    async def server_metadata(self, _: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__,
                             "extensions": EXTENSIONS})

    def resolve(self, request: Request) -> LoadedModel:
        return self.repo.resolve(request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(self, request: Request) -> Response:
        try:
            return JSONResponse(metadata_of(self.resolve(request), self.repo))
        except InferenceError as err:
            return error_response(err)

    async def model_ready(self, request: Request) -> Response:
        try:
            model = self.resolve(request)
        except InferenceError as err:
            return error_response(err)
        body = {"name": model.name, "version": model.version, "ready": model.ready}
        return JSONResponse(body, status_code=200 if model.ready else 503)

    async def prometheus(self, _: Request) -> Response:
        metrics.flush()  # this worker's pending updates, on the loop that records them
        body, content_type = await asyncio.to_thread(metrics.exposition)
        return Response(body, media_type=content_type)

    async def infer(self, request: Request) -> Response:
        return await self._timed(request, self._infer)

    async def predict(self, request: Request) -> Response:
        return await self._timed(request, self._predict)

    async def _timed(self, request: Request, handler: Any) -> Response:
        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        shadow = SHADOW_HEADER in request.headers  # mirrored here by another server
        metrics.request_started("rest")
        try:
            try:
                response: Response = await handler(request, labels, shadow)
            except InferenceError as err:
                response = error_response(err)
                if err.kind is Kind.SHADOW_LOOP:
                    return response  # not traffic: uncounted
            except Exception as exc:  # a fault of ours: answered, counted, logged
                log.exception("unexpected error on %s", request.url.path)
                response = JSONResponse({"error": f"internal error: {type(exc).__name__}: "
                                                  f"{str(exc)[:200]}"}, status_code=500)
        finally:
            metrics.request_finished("rest")
        header = metrics.header_route()
        metrics.observe_request(model=labels["model"], version=labels["version"],
                                protocol="rest",
                                outcome=metrics.http_outcome(response.status_code),
                                seconds=time.perf_counter() - started,
                                route="shadow" if shadow else
                                "header" if header is not None and
                                request.headers.get(header[0]) == header[1] else "split")
        return response

    def _resolve_inference(self, request: Request, labels: dict[str, str],
                           shadow: bool) -> LoadedModel:
        """The model to answer with (labels set); a mirrored request come back to the
        version that sent it is refused here, before any work."""
        model = self.resolve(request)
        labels.update(model=model.name, version=model.version)
        if shadow:
            refuse_loop(version=model.version,
                        sent_from=request.headers.get(SHADOW_FROM_HEADER))
        return model

    async def _infer(self, request: Request, labels: dict[str, str],
                     shadow: bool) -> Response:
        name = request.path_params["name"]
        model = self._resolve_inference(request, labels, shadow)
        body = await read_body(request, self.limits.max_request_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > THREAD_DECODE_BYTES:
            req = await asyncio.to_thread(decode_infer, body, header_length, name,
                                          model.version, self.limits)
        else:
            req = decode_infer(body, header_length, name, model.version, self.limits)
        _, resp = await execute(self.repo, req, max_rows=self.limits.max_rows,
                                may_batch=True)
        encode_started = time.perf_counter()
        response = encode_infer(resp)
        observe_phases(resp, time.perf_counter() - encode_started)
        if self.mirror is not None and not shadow:
            self.mirror.offer(model=model.name, version=model.version, task=model.card.task,
                              inputs=req.inputs, outputs=resp.outputs)
        return response

    async def _predict(self, request: Request, labels: dict[str, str],
                       shadow: bool) -> Response:
        model = self._resolve_inference(request, labels, shadow)
        body = await read_body(request, self.limits.max_request_bytes)
        if len(body) > THREAD_DECODE_BYTES:
            rows = await asyncio.to_thread(decode_records, body, model, self.limits.max_rows)
        else:
            rows = decode_records(body, model, self.limits.max_rows)
        req = InferRequest(model_name=model.name, model_version=model.version, inputs=[
            InputTensor(name=model.card.inputs[0].name, datatype="FP64",
                        shape=list(rows.shape), array=rows)])
        _, resp = await execute(self.repo, req, max_rows=self.limits.max_rows,
                                may_batch=True)
        encode_started = time.perf_counter()
        response = JSONResponse(records_response(model, resp))
        observe_phases(resp, time.perf_counter() - encode_started)
        if self.mirror is not None and not shadow:
            self.mirror.offer(model=model.name, version=model.version, task=model.card.task,
                              inputs=req.inputs, outputs=resp.outputs)
        return response

    def selected(self, request: Request) -> list[LoadedModel]:
        name = request.path_params.get("name")
        if name is None:
            return list(self.repo.models.values())
        if request.path_params.get("version") is None:
            self.repo.resolve(name, None)  # NOT_FOUND for an unknown name
            return [self.repo.models[(name, v)] for v in self.repo.versions(name)]
        return [self.resolve(request)]

    async def stats(self, request: Request) -> Response:
        try:
            models = self.selected(request)
        except InferenceError as err:
            return error_response(err)
        metrics.flush()
        figures = await asyncio.to_thread(statistics.collect, models)
        return JSONResponse({"model_stats": [s.to_json() for s in figures]})

    async def repository_index(self, request: Request) -> Response:
        try:
            body = await read_body(request, 64 * 1024)
            doc = _load_json(body, "request body") if body.strip() else {}
            if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
                raise invalid('body must be empty or {"ready": true|false}')
        except InferenceError as err:
            return error_response(err)
        return JSONResponse([entry for entry in repository_entries(self.repo)
                             if not doc.get("ready") or entry["state"] == "READY"])

    async def read_only(self, request: Request) -> Response:
        return error_response(InferenceError(
            Kind.READ_ONLY, "the model repository is read-only: the served models are fixed "
                            "when the server starts (MODELRAIL_MODELS); deploy a new version "
                            "with a rollout"))


def create_app(repo: ModelRepository, *, limits: Limits,
               mirror: Mirror | None = None) -> Starlette:
    """The REST app over a repository (the caller loads the models); answered inference
    requests are offered to `mirror` if given (a rollout's shadow phase)."""
    api = RestApi(repo, limits, mirror)
    model_paths = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    routes = [
        # the hot routes first: Starlette tries each route's pattern in turn (a request to
        # the last one paid ~4 % of its CPU matching; a path ending in /infer matches
        # nothing else)
        *[Route(p + "/infer", api.infer, methods=["POST"]) for p in model_paths],
        Route("/v2/health/live", api.live, methods=["GET"]),
        Route("/v2/health/ready", api.ready, methods=["GET"]),
        Route("/v2", api.server_metadata, methods=["GET"]),
        # before /v2/models/{name}, as in Triton: "stats" is the extension, not a model
        Route("/v2/models/stats", api.stats, methods=["GET"]),
        *[Route(p + "/stats", api.stats, methods=["GET"]) for p in model_paths],
        Route("/v2/repository/index", api.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", api.read_only, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", api.read_only, methods=["POST"]),
        *[Route(p, api.model_metadata, methods=["GET"]) for p in model_paths],
        *[Route(p + "/ready", api.model_ready, methods=["GET"]) for p in model_paths],
        Route("/metrics", api.prometheus, methods=["GET"]),
        Route("/predict/{name}", api.predict, methods=["POST"]),
        Route("/predict/{name}/{version}", api.predict, methods=["POST"]),
        # last: JSON errors for every other path and method
        Route("/{path:path}", _unrouted, methods=["GET", "HEAD", "POST", "PUT", "PATCH",
                                                  "DELETE", "OPTIONS"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GuardMiddleware)],
                     exception_handlers={404: _http_error, 405: _http_error})




def observe_phases(resp: InferResponse, output_seconds: float) -> None:
    metrics.observe_inference(model=resp.model_name, version=resp.model_version,
                              rows=resp.rows, input_seconds=resp.input_seconds,
                              infer_seconds=resp.infer_seconds, output_seconds=output_seconds)


def repository_entries(repo: ModelRepository) -> list[dict[str, str]]:
    """The repository index: every configured model version and its state."""
    out = [{"name": m.name, "version": m.version, "state": "READY" if m.ready else "UNAVAILABLE",
            "reason": repo.errors.get(m.card.ref, "")}
           for m in sorted(repo.models.values(), key=lambda m: (m.name, m.version))]
    loaded = {m.card.ref for m in repo.models.values()}
    for ref, reason in sorted(repo.errors.items()):
        if ref not in loaded:  # configured but never loaded
            name, _, version = ref.partition(":")
            out.append({"name": name, "version": version, "state": "UNAVAILABLE",
                        "reason": reason})
    return out


def metadata_of(model: LoadedModel, repo: ModelRepository) -> dict[str, Any]:
    card = model.card
    return {
        "name": card.name,
        "versions": repo.versions(card.name),
        "platform": PLATFORM,
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape}
                   for t in card.inputs],
        "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape}
                    for t in card.outputs],
        "parameters": {"sha256": card.sha256, "version": card.version, "task": card.task,
                       "feature_names": card.inputs[0].feature_names,
                       "class_labels": card.class_labels, "target_names": card.target_names},
    }


def ascii_int(text: str | None) -> int | None:
    """A header's non-negative decimal integer, or None (str.isdigit also takes "²")."""
    if text is None or not text or len(text) > 18 or not (text.isascii() and text.isdigit()):
        return None
    return int(text)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decoded from gzip/deflate, refused (413) past `limit` bytes —
    before and after decoding, so a small compressed bomb cannot grow past it."""
    declared = request.headers.get("content-length")
    if declared is not None and (ascii_int(declared) or 0) > limit:
        raise InferenceError(Kind.TOO_LARGE, f"request body of {declared[:20]} bytes exceeds "
                                             f"the limit of {limit} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise InferenceError(Kind.UNSUPPORTED, f"Content-Encoding {encoding[:40]!r} is not "
                                               f"accepted; accepted: {', '.join(ENCODINGS)}")
    # the ASGI messages read directly (Starlette's request.stream() wraps them in an
    # async generator: ~8 µs of a one-message request)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] != "http.request":  # the client's doing (or its body deadline)
            raise invalid(f"the client disconnected after {size} bytes of the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise InferenceError(Kind.TOO_LARGE,
                                 f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if encoding == "identity":
        return body
    return inflate(body, encoding, limit)


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip or deflate (zlib, or raw as some clients send it) to at most `limit` bytes."""
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    for bits in (wbits, -zlib.MAX_WBITS) if encoding == "deflate" else (wbits,):
        decoder = zlib.decompressobj(bits)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error as exc:
            if bits == wbits and encoding == "deflate":
                continue  # not zlib-wrapped: try raw deflate
            raise invalid(f"request body is not valid {encoding} data: {exc}") from exc
        if len(out) > limit or decoder.unconsumed_tail:
            raise InferenceError(Kind.TOO_LARGE, f"request body exceeds the limit of {limit} "
                                                 f"bytes once decoded from {encoding}")
        if not decoder.eof:
            raise invalid(f"request body is truncated {encoding} data")
        return out
    raise invalid(f"request body is not valid {encoding} data")


def _load_json(raw: bytes, where: str) -> Any:
    """The JSON document in `raw`. orjson parses a tensor of floats about ten times faster
    than json; what it refuses and json takes (NaN and Infinity literals, nesting past 1024
    levels) goes through json, so such a request still gets its precise error later (a NaN
    refused with its row and feature, not "invalid JSON"). One difference stays: orjson
    reads an integer beyond 64 bits as a float, so an integer tensor holding one is refused
    as "takes integers" rather than "out of range"."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers malformed JSON, bad UTF-8 and integers past Python's digit limit
        raise invalid(f"{where} is not valid JSON: {str(exc)[:200]}") from exc


def decode_infer(body: bytes, header_length: str | None, name: str,
                 version: str | None, limits: Limits) -> InferRequest:
    """An OIP v2 REST infer request, JSON or binary extension, as an InferRequest."""
    if header_length is not None:
        split_at = ascii_int(header_length)
        if split_at is None or split_at > len(body):
            raise invalid(f"Inference-Header-Content-Length {header_length[:40]!r} must be an "
                          f"integer from 0 to the body size ({len(body)})")
        split = split_at
        header, binary = body[:split], memoryview(body)[split:]
    else:
        header, binary = body, memoryview(b"")
    doc = _load_json(header, "request body")
    if not isinstance(doc, dict):
        raise invalid("request body must be a JSON object with an 'inputs' array")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise invalid("'inputs' must be a non-empty array of tensors "
                      "({name, datatype, shape, data})")
    inputs = _decode_inputs(raw_inputs, binary, limits)
    req_params = doc.get("parameters") or {}
    if not isinstance(req_params, dict):
        raise invalid("parameters must be an object")
    binary_output = req_params.get("binary_data_output") is True
    outputs: list[RequestedOutput] | None = None
    if doc.get("outputs") is not None:
        raw_outputs = doc["outputs"]
        if not isinstance(raw_outputs, list):
            raise invalid("'outputs' must be an array of {name, parameters}")
        outputs = []
        for j, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise invalid(f"outputs[{j}] must be an object with a string 'name'")
            oparams = o.get("parameters") or {}
            if not isinstance(oparams, dict):
                raise invalid(f"outputs[{j}].parameters must be an object")
            outputs.append(RequestedOutput(
                name=o["name"], binary=oparams.get("binary_data", binary_output) is True))
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise invalid("'id' must be a string")
    return InferRequest(model_name=name, model_version=version, inputs=inputs,
                        outputs=outputs, id=req_id, binary_output=binary_output)


def _decode_inputs(raw_inputs: list[Any], binary: memoryview,
                   limits: Limits) -> list[InputTensor]:
    inputs: list[InputTensor] = []
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise invalid(f"{where} must be an object {{name, datatype, shape, data}}")
        tname = t.get("name")
        if not isinstance(tname, str) or not tname:
            raise invalid(f"{where}.name must be a non-empty string")
        where = f"input {tname[:64]!r}"
        datatype = check_datatype(t.get("datatype"), where)
        shape = check_shape(t.get("shape"), where, limits)
        params = t.get("parameters") or {}
        if not isinstance(params, dict):
            raise invalid(f"{where}: parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in t:
                raise invalid(f"{where}: give either data or parameters.binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise invalid(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise invalid(f"{where}: binary_data_size {size} runs past the end of the "
                              f"binary data ({len(binary) - offset} bytes left)")
            array = from_raw(binary[offset:offset + size], datatype, shape, where)
            offset += size
        elif "data" in t:
            array = from_json(t["data"], datatype, shape, where)
        else:
            raise invalid(f"{where} has no data (give 'data' or parameters.binary_data_size)")
        inputs.append(InputTensor(name=tname, datatype=datatype, shape=shape, array=array))
    if offset != len(binary):
        raise invalid(f"{len(binary) - offset} bytes of binary data are not claimed by any "
                      "input's binary_data_size")
    return inputs


def encode_infer(resp: InferResponse) -> Response:
    doc: dict[str, Any] = {"model_name": resp.model_name, "model_version": resp.model_version}
    if resp.id is not None:
        doc["id"] = resp.id
    blobs: list[bytes] = []
    outs = []
    for o in resp.outputs:
        entry: dict[str, Any] = {"name": o.name, "datatype": o.datatype, "shape": o.shape}
        if o.binary:
            raw = to_raw(o.array, o.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = to_json_data(o.array, o.datatype)
        outs.append(entry)
    doc["outputs"] = outs
    header = orjson.dumps(doc)  # compact, and floats as repr() writes them, like json
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def decode_records(body: bytes, model: LoadedModel,
                   max_rows: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """`{"records": [{feature: value, …}, …]}` (or a bare array) as an FP64 row matrix."""
    doc = _load_json(body, "request body")
    records = doc.get("records") if isinstance(doc, dict) else doc
    spec = model.card.inputs[0]
    names = spec.feature_names or [f"x{i}" for i in range(spec.shape[-1])]
    accepted = ", ".join(repr(n) for n in names)
    if not isinstance(records, list) or not records:
        raise invalid("body must be {\"records\": [{feature: number, ...}, ...]} with at "
                      f"least one record; features: {accepted}")
    if len(records) > max_rows:
        raise invalid(f"{len(records)} records exceed the limit of {max_rows} per request; "
                      "split the request")
    rows = np.empty((len(records), len(names)), dtype=np.float64)
    index = {n: j for j, n in enumerate(names)}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise invalid(f"records[{i}] must be an object of feature: number")
        unknown = [k for k in rec if k not in index]
        if unknown:
            raise invalid(f"records[{i}]: unknown feature {unknown[0][:64]!r}; features: "
                          f"{accepted}")
        missing = [n for n in names if n not in rec]
        if missing:
            raise invalid(f"records[{i}]: missing feature {missing[0]!r}; features: {accepted}")
        for key, value in rec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise invalid(f"records[{i}][{key!r}] is {type(value).__name__}; a number is "
                              "required")
            try:
                number = float(value)
            except OverflowError:
                number = math.inf  # an integer beyond any float: refused below like inf
            if not math.isfinite(number):
                shown = "an integer beyond FP64's range" if isinstance(value, int) else value
                raise invalid(f"records[{i}][{key!r}] is {shown}; NaN and infinity are not "
                              "accepted, and numbers must fit FP32")
            rows[i, index[key]] = number
    return rows


def records_response(model: LoadedModel, resp: InferResponse) -> dict[str, Any]:
    card = model.card
    out = {o.name: o.array for o in resp.outputs}
    predictions: list[dict[str, Any]] = []
    if card.task == "classification":
        labels: list[Any] = list(card.class_labels or [])
        names = card.target_names if card.target_names and len(card.target_names) == len(
            labels) else [str(c) for c in labels]
        for label, proba in zip(out["label"].reshape(-1).tolist(),
                                out["probabilities"].tolist(), strict=True):
            label_value = label.decode() if isinstance(label, bytes) else label
            predictions.append({
                "label": label_value,
                "class_name": names[labels.index(label_value)] if label_value in labels
                else str(label_value),
                "probabilities": {n: float(p) for n, p in zip(names, proba, strict=True)}})
    else:
        predictions = [{"prediction": float(v)} for v in out["predictions"].reshape(-1)]
    return {"model_name": card.name, "model_version": card.version,
            "predictions": predictions}
