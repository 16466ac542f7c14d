"""The shadow phase, serving side (serving/shadow.py): MODELRAIL_SHADOW parsed and written
back, the mirror's sampling and bounded queue, the comparison rules; then real servers — a
stable one mirroring to a canary (REST and gRPC answered by stable, pairs and
disagreements counted on stable, the mirrored requests counted route="shadow" on the
canary), mirrored traffic sent back to stable (refused 409: outcome "off"), and a
canary that cannot be reached (outcome "failed", users unaffected)."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from modelrail.errors import InvalidInputError
from modelrail.serving import metrics
from modelrail.serving._proto import oip_v2_pb2 as pb
from modelrail.serving.config import Limits, ServingConfig, ShadowSettings, parse_shadow
from modelrail.serving.errors import InferenceError, Kind
from modelrail.serving.inference import InputTensor, OutputTensor
from modelrail.serving.rest import decode_infer
from modelrail.serving.shadow import (
    SHADOW_FROM_HEADER,
    SHADOW_HEADER,
    Mirror,
    Sample,
    count_disagreements,
    encode_request,
    judge,
    refuse_loop,
)
from tests.conftest import Example, Server, start_server

FULL = ("percent=20,target=http://127.0.0.1:8080,host=iris.models.example.com,queue=256,"
        "concurrency=4,timeout=2")


# --- MODELRAIL_SHADOW ----------------------------------------------------------------------

def test_settings_parse_and_round_trip() -> None:
    s = parse_shadow(FULL)
    assert s == ShadowSettings(percent=20.0, target="http://127.0.0.1:8080",
                               host="iris.models.example.com", queue=256, concurrency=4,
                               timeout=2.0)
    assert s.to_env() == FULL
    minimal = parse_shadow("percent=100,target=https://gw.example.com/")
    assert minimal == ShadowSettings(percent=100.0, target="https://gw.example.com")
    assert minimal.to_env() == ("percent=100,target=https://gw.example.com,queue=256,"
                                "concurrency=4,timeout=2")
    odd = ShadowSettings(percent=33.333333333333336, target="http://[::1]:9", queue=1,
                         concurrency=64, timeout=0.05)
    assert parse_shadow(odd.to_env()) == odd
    assert parse_shadow(None) is None and parse_shadow("") is None
    assert parse_shadow(" percent = 5 , target = http://gw ") == ShadowSettings(
        percent=5.0, target="http://gw")


def test_serving_config_reads_and_writes_the_variable() -> None:
    env = {"MODELRAIL_MODELS": "iris:1", "MODELRAIL_SHADOW": FULL}
    config = ServingConfig.from_env(env)
    assert config.shadow == parse_shadow(FULL)
    assert config.to_env()["MODELRAIL_SHADOW"] == FULL
    assert ServingConfig.from_env(config.to_env()) == config
    plain = ServingConfig.from_env({"MODELRAIL_MODELS": "iris:1"})
    assert plain.shadow is None and "MODELRAIL_SHADOW" not in plain.to_env()


@pytest.mark.parametrize("raw,fragment", [
    ("target=http://gw", "percent is missing"),
    ("percent=10", "target is missing"),
    ("percent=0,target=http://gw", "percent 0.0 is out of range"),
    ("percent=100.5,target=http://gw", "percent 100.5 is out of range"),
    ("percent=nan,target=http://gw", "percent nan is out of range"),
    ("percent=ten,target=http://gw", "percent 'ten' is not a number"),
    ("percent=10,target=gw:8080", "target 'gw:8080' is not a base URL"),
    ("percent=10,target=ftp://gw", "target 'ftp://gw' is not a base URL"),
    ("percent=10,target=http://gw/v2", "is not a base URL"),
    ("percent=10,target=http://gw:99999", "is not a base URL"),
    ("percent=10,target=http://u:p@gw", "is not a base URL"),
    ("percent=10,target=http://gw,host=a_b", "host 'a_b' is not a host name"),
    ("percent=10,target=http://gw,host=", "key 'host' has no value"),
    ("percent=10,target=http://gw,queue=0", "queue 0 is out of range"),
    ("percent=10,target=http://gw,queue=100001", "queue 100001 is out of range"),
    ("percent=10,target=http://gw,queue=1.5", "queue '1.5' is not an integer"),
    ("percent=10,target=http://gw,queue=" + "9" * 5000, "is out of range"),
    ("percent=10,target=http://gw,concurrency=65", "concurrency 65 is out of range"),
    ("percent=10,target=http://gw,concurrency=-1", "concurrency '-1' is not an integer"),
    ("percent=10,target=http://gw,timeout=0", "timeout 0.0 is out of range"),
    ("percent=10,target=http://gw,timeout=61", "timeout 61.0 is out of range"),
    ("percent=10,target=http://gw,timeout=soon", "timeout 'soon' is not a number"),
    ("percent=10,target=http://gw,retries=3", "unknown key 'retries'"),
    ("percent=10,percent=20,target=http://gw", "key 'percent' is given twice"),
    ("percent=10,target=http://gw,queue", "'queue' is not KEY=VALUE"),
])
def test_bad_settings_say_what_and_where(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_shadow(raw)
    message = str(info.value)
    assert fragment in message and message.startswith("MODELRAIL_SHADOW: ")
    assert "accepted: " in message


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(InvalidInputError, match="concurrency 0 is out of range"):
        ShadowSettings(percent=10, target="http://gw", concurrency=0)
    with pytest.raises(InvalidInputError, match="not a base URL"):
        ShadowSettings(percent=10, target="http://gw/")


# --- the mirror's offer: sampled, bounded, never waiting ----------------------------------

def _flushed(name: str, **labels: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _offer(mirror: Mirror, model: str, n: int, *, output: str = "label") -> None:
    x = np.zeros((1, 4), dtype=np.float32)
    for _ in range(n):
        mirror.offer(model=model, version="1", task="classification",
                     inputs=[InputTensor(name="input", datatype="FP32", shape=[1, 4],
                                         array=x)],
                     outputs=[OutputTensor(name=output, datatype="INT64", shape=[1],
                                           array=np.zeros(1, dtype=np.int64))])


def test_offer_samples_by_percent_and_never_waits() -> None:
    assert not inspect.iscoroutinefunction(Mirror.offer)
    mirror = Mirror(ShadowSettings(percent=20, target="http://127.0.0.1:9", queue=10_000))
    _offer(mirror, "unit-sampled", 4000)
    assert 650 <= mirror._queue.qsize() <= 950  # 800 expected; 99.99 % within
    assert _flushed("modelrail_shadow_queue_depth") == mirror._queue.qsize()
    before = mirror._queue.qsize()
    _offer(mirror, "unit-sampled", 100, output="probabilities")  # nothing to compare with
    assert mirror._queue.qsize() == before
    every = Mirror(ShadowSettings(percent=100, target="http://127.0.0.1:9", queue=1000))
    _offer(every, "unit-sampled", 400)
    assert every._queue.qsize() == 400


def test_sampling_does_not_alias_with_clients_cycling_through_inputs() -> None:
    """A client replaying 10 inputs in turn at 20 %: every input gets mirrored (a stride of
    5 would only ever mirror two of them, and could hide a candidate wrong on the rest)."""
    mirror = Mirror(ShadowSettings(percent=20, target="http://127.0.0.1:9", queue=10_000))
    for n in range(2000):
        x = np.full((1, 4), n % 10, dtype=np.float32)
        mirror.offer(model="unit-cycle", version="1", task="classification",
                     inputs=[InputTensor(name="input", datatype="FP32", shape=[1, 4],
                                         array=x)],
                     outputs=[OutputTensor(name="label", datatype="INT64", shape=[1],
                                           array=np.zeros(1, dtype=np.int64))])
    seen = set()
    while not mirror._queue.empty():
        seen.add(int(mirror._queue.get_nowait().inputs[0].array[0, 0]))
    assert seen == set(range(10))


def test_offer_drops_and_counts_when_the_queue_is_full() -> None:
    async def run() -> float:
        mirror = Mirror(ShadowSettings(percent=100, target="http://127.0.0.1:9", queue=3))
        started = time.perf_counter()
        _offer(mirror, "unit-full", 1000)  # on a running loop, no sender taking any
        elapsed = time.perf_counter() - started
        assert mirror._queue.qsize() == 3
        return elapsed

    before = _flushed("modelrail_shadow_requests_total", model="unit-full", version="1",
                      outcome="dropped")
    elapsed = asyncio.run(run())
    assert _flushed("modelrail_shadow_requests_total", model="unit-full", version="1",
                    outcome="dropped") - before == 997
    assert elapsed < 0.5  # a thousand offers: microseconds each


# --- comparison and outcomes ---------------------------------------------------------------

def test_classification_rows_disagree_on_another_label() -> None:
    assert count_disagreements("classification", np.array([0, 1, 2, 2]), [0, 2, 2, 1]) == 2
    assert count_disagreements("classification", np.array([0, 1]), [0, 1]) == 0
    strings = np.array(["setosa", "virginica"], dtype=object)
    assert count_disagreements("classification", strings, ["setosa", "versicolor"]) == 1
    assert count_disagreements("classification", np.array([b"a", b"b"], dtype=object),
                               ["a", "b"]) == 0
    with pytest.raises(ValueError):
        count_disagreements("classification", np.array([0, 1]), [0, 1, 2])
    with pytest.raises(ValueError):
        count_disagreements("classification", np.array([0]), "0")


def test_regression_rows_disagree_beyond_five_percent_relative() -> None:
    ours = np.array([[100.0], [100.0], [-200.0], [0.0], [0.0], [50.0]], dtype=np.float32)
    theirs = [105.0, 105.5, -189.0, 1e-12, 1.0, float("nan")]
    # 5% exactly agrees, 5.5% disagrees, -5.5% disagrees, a tiny absolute difference on 0
    # agrees (the 1e-9 floor), 1 against 0 disagrees, NaN disagrees
    assert count_disagreements("regression", ours, theirs) == 4
    with pytest.raises(ValueError):
        count_disagreements("regression", ours, ["a"] * 6)


def _sample(task: str = "classification") -> Sample:
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]])
    answer = np.array([0, 1]) if task == "classification" else np.array([[1.0], [2.0]])
    return Sample(model="iris", version="1", task=task,
                  inputs=[InputTensor(name="input", datatype="FP64", shape=[2, 4], array=x)],
                  answer=answer)


def test_outcomes_from_the_canarys_answer() -> None:
    sample = _sample()

    def body(data: Any, name: str = "label") -> bytes:
        return json.dumps({"model_name": "iris", "model_version": "2", "outputs": [
            {"name": name, "datatype": "INT64", "shape": [2], "data": data}]}).encode()

    assert judge(sample, 200, body([0, 2])).__dict__ == {
        "outcome": "answered", "pairs": 2, "disagreements": 1}
    assert judge(sample, 409, b'{"error": "shadowing is off"}').outcome == "off"
    for status, raw in [(500, body([0, 1])), (404, b"{}"), (200, b"not json"),
                        (200, body([0, 1], name="probabilities")), (200, body([0])),
                        (200, b'{"outputs": 3}'), (200, b"[]")]:
        assert judge(sample, status, raw).outcome == "failed", (status, raw)
    reg = _sample("regression")
    answered = judge(reg, 200, json.dumps({"outputs": [
        {"name": "predictions", "data": [1.01, 3.0]}]}).encode())
    assert (answered.outcome, answered.pairs, answered.disagreements) == ("answered", 2, 1)


def test_the_mirrored_body_decodes_to_the_same_inputs() -> None:
    sample = _sample()
    doc = json.loads(encode_request(sample))
    assert doc["outputs"] == [{"name": "label"}]
    decoded = decode_infer(encode_request(sample), None, "iris", None, Limits())
    assert decoded.outputs is not None and [o.name for o in decoded.outputs] == ["label"]
    (tensor,) = decoded.inputs
    assert tensor.datatype == "FP64" and tensor.shape == [2, 4]
    assert np.array_equal(tensor.array, sample.inputs[0].array)


def test_a_mirrored_request_back_at_its_sender_is_refused() -> None:
    assert (Kind.SHADOW_LOOP.http_status, Kind.SHADOW_LOOP.grpc_code) == (
        409, "FAILED_PRECONDITION")
    refuse_loop(version="2", sent_from="1")
    refuse_loop(version="2", sent_from=None)
    with pytest.raises(InferenceError, match="shadowing is off") as info:
        refuse_loop(version="1", sent_from="1")
    assert info.value.kind is Kind.SHADOW_LOOP


# --- real servers ---------------------------------------------------------------------------

def scrape(server: Server) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
            for s in family.samples if s.name.startswith("modelrail_")]


def value(samples: list[tuple[str, dict[str, str], float]], name: str,
          **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == want for k, want in labels.items()))


def shadow_counts(server: Server, *, version: str = "1") -> dict[str, float]:
    m = scrape(server)
    out = {o: value(m, "modelrail_shadow_requests_total", model="iris", version=version,
                    outcome=o) for o in ("answered", "failed", "dropped", "off")}
    out["pairs"] = value(m, "modelrail_shadow_pairs_total", model="iris", version=version)
    out["disagreements"] = value(m, "modelrail_shadow_disagreements_total", model="iris",
                                 version=version)
    return out


def wait_for(server: Server, done: Any, timeout: float = 30.0) -> dict[str, float]:
    """Shadow counts once `done(counts)` holds (the mirror works after answering)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = shadow_counts(server)
        if done(counts) or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def shadow_env(**settings: Any) -> dict[str, str]:
    return {"MODELRAIL_SHADOW": ShadowSettings(**settings).to_env()}


