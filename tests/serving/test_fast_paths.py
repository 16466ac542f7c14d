"""The decoders' fast paths (issue 16) take and refuse exactly what the careful paths do.

`from_json` converts the common document (a flat list or a list of rows, of the types the
datatype takes) with numpy and falls back to its element-by-element path for anything
else; gRPC's typed FP32/FP64 contents are read from their wire bytes. Each is compared
here with the path it shortcuts, on generated documents and on hand-picked edge cases,
and the REST JSON reader (orjson, then json) on what the two parsers disagree about.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelrail.serving import grpc_server, rest, tensors
from modelrail.serving._proto import oip_v2_pb2 as pb
from modelrail.serving.config import Limits
from modelrail.serving.errors import InferenceError
from modelrail.serving.inference import InferResponse, OutputTensor

DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "UINT64", "BOOL"]
LEAVES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-300, max_value=300),
    st.booleans(), st.text(max_size=3), st.none())


def outcome(data: Any, datatype: str, shape: list[int]) -> tuple[str, Any]:
    try:
        arr = tensors.from_json(data, datatype, shape, "input 'x'")
    except InferenceError as err:
        return "refused", err.message
    return "taken", (arr.dtype.str, arr.shape, arr.tobytes())


def careful(data: Any, datatype: str, shape: list[int],
            monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    with monkeypatch.context() as m:
        m.setattr(tensors, "_plain_numbers", lambda *a: None)
        return outcome(data, datatype, shape)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.integers(1, 4), cols=st.integers(1, 4), nested=st.booleans(),
       datatype=st.sampled_from(DATATYPES), data=st.data())
def test_json_fast_path_agrees_with_the_careful_path(
        rows: int, cols: int, nested: bool, datatype: str, data: st.DataObject,
        monkeypatch: pytest.MonkeyPatch) -> None:
    leaf = st.sampled_from([LEAVES, st.floats(-1e3, 1e3), st.integers(-100, 100),
                            st.booleans()])
    values = data.draw(st.lists(data.draw(leaf), min_size=rows * cols - 1,
                                max_size=rows * cols + 1))
    doc: Any = values
    if nested and len(values) == rows * cols:
        doc = [values[r * cols:(r + 1) * cols] for r in range(rows)]
    assert outcome(doc, datatype, [rows, cols]) == careful(doc, datatype, [rows, cols],
                                                           monkeypatch)


@pytest.mark.parametrize("doc,datatype", [
    ([[1.0, 2.0], [3.0, 4.0]], "FP32"),          # rows: fast
    ([1, 2.5, 3, 4], "FP64"),                    # ints among floats: taken
    ([[1.0, True], [3.0, 4.0]], "FP32"),         # a boolean is not a number
    ([[1.0, 2.0], 3.0, 4.0], "FP32"),            # ragged
    ([[[1.0, 2.0]], [[3.0, 4.0]]], "FP32"),      # deeper nesting: the careful path
    ([1, 2, 3, 2**63], "INT64"),                 # beyond int64
    ([1, 2, 3, -1], "UINT64"),                   # negative unsigned
    ([1, 2, 3, 128], "INT8"),                    # out of INT8's range
    ([1, 2, 3, 1.5], "INT32"),                   # a float in an integer tensor
    ([1.0, 2.0, 3.0], "FP32"),                   # too few
    ([1.0, 2.0, 3.0, 4.0, 5.0], "FP32"),         # too many
    ([1e39, 0.0, 0.0, 0.0], "FP32"),             # beyond FP32: inf, refused by the model check
    ([True, False, True, True], "BOOL"),
])
def test_json_edge_cases_agree(doc: Any, datatype: str,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    fast = outcome(doc, datatype, [2, 2])
    assert fast == careful(doc, datatype, [2, 2], monkeypatch)


def test_json_rows_are_taken_by_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shortcut is really taken on the common documents (else it buys nothing)."""
    calls: list[Any] = []
    real = tensors._plain_numbers
    monkeypatch.setattr(tensors, "_plain_numbers",
                        lambda *a: calls.append(a) or real(*a))  # type: ignore[func-returns-value]
    for doc in ([[0.5] * 30] * 64, [0.5] * 1920):
        arr = tensors.from_json(doc, "FP32", [64, 30], "x")
        assert arr.shape == (64, 30) and arr.dtype == np.float32
    assert len(calls) == 2 and all(real(*a) is not None for a in calls)


