"""OIP v2 over REST: a Starlette app that BentoML mounts at "/".

Routes (KServe / Triton "V2" REST, plus one convenience route):
  GET  /v2/health/live · /v2/health/ready · /v2
  GET  /v2/models/{name}[/versions/{version}]           model metadata
  GET  /v2/models/{name}[/versions/{version}]/ready
  POST /v2/models/{name}[/versions/{version}]/infer     JSON tensors or binary extension
  POST /predict/{name}[/{version}]                      records with feature names in,
                                                        labels and class probabilities out
  GET  /metrics                                         Prometheus (metrics.py)
Thin: decode → inference.execute → encode. Errors answer {"error": "..."} with 400, 404,
413 or 503; a 500 only ever means a fault of the server or model, never of the input.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelrail import __version__
from modelrail.serving import metrics
from modelrail.serving.errors import InferenceError, Kind, invalid
from modelrail.serving.inference import (
    InferRequest,
    InferResponse,
    InputTensor,
    RequestedOutput,
    execute,
)
from modelrail.serving.repository import LoadedModel, ModelRepository
from modelrail.serving.tensors import (
    check_datatype,
    check_shape,
    from_json,
    from_raw,
    to_json_data,
    to_raw,
)

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "model_repository_metadata", "modelrail_predict_records"]
SERVER_NAME = "modelrail"
PLATFORM = "onnxruntime_onnx"


def error_response(err: InferenceError) -> JSONResponse:
    return JSONResponse({"error": err.message}, status_code=err.kind.http_status)


def create_app(repo: ModelRepository, *, max_request_bytes: int, max_rows: int) -> Starlette:
    """The REST app over a repository (the caller loads the models)."""

    async def live(_: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(_: Request) -> Response:
        if repo.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "errors": repo.errors}, status_code=503)

    async def server_metadata(_: Request) -> Response:
        return JSONResponse({"name": SERVER_NAME, "version": __version__,
                             "extensions": EXTENSIONS})

    def resolve(request: Request) -> LoadedModel:
        return repo.resolve(request.path_params["name"], request.path_params.get("version"))

    async def model_metadata(request: Request) -> Response:
        try:
            return JSONResponse(metadata_of(resolve(request), repo))
        except InferenceError as err:
            return error_response(err)

    async def model_ready(request: Request) -> Response:
        try:
            model = resolve(request)
        except InferenceError as err:
            return error_response(err)
        body = {"name": model.name, "version": model.version, "ready": model.ready}
        return JSONResponse(body, status_code=200 if model.ready else 503)

    async def prometheus(_: Request) -> Response:
        metrics.flush()  # this worker's pending updates, on the loop that records them
        body, content_type = await asyncio.to_thread(metrics.exposition)
        return Response(body, media_type=content_type)

    async def infer(request: Request) -> Response:
        return await _timed(request, _infer)

    async def predict(request: Request) -> Response:
        return await _timed(request, _predict)

    async def _timed(request: Request, handler: Any) -> Response:
        started = time.perf_counter()
        labels = {"model": "", "version": ""}
        metrics.request_started("rest")
        try:
            try:
                response: Response = await handler(request, labels)
            except InferenceError as err:
                response = error_response(err)
        finally:
            metrics.request_finished("rest")
        metrics.observe_request(model=labels["model"], version=labels["version"],
                                protocol="rest",
                                outcome=metrics.http_outcome(response.status_code),
                                seconds=time.perf_counter() - started)
        return response

    async def _infer(request: Request, labels: dict[str, str]) -> Response:
        name = request.path_params["name"]
        model = resolve(request)
        labels.update(model=model.name, version=model.version)
        body = await read_body(request, max_request_bytes)
        req = decode_infer(body, request.headers.get(HEADER_LENGTH), name, model.version)
        _, resp = await execute(repo, req, max_rows=max_rows)
        return encode_infer(resp)

    async def _predict(request: Request, labels: dict[str, str]) -> Response:
        model = resolve(request)
        labels.update(model=model.name, version=model.version)
        body = await read_body(request, max_request_bytes)
        rows = decode_records(body, model)
        req = InferRequest(model_name=model.name, model_version=model.version, inputs=[
            InputTensor(name=model.card.inputs[0].name, datatype="FP64",
                        shape=list(rows.shape), array=rows)])
        _, resp = await execute(repo, req, max_rows=max_rows)
        return JSONResponse(records_response(model, resp))

    model_paths = ["/v2/models/{name}", "/v2/models/{name}/versions/{version}"]
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        *[Route(p, model_metadata, methods=["GET"]) for p in model_paths],
        *[Route(p + "/ready", model_ready, methods=["GET"]) for p in model_paths],
        *[Route(p + "/infer", infer, methods=["POST"]) for p in model_paths],
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/predict/{name}", predict, methods=["POST"]),
        Route("/predict/{name}/{version}", predict, methods=["POST"]),
    ]
    return Starlette(routes=routes)


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


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InferenceError(Kind.TOO_LARGE, f"request body of {declared} bytes exceeds the "
                                             f"limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InferenceError(Kind.TOO_LARGE,
                                 f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _load_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise invalid(f"{where} is not valid JSON: {exc}") from exc


def decode_infer(body: bytes, header_length: str | None, name: str,
                 version: str | None) -> InferRequest:
    """An OIP v2 REST infer request, JSON or binary extension, as an InferRequest."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise invalid(f"Inference-Header-Content-Length {header_length!r} must be an "
                          f"integer from 0 to the body size ({len(body)})")
        split = int(header_length)
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
    inputs = _decode_inputs(raw_inputs, binary)
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


def _decode_inputs(raw_inputs: list[Any], binary: memoryview) -> list[InputTensor]:
    inputs: list[InputTensor] = []
    offset = 0
    for i, t in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(t, dict):
            raise invalid(f"{where} must be an object {{name, datatype, shape, data}}")
        tname = t.get("name")
        if not isinstance(tname, str) or not tname:
            raise invalid(f"{where}.name must be a non-empty string")
        where = f"input {tname!r}"
        datatype = check_datatype(t.get("datatype"), where)
        shape = check_shape(t.get("shape"), where)
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
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(blobs), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def decode_records(body: bytes, model: LoadedModel) -> np.ndarray[Any, np.dtype[np.float64]]:
    """`{"records": [{feature: value, …}, …]}` (or a bare array) as an FP64 row matrix."""
    doc = _load_json(body, "request body")
    records = doc.get("records") if isinstance(doc, dict) else doc
    spec = model.card.inputs[0]
    names = spec.feature_names or [f"x{i}" for i in range(spec.shape[-1])]
    accepted = ", ".join(repr(n) for n in names)
    if not isinstance(records, list) or not records:
        raise invalid("body must be {\"records\": [{feature: number, ...}, ...]} with at "
                      f"least one record; features: {accepted}")
    rows = np.empty((len(records), len(names)), dtype=np.float64)
    index = {n: j for j, n in enumerate(names)}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise invalid(f"records[{i}] must be an object of feature: number")
        unknown = [k for k in rec if k not in index]
        if unknown:
            raise invalid(f"records[{i}]: unknown feature {unknown[0]!r}; features: {accepted}")
        missing = [n for n in names if n not in rec]
        if missing:
            raise invalid(f"records[{i}]: missing feature {missing[0]!r}; features: {accepted}")
        for key, value in rec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise invalid(f"records[{i}][{key!r}] is {value!r}; a number is required")
            if isinstance(value, float) and not math.isfinite(value):
                raise invalid(f"records[{i}][{key!r}] is {value}; NaN and infinity are not "
                              "accepted")
            rows[i, index[key]] = float(value)
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