def infer_body(rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "datatype": "FP64", "shape": list(rows.shape),
                        "data": rows.reshape(-1).tolist()}]}


def grpc_labels(server: Server, rows: np.ndarray[Any, Any]) -> list[int]:
    client = tgrpc.InferenceServerClient(server.grpc_target)
    inp = tgrpc.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows.astype(np.float32))
    result = client.infer("iris", [inp], outputs=[tgrpc.InferRequestedOutput("label")])
    assert result.get_response().model_version == "1"
    return [int(v) for v in result.as_numpy("label").reshape(-1)]


@pytest.fixture(scope="module")
def canary(examples: dict[str, Example], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Server]:
    """iris:3, the deliberately wrong candidate: it disagrees with iris:1 on many rows."""
    from modelrail.processes import stop

    srv = start_server(["iris:3"], tmp_path_factory.mktemp("canary"))
    yield srv
    stop(srv.proc)


@pytest.mark.slow
def test_stable_mirrors_to_the_canary_and_counts_disagreements(
        canary: Server, examples: dict[str, Example], tmp_path: Path) -> None:
    from modelrail.processes import stop

    stable = start_server(["iris:1"], tmp_path, extra_env=shadow_env(
        percent=100, target=canary.http_url, queue=1000, concurrency=2, timeout=10))
    try:
        X = examples["iris:1"].split.X_test
        canary_before = scrape(canary)
        # what each side answers for every row (asked directly, not mirrored)
        ours = httpx.post(f"{stable.http_url}/v2/models/iris/infer", json=infer_body(X),
                          ).json()["outputs"]
        ours_labels = np.asarray(next(o for o in ours if o["name"] == "label")["data"])
        theirs = httpx.post(f"{canary.http_url}/v2/models/iris/infer",
                            json=infer_body(X)).json()["outputs"]
        theirs_labels = np.asarray(next(o for o in theirs if o["name"] == "label")["data"])
        assert np.array_equal(ours_labels, examples["iris:1"].estimator.predict(X))
        differ = ours_labels != theirs_labels
        assert 0 < differ.sum() < len(X)  # iris:3 is wrong on many rows, not all

        # user requests, each answered by stable: REST infer (the whole sample once, then
        # five rows alone), REST predict (ten records), gRPC (ten rows, then one)
        mirrored, rows, expected = 1, len(X), int(differ.sum())  # the direct request above
        for i in range(5):
            r = httpx.post(f"{stable.http_url}/v2/models/iris/versions/1/infer",
                           json=infer_body(X[i:i + 1]))
            assert r.status_code == 200 and r.json()["model_version"] == "1"
            label = next(o for o in r.json()["outputs"] if o["name"] == "label")
            assert label["data"] == [int(ours_labels[i])]
        mirrored, rows, expected = mirrored + 5, rows + 5, expected + int(differ[:5].sum())
        names = examples["iris:1"].card.inputs[0].feature_names
        records = [dict(zip(names, row.tolist(), strict=True)) for row in X[10:20]]
        r = httpx.post(f"{stable.http_url}/predict/iris", json={"records": records})
        assert r.status_code == 200
        assert [p["label"] for p in r.json()["predictions"]] == ours_labels[10:20].tolist()
        mirrored, rows, expected = mirrored + 1, rows + 10, expected + int(differ[10:20].sum())
        assert grpc_labels(stable, X[20:30]) == ours_labels[20:30].tolist()
        assert grpc_labels(stable, X[30:31]) == ours_labels[30:31].tolist()
        mirrored, rows = mirrored + 2, rows + 11
        expected += int(differ[20:31].sum())

        counts = wait_for(stable, lambda c: c["answered"] >= mirrored)
        assert counts == {"answered": mirrored, "failed": 0, "dropped": 0, "off": 0,
                          "pairs": rows, "disagreements": expected}
        canary_after = scrape(canary)

        def on_canary(m: list[Any], **labels: str) -> float:
            return value(m, "modelrail_requests_total", model="iris", version="3", **labels)

        assert (on_canary(canary_after, route="shadow", outcome="2xx", protocol="rest")
                - on_canary(canary_before, route="shadow")) == mirrored
        # the one question asked of it directly above
        assert on_canary(canary_after, route="split") - on_canary(canary_before,
                                                                  route="split") == 1
        assert value(canary_after, "modelrail_request_duration_seconds_count", model="iris",
                     version="3", route="shadow") >= mirrored

        # a request mirrored to stable by another version is answered, counted
        # route="shadow", and never mirrored again
        r = httpx.post(f"{stable.http_url}/v2/models/iris/infer", json=infer_body(X[:1]),
                       headers={SHADOW_HEADER: "1", SHADOW_FROM_HEADER: "7"})
        assert r.status_code == 200
        time.sleep(1.0)
        m = scrape(stable)
        assert value(m, "modelrail_requests_total", model="iris", version="1",
                     route="shadow", outcome="2xx") == 1
        assert value(m, "modelrail_shadow_requests_total", outcome="answered") == mirrored
        assert value(m, "modelrail_shadow_queue_depth") == 0
    finally:
        stop(stable.proc)