def test_request_reader_keeps_jsons_verdicts() -> None:
    """orjson refuses NaN literals, which json takes: the reader falls back, so a NaN is
    refused later with its row and feature, not as bad JSON. (An integer past 64 bits
    orjson reads as a float: refused for an integer tensor all the same.)"""
    limits = Limits()
    nan = b'{"inputs":[{"name":"input","datatype":"FP64","shape":[1,2],"data":[1,NaN]}]}'
    req = rest.decode_infer(nan, None, "m", None, limits)
    assert np.isnan(req.inputs[0].array[0, 1])
    big = (b'{"inputs":[{"name":"input","datatype":"INT64","shape":[1,2],'
           b'"data":[1,' + str(2**70).encode() + b']}]}')
    with pytest.raises(InferenceError, match=r"data\[1\] .*INT64"):
        rest.decode_infer(big, None, "m", None, limits)
    with pytest.raises(InferenceError, match="request body is not valid JSON"):
        rest.decode_infer(b'{"inputs": [', None, "m", None, limits)


def test_response_encoding_matches_json() -> None:
    resp = InferResponse(model_name="m", model_version="1", id="r1", outputs=[
        OutputTensor(name="p", datatype="FP32", shape=[2, 2],
                          array=np.array([[0.1, 0.9], [1 / 3, 2 / 3]], dtype=np.float32)),
        OutputTensor(name="label", datatype="INT64", shape=[2],
                          array=np.array([1, 0], dtype=np.int64))])
    body = rest.encode_infer(resp).body
    assert json.loads(body) == {
        "model_name": "m", "model_version": "1", "id": "r1", "outputs": [
            {"name": "p", "datatype": "FP32", "shape": [2, 2],
             "data": np.array([0.1, 0.9, 1 / 3, 2 / 3], dtype=np.float32).tolist()},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [1, 0]}]}
    assert b" " not in body  # compact, as before


def contents_of(datatype: str, values: list[float]) -> Any:
    t = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                               shape=[len(values) // 4, 4])
    getattr(t.contents, grpc_server.CONTENTS_FIELD[datatype]).extend(values)
    return t


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
@pytest.mark.parametrize("count", [4, 16, 64 * 4, 300 * 4])
def test_grpc_packed_floats_read_the_wire_exactly(datatype: str, count: int) -> None:
    values = np.random.default_rng(count).normal(size=count).astype(
        np.float32 if datatype == "FP32" else np.float64).tolist()
    t = contents_of(datatype, values)
    field = grpc_server.CONTENTS_FIELD[datatype]
    packed = grpc_server._packed_floats(t.contents, field, count)
    expected = np.asarray(getattr(t.contents, field),
                          dtype=np.float32 if datatype == "FP32" else np.float64)
    if count < 16:
        assert packed is None  # small tensors: the field itself is cheap
    else:
        assert packed is not None and packed.tobytes() == expected.tobytes()


def test_grpc_packed_floats_decline_anything_unusual() -> None:
    t = contents_of("FP32", [0.5] * 64)
    assert grpc_server._packed_floats(t.contents, "fp32_contents", 63) is None  # count
    t.contents.int_contents.append(1)  # a second field set: the field is read itself
    assert grpc_server._packed_floats(t.contents, "fp32_contents", 64) is None
    assert grpc_server._packed_floats(t.contents, "int_contents", 1) is None


def test_grpc_typed_request_decodes_alike_either_way(monkeypatch: pytest.MonkeyPatch) -> None:
    msg = pb.ModelInferRequest(model_name="m")
    msg.inputs.append(contents_of("FP32", np.linspace(-1, 1, 256).tolist()))
    fast = grpc_server.decode_infer(msg, Limits()).inputs[0].array
    monkeypatch.setattr(grpc_server, "_packed_floats", lambda *a: None)
    slow = grpc_server.decode_infer(msg, Limits()).inputs[0].array
    assert fast.dtype == slow.dtype and fast.shape == slow.shape == (64, 4)
    assert fast.tobytes() == slow.tobytes()
