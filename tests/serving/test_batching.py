"""Adaptive batching (MODELRAIL_BATCHING=adaptive): concurrent requests share onnxruntime
calls, every answer is the request's own, and a bad request fails alone — in the batcher,
through `inference.execute` with a real model, and through a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelrail.errors import InvalidInputError
from modelrail.models.registry import Registry
from modelrail.serving.batching import Batcher
from modelrail.serving.config import ServingConfig
from modelrail.serving.errors import InferenceError
from modelrail.serving.inference import InferRequest, InputTensor, execute
from modelrail.serving.repository import ModelRepository
from tests.conftest import Example, start_server


def run_here(coro: Any) -> Any:
    """Run a coroutine on a loop of its own, leaving the thread's current loop as it was
    (asyncio.run would unset it, which later tests that call get_event_loop() trip on)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def doubling(calls: list[int]) -> Any:
    """A stand-in model: answers 2x per row; refuses (raises) any call holding a 666."""

    def run(x: np.ndarray) -> dict[str, np.ndarray]:  # type: ignore[type-arg]
        calls.append(len(x))
        if (x == 666).any():
            raise RuntimeError("cannot run on 666")
        return {"out": x * 2, "label": x[:, 0].astype(np.int64)}

    return run


async def submit_all(batcher: Batcher, rows: list[np.ndarray]) -> list[Any]:  # type: ignore[type-arg]
    return await asyncio.gather(*(batcher.submit(r) for r in rows), return_exceptions=True)


def test_requests_of_one_loop_turn_share_a_call_and_get_their_own_rows() -> None:
    calls: list[int] = []
    batcher = Batcher(doubling(calls), max_elements=1000)
    rows = [np.full((1 + i % 3, 2), i, dtype=np.float32) for i in range(10)]
    answers = run_here(submit_all(batcher, rows))
    assert calls == [sum(len(r) for r in rows)] and batcher.calls == 1 and batcher.joined == 10
    for r, a in zip(rows, answers, strict=True):
        assert np.array_equal(a["out"], r * 2) and np.array_equal(a["label"], r[:, 0])


def test_a_lone_request_runs_at_once_and_alone() -> None:
    calls: list[int] = []
    batcher = Batcher(doubling(calls), max_elements=1000)
    answer = run_here(batcher.submit(np.ones((3, 2), dtype=np.float32)))
    assert calls == [3] and batcher.calls == 0 and np.array_equal(answer["out"], np.full((3, 2), 2))


def test_a_failing_joined_call_is_retried_request_by_request() -> None:
    """One request the model cannot run fails alone; the others sharing its call are
    answered (each ran alone after the joined call failed)."""
    calls: list[int] = []
    batcher = Batcher(doubling(calls), max_elements=1000)
    rows = [np.full((1, 2), v, dtype=np.float32) for v in (1, 666, 3)]
    answers = run_here(submit_all(batcher, rows))
    assert calls == [3, 1, 1, 1]
    assert np.array_equal(answers[0]["out"], [[2, 2]])
    assert isinstance(answers[1], RuntimeError)
    assert np.array_equal(answers[2]["out"], [[6, 6]])


def test_calls_are_bounded_by_max_elements() -> None:
    calls: list[int] = []
    batcher = Batcher(doubling(calls), max_elements=8)  # 4 rows of 2
    rows = [np.zeros((1, 2), dtype=np.float32) for _ in range(10)]
    run_here(submit_all(batcher, rows))
    assert calls == [4, 4, 2]


def test_batching_mode_is_checked() -> None:
    env = {"MODELRAIL_MODELS": "iris:1"}
    assert ServingConfig.from_env(env).batching is False
    on = ServingConfig.from_env({**env, "MODELRAIL_BATCHING": "adaptive"})
    assert on.batching is True and ServingConfig.from_env(on.to_env()) == on
    with pytest.raises(InvalidInputError) as info:
        ServingConfig.from_env({**env, "MODELRAIL_BATCHING": "always"})
    assert "MODELRAIL_BATCHING" in str(info.value) and "off or adaptive" in str(info.value)


def repository(example: Example, *, batching: bool) -> ModelRepository:
    card, onnx_bytes = Registry().read_verified(example.card.name, example.card.version)
    repo = ModelRepository(batching=batching)
    repo.add(card, onnx_bytes)
    return repo


