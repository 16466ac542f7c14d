"""Stock clients' documented calls against the real server (two workers, every example
model), answers compared with onnxruntime's own for the same rows:

- tritonclient, HTTP and gRPC: `infer` (JSON and binary tensors; gRPC read with
  `as_numpy`), HTTP requests compressed with gzip and deflate,
  `get_inference_statistics` (exact before/after deltas for the requests sent here) and
  `get_model_repository_index` (every served model, READY);
- KServe's own Python SDK (`kserve` from PyPI, pinned, in a virtual environment of its
  own made with the pinned uv under .modelrail/clients/venvs/kserve, driven by
  tests/serving/clients/kserve_driver.py as a subprocess): `InferenceGRPCClient` with
  typed `contents` (which must be answered in typed `contents`: KServe's SDK reads
  `.data` from them) and with raw bytes, and `InferenceRESTClient` (v2), JSON and binary;
- protocol details stock clients rely on: unknown REST routes answer 404 with a JSON
  `{"error": ...}`, model metadata's `platform` is `onnx_onnxv1`, and the same output
  requested twice is refused (400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from modelrail.serving.metrics import FLUSH_SECONDS
from tests.conftest import Example, Server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KSERVE_PINS = ["kserve==0.21.0"]
KSERVE_VENV = ROOT / ".modelrail" / "clients" / "venvs" / "kserve"
KSERVE_DRIVER = Path(__file__).parent / "clients" / "kserve_driver.py"
ROWS = 5
# onnxruntime in the server and here run the same graph on the same rows: equal but for
# float rounding of a different thread layout
RTOL, ATOL = 1e-6, 1e-7


# --- expected answers: onnxruntime on the registered graph --------------------------------

def _rows(ex: Example, n: int = ROWS, offset: int = 0) -> np.ndarray:
    return np.ascontiguousarray(ex.split.X_test[offset:offset + n], dtype=np.float32)


def _onnx_answer(ex: Example, x: np.ndarray) -> dict[str, np.ndarray]:
    from modelrail.models.registry import Registry
    from modelrail.models.runtime import new_session

    _, onnx_bytes = Registry().read_verified(ex.card.name, ex.card.version)
    session = new_session(onnx_bytes)
    names = [o.name for o in ex.card.outputs]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


def _assert_answer(ex: Example, x: np.ndarray, got: dict[str, Any], where: str) -> None:
    want = _onnx_answer(ex, x)
    assert sorted(got) == sorted(want), f"{where}: outputs {sorted(got)}"
    for name, w in want.items():
        have = np.asarray(got[name])
        assert have.size == w.size, f"{where} {name}: {have.size} values, want {w.size}"
        if name == "label":
            np.testing.assert_array_equal(have.reshape(-1), w.reshape(-1),
                                          err_msg=f"{where} {name}")
        else:
            np.testing.assert_allclose(have.reshape(w.shape), w, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{where} {name}")


def _latest(examples: dict[str, Example], name: str) -> Example:
    return max((e for e in examples.values() if e.card.name == name),
               key=lambda e: int(e.card.version))


# --- tritonclient ------------------------------------------------------------------------

def _http(server: Server) -> thttp.InferenceServerClient:
    return thttp.InferenceServerClient(server.http_url.removeprefix("http://"))


def _grpc(server: Server) -> tgrpc.InferenceServerClient:
    return tgrpc.InferenceServerClient(server.grpc_target)


def _http_infer(server: Server, ex: Example, x: np.ndarray, *, binary: bool,
                compression: str | None = None) -> dict[str, np.ndarray]:
    inp = thttp.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    outs = [thttp.InferRequestedOutput(o.name, binary_data=binary) for o in ex.card.outputs]
    res = _http(server).infer(ex.card.name, [inp], model_version=ex.card.version,
                              outputs=outs, request_compression_algorithm=compression)
    assert res.get_response()["model_version"] == ex.card.version
    return {o.name: res.as_numpy(o.name) for o in ex.card.outputs}


def _grpc_infer(server: Server, ex: Example, x: np.ndarray) -> dict[str, np.ndarray]:
    inp = tgrpc.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    res = _grpc(server).infer(ex.card.name, [inp], model_version=ex.card.version)
    assert res.get_response().model_version == ex.card.version
    return {o.name: res.as_numpy(o.name) for o in ex.card.outputs}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_infer(server: Server, examples: dict[str, Example],
                                 binary: bool) -> None:
    for ex in examples.values():
        x = _rows(ex)
        _assert_answer(ex, x, _http_infer(server, ex, x, binary=binary),
                       f"tritonclient HTTP {ex.ref}")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_compressed_request(server: Server, examples: dict[str, Example],
                                              algorithm: str, binary: bool) -> None:
    ex = examples["breast-cancer:1"]  # 30 features: a body worth compressing
    x = _rows(ex, 20)
    got = _http_infer(server, ex, x, binary=binary, compression=algorithm)
    _assert_answer(ex, x, got, f"tritonclient HTTP {algorithm}")


def test_tritonclient_grpc_infer_as_numpy(server: Server, examples: dict[str, Example]
                                          ) -> None:
    for ex in examples.values():
        x = _rows(ex)
        got = _grpc_infer(server, ex, x)
        for o in ex.card.outputs:
            assert isinstance(got[o.name], np.ndarray) and got[o.name].shape[0] == ROWS
        _assert_answer(ex, x, got, f"tritonclient gRPC {ex.ref}")


def _stats_from_http(server: Server, ex: Example) -> dict[str, int]:
    body = _http(server).get_inference_statistics(model_name=ex.card.name)
    entries = [s for s in body["model_stats"]
               if s["name"] == ex.card.name and s["version"] == ex.card.version]
    assert len(entries) == 1, body
    s = entries[0]
    inf = s["inference_stats"]
    return {"success": int(inf["success"]["count"]), "success_ns": int(inf["success"]["ns"]),
            "fail": int(inf.get("fail", {}).get("count", 0)),
            "compute_infer_ns": int(inf["compute_infer"]["ns"]),
            "inference_count": int(s["inference_count"]),
            "execution_count": int(s["execution_count"]),
            "last_inference": int(s["last_inference"])}


def _stats_from_grpc(server: Server, ex: Example) -> dict[str, int]:
    res = _grpc(server).get_inference_statistics(model_name=ex.card.name)
    entries = [s for s in res.model_stats
               if s.name == ex.card.name and s.version == ex.card.version]
    assert len(entries) == 1, res
    s = entries[0]
    inf = s.inference_stats
    return {"success": inf.success.count, "success_ns": inf.success.ns,
            "fail": inf.fail.count, "compute_infer_ns": inf.compute_infer.ns,
            "inference_count": s.inference_count, "execution_count": s.execution_count,
            "last_inference": s.last_inference}


def _settled(read: Callable[[], dict[str, int]], want_success: int,
             timeout: float = 5.0) -> dict[str, int]:
    """Statistics are gathered from every worker; wait until the count settles."""
    deadline = time.monotonic() + timeout
    while True:
        got = read()
        if got["success"] >= want_success or time.monotonic() > deadline:
            time.sleep(3 * FLUSH_SECONDS)  # every worker's last flush, fail counts included
            return read()
        time.sleep(0.1)


def test_tritonclient_inference_statistics(server: Server, examples: dict[str, Example]
                                           ) -> None:
    ex = examples["iris:2"]
    time.sleep(3 * FLUSH_SECONDS)  # earlier tests' requests flushed by every worker
    before_http, before_grpc = _stats_from_http(server, ex), _stats_from_grpc(server, ex)
    assert before_http["success"] == before_grpc["success"]
    rows_per_request = [3, 1, 4, 2, 5, 1]  # distinct counts: requests ≠ rows
    for i, n in enumerate(rows_per_request):
        x = _rows(ex, n, offset=i)
        if i % 3 == 0:
            _http_infer(server, ex, x, binary=False)
        elif i % 3 == 1:
            _http_infer(server, ex, x, binary=True)
        else:
            _grpc_infer(server, ex, x)
    # a failed request counts as a failure, not a success
    bad = tgrpc.InferInput("input", [1, 3], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException):
        _grpc(server).infer(ex.card.name, [bad], model_version=ex.card.version)

    n_req, n_rows = len(rows_per_request), sum(rows_per_request)
    for read, before in ((lambda: _stats_from_http(server, ex), before_http),
                         (lambda: _stats_from_grpc(server, ex), before_grpc)):
        after = _settled(read, before["success"] + n_req)
        delta = {k: after[k] - before[k] for k in after}
        assert delta["success"] == n_req, (before, after)
        assert delta["inference_count"] == n_rows, (before, after)
        assert delta["execution_count"] == n_req, (before, after)
        assert delta["success_ns"] > 0 and delta["compute_infer_ns"] > 0, (before, after)
        assert after["success"] > 0 and after["last_inference"] > 0
        assert after["last_inference"] >= before["last_inference"]
        assert delta["fail"] >= 1, (before, after)


def test_tritonclient_repository_index(server: Server, examples: dict[str, Example]) -> None:
    served = {(e.card.name, e.card.version) for e in examples.values()}
    index = _http(server).get_model_repository_index()
    http_models = {(m["name"], m["version"]): m["state"] for m in index}
    grpc_models = {(m.name, m.version): m.state
                   for m in _grpc(server).get_model_repository_index().models}
    for listing in (http_models, grpc_models):
        assert set(listing) == served, listing
        assert set(listing.values()) == {"READY"}, listing


# --- expected protocol details ------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", "/no/such/route"),
    ("POST", "/v2/models/iris/versions/1/nope"),
    ("GET", "/v3/health/ready"),
])
def test_unknown_rest_route_is_json_404(server: Server, method: str, path: str) -> None:
    r = httpx.request(method, f"{server.http_url}{path}", content=b"{}")
    assert r.status_code == 404, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]


def test_model_metadata_platform(server: Server) -> None:
    assert httpx.get(f"{server.http_url}/v2/models/iris").json()["platform"] == "onnx_onnxv1"
    assert _http(server).get_model_metadata("iris", "1")["platform"] == "onnx_onnxv1"
    assert _grpc(server).get_model_metadata("diabetes", "1").platform == "onnx_onnxv1"


def test_same_output_twice_is_refused(server: Server) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                        "data": [5.1, 3.5, 1.4, 0.2]}],
            "outputs": [{"name": "label"}, {"name": "label"}]}
    r = httpx.post(f"{server.http_url}/v2/models/iris/versions/1/infer", json=body)
    assert r.status_code == 400, r.text
    assert "label" in r.json()["error"]
    inp = tgrpc.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))
    outs = [tgrpc.InferRequestedOutput("label"), tgrpc.InferRequestedOutput("label")]
    with pytest.raises(InferenceServerException) as err:
        _grpc(server).infer("iris", [inp], model_version="1", outputs=outs)
    assert err.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT), err.value


# --- KServe's Python SDK, from its own virtual environment --------------------------------

def kserve_python() -> Path:
    """The kserve venv's interpreter, created with the pinned uv on first use (PyPI)."""
    py = KSERVE_VENV / "bin" / "python"
    stamp = KSERVE_VENV / ".installed"
    wanted = "\n".join(KSERVE_PINS)
    if not (py.exists() and stamp.exists() and stamp.read_text() == wanted):
        uv = ROOT / ".venv" / "bin" / "uv"
        subprocess.run([str(uv), "venv", "-q", "--python", "3.11", str(KSERVE_VENV)],
                       check=True)
        subprocess.run([str(uv), "pip", "install", "-q", "--python", str(py), *KSERVE_PINS],
                       check=True, timeout=600)
        stamp.write_text(wanted)
    return py


