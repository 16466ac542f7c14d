"""Hostile clients against a real server (loopback, bounded): each class of attack that
once stalled, crashed or fooled a server, on both protocols.

- bounded work: shapes that used to cost seconds to minutes of CPU are refused at once and
  good requests on the same (single) worker are not held up;
- client input never ends in a 5xx / INTERNAL, and the keep-alive connection survives;
- every server error is counted (a crashing model: REST 500 and gRPC INTERNAL both appear
  in /metrics and in the rollout's ScrapeProvider);
- slow and surplus clients are disconnected (header and body deadlines, connection cap);
- interoperability details: JSON errors on every route, gzip/deflate bodies with the limit
  on the decoded size, typed-in typed-out gRPC, duplicate outputs refused, read-only
  repository, statistics that count.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from modelrail.rollout.metrics.scrape import ScrapeProvider
from modelrail.rollout.ports import MetricTrack
from modelrail.serving._proto import oip_v2_pb2 as pb
from tests.conftest import Example, Server, start_server

pytestmark = pytest.mark.slow

GOOD = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
MAX_CONNECTIONS = 150


@pytest.fixture(scope="module")
def hostile_server(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
                   ) -> Iterator[Server]:
    """One worker (so an attack and the good requests share it), short client deadlines,
    a connection cap, and diabetes:1 wired to crash (a bug, not a refusal)."""
    from modelrail.processes import stop

    srv = start_server(["iris:1", "diabetes:1"], tmp_path_factory.mktemp("hostile"),
                       workers=1, max_request_bytes=8 * 1024 * 1024, extra_env={
                           "MODELRAIL_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                           "MODELRAIL_BODY_TIMEOUT": str(BODY_TIMEOUT),
                           "MODELRAIL_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
                           "MODELRAIL_FAULTS": json.dumps({"diabetes:1": {"crash_rate": 1.0}}),
                       })
    yield srv
    stop(srv.proc)


def _conn(server: Server) -> http.client.HTTPConnection:
    host, port = server.http_url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes,
          headers: dict[str, Any] | None = None) -> tuple[int, Any]:
    conn.putrequest("POST", path)
    for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                 **(headers or {})}.items():
        conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else None


def _metric(server: Server, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def _good_grpc(server: Server) -> float:
    """Seconds for one good gRPC ModelInfer (answer checked)."""
    msg = pb.ModelInferRequest(model_name="iris", model_version="1")
    t = msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    started = time.perf_counter()
    with grpc.insecure_channel(server.grpc_target) as ch:
        reply = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            msg.SerializeToString(), timeout=30)
    elapsed = time.perf_counter() - started
    assert pb.ModelInferResponse.FromString(reply).outputs[0].name == "label"
    return elapsed


# --- bounded work per request ------------------------------------------------------------

def test_huge_shape_is_refused_without_stalling_the_worker(hostile_server: Server) -> None:
    """A million-dimension shape (2.9 MB) used to hold the worker 9.7 s; now it is refused
    from its length alone, and good requests sent meanwhile are answered."""
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                   "shape": [2] * 1_000_000, "data": [1.0]}]}).encode()
    results: list[tuple[int, Any]] = []

    def attack() -> None:
        conn = _conn(hostile_server)
        for _ in range(3):
            results.append(_post(conn, "/v2/models/iris/infer", body))

    attacker = threading.Thread(target=attack)
    attacker.start()
    worst = max(_good_grpc(hostile_server) for _ in range(20))
    attacker.join(60)
    assert [s for s, _ in results] == [400, 400, 400]
    assert "MODELRAIL_MAX_DIMS" in results[0][1]["error"]
    # before the fix the good requests waited 9.5 s behind each hostile one
    assert worst < 3.0, f"a good request waited {worst:.2f} s during the attack"


@pytest.mark.parametrize("shape,fragment", [
    ([0, 9223372036854775807], "MODELRAIL_MAX_ELEMENTS"),
    ([1] * 66, "66 dimensions"),
    ([2] * 100_000, "MODELRAIL_MAX_DIMS"),
    ([65536, 65536, 65536], "more than"),
    ([-3, 4], "negative"),
])
def test_grpc_hostile_shapes_are_invalid_argument(hostile_server: Server, shape: list[int],
                                                  fragment: str) -> None:
    msg = pb.ModelInferRequest(model_name="iris")
    msg.inputs.add(name="input", datatype="FP32", shape=shape)
    msg.raw_input_contents.append(b"\0" * 16)
    with grpc.insecure_channel(hostile_server.grpc_target) as ch, \
            pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            msg.SerializeToString(), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (info.value.details() or "")


# --- client input never ends in a 5xx; the connection survives ---------------------------

def _tensor(shape: Any, data: str = "[5.1,3.5,1.4,0.2]") -> bytes:
    return (b'{"inputs":[{"name":"input","datatype":"FP32","shape":' + json.dumps(shape).encode()
            + b',"data":' + data.encode() + b"}]}")


REST_500_CASES: list[tuple[str, str, bytes, dict[str, Any]]] = [
    ("shape 2**63", "/v2/models/iris/infer", _tensor([0, 9223372036854775808], "[]"), {}),
    ("66 dimensions", "/v2/models/iris/infer", _tensor([1] * 66), {}),
    ("5000-digit integer", "/v2/models/iris/infer",
     _tensor([1, 4], "[1" + "0" * 5000 + ",1,1,1]"), {}),
    ("integer beyond FP32", "/v2/models/iris/infer",
     _tensor([1, 4], "[1" + "0" * 400 + ",1,1,1]"), {}),
    ("record value 10**400", "/predict/iris",
     b'{"records":[{"sepal length (cm)":1' + b"0" * 400 + b',"sepal width (cm)":1,'
     b'"petal length (cm)":1,"petal width (cm)":1}]}', {}),
    ("non-ASCII header length", "/v2/models/iris/infer", json.dumps(GOOD).encode(),
     {"Inference-Header-Content-Length": "\u00b2".encode("latin-1")}),
    ("shape of floats", "/v2/models/iris/infer", _tensor([1.0, 4.0]), {}),
    ("deep nesting", "/v2/models/iris/infer", _tensor([1, 4], "[" * 10000 + "]" * 10000), {}),
    ("huge output list", "/v2/models/iris/infer",
     json.dumps({**GOOD, "outputs": [{"name": "x" * 100}] * 20000}).encode(), {}),
]


@pytest.mark.parametrize("case,path,body,headers", REST_500_CASES,
                         ids=[c[0] for c in REST_500_CASES])
def test_rest_hostile_input_is_a_4xx_and_keeps_the_connection(
        hostile_server: Server, case: str, path: str, body: bytes,
        headers: dict[str, Any]) -> None:
    conn = _conn(hostile_server)
    status, doc = _post(conn, path, body, headers)
    assert 400 <= status < 500, (status, doc)
    assert isinstance(doc["error"], str) and doc["error"]
    # the same keep-alive connection answers the next request (a 500 used to drop it)
    status, doc = _post(conn, "/v2/models/iris/infer", json.dumps(GOOD).encode())
    assert status == 200, doc
    conn.close()


# --- every server error is counted -------------------------------------------------------

def test_server_errors_are_answered_and_counted_on_both_protocols(
        hostile_server: Server) -> None:
    scrape = ScrapeProvider()
    canary = MetricTrack("diabetes", "1", (hostile_server.http_url,))
    scrape.sample(track=canary, window_seconds=1)  # baseline
    rest_before = _metric(hostile_server, "modelrail_requests_total", model="diabetes",
                          protocol="rest", outcome="5xx")
    conn = _conn(hostile_server)
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 10],
                                   "data": [0.0] * 10}]}).encode()
    for _ in range(3):
        status, doc = _post(conn, "/v2/models/diabetes/infer", body)
        assert status == 500 and "RuntimeError" in doc["error"]
    status, _ = _post(conn, "/v2/models/iris/infer", json.dumps(GOOD).encode())
    assert status == 200  # the connection outlived the 500s
    msg = pb.ModelInferRequest(model_name="diabetes")
    t = msg.inputs.add(name="input", datatype="FP32", shape=[1, 10])
    t.contents.fp32_contents.extend([0.0] * 10)
    with grpc.insecure_channel(hostile_server.grpc_target) as ch:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    msg.SerializeToString(), timeout=30)
            assert info.value.code() == grpc.StatusCode.INTERNAL
    time.sleep(0.3)  # one metrics flush interval
    assert _metric(hostile_server, "modelrail_requests_total", model="diabetes",
                   protocol="rest", outcome="5xx") == rest_before + 3
    assert _metric(hostile_server, "modelrail_requests_total", model="diabetes",
                   protocol="grpc", outcome="INTERNAL") >= 2
    sample = scrape.sample(track=canary, window_seconds=1)
    assert sample is not None and sample.errors == 5 and sample.requests == 5


# --- slow and surplus clients ------------------------------------------------------------

def _closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What the server sent before closing, or None if still open at the deadline."""
    sock.settimeout(max(0.05, deadline - time.monotonic()))
    data = b""
    try:
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                return data
            data += chunk
    except (TimeoutError, BlockingIOError):
        return None
    except ConnectionResetError:
        return data


