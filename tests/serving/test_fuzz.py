"""Fuzzing both protocols of the real server with hypothesis: whatever arrives, the answer
is a success or a client error (never 5xx / INTERNAL / UNKNOWN), and the server stays up.

Bounded: a fixed number of examples per run, loopback only.
"""

from __future__ import annotations

import json
import string
from typing import Any

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelrail.serving._proto import oip_v2_pb2 as pb
from tests.conftest import Server

pytestmark = pytest.mark.slow
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
CLIENT_ERRORS_HTTP = {200, 400, 404, 413}
CLIENT_ERRORS_GRPC = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=True, allow_infinity=True),
                         st.text(string.printable, max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20)
datatypes = st.sampled_from(["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8",
                             "UINT64", "BOOL", "BYTES", "fp32", "", "FLOAT"])
shapes = st.lists(st.integers(-2, 6), min_size=0, max_size=4)
tensors = st.fixed_dictionaries({
    "name": st.sampled_from(["input", "x", "", "label"]),
    "datatype": datatypes, "shape": shapes,
    "data": st.one_of(st.lists(json_scalars, max_size=30),
                      st.lists(st.lists(st.floats(allow_nan=True), max_size=5), max_size=5),
                      json_values)})
bodies = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(tensors, max_size=3)},
                          optional={"outputs": st.lists(st.fixed_dictionaries(
                              {"name": st.sampled_from(["label", "probabilities", "zzz"])}),
                              max_size=3),
                              "id": json_scalars,
                              "parameters": st.dictionaries(st.text(max_size=20), json_scalars,
                                                            max_size=3)}),
    json_values)
paths = st.sampled_from(["iris", "iris/versions/1", "iris/versions/2", "diabetes",
                         "breast-cancer/versions/2", "nosuch", "iris/versions/x"])


@FUZZ
@given(path=paths, body=bodies)
def test_fuzz_rest_json(server: Server, path: str, body: Any) -> None:
    content = json.dumps(body, allow_nan=True).encode()
    r = httpx.post(f"{server.http_url}/v2/models/{path}/infer", content=content, timeout=10)
    assert r.status_code in CLIENT_ERRORS_HTTP, (r.status_code, r.text, content[:300])
    if r.status_code != 200:
        assert r.json()["error"]


@FUZZ
@given(raw=st.binary(max_size=300), header=st.one_of(
    st.none(), st.integers(-5, 400),
    st.text(alphabet=string.ascii_letters + string.digits + "-+. ", max_size=5)))
def test_fuzz_rest_raw_bytes(server: Server, raw: bytes, header: Any) -> None:
    headers = {} if header is None else {"Inference-Header-Content-Length": str(header)}
    r = httpx.post(f"{server.http_url}/v2/models/iris/infer", content=raw, headers=headers,
                   timeout=10)
    assert r.status_code in CLIENT_ERRORS_HTTP, (r.status_code, r.text)


@st.composite
def infer_messages(draw: Any) -> bytes:
    msg = pb.ModelInferRequest(model_name=draw(st.sampled_from(["iris", "diabetes", "x", ""])),
                               model_version=draw(st.sampled_from(["", "1", "2", "9"])))
    for _ in range(draw(st.integers(0, 2))):
        t = msg.inputs.add(name=draw(st.sampled_from(["input", "other", ""])),
                           datatype=draw(datatypes), shape=draw(st.lists(
                               st.integers(-3, 2**40), max_size=4)))
        field = draw(st.sampled_from(["fp32_contents", "fp64_contents", "int64_contents",
                                      "int_contents", "bool_contents", "bytes_contents",
                                      "uint64_contents"]))
        container = getattr(t.contents, field)
        if field == "bool_contents":
            container.extend(draw(st.lists(st.booleans(), max_size=12)))
        elif field == "bytes_contents":
            container.extend(draw(st.lists(st.binary(max_size=4), max_size=4)))
        elif field in ("fp32_contents", "fp64_contents"):
            container.extend(draw(st.lists(st.floats(width=32), max_size=12)))
        elif field == "uint64_contents":
            container.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=12)))
        elif field == "int_contents":
            container.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1), max_size=12)))
        else:
            container.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12)))
    if draw(st.booleans()):
        for _ in range(draw(st.integers(0, 3))):
            msg.raw_input_contents.append(draw(st.binary(max_size=40)))
    for name in draw(st.lists(st.sampled_from(["label", "probabilities", "predictions", "q"]),
                              max_size=2)):
        msg.outputs.add(name=name)
    return msg.SerializeToString()


@pytest.fixture(scope="module")
def channel(server: Server) -> Any:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


@FUZZ
@given(payload=st.one_of(infer_messages(), st.binary(max_size=200)))
def test_fuzz_grpc(server: Server, channel: Any, payload: bytes) -> None:
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        call(payload, timeout=10)
    except grpc.RpcError as err:
        assert err.code().name in CLIENT_ERRORS_GRPC, (err.code(), err.details())


def test_server_survived_the_fuzzing(server: Server) -> None:
    assert server.alive()
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