@pytest.fixture(scope="module")
def kserve_run(server: Server, examples: dict[str, Example]) -> dict[str, Any]:
    try:
        py = kserve_python()
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.fail(f"cannot install {KSERVE_PINS} with uv into {KSERVE_VENV}: {exc}")
    cases = [{"model": e.card.name, "version": e.card.version, "rows": _rows(e).tolist()}
             for e in examples.values()]
    spec = {"http_url": server.http_url, "grpc_target": server.grpc_target, "cases": cases}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run([str(py), str(KSERVE_DRIVER)], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kserve_version"] == KSERVE_PINS[0].split("==")[1], result["kserve_version"]
    return result


def _mode(kserve_run: dict[str, Any], ex: Example, mode: str) -> Any:
    case = next(c for c in kserve_run["cases"]
                if (c["model"], c["version"]) == (ex.card.name, ex.card.version))
    got = case[mode]
    assert "error" not in got, f"KServe {mode} {ex.ref}: {got['error']}\n{got.get('trace')}"
    return got


def test_kserve_health(kserve_run: dict[str, Any]) -> None:
    assert kserve_run["health"] == dict.fromkeys(kserve_run["health"], True), \
        kserve_run["health"]


def test_kserve_grpc_typed_contents_answered_typed(
        kserve_run: dict[str, Any], examples: dict[str, Example]) -> None:
    """The KServe SDK's typed request (`binary_data=False`): the answer comes in typed
    `contents`, which is where the SDK's `.data` reads it from."""
    for ex in examples.values():
        wire = _mode(kserve_run, ex, "grpc_typed_wire")
        assert wire["request_used_raw"] is False
        assert wire["raw_output_contents"] == 0, f"{ex.ref}: typed in, raw out: {wire}"
        want_field = {"label": "int64_contents", "probabilities": "fp32_contents",
                      "predictions": "fp32_contents"}
        assert wire["contents"] == {o.name: [want_field[o.name]] for o in ex.card.outputs}
        got = _mode(kserve_run, ex, "grpc_typed")
        assert got["model_version"] == ex.card.version
        _assert_answer(ex, _rows(ex), {n: o["data"] for n, o in got["outputs"].items()},
                       f"KServe gRPC typed .data {ex.ref}")
        _assert_answer(ex, _rows(ex), {n: o["as_numpy"] for n, o in got["outputs"].items()},
                       f"KServe gRPC typed as_numpy {ex.ref}")


def test_kserve_grpc_raw(kserve_run: dict[str, Any], examples: dict[str, Example]) -> None:
    for ex in examples.values():
        got = _mode(kserve_run, ex, "grpc_raw")
        assert got["model_version"] == ex.card.version
        _assert_answer(ex, _rows(ex), {n: o["as_numpy"] for n, o in got["outputs"].items()},
                       f"KServe gRPC raw {ex.ref}")


@pytest.mark.parametrize("mode", ["rest_json", "rest_binary"])
def test_kserve_rest_v2(kserve_run: dict[str, Any], examples: dict[str, Example],
                        mode: str) -> None:
    # the SDK's v2 URL names no version: the highest served version answers
    for ex in examples.values():
        latest = _latest(examples, ex.card.name)
        got = _mode(kserve_run, ex, mode)
        assert got["model_name"] == ex.card.name
        outputs = got["outputs"]
        _assert_answer(latest, _rows(ex), {n: o["data"] for n, o in outputs.items()},
                       f"KServe REST {mode} .data {ex.ref}")
        _assert_answer(latest, _rows(ex), {n: o["as_numpy"] for n, o in outputs.items()},
                       f"KServe REST {mode} as_numpy {ex.ref}")

