"""Every example model, through the real server, with stock clients: tritonclient HTTP
(JSON and binary tensors), tritonclient gRPC, and plain HTTP on the convenience route.
Answers must match scikit-learn within the registry's parity tolerance."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp

from modelrail.models.parity import TOL_ABS, TOL_REL
from tests.conftest import Example, Server

pytestmark = pytest.mark.slow
ROWS = 25


def _expected(ex: Example) -> dict[str, Any]:
    X = ex.split.X_test[:ROWS]
    if ex.card.task == "classification":
        return {"label": ex.estimator.predict(X), "probabilities": ex.estimator.predict_proba(X)}
    return {"predictions": ex.estimator.predict(X).reshape(-1, 1)}


def _check(ex: Example, got: dict[str, Any]) -> None:
    for name, want in _expected(ex).items():
        have = np.asarray(got[name])
        if name == "label":
            np.testing.assert_array_equal(have.reshape(-1), want, err_msg=f"{ex.ref} {name}")
        else:
            np.testing.assert_allclose(have.reshape(want.shape), want, rtol=TOL_REL,
                                       atol=TOL_ABS, err_msg=f"{ex.ref} {name}")


def _refs(examples: dict[str, Example]) -> list[str]:
    return sorted(examples)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_client_matches_sklearn(server: Server, examples: dict[str, Example],
                                     binary: bool) -> None:
    client = thttp.InferenceServerClient(server.http_url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    for ex in examples.values():
        x = ex.split.X_test[:ROWS].astype(np.float32)
        inp = thttp.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [thttp.InferRequestedOutput(o.name, binary_data=binary) for o in ex.card.outputs]
        res = client.infer(ex.card.name, [inp], model_version=ex.card.version, outputs=outs)
        assert res.get_response()["model_version"] == ex.card.version
        _check(ex, {o.name: res.as_numpy(o.name) for o in ex.card.outputs})


def test_grpc_client_matches_sklearn(server: Server, examples: dict[str, Example]) -> None:
    client = tgrpc.InferenceServerClient(server.grpc_target)
    assert client.is_server_live() and client.is_server_ready()
    for ex in examples.values():
        assert client.is_model_ready(ex.card.name, ex.card.version)
        x = ex.split.X_test[:ROWS].astype(np.float32)
        inp = tgrpc.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer(ex.card.name, [inp], model_version=ex.card.version)
        # raw in (tritonclient sends raw_input_contents), raw out
        assert len(res.get_response().raw_output_contents) == len(ex.card.outputs)
        _check(ex, {o.name: res.as_numpy(o.name) for o in ex.card.outputs})


def test_fp64_and_int_inputs_are_converted(server: Server, examples: dict[str, Example]) -> None:
    ex = examples["iris:1"]
    client = tgrpc.InferenceServerClient(server.grpc_target)
    x64 = ex.split.X_test[:ROWS]
    inp = tgrpc.InferInput("input", list(x64.shape), "FP64")
    inp.set_data_from_numpy(x64)
    res = client.infer("iris", [inp], model_version="1")
    _check(ex, {"label": res.as_numpy("label"), "probabilities": res.as_numpy("probabilities")})
    xi = np.array([[5, 3, 1, 0], [7, 3, 5, 2]], dtype=np.int32)
    inp = tgrpc.InferInput("input", [2, 4], "INT32")
    inp.set_data_from_numpy(xi)
    labels = client.infer("iris", [inp], model_version="1").as_numpy("label")
    np.testing.assert_array_equal(labels, ex.estimator.predict(xi.astype(np.float64)))


def test_convenience_route_with_records(server: Server, examples: dict[str, Example]) -> None:
    for ex in examples.values():
        names = ex.card.inputs[0].feature_names
        X = ex.split.X_test[:ROWS]
        records = [dict(zip(names, row.tolist(), strict=True)) for row in X]
        r = httpx.post(f"{server.http_url}/predict/{ex.card.name}/{ex.card.version}",
                       json={"records": records})
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        if ex.card.task == "classification":
            proba = np.array([[p["probabilities"][n] for n in ex.card.target_names]
                              for p in preds])
            _check(ex, {"label": [p["label"] for p in preds], "probabilities": proba})
            assert preds[0]["class_name"] in ex.card.target_names
        else:
            _check(ex, {"predictions": [p["prediction"] for p in preds]})


def test_metadata_and_default_version(server: Server, examples: dict[str, Example]) -> None:
    meta = httpx.get(f"{server.http_url}/v2/models/iris").json()
    assert meta["versions"] == ["1", "2", "3"] and meta["platform"] == "onnx_onnxv1"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    # without a version, the highest served version answers
    assert meta["parameters"]["sha256"] == examples["iris:3"].card.sha256
    server_meta = httpx.get(f"{server.http_url}/v2").json()
    assert "binary_tensor_data" in server_meta["extensions"]
    grpc_meta = tgrpc.InferenceServerClient(server.grpc_target).get_model_metadata(
        "diabetes", "1", as_json=True)
    assert grpc_meta["outputs"] == [{"name": "predictions", "datatype": "FP32",
                                     "shape": ["-1", "1"]}]
    assert httpx.get(f"{server.http_url}/v2/models/iris/versions/1/ready").json()["ready"]


def test_standard_grpc_health_service(server: Server) -> None:
    from tests.serving.test_lifecycle import grpc_health

    assert grpc_health(server) == b"\x08\x01"  # grpc.health.v1: SERVING