def test_half_open_http_connections_are_closed(hostile_server: Server) -> None:
    host, port = hostile_server.http_url.removeprefix("http://").split(":")
    body_sock = socket.create_connection((host, int(port)), timeout=5)
    body_sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Length: 100\r\n\r\n{\"inputs\"")
    socks = []
    for _ in range(200):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
        socks.append(s)
    try:
        # good requests still get through while the slow clients sit there (after the
        # surplus was turned away)
        assert httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer", json=GOOD,
                          timeout=30).status_code in (200, 503)
        deadline = time.monotonic() + HEADER_TIMEOUT + 5
        replies = [_closed(s, deadline) for s in socks]
        still_open = sum(r is None for r in replies)
        assert still_open == 0, f"{still_open} of 200 half-open connections still open"
        assert sum(b"408" in (r or b"") for r in replies) >= 1
        turned_away = sum(b"503" in (r or b"") for r in replies)
        assert turned_away >= 200 - MAX_CONNECTIONS
        body_reply = _closed(body_sock, time.monotonic() + BODY_TIMEOUT + 5)
        assert body_reply is not None and b"408" in body_reply
    finally:
        for s in [*socks, body_sock]:
            s.close()
    time.sleep(0.3)
    assert _metric(hostile_server, "modelrail_connections_closed_total",
                   reason="header_timeout") >= 1
    assert _metric(hostile_server, "modelrail_connections_closed_total",
                   reason="body_timeout") >= 1
    assert _metric(hostile_server, "modelrail_connections_closed_total",
                   reason="over_limit") >= 200 - MAX_CONNECTIONS
    assert httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer", json=GOOD,
                      timeout=30).status_code == 200


