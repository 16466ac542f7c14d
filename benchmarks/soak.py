"""Bounded adversarial soak: a real modelrail server (two workers, loopback only) takes
thousands of hostile and fuzzed requests per protocol while a good client keeps calling
it, then ~200 slow clients per port that send a partial header and stall.

    .venv/bin/python benchmarks/soak.py [--requests 10000] [--seed 1] [--json-out PATH]
                                        [--write]

What it reports, per protocol (REST, gRPC): hostile requests sent, the histogram of
answers (HTTP status / gRPC code; `conn-error` and `timeout` for connections the server
dropped or left unanswered), how many were 5xx / INTERNAL / UNKNOWN (the target is 0:
every hostile request here is the client's fault), the good client's p50 / p99 / worst
latency while under attack against a quiet baseline (and its failures, target 0), how
many slow connections were still open after the stall, and the server's RSS (main
process + workers, from /proc) before and after. At the end the server is stopped and
the run fails if any of its processes or temporary files are left.

Deterministic: request i of a protocol is built from `random.Random(f"{seed}:{proto}:{i}")`,
so a run replays exactly; cases and mutations are listed in REST_CASES / GRPC_CASES.
Bounded: fixed request counts, a per-request timeout and a per-phase deadline.
Output: a markdown table on stdout; `--json-out` writes every figure (with per-case
histograms); `--write` updates the block between `<!-- soak:begin -->` and
`<!-- soak:end -->` in BENCHMARKS.md. Exit status: 0 when every target is met, 2 when
one is missed (5xx / INTERNAL / UNKNOWN, failed good requests, a dead server), 3 when a
process or temporary file was left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import multiprocessing as mp
import os
import random
import socket
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORK = ROOT / ".modelrail" / "soak"
os.environ.setdefault("BENTOML_HOME", str(WORK / "bentoml"))
os.environ.setdefault("MODELRAIL_REGISTRY", str(WORK / "registry"))
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["ORT_DISABLE_TELEMETRY"] = "1"

MODELS = ["iris:1", "iris:2"]
MAX_REQUEST_BYTES = 1024 * 1024  # the server's limit in this run: bombs must blow past it
MAX_ROWS = 5000
GOOD_ROW = [5.1, 3.5, 1.4, 0.2]
INFER_PATH = "/v2/models/iris/versions/1/infer"
GRPC_SERVICE = "/inference.GRPCInferenceService/"
REQUEST_TIMEOUT = 15.0
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"


# --- the server under test ---------------------------------------------------------------

@dataclass
class Served:
    proc: Any
    http_port: int
    grpc_port: int
    home: Path | None
    tmpdir: Path
    log: Path


def prepare_models() -> None:
    """Train and register the example models this soak serves (idempotent)."""
    from modelrail.models.register import register_model
    from modelrail.models.registry import Registry
    from modelrail.models.train import load_spec, train_all

    registry = Registry()
    for t in train_all(load_spec(ROOT / "models" / "examples.yaml"), WORK / "train", MODELS):
        register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                       version=t.version, registry=registry)


def start_server(workers: int) -> Served:
    from modelrail.processes import (
        free_port,
        home_of,
        server_command,
        spawn,
        stop,
        wait_ready,
    )
    from modelrail.serving.config import ServingConfig

    # everything the server (and BentoML) writes to a temp dir lands in one of our own,
    # checked empty once it has stopped
    tmpdir = Path(tempfile.mkdtemp(prefix="run-", dir=WORK / "tmp"))
    os.environ["TMPDIR"] = str(tmpdir)
    tempfile.tempdir = str(tmpdir)  # the private BentoML home is made from this process
    hp, gp = free_port(), free_port()
    config = ServingConfig.from_env({
        "MODELRAIL_MODELS": ",".join(MODELS), "MODELRAIL_GRPC_PORT": str(gp),
        "MODELRAIL_GRPC_HOST": "127.0.0.1", "MODELRAIL_WORKERS": str(workers),
        "MODELRAIL_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
        "MODELRAIL_MAX_ROWS": str(MAX_ROWS), "MODELRAIL_DRAIN_SECONDS": "5"})
    log = WORK / "logs" / "server.log"
    log.write_bytes(b"")
    proc = spawn(server_command(config, http_host="127.0.0.1", http_port=hp), log_path=log)
    if not wait_ready(f"http://127.0.0.1:{hp}", timeout=120, proc=proc):
        stop(proc)
        raise SystemExit(f"server did not become ready; see {log}")
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{gp}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
    return Served(proc=proc, http_port=hp, grpc_port=gp, home=home_of(proc), tmpdir=tmpdir,
                  log=log)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, pgrp, session, …]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_tree(root: int) -> dict[int, str]:
    """The live processes descended from `root` (itself included), each with its start
    time so that a reused pid is not mistaken for ours. BentoML's workers run in
    sessions and process groups of their own, so only parentage finds them."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (st := _stat(int(entry.name))) and st[0] != "Z":
            children.setdefault(int(st[1]), []).append(int(entry.name))
            started[int(entry.name)] = st[19]
    tree: dict[int, str] = {}
    todo = [root] if root in started else []
    while todo:
        pid = todo.pop()
        tree[pid] = started[pid]
        todo += children.get(pid, [])
    return tree


def still_alive(known: dict[int, str]) -> list[int]:
    alive = []
    for pid, start in known.items():
        st = _stat(pid)
        if st is not None and st[0] != "Z" and st[19] == start:
            alive.append(pid)
    return sorted(alive)


def rss_bytes(pids: list[int] | dict[int, str]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


# --- good traffic, measured from a process of its own ------------------------------------

def good_rest_body() -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                                   "data": GOOD_ROW}]}).encode()


def good_grpc_body() -> bytes:
    from modelrail.serving._proto import oip_v2_pb2 as pb

    msg = pb.ModelInferRequest(model_name="iris", model_version="1")
    msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(struct.pack("<4f", *GOOD_ROW))
    return msg.SerializeToString()


