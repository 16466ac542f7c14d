"""Metrics at /metrics (by model, version, protocol and outcome; failed gRPC calls count as
failures; latency buckets fine enough for a millisecond p99; prediction distribution) and
isolation: a bad request among concurrent good ones fails alone."""

from __future__ import annotations

import asyncio
import re
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc

from modelrail.serving._proto import oip_v2_pb2 as pb
from modelrail.serving.metrics import FLUSH_SECONDS
from tests.conftest import Example, Server

pytestmark = pytest.mark.slow


def scrape(server: Server) -> dict[str, float]:
    # metrics are flushed every FLUSH_SECONDS per worker: wait out a few intervals
    time.sleep(5 * FLUSH_SECONDS)
    text = httpx.get(f"{server.http_url}/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("modelrail_"):
            key, _, value = line.rpartition(" ")
            out[key] = out.get(key, 0.0) + float(value)
    return out


def total(metrics: dict[str, float], name: str, **labels: str) -> float:
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for k, v in metrics.items()
               if k.startswith(name + "{") and all(w in k for w in want))


def test_request_counts_by_outcome_and_protocol(server: Server, examples: dict[str, Example],
                                                ) -> None:
    before = scrape(server)
    row = [5.1, 3.5, 1.4, 0.2]
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row}]}
    for _ in range(3):
        assert httpx.post(f"{server.http_url}/v2/models/iris/versions/2/infer",
                          json=body).status_code == 200
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": row[:3]}]}
    assert httpx.post(f"{server.http_url}/v2/models/iris/versions/2/infer",
                      json=bad).status_code == 400
    client = tgrpc.InferenceServerClient(server.grpc_target)
    inp = tgrpc.InferInput("input", [1, 4], "FP32")
    inp.set_data_from_numpy(np.array([row], dtype=np.float32))
    client.infer("iris", [inp], model_version="2")
    with grpc.insecure_channel(server.grpc_target) as ch:
        msg = pb.ModelInferRequest(model_name="iris", model_version="2")
        msg.inputs.add(name="input", datatype="FP32", shape=[1, 4])
        msg.raw_input_contents.append(b"\x00" * 3)
        with pytest.raises(grpc.RpcError):
            ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                msg.SerializeToString(), timeout=5)
    after = scrape(server)

    def delta(**labels: str) -> float:
        return (total(after, "modelrail_requests_total", **labels)
                - total(before, "modelrail_requests_total", **labels))

    assert delta(model="iris", version="2", protocol="rest", outcome="2xx") == 3
    assert delta(model="iris", version="2", protocol="rest", outcome="4xx") == 1
    assert delta(model="iris", version="2", protocol="grpc", outcome="OK") == 1
    # a failed gRPC call counts, under its status code
    assert delta(model="iris", version="2", protocol="grpc", outcome="INVALID_ARGUMENT") == 1
    # latency histogram has sub-millisecond resolution
    buckets = {m.group(1) for k in after
               if (m := re.search(r'modelrail_request_duration_seconds_bucket\{.*le="([^"]+)"',
                                  k))}
    assert {"0.0005", "0.001", "0.0015", "0.002", "0.005"} <= buckets
    assert total(after, "modelrail_request_duration_seconds_count", model="iris",
                 version="2", protocol="grpc") >= 2


def test_prediction_distribution(server: Server, examples: dict[str, Example]) -> None:
    before = scrape(server)
    ex = examples["iris:1"]
    X = ex.split.X_test
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": list(X.shape),
                        "data": X.reshape(-1).tolist()}]}
    assert httpx.post(f"{server.http_url}/v2/models/iris/versions/1/infer",
                      json=body).status_code == 200
    after = scrape(server)
    predicted = ex.estimator.predict(X)
    for cls in (0, 1, 2):
        d = (total(after, "modelrail_predictions_total", model="iris", version="1",
                   value=str(cls))
             - total(before, "modelrail_predictions_total", model="iris", version="1",
                     value=str(cls)))
        assert d == int((predicted == cls).sum())
    reg = examples["diabetes:1"]
    body = {"inputs": [{"name": "input", "datatype": "FP64", "shape": list(reg.split.X_test.shape),
                        "data": reg.split.X_test.reshape(-1).tolist()}]}
    assert httpx.post(f"{server.http_url}/v2/models/diabetes/versions/1/infer",
                      json=body).status_code == 200
    bins = scrape(server)
    counted = sum(total(bins, "modelrail_predictions_total", model="diabetes", version="1",
                        value=f"d{i}") for i in range(10))
    assert counted >= len(reg.split.X_test)


def test_in_flight_gauge_and_model_info(server: Server, examples: dict[str, Example]) -> None:
    m = scrape(server)
    assert 'modelrail_requests_in_flight{protocol="rest"}' in m
    sha = examples["iris:2"].card.sha256
    assert any(k.startswith("modelrail_model_info{") and f'sha256="{sha}"' in k
               and 'ready="true"' in k for k in m)


def test_bad_request_fails_alone_among_concurrent_good_ones(server: Server,
                                                            examples: dict[str, Example],
                                                            ) -> None:
    ex = examples["breast-cancer:2"]
    good_rows = ex.split.X_test[:40]
    expected = ex.estimator.predict(good_rows)

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=20) as client:
            tasks = []
            for i, row in enumerate(good_rows):
                tasks.append(client.post("/v2/models/breast-cancer/versions/2/infer", json={
                    "inputs": [{"name": "input", "datatype": "FP64", "shape": [1, 30],
                                "data": row.tolist()}]}))
                if i % 4 == 0:  # interleave bad requests of several kinds
                    tasks.append(client.post("/v2/models/breast-cancer/versions/2/infer",
                                             json={"inputs": [{
                                                 "name": "input", "datatype": "FP64",
                                                 "shape": [1, 30],
                                                 "data": [*row.tolist()[:29], "x"]}]}))
            return list(await asyncio.gather(*tasks))

    responses = asyncio.run(run())
    good = [r for r in responses if r.status_code == 200]
    bad = [r for r in responses if r.status_code != 200]
    assert len(good) == len(good_rows) and all(r.status_code == 400 for r in bad)
    labels = sorted((r.json()["outputs"][0]["data"][0]) for r in good)
    assert labels == sorted(expected.tolist())