def test_half_open_grpc_connections_are_closed(hostile_server: Server) -> None:
    host, port = hostile_server.grpc_target.split(":")
    socks = []
    for _ in range(100):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"PRI * HTTP/2.0\r\n")  # half of the HTTP/2 connection preface
        socks.append(s)
    try:
        assert _good_grpc(hostile_server) < 30
        deadline = time.monotonic() + HEADER_TIMEOUT + 8
        still_open = sum(_closed(s, deadline) is None for s in socks)
        assert still_open == 0, f"{still_open} of 100 half-open gRPC connections still open"
    finally:
        for s in socks:
            s.close()


# --- interoperability --------------------------------------------------------------------

def test_every_error_is_json(hostile_server: Server) -> None:
    url = hostile_server.http_url
    r = httpx.get(f"{url}/no/such/route")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = httpx.post(f"{url}/v2/models/iris/versions/1/nope")
    assert r.status_code == 404 and "no route" in r.json()["error"]
    r = httpx.get(f"{url}/v2/models/iris/infer")
    assert r.status_code == 405 and "GET" in r.json()["error"]
    r = httpx.post(f"{url}/v2/repository/models/iris/load")
    assert r.status_code == 403 and "read-only" in r.json()["error"]


def test_metadata_platform_is_the_specs(hostile_server: Server) -> None:
    assert httpx.get(f"{hostile_server.http_url}/v2/models/iris").json()["platform"] == \
        "onnx_onnxv1"
    with grpc.insecure_channel(hostile_server.grpc_target) as ch:
        reply = ch.unary_unary("/inference.GRPCInferenceService/ModelMetadata")(
            pb.ModelMetadataRequest(name="iris").SerializeToString(), timeout=10)
    assert pb.ModelMetadataResponse.FromString(reply).platform == "onnx_onnxv1"