def good_client(kind: str, port: int, interval: float, ready: Any, stop_event: Any,
                out: Any) -> None:
    """Send good requests one at a time until told to stop; put (latencies, failures,
    first failure) on `out`. Runs in a process of its own so that the attacker's CPU
    use in the parent does not show up as this client's latency."""
    import http.client

    import grpc

    latencies: list[float] = []
    failures = 0
    first_failure = ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    headers = {"Content-Type": "application/json"}
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call: Any = channel.unary_unary(GRPC_SERVICE + "ModelInfer")
    body = good_rest_body() if kind == "rest" else good_grpc_body()
    while not stop_event.is_set():
        t0 = time.perf_counter()
        try:
            if kind == "rest":
                conn.request("POST", INFER_PATH, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                ok = resp.status == 200 and b'"outputs"' in data
                why = f"HTTP {resp.status}: {data[:200]!r}"
            else:
                reply = call(body, timeout=REQUEST_TIMEOUT)
                ok, why = len(reply) > 0, "empty reply"
        except (OSError, http.client.HTTPException) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
            conn.close()
        except grpc.RpcError as exc:
            ok, why = False, f"{exc.code().name}: {exc.details()}"
        latencies.append(time.perf_counter() - t0)
        ready.set()
        if not ok:
            failures += 1
            first_failure = first_failure or why
        time.sleep(interval)
    conn.close()
    channel.close()
    out.put((latencies, failures, first_failure))


class GoodClient:
    """A good-client process for the length of a `with` block."""

    def __init__(self, kind: str, port: int, interval: float) -> None:
        ctx = mp.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(target=good_client,
                                 args=(kind, port, interval, self._ready, self._stop,
                                       self._out),
                                 daemon=True)
        self.latencies: list[float] = []
        self.failures = 0
        self.first_failure = ""

    def __enter__(self) -> GoodClient:
        """Starts the client and returns once its first request is done (its start-up
        must not eat into the window it measures)."""
        self._proc.start()
        if not self._ready.wait(60):
            raise RuntimeError("the good client did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies, self.failures, self.first_failure = self._out.get(timeout=60)
        self._proc.join(10)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        if not lat:
            return {"requests": 0, "failures": self.failures}

        def pick(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

        return {"requests": len(lat), "failures": self.failures,
                "first_failure": self.first_failure, "p50_ms": pick(0.5),
                "p99_ms": pick(0.99), "worst_ms": lat[-1] * 1000}


# --- REST: a raw HTTP/1.1 client (every byte of the request is ours) ----------------------

def http_request(method: str, path: str, body: bytes = b"",
                 headers: list[tuple[bytes, bytes]] | None = None, *,
                 content_length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(errors="surrogateescape"),
             b"Host: 127.0.0.1"]
    given = {k.lower() for k, _ in headers or []}
    if b"content-type" not in given:
        lines.append(b"Content-Type: application/json")
    if content_length and b"content-length" not in given:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines += [k + b": " + v for k, v in headers or []]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class RawHttp:
    """One keep-alive connection; reconnects after the server closes or times out."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reused = False  # the connection already carried a complete exchange
        self.answered = False  # the current request got an answer's head

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def _exchange(self, request: bytes) -> str:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.reused = False
        assert self.reader is not None
        self.answered = False
        self.writer.write(request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.answered = True
        status = head.split(b" ", 2)[1].decode()
        length: int | None = None
        chunked = close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value:
                chunked = True
            elif name == b"connection" and value == b"close":
                close = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length is not None:
            await self.reader.readexactly(length)
        else:
            await self.reader.read()
            close = True
        if close:
            await self.close()
        self.reused = True
        return status

    async def send(self, request: bytes) -> str:
        """The answer's status, or "timeout" / "conn-error". A kept-alive connection the
        server had closed after its previous answer is retried once on a new one (as
        any HTTP client does), so a drop is blamed on the request that caused it."""
        for attempt in range(2):
            try:
                return await asyncio.wait_for(self._exchange(request), REQUEST_TIMEOUT)
            except TimeoutError:
                await self.close()
                return "timeout"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError, IndexError):
                stale = self.reused and not self.answered
                await self.close()
                if not (stale and attempt == 0):
                    return "conn-error"
        return "conn-error"


# --- hostile REST requests ----------------------------------------------------------------

def _tensor(**over: Any) -> dict[str, Any]:
    return {"name": "input", "datatype": "FP32", "shape": [1, 4], "data": GOOD_ROW, **over}


def _json(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()


def _infer(body: bytes, *, path: str = INFER_PATH,
           headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    return http_request("POST", path, body, headers)


def _binary_header(datatype: str = "FP32", size: Any = 16) -> bytes:
    return _json({"inputs": [{"name": "input", "datatype": datatype, "shape": [1, 4],
                              "parameters": {"binary_data_size": size}}]})


def _binary(json_part: bytes, raw: bytes, header_value: bytes | None = None) -> bytes:
    value = str(len(json_part)).encode() if header_value is None else header_value
    return _infer(json_part + raw, headers=[(b"Content-Type", b"application/octet-stream"),
                                            (b"Inference-Header-Content-Length", value)])


def _cached(fn: Callable[[], bytes]) -> Callable[[random.Random], bytes]:
    box: list[bytes] = []

    def gen(_: random.Random) -> bytes:
        if not box:
            box.append(fn())
        return box[0]

    return gen


def _bomb(encoding: str) -> bytes:
    """A small body that decodes to 64 times the server's limit."""
    plain = b"0" * (64 * MAX_REQUEST_BYTES)
    if encoding == "gzip":
        return gzip.compress(plain, compresslevel=9)
    return zlib.compress(plain, 9)


def rest_shape(rng: random.Random) -> bytes:
    shape: Any = rng.choice([[-1, 4], [-4, -1], [1, -4], [-(2**63), 4], [0, 4], [0, 2**63],
                        [2**40, 2**40], [2**62, 4], [4611686018427387904, 4], [1] * 66,
                        [1, 4, 1] * 22, "x", [1.5, 4], [True, 4], None, [[1], [4]], {}, [],
                        [1e308, 4], ["1", "4"]])
    return _infer(_json({"inputs": [_tensor(shape=shape, data=rng.choice([[], GOOD_ROW,
                                                                            [1.0]]))]}))


def rest_big_digits(rng: random.Random) -> bytes:
    digits = b"9" * 5000
    where = rng.randrange(4)
    if where == 0:
        body = (b'{"inputs":[{"name":"input","datatype":"INT64","shape":[1,4],"data":[' +
                digits + b',1,2,3]}]}')
    elif where == 1:
        body = (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,' + digits +
                b'],"data":[1,2,3,4]}]}')
    elif where == 2:
        body = (b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":[-' +
                digits + b'.5,1,2,3]}]}')
    else:
        body = b'{"id":' + digits + b',"inputs":[' + _json(_tensor()) + b"]}"
    return _infer(body)


def rest_predict_huge(rng: random.Random) -> bytes:
    names = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)",
             "petal width (cm)"]
    literal = rng.choice([b"1" + b"0" * 400, b"1e400", b"-1e400", b"1e-400",
                          b"-" + b"9" * 5000, b"1" + b"0" * 400 + b".0"])
    at = rng.randrange(len(names))
    cells = [json.dumps(n).encode() + b":" + (literal if i == at else b"1.0")
             for i, n in enumerate(names)]
    body = b'{"records":[{' + b",".join(cells) + b"}]}"
    return http_request("POST", rng.choice(["/predict/iris", "/predict/iris/1"]), body)


def rest_predict_junk(rng: random.Random) -> bytes:
    body = rng.choice([b'{"records":{}}', b'{"records":[1,2]}', b'{"records":[[1,2,3,4]]}',
                       b'{"records":[{"x":1}]}', b'[]', b'{"records":null}',
                       b'{"records":[' + b'{},' * 20000 + b'{}]}'])
    return http_request("POST", rng.choice(["/predict/iris", "/predict/nosuch",
                                            "/predict/iris/99", "/predict/"]), body)


def rest_header_length(rng: random.Random) -> bytes:
    json_part = _binary_header()
    value = rng.choice(["١٢٣".encode(), "½".encode(), "²".encode(), b"\xff\xfe",
                        "２０".encode(), b"1e3", b"-5", b"99999999999999999999", b" 12 ",
                        b"", b"0x10", str(len(json_part) + 1000).encode(), b"0",
                        str(len(json_part)).encode() + b"\xc2\xa0"])
    return _binary(json_part, struct.pack("<4f", *GOOD_ROW), value)


def rest_binary_lies(rng: random.Random) -> bytes:
    size = rng.choice([10**12, -1, "x", 3, 17, None, 2**64, 0])
    json_part = _json({"inputs": [{"name": "input", "datatype": rng.choice(["FP32", "FP64",
                                                                            "INT8", "BYTES"]),
                                   "shape": [1, 4], "parameters": {"binary_data_size": size}}],
                       "outputs": [{"name": "label", "parameters": {"binary_data": True}}]})
    return _binary(json_part, rng.randbytes(rng.choice([0, 16, 64])))


def rest_truncated(rng: random.Random) -> bytes:
    good = _json({"inputs": [_tensor()], "outputs": [{"name": "label"}]})
    return _infer(good[:rng.randrange(len(good))])


def rest_garbage(rng: random.Random) -> bytes:
    return _infer(rng.randbytes(rng.randrange(0, 2000)),
                  headers=[(b"Content-Type", rng.choice([b"application/json",
                                                         b"application/octet-stream",
                                                         b"text/plain", b"\xff/\xfe"]))])


def rest_deep(rng: random.Random) -> bytes:
    depth = rng.choice([1000, 100000])
    if rng.random() < 0.5:
        return _infer(b"[" * depth + b"]" * depth)
    return _infer(b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],"data":' +
                  b"[" * depth + b"1" + b"]" * depth + b"}]}")