@pytest.mark.slow
def test_mirrored_traffic_back_at_stable_is_refused_and_pauses_the_mirror(
        examples: dict[str, Example], tmp_path: Path) -> None:
    """The gateway's shadow rule pointing at stable: here the target is stable itself."""
    from modelrail.processes import free_port, server_command, spawn, stop, wait_ready

    http_port, grpc_port = free_port(), free_port()
    concurrency = 2
    config = ServingConfig.from_env({
        "MODELRAIL_MODELS": "iris:1", "MODELRAIL_GRPC_PORT": str(grpc_port),
        "MODELRAIL_GRPC_HOST": "127.0.0.1",
        "MODELRAIL_SHADOW": ShadowSettings(
            percent=100, target=f"http://127.0.0.1:{http_port}", queue=1000,
            concurrency=concurrency).to_env()})
    log = tmp_path / "stable.log"
    proc = spawn(server_command(config, http_host="127.0.0.1", http_port=http_port),
                 log_path=log)
    stable = Server(http_url=f"http://127.0.0.1:{http_port}",
                    grpc_target=f"127.0.0.1:{grpc_port}", proc=proc, log=log)
    try:
        assert wait_ready(stable.http_url, timeout=90, proc=proc), log.read_text()[-3000:]
        X = examples["iris:1"].split.X_test
        # refused at once, whatever the protocol, and not counted as traffic
        r = httpx.post(f"{stable.http_url}/v2/models/iris/infer", json=infer_body(X[:1]),
                       headers={SHADOW_HEADER: "1", SHADOW_FROM_HEADER: "1"})
        assert r.status_code == 409 and "shadowing is off" in r.json()["error"]
        r = httpx.post(f"{stable.http_url}/predict/iris/1", json={"records": []},
                       headers={SHADOW_HEADER: "1", SHADOW_FROM_HEADER: "1"})
        assert r.status_code == 409  # before the body is even read
        with grpc.insecure_channel(stable.grpc_target) as ch:
            msg = pb.ModelInferRequest(model_name="iris")
            t = msg.inputs.add(name="input", datatype="FP64", shape=[1, 4])
            t.contents.fp64_contents.extend(X[0].tolist())
            with pytest.raises(grpc.RpcError) as info:
                ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")(
                    msg.SerializeToString(), timeout=5,
                    metadata=((SHADOW_HEADER, "1"), (SHADOW_FROM_HEADER, "1")))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "shadowing is off" in str(info.value.details())
        assert value(scrape(stable), "modelrail_requests_total") == 0

        # users: a burst of requests, all answered; the first mirrored ones come back,
        # the mirror learns shadowing is off and drops the rest of the burst unsent
        users = 30
        started = time.monotonic()
        with httpx.Client(base_url=stable.http_url) as client:
            for i in range(users):
                r = client.post("/v2/models/iris/infer", json=infer_body(X[i:i + 1]))
                assert r.status_code == 200
        burst = time.monotonic() - started
        counts = wait_for(stable, lambda c: c["off"] >= 1)
        time.sleep(1.0)
        counts = shadow_counts(stable)
        assert counts["off"] >= 1 and counts["answered"] == counts["failed"] == 0
        assert counts["pairs"] == counts["disagreements"] == 0
        if burst < 0.9:  # within one pause: only what the senders had taken already
            assert counts["off"] <= concurrency + 1, counts
        assert counts["off"] < users
        m = scrape(stable)
        assert value(m, "modelrail_requests_total", route="split", outcome="2xx") == users
        assert value(m, "modelrail_requests_total", route="shadow") == 0
    finally:
        stop(proc)


