"""Drives a modelrail server with KServe's own Python SDK (`kserve` from PyPI), exactly as
its documentation shows, and prints what the SDK got back as JSON on stdout.

Runs in a virtual environment of its own (tests/serving/test_stock_clients.py creates it
under .modelrail/clients/venvs/kserve with the pinned uv), never in modelrail's: KServe's
pins must not bend ours, and its generated `inference.*` protobuf messages would clash
with tritonclient's in one process.

    kserve_driver.py < request.json > result.json

request.json: {"http_url": "http://127.0.0.1:PORT", "grpc_target": "127.0.0.1:PORT",
               "cases": [{"model": "iris", "version": "1", "rows": [[...], ...]}]}

For every case the result holds, per mode, each output's datatype, shape, the SDK's
typed `.data` list and `.as_numpy()`:
- grpc_typed: `InferenceGRPCClient.infer`, inputs set with
  `set_data_from_numpy(x, binary_data=False)`, i.e. typed `contents` on the wire; plus the
  wire-level answer read with KServe's generated stub (`raw_output_contents` count and
  which typed `contents` came back);
- grpc_raw: the same with `binary_data=True` (`raw_input_contents`);
- rest_json / rest_binary: `InferenceRESTClient` with `RESTConfig(protocol="v2")` on the
  model name alone (the SDK's v2 URL has no version: the server's default version
  answers), JSON tensors or the binary tensor extension.
Errors are reported, not raised, as {"error": "..."} in the mode's place.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import sys
import traceback
from typing import Any

import grpc
import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.grpc import grpc_predict_v2_pb2 as kpb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as kpb_grpc


def _outputs(response: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for o in response.outputs:
        data = o.data
        if isinstance(data, np.ndarray):
            data = data.tolist()
        try:
            as_numpy: Any = o.as_numpy().tolist()
        except Exception as exc:  # reported, the test decides
            as_numpy = {"error": f"{type(exc).__name__}: {exc}"}
        out[o.name] = {"datatype": o.datatype, "shape": list(o.shape),
                       "data": list(data) if data is not None else None,
                       "as_numpy": as_numpy}
    return out


def _request(case: dict[str, Any], *, binary: bool, version: bool) -> InferRequest:
    x = np.asarray(case["rows"], dtype=np.float32)
    inp = InferInput(name="input", shape=list(x.shape), datatype="FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=case["model"], infer_inputs=[inp],
                        model_version=case["version"] if version else None)


async def _guard(coro: Any) -> Any:
    try:
        return await coro
    except Exception as exc:
        detail = exc.details() if isinstance(exc, grpc.RpcError) else str(exc)
        return {"error": f"{type(exc).__name__}: {detail}",
                "trace": traceback.format_exc(limit=3)}


async def _grpc(grpc_target: str, case: dict[str, Any], *, binary: bool) -> Any:
    client = InferenceGRPCClient(url=grpc_target, timeout=30, retries=0)
    try:
        res = await client.infer(_request(case, binary=binary, version=True))
        return {"model_name": res.model_name, "model_version": res.model_version,
                "outputs": _outputs(res)}
    finally:
        await client.close()


async def _grpc_wire(grpc_target: str, case: dict[str, Any]) -> Any:
    """The typed request as the SDK builds it, answered through KServe's generated stub:
    what the server put on the wire."""
    request = _request(case, binary=False, version=True).to_grpc()
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = kpb_grpc.GRPCInferenceServiceStub(channel)
        res: kpb.ModelInferResponse = await stub.ModelInfer(request, timeout=30)
    contents = {}
    for o in res.outputs:
        filled = [f.name for f, _ in o.contents.ListFields()]
        contents[o.name] = filled
    return {"raw_output_contents": len(res.raw_output_contents), "contents": contents,
            "request_used_raw": len(request.raw_input_contents) > 0}


async def _rest(http_url: str, case: dict[str, Any], *, binary: bool) -> Any:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        res = await client.infer(http_url, _request(case, binary=binary, version=False),
                                 model_name=case["model"])
        return {"model_name": res.model_name, "outputs": _outputs(res)}
    finally:
        await client.close()


async def _health(http_url: str, grpc_target: str, model: str) -> dict[str, Any]:
    g = InferenceGRPCClient(url=grpc_target, timeout=30, retries=0)
    r = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    try:
        return {
            "grpc_server_ready": await _guard(g.is_server_ready()),
            "grpc_server_live": await _guard(g.is_server_live()),
            "grpc_model_ready": await _guard(g.is_model_ready(model)),
            "rest_server_ready": await _guard(r.is_server_ready(http_url)),
            "rest_server_live": await _guard(r.is_server_live(http_url)),
            "rest_model_ready": await _guard(r.is_model_ready(http_url, model)),
        }
    finally:
        await g.close()
        await r.close()


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    http_url, grpc_target = spec["http_url"], spec["grpc_target"]
    results: list[dict[str, Any]] = []
    for case in spec["cases"]:
        results.append({
            "model": case["model"], "version": case["version"],
            "grpc_typed": await _guard(_grpc(grpc_target, case, binary=False)),
            "grpc_typed_wire": await _guard(_grpc_wire(grpc_target, case)),
            "grpc_raw": await _guard(_grpc(grpc_target, case, binary=True)),
            "rest_json": await _guard(_rest(http_url, case, binary=False)),
            "rest_binary": await _guard(_rest(http_url, case, binary=True)),
        })
    health = await _health(http_url, grpc_target, spec["cases"][0]["model"])
    return {"kserve_version": importlib.metadata.version("kserve"), "health": health,
            "cases": results}


def main() -> int:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(spec))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