def rest_wrong_json(rng: random.Random) -> bytes:
    return _infer(rng.choice([b"[]", b'"x"', b"1", b"null", b"true", b'{"inputs":{}}',
                              b'{"inputs":[[]]}', b'{"inputs":[{"name":1}]}',
                              b'{"inputs":"input"}', b'{"inputs":[null]}', b"{}",
                              b'{"inputs":[' + _json(_tensor()) + b"]," + b'"x":1' * 10 + b"}",
                              b"\xef\xbb\xbf" + _json({"inputs": [_tensor()]})]))


def rest_datatype(rng: random.Random) -> bytes:
    dtype, data = rng.choice([("FP32\u0000", GOOD_ROW), ("fp 32", GOOD_ROW), (32, GOOD_ROW),
                              (None, GOOD_ROW), ("FP16", GOOD_ROW), ("BOOL", [True] * 4),
                              ("UINT64", [-1, -2, -3, -4]), ("INT8", [300, 1, 2, 3]),
                              ("BYTES", ["a", "b", "c", "d"]), ("FP32", ["1", "2", "3", "4"]),
                              ("FP32", [[1, 2], [3, 4]]), ("FP32", [None] * 4),
                              ("FP32", [True, False, True, False]), ("INT64", [1.5] * 4),
                              ("FP64", [1e308, -1e308, 1e-320, 0]), ("Ω", GOOD_ROW)])
    return _infer(_json({"inputs": [_tensor(datatype=dtype, data=data)]}))


def rest_nonfinite(rng: random.Random) -> bytes:
    token = rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309", b"nan",
                        b"inf"])
    if rng.random() < 0.7:
        return _infer(b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,4],'
                      b'"data":[1,' + token + b',2,3]}]}')
    json_part = _binary_header()
    value = rng.choice([float("nan"), float("inf"), float("-inf")])
    return _binary(json_part, struct.pack("<4f", 1.0, value, 2.0, 3.0))