def test_duplicate_outputs_are_refused(hostile_server: Server) -> None:
    body = {**GOOD, "outputs": [{"name": "label"}, {"name": "label"}]}
    r = httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer", json=body)
    assert r.status_code == 400 and "requested twice" in r.json()["error"]
    msg = pb.ModelInferRequest(model_name="iris")
    t = msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend([5.1, 3.5, 1.4, 0.2])
    msg.outputs.add(name="label")
    msg.outputs.add(name="label")
    with grpc.insecure_channel(hostile_server.grpc_target) as ch, \
            pytest.raises(grpc.RpcError) as info:
        ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
            msg.SerializeToString(), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send it
])
def test_compressed_bodies_are_accepted(hostile_server: Server, encoding: str,
                                        compress: Any) -> None:
    r = httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer",
                   content=compress(json.dumps(GOOD).encode()),
                   headers={"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [0]


def test_compression_bombs_and_unknown_encodings_are_refused(hostile_server: Server) -> None:
    url = f"{hostile_server.http_url}/v2/models/iris/infer"
    bomb = gzip.compress(b" " * (64 * 1024 * 1024))  # 64 MiB of spaces in ~64 KiB
    assert len(bomb) < 200_000
    r = httpx.post(url, content=bomb, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413 and "once decoded from gzip" in r.json()["error"]
    r = httpx.post(url, content=b"not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "gzip" in r.json()["error"]
    r = httpx.post(url, content=b"{}", headers={"Content-Encoding": "br"})
    assert r.status_code == 415 and "accepted: gzip, deflate" in r.json()["error"]


def test_grpc_answers_in_the_form_of_the_request(hostile_server: Server) -> None:
    row = [5.1, 3.5, 1.4, 0.2]
    typed = pb.ModelInferRequest(model_name="iris")
    t = typed.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    t.contents.fp32_contents.extend(row)
    raw = pb.ModelInferRequest(model_name="iris")
    raw.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    raw.raw_input_contents.append(np.asarray([row], dtype="<f4").tobytes())
    call = "/inference.GRPCInferenceService/ModelInfer"
    with grpc.insecure_channel(hostile_server.grpc_target) as ch:
        typed_reply = pb.ModelInferResponse.FromString(
            ch.unary_unary(call)(typed.SerializeToString(), timeout=10))
        raw_reply = pb.ModelInferResponse.FromString(
            ch.unary_unary(call)(raw.SerializeToString(), timeout=10))
    assert not typed_reply.raw_output_contents
    by_name = {o.name: o for o in typed_reply.outputs}
    assert list(by_name["label"].contents.int64_contents) == [0]
    typed_proba = list(by_name["probabilities"].contents.fp32_contents)
    assert len(typed_proba) == 3
    assert len(raw_reply.raw_output_contents) == 2
    assert all(not o.HasField("contents") for o in raw_reply.outputs)
    names = [o.name for o in raw_reply.outputs]
    raw_proba = np.frombuffer(raw_reply.raw_output_contents[names.index("probabilities")],
                              dtype="<f4")
    assert raw_proba.tolist() == pytest.approx(typed_proba)


def test_statistics_count_every_request(hostile_server: Server) -> None:
    url = f"{hostile_server.http_url}/v2/models/iris/versions/1/stats"

    def stats() -> dict[str, Any]:
        doc = httpx.get(url, timeout=10).json()
        entry: dict[str, Any] = doc["model_stats"][0]
        return entry

    before = stats()
    for _ in range(4):
        assert httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer",
                          json=GOOD).status_code == 200
    assert httpx.post(f"{hostile_server.http_url}/v2/models/iris/infer",
                      json={"inputs": []}).status_code == 400
    time.sleep(0.3)
    after = stats()
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 4
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    assert after["inference_stats"]["fail"]["count"] - \
        before["inference_stats"]["fail"]["count"] == 1
    assert after["inference_count"] - before["inference_count"] == 4
    assert after["execution_count"] - before["execution_count"] == 4
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    assert after["last_inference"] >= before["last_inference"] > 0 or \
        before["inference_count"] == 0
    index = httpx.post(f"{hostile_server.http_url}/v2/repository/index", json={}).json()
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("iris", "1", "READY"), ("diabetes", "1", "READY")}


def test_server_survived(hostile_server: Server, tmp_path: Path) -> None:
    assert hostile_server.alive()
    assert httpx.get(f"{hostile_server.http_url}/v2/health/ready").status_code == 200
    log = hostile_server.log.read_text()
    assert "Exception in ASGI application" not in log