@pytest.mark.slow
def test_an_unreachable_canary_fails_mirrors_not_users(examples: dict[str, Example],
                                                       tmp_path: Path) -> None:
    from modelrail.processes import free_port, stop

    closed = free_port()  # nothing listens there
    stable = start_server(["iris:1"], tmp_path, extra_env=shadow_env(
        percent=100, target=f"http://127.0.0.1:{closed}", queue=1000, timeout=1))
    try:
        X = examples["iris:1"].split.X_test
        for i in range(8):
            r = httpx.post(f"{stable.http_url}/v2/models/iris/infer",
                           json=infer_body(X[i:i + 1]))
            assert r.status_code == 200
        assert len(grpc_labels(stable, X[:3])) == 3
        assert len(grpc_labels(stable, X[3:4])) == 1
        counts = wait_for(stable, lambda c: c["failed"] >= 10)
        assert counts == {"answered": 0, "failed": 10, "dropped": 0, "off": 0,
                          "pairs": 0, "disagreements": 0}
        m = scrape(stable)
        assert value(m, "modelrail_requests_total", model="iris", version="1",
                     outcome="2xx") == 8
        assert value(m, "modelrail_requests_total", model="iris", version="1",
                     outcome="OK") == 2
        assert stable.alive()
    finally:
        stop(stable.proc)