_GZIP_BOMB = _cached(lambda: _bomb("gzip"))
_DEFLATE_BOMB = _cached(lambda: _bomb("deflate"))


def rest_encoding(rng: random.Random) -> bytes:
    kind = rng.randrange(7)
    if kind == 0:
        return _infer(_GZIP_BOMB(rng), headers=[(b"Content-Encoding", b"gzip")])
    if kind == 1:
        return _infer(_DEFLATE_BOMB(rng), headers=[(b"Content-Encoding", b"deflate")])
    if kind == 2:  # a bomb inside a bomb
        return _infer(gzip.compress(_GZIP_BOMB(rng)),
                      headers=[(b"Content-Encoding", b"gzip, gzip")])
    if kind == 3:  # valid gzip header, garbage after it
        return _infer(b"\x1f\x8b\x08\x00" + rng.randbytes(200),
                      headers=[(b"Content-Encoding", b"gzip")])
    if kind == 4:  # truncated gzip of a good body
        good = gzip.compress(good_rest_body())
        return _infer(good[:rng.randrange(1, len(good))],
                      headers=[(b"Content-Encoding", b"gzip")])
    if kind == 5:
        return _infer(good_rest_body(), headers=[(b"Content-Encoding", rng.choice(
            [b"br", b"zstd", b"compress", b"\xff", b"gzip;q=1", b"x" * 5000]))])
    return _infer(gzip.compress(good_rest_body()), headers=[(b"Content-Encoding", b"deflate")])


