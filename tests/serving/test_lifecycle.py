"""Readiness means ready, integrity is checked at load, faults surface as server errors,
and shutdown drains in-flight requests — each on a real server of its own."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from modelrail.models import bento_store
from modelrail.processes import stop
from tests.conftest import Example, Server, start_server
from tests.models.helpers import tamper_first_float_initializer

pytestmark = pytest.mark.slow
ROW = np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32)
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": ROW[0].tolist()}]}


def grpc_health(server: Server) -> bytes:
    """Call the standard grpc.health.v1.Health/Check (empty request = whole server)."""
    with grpc.insecure_channel(server.grpc_target) as ch:
        return bytes(ch.unary_unary("/grpc.health.v1.Health/Check")(b"", timeout=5))


def _wait_live(server: Server, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.alive(), server.log.read_text()[-3000:]
        try:
            if httpx.get(f"{server.http_url}/v2/health/live", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server never became live")


def _not_ready_server(tmp_path: Path, models: list[str], **env: str) -> Server:
    server = start_server(models, tmp_path, wait=False, extra_env=env)
    _wait_live(server)
    return server


def test_never_ready_model_keeps_the_server_unready(tmp_path: Path,
                                                    examples: dict[str, Example]) -> None:
    server = _not_ready_server(tmp_path, ["iris:1", "iris:2"],
                               MODELRAIL_FAULTS=json.dumps({"iris:1": {"never_ready": True}}))
    try:
        time.sleep(1.0)
        ready = httpx.get(f"{server.http_url}/v2/health/ready")
        assert ready.status_code == 503 and "iris:1" in ready.json()["errors"]
        assert httpx.get(f"{server.http_url}/readyz").status_code == 503  # BentoML's probe
        assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
        assert httpx.get(f"{server.http_url}/v2/models/iris/versions/1/ready").status_code == 503
        assert httpx.get(f"{server.http_url}/v2/models/iris/versions/2/ready").status_code == 200
        r = httpx.post(f"{server.http_url}/v2/models/iris/versions/1/infer", json=BODY)
        assert r.status_code == 503 and "not ready" in r.json()["error"]
        client = tgrpc.InferenceServerClient(server.grpc_target)
        assert client.is_server_live() and not client.is_server_ready()
        assert grpc_health(server) == b"\x08\x02"  # grpc.health.v1: NOT_SERVING
        assert not client.is_model_ready("iris", "1") and client.is_model_ready("iris", "2")
    finally:
        stop(server.proc)


def test_sha_pin_mismatch_is_refused_naming_both_hashes(tmp_path: Path,
                                                        examples: dict[str, Example]) -> None:
    wrong = examples["iris:2"].card.sha256
    server = _not_ready_server(tmp_path, [f"iris:1@sha256:{wrong}"])
    try:
        ready = httpx.get(f"{server.http_url}/v2/health/ready")
        assert ready.status_code == 503
        message = ready.json()["errors"]["iris:1"]
        assert wrong in message and examples["iris:1"].card.sha256 in message
    finally:
        stop(server.proc)


def test_tampered_model_file_is_refused(tmp_path: Path, examples: dict[str, Example]) -> None:
    import bentoml

    home = tmp_path / "bentoml"
    shutil.copytree(os.environ["BENTOML_HOME"], home)
    stored = Path(bentoml.models.get("iris:1").path_of(bento_store.ONNX_FILE))
    copy = home / stored.relative_to(os.environ["BENTOML_HOME"])
    copy.write_bytes(tamper_first_float_initializer(copy.read_bytes()))
    server = _not_ready_server(tmp_path, ["iris:1"], BENTOML_HOME=str(home))
    try:
        ready = httpx.get(f"{server.http_url}/v2/health/ready")
        assert ready.status_code == 503
        message = ready.json()["errors"]["iris:1"]
        assert "sha256 mismatch" in message and examples["iris:1"].card.sha256 in message
    finally:
        stop(server.proc)


def test_error_fault_is_a_server_error_on_both_protocols(tmp_path: Path,
                                                         examples: dict[str, Example]) -> None:
    server = start_server(["iris:2"], tmp_path,
                          extra_env={"MODELRAIL_FAULTS": '{"iris:2": {"error_rate": 1.0}}'})
    try:
        r = httpx.post(f"{server.http_url}/v2/models/iris/infer", json=BODY)
        assert r.status_code == 500 and "injected fault" in r.json()["error"]
        inp = tgrpc.InferInput("input", [1, 4], "FP32")
        inp.set_data_from_numpy(ROW)
        with grpc.insecure_channel(server.grpc_target):
            try:
                tgrpc.InferenceServerClient(server.grpc_target).infer("iris", [inp])
                raise AssertionError("infer should have failed")
            except Exception as exc:
                assert "StatusCode.INTERNAL" in str(exc)
        time.sleep(0.5)  # metrics flush every 0.1 s
        text = httpx.get(f"{server.http_url}/metrics").text
        assert 'outcome="5xx"' in text and 'outcome="INTERNAL"' in text
    finally:
        stop(server.proc)


def test_shutdown_drains_in_flight_requests(tmp_path: Path,
                                            examples: dict[str, Example]) -> None:
    server = start_server(["iris:2"], tmp_path,
                          extra_env={"MODELRAIL_FAULTS": '{"iris:2": {"latency_ms": 2000}}'})
    results: dict[str, Any] = {}

    def rest() -> None:
        try:
            results["rest"] = httpx.post(f"{server.http_url}/v2/models/iris/infer", json=BODY,
                                         timeout=20).status_code
        except Exception as exc:
            results["rest"] = repr(exc)

    def grpc_call() -> None:
        try:
            inp = tgrpc.InferInput("input", [1, 4], "FP32")
            inp.set_data_from_numpy(ROW)
            res = tgrpc.InferenceServerClient(server.grpc_target).infer("iris", [inp])
            results["grpc"] = res.as_numpy("label").tolist()
        except Exception as exc:
            results["grpc"] = repr(exc)

    threads = [threading.Thread(target=rest), threading.Thread(target=grpc_call)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # both requests are now in flight (each takes 2 s)
    code = stop(server.proc, timeout=20)
    for t in threads:
        t.join(25)
    assert results == {"rest": 200, "grpc": [0]}, server.log.read_text()[-3000:]
    assert code is not None and not server.alive()
