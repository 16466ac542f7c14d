"""Every kind of bad input, on both protocols, against the real server: a clear 4xx /
gRPC error naming the field and what is accepted, never a 5xx, and the server stays
healthy and keeps answering good requests."""

from __future__ import annotations

import json
import struct
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from modelrail.serving._proto import oip_v2_pb2 as pb
from tests.conftest import Server

pytestmark = pytest.mark.slow

GOOD_ROW = [5.1, 3.5, 1.4, 0.2]


def tensor(data: Any = None, *, shape: Any = (1, 4), datatype: Any = "FP32",
           name: Any = "input") -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape),
            "data": GOOD_ROW if data is None else data}


REST_CASES: list[tuple[str, str, Any, int, str]] = [
    # (case, path, body (dict → JSON, bytes → raw), status, message fragment)
    ("wrong shape", "iris/versions/1", {"inputs": [tensor(shape=(1, 3), data=[1, 2, 3])]},
     400, "shape [1, 3] is not accepted; accepted: [rows, 4]"),
    ("3-D shape", "iris", {"inputs": [tensor(shape=(1, 1, 4))]}, 400, "is not accepted"),
    ("length mismatch", "iris", {"inputs": [tensor(shape=(2, 4))]}, 400,
     "data has 4 elements but shape [2, 4] needs 8"),
    ("unknown datatype", "iris", {"inputs": [tensor(datatype="FLOAT")]}, 400,
     "unknown datatype 'FLOAT'; accepted: FP32"),
    ("unsupported datatype", "iris", {"inputs": [tensor(datatype="BYTES", data=["a"] * 4)]},
     400, "BYTES is not accepted"),
    ("bool datatype", "iris", {"inputs": [tensor(datatype="BOOL", data=[True] * 4)]}, 400,
     "datatype BOOL is not accepted"),
    ("string in FP32", "iris", {"inputs": [tensor(data=[1, "x", 2, 3])]}, 400,
     "data[1] is str"),
    ("float in INT64", "iris", {"inputs": [tensor(datatype="INT64", data=[1, 2.5, 3, 4])]},
     400, "INT64 takes integers"),
    ("int beyond FP32", "iris",
     {"inputs": [tensor(datatype="INT64", data=[1, 2, 3, 2**40])]}, 400,
     "cannot be represented exactly in FP32"),
    ("missing input", "iris", {"inputs": []}, 400, "'inputs' must be a non-empty array"),
    ("no inputs key", "iris", {"input": [tensor()]}, 400, "'inputs' must be"),
    ("extra input", "iris", {"inputs": [tensor(), tensor(name="other")]}, 400,
     "unexpected input 'other'"),
    ("wrong input name", "iris", {"inputs": [tensor(name="x")]}, 400,
     "unexpected input 'x'; the model takes one input 'input'"),
    ("duplicate input", "iris", {"inputs": [tensor(), tensor()]}, 400, "given twice"),
    ("NaN", "iris", b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],'
                    b'"data":[1,NaN,2,3]}]}', 400,
     "row 0, feature 'sepal width (cm)' is nan; NaN and infinity are not accepted"),
    ("infinity", "iris", b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,4],'
                         b'"data":[1,2,Infinity,3]}]}', 400, "is inf"),
    ("FP64 beyond FP32", "iris", {"inputs": [tensor(datatype="FP64", data=[1, 2, 3, 1e300])]},
     400, "beyond FP32's range"),
    ("unknown output", "iris", {"inputs": [tensor()], "outputs": [{"name": "proba"}]}, 400,
     "unknown output 'proba'; available: label, probabilities"),
    ("malformed JSON", "iris", b'{"inputs": [', 400, "not valid JSON"),
    ("not an object", "iris", b"[1, 2, 3]", 400, "must be a JSON object"),
    ("negative dim", "iris", {"inputs": [tensor(shape=(-1, 4))]}, 400, "negative dimension"),
    ("unknown model", "nosuch", {"inputs": [tensor()]}, 404,
     "unknown model 'nosuch'; served models: breast-cancer, diabetes, iris"),
    ("unknown version", "iris/versions/9", {"inputs": [tensor()]}, 404,
     "no version '9'; served versions: 1, 2"),
]