def request(rows: np.ndarray) -> InferRequest:  # type: ignore[type-arg]
    return InferRequest(model_name="breast-cancer", model_version="2", inputs=[
        InputTensor(name="input", datatype="FP64", shape=list(rows.shape), array=rows)])


def test_execute_batches_validated_requests_and_answers_as_alone(
        examples: dict[str, Example]) -> None:
    example = examples["breast-cancer:2"]
    x = example.split.X_test
    rows = [x[i:i + 1 + i % 4] for i in range(24)]
    bad = x[:2].copy()
    bad[1, 3] = np.nan  # refused by validation: never joins a batch

    async def run(repo: ModelRepository) -> list[Any]:
        reqs = [request(r) for r in rows[:12]] + [request(bad)] + [request(r) for r in rows[12:]]
        return await asyncio.gather(*(execute(repo, q, max_rows=100, may_batch=True)
                                      for q in reqs), return_exceptions=True)

    batched_repo = repository(example, batching=True)
    batched, alone = run_here(run(batched_repo)), run_here(run(
        repository(example, batching=False)))
    batcher = batched_repo.models[("breast-cancer", "2")].batcher
    assert batcher is not None and batcher.calls >= 1 and batcher.joined == 24
    for b, a in zip(batched, alone, strict=True):
        if isinstance(a, Exception):
            assert isinstance(b, InferenceError) and "row 1, feature" in b.message
            continue
        assert not isinstance(b, BaseException)
        got = {o.name: o.array for o in b[1].outputs}
        want = {o.name: o.array for o in a[1].outputs}
        assert got.keys() == want.keys()
        for name, value in got.items():
            np.testing.assert_allclose(value, want[name], rtol=1e-6, atol=1e-7)


def test_only_adapters_that_may_batch_are_batched(examples: dict[str, Example]) -> None:
    """gRPC calls (may_batch=False) run alone even with batching on."""
    repo = repository(examples["breast-cancer:2"], batching=True)
    x = examples["breast-cancer:2"].split.X_test

    async def run() -> None:
        await asyncio.gather(*(execute(repo, request(x[i:i + 1]), max_rows=10)
                               for i in range(8)))

    run_here(run())
    assert repo.models[("breast-cancer", "2")].batcher is None


def test_a_batching_server_answers_concurrent_clients_each_their_own(
        examples: dict[str, Example], tmp_path: Path) -> None:
    """A real server with MODELRAIL_BATCHING=adaptive: 48 concurrent REST requests (one
    bad) — every good one gets the answer its own rows give, the bad one a 400."""
    from modelrail.processes import stop

    example = examples["iris:1"]
    x = example.split.X_test.astype(np.float32)
    srv = start_server(["iris:1"], tmp_path, extra_env={"MODELRAIL_BATCHING": "adaptive"})
    try:
        async def send(client: httpx.AsyncClient, rows: np.ndarray,  # type: ignore[type-arg]
                       ) -> httpx.Response:
            data: list[Any] = rows.reshape(-1).tolist()
            if rows.shape[0] == 0:
                data = ["not a number"] * 4
            return await client.post(
                "/v2/models/iris/versions/1/infer",
                json={"inputs": [{"name": "input", "datatype": "FP32",
                                  "shape": [max(1, len(rows)), 4], "data": data}],
                      "outputs": [{"name": "probabilities"}]})

        batches = [x[i % len(x):i % len(x) + 1 + i % 3] for i in range(48)]
        batches[20] = x[:0]  # the bad request

        async def run() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as client:
                return await asyncio.gather(*(send(client, b) for b in batches))

        replies = run_here(run())
        proba = example.estimator.predict_proba
        for rows, reply in zip(batches, replies, strict=True):
            if len(rows) == 0:
                assert reply.status_code == 400 and "takes numbers" in reply.text, reply.text
                continue
            assert reply.status_code == 200, reply.text
            got = np.asarray(reply.json()["outputs"][0]["data"]).reshape(len(rows), -1)
            np.testing.assert_allclose(got, proba(rows), rtol=1e-4, atol=1e-5)
        assert srv.alive()
    finally:
        stop(srv.proc)