# --- the mirror's own HTTP/1.1 connection --------------------------------------------------

def test_the_connection_keeps_alive_reads_chunked_answers_and_survives_an_idle_close() -> None:
    """Connection (the mirror's lean client) against a tiny asyncio server: Content-Length
    and chunked answers on one kept-alive connection; a connection the server closed while
    idle is opened again once instead of failing the mirrored request; an answer cut short
    is an error."""
    from modelrail.serving.shadow import Connection

    async def run() -> None:
        seen: list[bytes] = []
        connections = 0

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                body = await reader.readexactly(length)
                seen.append(head.split(b"\r\n")[0])
                if body == b"chunked":
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                elif body == b"close-after":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    await writer.drain()
                    writer.close()  # an idle keep-alive timeout, as uvicorn's
                    return
                elif body == b"cut":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                    await writer.drain()
                    writer.close()
                    return
                else:
                    writer.write(b"HTTP/1.1 409 Conflict\r\ncontent-length: 2\r\n\r\n{}")
                await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = Connection(f"http://127.0.0.1:{port}", host="iris.example")
        assert await c.post("/v2/models/iris/infer", b"x", {"a": "1"}) == (409, b"{}")
        assert await c.post("/v2/models/iris/infer", b"chunked", {}) == (200, b"abcde")
        assert connections == 1  # kept alive
        assert await c.post("/p", b"close-after", {}) == (200, b"ok")
        await asyncio.sleep(0.05)
        assert await c.post("/p", b"x", {}) == (409, b"{}")  # reopened once, not failed
        assert connections == 2
        with pytest.raises(asyncio.IncompleteReadError):
            await c.post("/p", b"cut", {})
        c.close()
        server.close()
        await server.wait_closed()
        assert seen[0] == b"POST /v2/models/iris/infer HTTP/1.1"

    asyncio.run(run())