@pytest.mark.parametrize("case,path,body,status,fragment", REST_CASES,
                         ids=[c[0] for c in REST_CASES])
def test_rest_bad_input(server: Server, case: str, path: str, body: Any, status: int,
                        fragment: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server.http_url}/v2/models/{path}/infer", content=content)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_rest_binary_extension_errors(server: Server) -> None:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    url = f"{server.http_url}/v2/models/iris/infer"
    good = struct.pack("<4f", *GOOD_ROW)
    ok = httpx.post(url, content=header + good,
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200, ok.text
    short = httpx.post(url, content=header + good[:12],
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert short.status_code == 400 and "runs past the end" in short.json()["error"]
    extra = httpx.post(url, content=header + good + b"xx",
                       headers={"Inference-Header-Content-Length": str(len(header))})
    assert extra.status_code == 400 and "not claimed" in extra.json()["error"]
    bad_len = httpx.post(url, content=header + good,
                         headers={"Inference-Header-Content-Length": "99999"})
    assert bad_len.status_code == 400 and "Inference-Header-Content-Length" in bad_len.text


def test_rest_payload_over_limit(server: Server) -> None:
    big = b'{"inputs": [' + b" " * (2 * 1024 * 1024) + b"]}"
    r = httpx.post(f"{server.http_url}/v2/models/iris/infer", content=big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks() -> Any:  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield b" " * 65536

    r = httpx.post(f"{server.http_url}/v2/models/iris/infer", content=chunks())
    assert r.status_code == 413


def test_rest_too_many_rows(server: Server) -> None:
    rows = 5001  # the test server allows 5000
    body = {"inputs": [tensor(shape=(rows, 4), data=GOOD_ROW * rows)]}
    r = httpx.post(f"{server.http_url}/v2/models/iris/infer", json=body)
    assert r.status_code == 400 and "5001 rows exceed the limit of 5000" in r.json()["error"]


@pytest.mark.parametrize("body,fragment", [
    ({"records": [{"sepal length (cm)": 1}]}, "missing feature 'sepal width (cm)'"),
    ({"records": [{"nope": 1}]}, "unknown feature 'nope'"),
    ({"records": [dict.fromkeys(["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
                                 "petal width (cm)"], "x")]}, "a number is required"),
    ({"records": []}, "at least one record"),
])
def test_convenience_route_bad_records(server: Server, body: Any, fragment: str) -> None:
    r = httpx.post(f"{server.http_url}/predict/iris/1", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"]
    assert httpx.post(f"{server.http_url}/predict/nosuch", json=body).status_code == 404


def _grpc_call(server: Server, method: str, payload: bytes) -> grpc.RpcError | bytes:
    with grpc.insecure_channel(server.grpc_target) as ch:
        call = ch.unary_unary(f"/inference.GRPCInferenceService/{method}")
        try:
            return bytes(call(payload, timeout=10))
        except grpc.RpcError as err:
            return err


def _infer_msg(*, name: str = "iris", version: str = "1", datatype: str = "FP32",
               shape: tuple[int, ...] = (1, 4), values: list[float] | None = None,
               raw: bytes | None = None, input_name: str = "input",
               outputs: tuple[str, ...] = ()) -> bytes:
    msg = pb.ModelInferRequest(model_name=name, model_version=version)
    t = msg.inputs.add(name=input_name, datatype=datatype, shape=list(shape))
    if raw is not None:
        msg.raw_input_contents.append(raw)
    elif datatype == "FP32":
        t.contents.fp32_contents.extend(GOOD_ROW if values is None else values)
    elif datatype == "FP64":
        t.contents.fp64_contents.extend(GOOD_ROW if values is None else values)
    elif datatype == "INT64":
        t.contents.int64_contents.extend([int(v) for v in (values or GOOD_ROW)])
    for o in outputs:
        msg.outputs.add(name=o)
    return msg.SerializeToString()


GRPC_CASES: list[tuple[str, bytes, str, str]] = [
    ("wrong shape", _infer_msg(shape=(1, 3), values=[1, 2, 3]), "INVALID_ARGUMENT",
     "shape [1, 3] is not accepted"),
    ("length mismatch", _infer_msg(shape=(2, 4)), "INVALID_ARGUMENT",
     "data has 4 elements but shape [2, 4] needs 8"),
    ("raw length mismatch", _infer_msg(raw=b"\x00" * 12), "INVALID_ARGUMENT",
     "raw data has 12 bytes but shape [1, 4] of FP32 needs 16"),
    ("unknown datatype", _infer_msg(datatype="FLOAT32", raw=b"\x00" * 16), "INVALID_ARGUMENT",
     "unknown datatype 'FLOAT32'"),
    ("unsupported datatype", _infer_msg(datatype="BOOL", raw=b"\x01" * 4), "INVALID_ARGUMENT",
     "datatype BOOL is not accepted"),
    ("NaN", _infer_msg(values=[1, float("nan"), 2, 3]), "INVALID_ARGUMENT",
     "NaN and infinity are not accepted"),
    ("inf raw", _infer_msg(raw=struct.pack("<4f", 1, 2, float("inf"), 3)), "INVALID_ARGUMENT",
     "feature 'petal length (cm)' is inf"),
    ("int beyond FP32", _infer_msg(datatype="INT64", values=[1, 2, 3, 2**30]),
     "INVALID_ARGUMENT", "cannot be represented exactly"),
    ("extra input name", _infer_msg(input_name="x"), "INVALID_ARGUMENT", "unexpected input 'x'"),
    ("unknown output", _infer_msg(outputs=("proba",)), "INVALID_ARGUMENT",
     "unknown output 'proba'"),
    ("unknown model", _infer_msg(name="nosuch"), "NOT_FOUND", "unknown model 'nosuch'"),
    ("unknown version", _infer_msg(version="9"), "NOT_FOUND", "no version '9'"),
    ("malformed protobuf", b"\xff\xff\xff\xff\x0f", "INVALID_ARGUMENT",
     "not a valid ModelInferRequest protobuf"),
    ("empty request", b"", "INVALID_ARGUMENT", "model_name is required"),
]


@pytest.mark.parametrize("case,payload,code,fragment", GRPC_CASES,
                         ids=[c[0] for c in GRPC_CASES])
def test_grpc_bad_input(server: Server, case: str, payload: bytes, code: str,
                        fragment: str) -> None:
    result = _grpc_call(server, "ModelInfer", payload)
    assert isinstance(result, grpc.RpcError), f"{case} was accepted"
    assert result.code().name == code, result.details()
    assert fragment in (result.details() or "")


def test_grpc_missing_input_and_mixed_contents(server: Server) -> None:
    msg = pb.ModelInferRequest(model_name="iris", model_version="1")
    result = _grpc_call(server, "ModelInfer", msg.SerializeToString())
    assert isinstance(result, grpc.RpcError) and "at least one tensor" in result.details()
    msg = pb.ModelInferRequest.FromString(_infer_msg())
    msg.raw_input_contents.append(struct.pack("<4f", *GOOD_ROW))
    result = _grpc_call(server, "ModelInfer", msg.SerializeToString())
    assert isinstance(result, grpc.RpcError)
    assert "contents must be empty when raw_input_contents is used" in result.details()


def test_grpc_payload_over_limit(server: Server) -> None:
    rows = 70000  # 1.1 MB of FP32 against a 1 MiB limit
    payload = _infer_msg(shape=(rows, 4), raw=b"\x00" * (rows * 16))
    result = _grpc_call(server, "ModelInfer", payload)
    assert isinstance(result, grpc.RpcError)
    assert result.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_server_healthy_after_bad_input(server: Server) -> None:
    assert server.alive()
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
    client = tgrpc.InferenceServerClient(server.grpc_target)
    inp = tgrpc.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([GOOD_ROW], dtype=np.float32))
    assert client.infer("iris", [inp], model_version="1").as_numpy("label").tolist() == [0]
    with pytest.raises(InferenceServerException, match="not accepted"):
        bad = tgrpc.InferInput("input", [1, 4], "BOOL")
        bad.set_data_from_numpy(np.array([[True] * 4]))
        client.infer("iris", [bad])