def rest_route(rng: random.Random) -> bytes:
    method = rng.choice(["GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "FOO"])
    path = rng.choice(["/v2/models/nosuch/infer", "/v2/models/iris/versions/99/infer",
                       "/v2/models/iris/versions/%00/infer", "/v2/models/" + "a" * 5000 +
                       "/infer", "/v2/../../etc/passwd", "/v2/models/iris/infer/extra", "/",
                       "/v1/models/iris:predict", "/v2/repository/models/iris/load",
                       "/v2/models/iris/versions/1/stats", "/v2/models//infer",
                       "/v2/models/iris/versions//infer", "/v2/models/iris/versions/1/ready",
                       "/v2/models/%ff%fe/infer", "/v2/models/iris/versions/-1/infer",
                       "/metrics?x=" + "y" * 3000, "/predict", "/docs", "/openapi.json",
                       "/v2/models/iris/versions/1/infer?" + "&".join(["a=1"] * 500),
                       "*", "http://127.0.0.1/v2"])
    return http_request(method, path, good_rest_body())


def rest_outputs(rng: random.Random) -> bytes:
    outputs = rng.choice([[{"name": "label"}, {"name": "label"}],
                          [{"name": "probabilities"}] * 50, [{"name": "x"}], "label", [{}],
                          [{"name": None}], [{"name": "label", "parameters": {
                              "binary_data": "yes"}}], [{"name": "label"}] * 5000, {}])
    return _infer(_json({"inputs": [_tensor()], "outputs": outputs}))


_MANY_INPUTS = _cached(lambda: _infer(_json({"inputs": [_tensor(name=f"in{i}")
                                                        for i in range(5000)]})))
_OVER_ROWS = _cached(lambda: _infer(_json({"inputs": [_tensor(
    shape=[MAX_ROWS + 1, 4], data=GOOD_ROW * (MAX_ROWS + 1))]})))
_OVERSIZED = _cached(lambda: _infer(b'{"inputs":[' + b" " * (2 * MAX_REQUEST_BYTES) +
                                    _json(_tensor()) + b"]}"))
_HUGE_SHAPE = _cached(lambda: _infer(_json({"inputs": [_tensor(shape=[2] * 100000,
                                                               data=[1.0])]})))


def rest_sizes(rng: random.Random) -> bytes:
    return rng.choice([_MANY_INPUTS, _OVER_ROWS, _OVERSIZED, _HUGE_SHAPE])(rng)


def rest_headers(rng: random.Random) -> bytes:
    body = good_rest_body()
    kind = rng.randrange(5)
    if kind == 0:  # many large headers
        return _infer(body, headers=[(f"X-H{i}".encode(), b"v" * 4000) for i in range(40)])
    if kind == 1:  # chunked body, valid framing
        chunks = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n"
                          for c in (body[:10], body[10:])) + b"0\r\n\r\n"
        return http_request("POST", INFER_PATH, chunks,
                            [(b"Transfer-Encoding", b"chunked")], content_length=False)
    if kind == 2:  # both framings (request smuggling shape): must not desync
        chunks = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        return http_request("POST", INFER_PATH, chunks,
                            [(b"Transfer-Encoding", b"chunked"),
                             (b"Content-Length", str(len(chunks)).encode())],
                            content_length=False)
    if kind == 3:  # non-ASCII and control bytes in header values
        return _infer(body, headers=[(b"X-Model", "ïris\u202e".encode()),
                                     (b"Content-Type", "application/json; charset=ü".encode())])
    return _infer(body, headers=[(b"Content-Type", b"multipart/form-data; boundary=x")])


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    tokens = [b"NaN", b"-", b"1e999", b"{", b"[", b"]", b"}", b'"', b",", b"null", b"9" * 50,
              b"\x00", b"\xff", b"\\u0000", b"-0", b"[[[[", b"true"]
    for _ in range(rng.randint(1, 6)):
        if not buf:
            buf += rng.randbytes(8)
        op, at = rng.randrange(5), rng.randrange(len(buf))
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[at:at + rng.randint(1, 8)]
        elif op == 2:
            buf[at:at] = rng.choice(tokens)
        elif op == 3:
            end = min(len(buf), at + rng.randint(1, 16))
            buf[at:at] = buf[at:end] * rng.randint(1, 50)
        else:
            buf[at] = rng.randrange(256)
    return bytes(buf)


def rest_mutation(rng: random.Random) -> bytes:
    seeds = [good_rest_body(),
             _json({"inputs": [_tensor(shape=[2, 4], data=GOOD_ROW * 2)],
                    "outputs": [{"name": "probabilities"}]}),
             b'{"records":[{"sepal length (cm)":5.1,"sepal width (cm)":3.5,'
             b'"petal length (cm)":1.4,"petal width (cm)":0.2}]}']
    pick = rng.randrange(len(seeds))
    path = "/predict/iris/1" if pick == 2 else rng.choice(
        [INFER_PATH, "/v2/models/iris/infer", "/v2/models/iris/versions/2/infer"])
    return http_request("POST", path, _mutate(rng, seeds[pick]))


REST_CASES: list[tuple[str, int, Callable[[random.Random], bytes]]] = [
    ("absurd shape", 8, rest_shape), ("5000-digit integer", 5, rest_big_digits),
    ("/predict 1e400 literal", 5, rest_predict_huge), ("/predict junk", 3, rest_predict_junk),
    ("binary header length", 6, rest_header_length), ("binary sizes lie", 4, rest_binary_lies),
    ("truncated JSON", 6, rest_truncated), ("garbage body", 5, rest_garbage),
    ("deep nesting", 2, rest_deep), ("wrong JSON shape", 5, rest_wrong_json),
    ("wrong datatype", 6, rest_datatype), ("NaN/inf", 5, rest_nonfinite),
    ("compression/bombs", 6, rest_encoding), ("unknown route/model", 6, rest_route),
    ("outputs abuse", 4, rest_outputs), ("oversized", 2, rest_sizes),
    ("header abuse", 3, rest_headers), ("mutation", 25, rest_mutation),
]


# --- hostile gRPC requests ------------------------------------------------------------------

def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def fbytes(num: int, data: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(data)) + data


def fvarint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def wire_infer(*, name: bytes = b"iris", version: bytes = b"1", tensor_name: bytes = b"input",
               datatype: bytes = b"FP32", shape: list[int] | None = None,
               shape_raw: bytes | None = None, contents: bytes | None = None,
               raw: list[bytes] | None = None, extra: bytes = b"") -> bytes:
    """A ModelInferRequest written field by field, so that it can say what the protobuf
    library would refuse to build (shapes past int64, invalid UTF-8, wrong wire types)."""
    dims = shape if shape is not None else [1, 4]
    packed = shape_raw if shape_raw is not None else b"".join(varint(d) for d in dims)
    tensor = fbytes(1, tensor_name) + fbytes(2, datatype) + fbytes(3, packed)
    if contents is not None:
        tensor += fbytes(5, contents)
    body = fbytes(1, name) + fbytes(2, version) + fbytes(5, tensor)
    if raw is None and contents is None:
        raw = [struct.pack("<4f", *GOOD_ROW)]
    for r in raw or []:
        body += fbytes(7, r)
    return body + extra


def _fp32(values: list[float]) -> bytes:
    return fbytes(6, struct.pack(f"<{len(values)}f", *values))


def grpc_random(rng: random.Random) -> tuple[str, bytes]:
    method = rng.choice(["ModelInfer"] * 4 + ["ModelMetadata", "ModelReady", "ServerMetadata",
                                              "ModelStatistics", "RepositoryIndex",
                                              "ServerLive", "ServerReady"])
    return method, rng.randbytes(rng.randrange(0, 2000))


def grpc_shape(rng: random.Random) -> tuple[str, bytes]:
    choice = rng.randrange(8)
    if choice == 0:
        return "ModelInfer", wire_infer(shape=[2] * 100000, raw=[b"\x00" * 4])
    if choice == 1:
        return "ModelInfer", wire_infer(shape=[0, 2**63 - 1], raw=[b""])
    if choice == 2:  # 2**63 and 2**64 - 1 on the wire: negative int64 once parsed
        return "ModelInfer", wire_infer(shape=rng.choice([[2**63, 4], [2**64 - 1, 4],
                                                          [1, 2**64 - 4]]))
    if choice == 3:  # an 11-byte varint: past 64 bits
        return "ModelInfer", wire_infer(shape_raw=b"\xff" * 10 + b"\x01" + varint(4))
    if choice == 4:
        return "ModelInfer", wire_infer(shape=[1] * 66)
    if choice == 5:
        return "ModelInfer", wire_infer(shape=rng.choice([[-1, 4], [-4, -1], [1, -4], [],
                                                          [4], [1, 1, 4]]))
    if choice == 6:
        return "ModelInfer", wire_infer(shape=[2**62, 4], raw=[b"\x00" * 16])
    return "ModelInfer", wire_infer(shape=[2**31, 2**31], raw=[b"\x00" * 16])


def grpc_strings(rng: random.Random) -> tuple[str, bytes]:
    bad = rng.choice([b"\xff\xfe", b"ir\x00is", "ïris".encode(), b"\xc0\xaf", b"a" * 5000,
                      b"../iris", b""])
    where = rng.randrange(4)
    if where == 0:
        return "ModelInfer", wire_infer(name=bad)
    if where == 1:
        return "ModelInfer", wire_infer(version=bad)
    if where == 2:
        return "ModelInfer", wire_infer(tensor_name=bad)
    return "ModelInfer", wire_infer(datatype=bad)


def grpc_wire_types(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(4)
    if kind == 0:  # model_name as a varint
        return "ModelInfer", fvarint(1, 7) + wire_infer()[6:]
    if kind == 1:  # unknown field nested 5000 deep
        return "ModelInfer", wire_infer(extra=_nest(5000))
    if kind == 2:  # a length that runs past the end
        return "ModelInfer", wire_infer() + varint(7 << 3 | 2) + varint(2**40) + b"x"
    return "ModelInfer", wire_infer(extra=varint(99 << 3 | 3))  # start group, never ended


def _nest(depth: int) -> bytes:
    inner = b""
    for _ in range(depth):
        inner = fbytes(100, inner)
    return inner


def grpc_contents(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(7)
    if kind == 0:  # FP32 declared, int64 contents
        return "ModelInfer", wire_infer(contents=fbytes(3, b"".join(varint(v)
                                                                     for v in [1, 2, 3, 4])))
    if kind == 1:  # contents and raw together
        return "ModelInfer", wire_infer(contents=_fp32(GOOD_ROW),
                                        raw=[struct.pack("<4f", *GOOD_ROW)])
    if kind == 2:
        return "ModelInfer", wire_infer(contents=fbytes(8, b"x") * 10000)
    if kind == 3:  # two raw buffers for one input
        return "ModelInfer", wire_infer(raw=[struct.pack("<4f", *GOOD_ROW)] * 2)
    if kind == 4:
        return "ModelInfer", wire_infer(datatype=b"FP64", contents=fbytes(7, struct.pack(
            "<4d", 1e300, -1e300, 5e-324, 1.0)))
    if kind == 5:
        return "ModelInfer", wire_infer(datatype=b"INT64", contents=fbytes(3, b"".join(
            varint(v) for v in [2**63 - 1, -(2**63), 0, 1])))
    return "ModelInfer", wire_infer(datatype=rng.choice([b"BYTES", b"BOOL", b"FP16", b"UINT8",
                                                         b"fp32", b"FLOAT"]),
                                    raw=[rng.randbytes(rng.choice([1, 4, 8, 16]))])


def grpc_nonfinite(rng: random.Random) -> tuple[str, bytes]:
    bad = rng.choice([float("nan"), float("inf"), float("-inf")])
    values = [1.0, bad, 2.0, 3.0]
    if rng.random() < 0.5:
        return "ModelInfer", wire_infer(contents=_fp32(values))
    return "ModelInfer", wire_infer(raw=[struct.pack("<4f", *values)])


def grpc_unknown(rng: random.Random) -> tuple[str, bytes]:
    kind = rng.randrange(4)
    if kind == 0:
        return "ModelInfer", wire_infer(name=rng.choice([b"nosuch", b"iris/versions/1",
                                                         b"IRIS"]))
    if kind == 1:
        return "ModelInfer", wire_infer(version=rng.choice([b"99", b"-1", b"1.0", b"01"]))
    if kind == 2:
        return rng.choice(["ModelMetadata", "ModelReady", "ModelStatistics"]), \
            fbytes(1, b"nosuch") + fbytes(2, b"7")
    return rng.choice(["ModelLoad", "RepositoryModelLoad", "ModelStreamInfer",
                       "../ModelInfer", "Nope"]), wire_infer()


def grpc_outputs(rng: random.Random) -> tuple[str, bytes]:
    names = rng.choice([[b"label", b"label"], [b"probabilities"] * 50, [b"x"], [b""],
                        [b"label"] * 5000])
    return "ModelInfer", wire_infer(extra=b"".join(fbytes(6, fbytes(1, n)) for n in names))


_GRPC_BIG = _cached(lambda: wire_infer(shape=[(2 * MAX_REQUEST_BYTES) // 16, 4],
                                       raw=[b"\x00" * (2 * MAX_REQUEST_BYTES)]))
_GRPC_MANY = _cached(lambda: wire_infer(extra=b"".join(
    fbytes(5, fbytes(1, f"in{i}".encode()) + fbytes(2, b"FP32") + fbytes(3, varint(1)))
    for i in range(5000))))
_GRPC_PARAMS = _cached(lambda: wire_infer(extra=b"".join(
    fbytes(4, fbytes(1, f"k{i}".encode()) + fbytes(2, fbytes(3, b"v" * 100)))
    for i in range(3000))))
_GRPC_ROWS = _cached(lambda: wire_infer(shape=[MAX_ROWS + 1, 4],
                                        raw=[b"\x00" * (16 * (MAX_ROWS + 1))]))


def grpc_sizes(rng: random.Random) -> tuple[str, bytes]:
    return "ModelInfer", rng.choice([_GRPC_BIG, _GRPC_MANY, _GRPC_PARAMS, _GRPC_ROWS])(rng)


def grpc_mutation(rng: random.Random) -> tuple[str, bytes]:
    seeds = [wire_infer(), wire_infer(contents=_fp32(GOOD_ROW)),
             wire_infer(extra=fbytes(6, fbytes(1, b"probabilities")))]
    return "ModelInfer", _mutate(rng, rng.choice(seeds))


GRPC_CASES: list[tuple[str, int, Callable[[random.Random], tuple[str, bytes]]]] = [
    ("random bytes", 10, grpc_random), ("absurd shape", 10, grpc_shape),
    ("bad strings", 6, grpc_strings), ("wire-type abuse", 5, grpc_wire_types),
    ("contents abuse", 8, grpc_contents), ("NaN/inf", 5, grpc_nonfinite),
    ("unknown model/method", 6, grpc_unknown), ("outputs abuse", 5, grpc_outputs),
    ("oversized", 2, grpc_sizes), ("mutation", 30, grpc_mutation),
]


def pick_case(cases: list[Any], rng: random.Random) -> Any:
    return rng.choices(cases, weights=[w for _, w, _ in cases])[0]


# --- the attacks ---------------------------------------------------------------------------

@dataclass
class Attack:
    sent: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    by_case: dict[str, Counter[str]] = field(default_factory=dict)
    seconds: float = 0.0
    cut_short: bool = False

    def record(self, case: str, answer: str) -> None:
        self.sent += 1
        self.answers[answer] += 1
        self.by_case.setdefault(case, Counter())[answer] += 1


def is_server_error(proto: str, answer: str) -> bool:
    if proto == "rest":
        return answer.isdigit() and int(answer) >= 500
    return answer in ("INTERNAL", "UNKNOWN", "DATA_LOSS")


async def attack_rest(port: int, n: int, seed: int, concurrency: int, deadline: float,
                      ) -> Attack:
    result = Attack()
    counter = iter(range(n))
    t0 = time.monotonic()

    async def worker() -> None:
        conn = RawHttp(port)
        try:
            for i in counter:
                if time.monotonic() > deadline:
                    result.cut_short = True
                    return
                rng = random.Random(f"{seed}:rest:{i}")
                case, _, gen = pick_case(REST_CASES, rng)
                result.record(case, await conn.send(gen(rng)))
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - t0
    return result


async def attack_grpc(port: int, n: int, seed: int, concurrency: int, deadline: float,
                      ) -> Attack:
    import grpc

    result = Attack()
    counter = iter(range(n))
    t0 = time.monotonic()
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1),
               ("grpc.enable_retries", 0)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:

        async def worker() -> None:
            for i in counter:
                if time.monotonic() > deadline:
                    result.cut_short = True
                    return
                rng = random.Random(f"{seed}:grpc:{i}")
                case, _, gen = pick_case(GRPC_CASES, rng)
                method, payload = gen(rng)
                call: Any = channel.unary_unary(GRPC_SERVICE + method)
                try:
                    await call(payload, timeout=REQUEST_TIMEOUT)
                    answer = "OK"
                except grpc.aio.AioRpcError as exc:
                    answer = exc.code().name
                result.record(case, answer)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.monotonic() - t0
    return result


def slow_clients(http_port: int, grpc_port: int, count: int, seconds: float,
                 ) -> dict[str, Any]:
    """`count` connections per port that send part of a request head and stall; after
    `seconds`, how many the server still holds open (and how many it answered)."""
    partial = {"rest": b"POST /v2/models/iris/versions/1/infer HTTP/1.1\r\nHost: 127.0.0.1"
                       b"\r\nContent-Le",
               "grpc": b"PRI * HTTP/2.0\r\n\r\nSM\r\n"}  # the preface, but no SETTINGS
    socks: dict[str, list[socket.socket]] = {"rest": [], "grpc": []}
    refused: Counter[str] = Counter()
    for proto, port in (("rest", http_port), ("grpc", grpc_port)):
        for _ in range(count):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(partial[proto])
            except OSError:
                refused[proto] += 1
                s.close()
                continue
            s.setblocking(False)
            socks[proto].append(s)
    time.sleep(seconds)
    out: dict[str, Any] = {"seconds": seconds, "per_port": count}
    for proto, group in socks.items():
        still_open = answered = closed = 0
        for s in group:
            try:
                data = s.recv(65536)
                if data:
                    answered += 1
                    try:  # answered: did it also close?
                        more = s.recv(65536)
                        closed += 0 if more else 1
                        still_open += 1 if more else 0
                    except BlockingIOError:
                        still_open += 1
                else:
                    closed += 1
            except BlockingIOError:
                still_open += 1
            except OSError:
                closed += 1
            finally:
                s.close()
        out[proto] = {"connected": len(group), "refused": refused[proto],
                      "still_open": still_open, "closed_by_server": closed,
                      "answered": answered}
    return out


# --- the run ---------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> dict[str, Any]:
    from modelrail.processes import stop

    for sub in ("logs", "tmp", "train"):
        (WORK / sub).mkdir(parents=True, exist_ok=True)
    prepare_models()
    t_start = time.monotonic()
    served = start_server(args.workers)
    pid = served.proc.pid
    known = process_tree(pid)  # every process of the server seen during the run

    def tree() -> dict[int, str]:
        now = process_tree(pid)
        known.update(now)
        return now

    report: dict[str, Any] = {"seed": args.seed, "requests_per_protocol": args.requests,
                              "workers": args.workers, "models": MODELS,
                              "max_request_bytes": MAX_REQUEST_BYTES,
                              "concurrency": args.concurrency, "protocols": {}}
    try:
        report["server_processes"] = len(tree())
        ports = {"rest": served.http_port, "grpc": served.grpc_port}
        baseline = {}
        for proto, port in ports.items():
            with GoodClient(proto, port, args.good_interval) as good:
                time.sleep(args.baseline_seconds)
            baseline[proto] = good.summary()
        report["rss_before"] = rss_bytes(tree())
        for proto, port in ports.items():
            deadline = time.monotonic() + args.phase_seconds
            attack_fn = attack_rest if proto == "rest" else attack_grpc
            with GoodClient(proto, port, args.good_interval) as good:
                attack = asyncio.run(attack_fn(port, args.requests, args.seed,
                                               args.concurrency, deadline))
            tree()
            errors = sum(c for a, c in attack.answers.items() if is_server_error(proto, a))
            report["protocols"][proto] = {
                "sent": attack.sent, "seconds": attack.seconds, "cut_short": attack.cut_short,
                "answers": dict(attack.answers.most_common()), "server_errors": errors,
                "server_error_cases": {case: sum(c for a, c in h.items()
                                                 if is_server_error(proto, a))
                                       for case, h in attack.by_case.items()
                                       if any(is_server_error(proto, a) for a in h)},
                "by_case": {case: dict(h) for case, h in sorted(attack.by_case.items())},
                "good_baseline": baseline[proto], "good_under_attack": good.summary(),
            }
            print(f"{proto}: {attack.sent} hostile requests in {attack.seconds:.1f}s, "
                  f"{errors} server errors; good client {good.summary()}", flush=True)
        with GoodClient("rest", served.http_port, args.good_interval) as good_rest, \
                GoodClient("grpc", served.grpc_port, args.good_interval) as good_grpc:
            report["slow_clients"] = slow_clients(served.http_port, served.grpc_port,
                                                  args.slow_clients, args.slow_seconds)
        report["slow_clients"]["good_rest"] = good_rest.summary()
        report["slow_clients"]["good_grpc"] = good_grpc.summary()
        time.sleep(1.0)
        report["server_alive"] = served.proc.poll() is None
        report["rss_after"] = rss_bytes(tree())
        report["server_processes_after"] = len(tree())
    finally:
        stop(served.proc)
    # nothing may be left behind: any process of the server seen during the run, its
    # private BentoML home, files in the temp dir it was given
    deadline = time.monotonic() + 10
    while still_alive(known) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {"processes": still_alive(known),
            "home": str(served.home) if served.home and served.home.exists() else None,
            "tmp_files": sorted(str(p.relative_to(served.tmpdir))
                                for p in served.tmpdir.rglob("*"))}
    report["left_behind"] = left
    if not any(left.values()):
        served.tmpdir.rmdir()
    log = served.log.read_text(errors="replace")
    report["server_log_tracebacks"] = log.count("Traceback (most recent call last)")
    report["duration_s"] = time.monotonic() - t_start
    report["machine"] = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}"
    return report


def _lat(s: dict[str, Any]) -> str:
    if not s.get("requests"):
        return "–"
    return f"{s['p50_ms']:.2f} / {s['p99_ms']:.2f} / {s['worst_ms']:.1f}"


def _hist(answers: dict[str, int], top: int = 8) -> str:
    items = sorted(answers.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{k}: {v}" for k, v in items[:top])
    return shown + (f", … ({len(items) - top} more)" if len(items) > top else "")


def markdown(r: dict[str, Any]) -> str:
    P = r["protocols"]
    protos = [p for p in ("rest", "grpc") if p in P]
    name = {"rest": "REST", "grpc": "gRPC"}
    slow = r["slow_clients"]
    mb = 1024 * 1024
    rows: list[tuple[str, Callable[[str], str]]] = [
        ("hostile requests sent", lambda p: f"{P[p]['sent']} in {P[p]['seconds']:.0f} s"
         + (" (cut short)" if P[p]["cut_short"] else "")),
        ("answers", lambda p: _hist(P[p]["answers"])),
        ("5xx / INTERNAL·UNKNOWN (target 0)", lambda p: str(P[p]["server_errors"])),
        ("cases that drew them", lambda p: ", ".join(
            f"{c} ({n})" for c, n in P[p]["server_error_cases"].items()) or "none"),
        ("good requests: quiet / under attack (failed)", lambda p: (
            f"{P[p]['good_baseline']['requests']} / {P[p]['good_under_attack']['requests']} "
            f"({P[p]['good_baseline']['failures']} / "
            f"{P[p]['good_under_attack']['failures']})")),
        ("good p50 / p99 / worst ms, quiet", lambda p: _lat(P[p]["good_baseline"])),
        ("good p50 / p99 / worst ms, under attack", lambda p: _lat(P[p]["good_under_attack"])),
        (f"slow clients still open after {slow['seconds']:.0f} s", lambda p: (
            f"{slow[p]['still_open']} of {slow[p]['connected']}"
            + (f" ({slow[p]['refused']} refused)" if slow[p]["refused"] else ""))),
        ("good p50 / p99 / worst ms, during slow clients (failed)", lambda p: (
            f"{_lat(slow['good_' + p])} ({slow['good_' + p]['failures']})")),
    ]
    lines = [
        f"Seed {r['seed']}, {r['requests_per_protocol']} hostile requests per protocol "
        f"({r['concurrency']} concurrent) against `{', '.join(r['models'])}` on one server "
        f"with {r['workers']} workers ({r['server_processes']} processes), request limit "
        f"{r['max_request_bytes'] // 1024} KiB, while one good client (its own process, one "
        f"request at a time) keeps calling; {r['machine']}; {r['duration_s']:.0f} s in all.",
        "",
        "| | " + " | ".join(name[p] for p in protos) + " |",
        "|---" * (len(protos) + 1) + "|",
    ]
    lines += [f"| {label} | " + " | ".join(fn(p) for p in protos) + " |" for label, fn in rows]
    left = r["left_behind"]
    lines += [
        "",
        f"Server RSS (main + workers): {r['rss_before'] / mb:.0f} MiB before the attacks, "
        f"{r['rss_after'] / mb:.0f} MiB after; server alive at the end: "
        f"{'yes' if r['server_alive'] else '**no**'}; tracebacks in its log: "
        f"{r['server_log_tracebacks']}; left behind after stop: "
        + ("nothing" if not any(left.values()) else f"**{left}**") + ".",
    ]
    return "\n".join(lines) + "\n"


def write_benchmarks(section: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{section}{END}"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = (text.rstrip() + "\n\n## Soak: hostile input (`benchmarks/soak.py`)\n\n"
                "Reproduce: `.venv/bin/python benchmarks/soak.py --write` (a few minutes; "
                "`--requests N` per protocol, `--seed S` replays a run exactly, "
                "`--json-out PATH` keeps every figure with per-case histograms). Every "
                "hostile request is the client's fault, so any 5xx / INTERNAL / UNKNOWN is "
                "a server bug; the good client's latencies show what an attack costs "
                "everyone else.\n\n" + block + "\n")
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10000,
                        help="hostile requests per protocol")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--write", action="store_true",
                        help="update the soak block of BENCHMARKS.md")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="hostile requests in flight per protocol")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--phase-seconds", type=float, default=180.0,
                        help="deadline of each attack phase (then it stops, cut short)")
    parser.add_argument("--good-interval", type=float, default=0.005,
                        help="pause between the good client's requests, seconds")
    parser.add_argument("--slow-clients", type=int, default=200,
                        help="stalled connections per port")
    parser.add_argument("--slow-seconds", type=float, default=15.0)
    args = parser.parse_args()

    report = run(args)
    section = markdown(report)
    print(section)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps(report, indent=2))
    if args.write:
        write_benchmarks(section)
    if any(report["left_behind"].values()):
        print(f"FAILED: left behind after stop: {report['left_behind']}", file=sys.stderr)
        return 3
    missed = [f"{p}: {v['server_errors']} server errors" for p, v in report["protocols"].items()
              if v["server_errors"]]
    missed += [f"{p}: {v['good_under_attack']['failures']} good requests failed"
               for p, v in report["protocols"].items() if v["good_under_attack"]["failures"]]
    if not report["server_alive"]:
        missed.append("the server died")
    if missed:
        print("targets missed: " + "; ".join(missed), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
