"""A rollout's shadow phase, serving side: a share of the requests this (stable) server
answered is mirrored to the canary, and the canary's answers are compared with ours.

Sending. With MODELRAIL_SHADOW set (config.ShadowSettings), each worker runs one `Mirror`,
started and closed by the service's lifecycle hooks (services/inference/service.py).
rest.py (infer, predict) and grpc_server.py (ModelInfer) call `Mirror.offer` once a
request that was not itself mirrored has been answered successfully: `offer` samples
(each request independently with probability percent/100: a fixed stride would alias with
clients that cycle through a list of inputs and mirror only some of them), keeps what the
comparison needs (our inputs and our answer) and enqueues it without waiting — a full
queue drops the sample, counted. `concurrency` sender tasks POST each sample as OIP v2 JSON to
`{target}/v2/models/{name}/infer` (no version: the gateway's rule for the header
x-modelrail-shadow picks the track) and compare row by row: another label
(classification), or a relative difference above TOLERANCE (regression, the rollout model
gate's rule). Counted as modelrail_shadow_* (metrics.py) under our model and version. The
user's answer never waits for any of it, and no failure here reaches it.

Receiving. A request carrying x-modelrail-shadow is counted with route="shadow", and is
never mirrored again. If its x-modelrail-shadow-from names the version that would answer
it, the gateway has sent it back to the server that mirrored it (its shadow rule points at
stable: shadowing is off): it is refused at once, 409 / FAILED_PRECONDITION, without
inference and uncounted. That refusal is how a mirror learns shadowing is off: it then
pauses PAUSE_SECONDS, dropping samples silently, before trying again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

from modelrail.serving import metrics
from modelrail.serving.config import ShadowSettings
from modelrail.serving.errors import InferenceError, Kind
from modelrail.serving.inference import InputTensor, OutputTensor
from modelrail.serving.tensors import to_json_data

log = logging.getLogger(__name__)

SHADOW_HEADER = "x-modelrail-shadow"  # on every mirrored request, value "1"
SHADOW_FROM_HEADER = "x-modelrail-shadow-from"  # the version that mirrored it
# the output compared per model task (models/convert.py names them)
COMPARED_OUTPUT = {"classification": "label", "regression": "predictions"}
TOLERANCE = 0.05  # regression: relative difference beyond which a row disagrees
PAUSE_SECONDS = 1.0  # after a mirrored request came back to us (shadowing is off)
# above this many input elements the JSON body is encoded in a thread
THREAD_ENCODE_ELEMENTS = 16384
OUTCOMES = ("answered", "failed", "dropped", "off")


def refuse_loop(*, version: str, sent_from: str | None) -> None:
    """Refuse a mirrored request that came back to the version that mirrored it."""
    if sent_from is not None and sent_from == version:
        raise InferenceError(
            Kind.SHADOW_LOOP,
            f"mirrored traffic came back to the version that mirrors it ({version}): the "
            "gateway's shadow rule points at stable, i.e. shadowing is off; the mirror "
            "pauses and tries again")


@dataclass(frozen=True)
class Sample:
    """One answered request to mirror: what we were asked and what we answered."""

    model: str
    version: str  # ours: the version that mirrors
    task: str  # "classification" or "regression" (the model card's)
    inputs: Sequence[InputTensor]
    answer: npt.NDArray[Any]  # our answer's compared output (COMPARED_OUTPUT)


@dataclass(frozen=True)
class Outcome:
    """What became of one mirrored request (an OUTCOMES name) and its comparison."""

    outcome: str
    pairs: int = 0  # rows compared (answered only)
    disagreements: int = 0


class Mirror:
    """Mirrors samples of answered requests to the canary; one per worker process."""

    def __init__(self, settings: ShadowSettings) -> None:
        self.settings = settings
        self._queue: asyncio.Queue[Sample] = asyncio.Queue(maxsize=settings.queue)
        # each request independently: a stride (every n-th) aliases with periodic traffic
        self._chance = settings.percent / 100.0
        self._random = random.Random()
        self._paused_until = 0.0  # time.monotonic(); 0: not paused
        self._last = ""  # the last outcome, to log changes only
        self._senders: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        """Start the senders on the running event loop (the worker's on_startup hook)."""
        if self._senders:
            return
        n = self.settings.concurrency
        # trust_env off: the gateway is reached directly, whatever proxy the pod may name
        self._client = httpx.AsyncClient(
            timeout=self.settings.timeout, trust_env=False,
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        loop = asyncio.get_running_loop()
        self._senders = [loop.create_task(self._send_forever(), name=f"shadow-sender-{i}")
                         for i in range(n)]
        metrics.shadow_queue_depth(self._queue.qsize())
        log.info("shadow: mirroring %g%% of answered requests to %s (%d senders)",
                 self.settings.percent, self.settings.target, n)

    async def close(self) -> None:
        """Cancel the senders (samples still queued are given up) and close the client."""
        senders, self._senders = self._senders, []
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def offer(self, *, model: str, version: str, task: str, inputs: Sequence[InputTensor],
              outputs: Sequence[OutputTensor]) -> None:
        """An answered request, perhaps to mirror: never waits, never raises on a full
        queue (the sample is dropped and counted), keeps references only (no copy)."""
        if self._paused_until:
            if time.monotonic() < self._paused_until:
                return  # shadowing is off: nothing to count
            self._paused_until = 0.0
        name = COMPARED_OUTPUT.get(task)
        answer = next((o.array for o in outputs if o.name == name), None)
        if answer is None:
            return  # the client asked for other outputs: nothing to compare with
        if self._chance < 1.0 and self._random.random() >= self._chance:
            return
        try:
            self._queue.put_nowait(Sample(model=model, version=version, task=task,
                                          inputs=inputs, answer=answer))
        except asyncio.QueueFull:
            metrics.observe_shadow(model=model, version=version, outcome="dropped")
            return
        metrics.shadow_queue_depth(self._queue.qsize())

    async def _send_forever(self) -> None:
        while True:
            sample = await self._queue.get()
            metrics.shadow_queue_depth(self._queue.qsize())
            if self._paused_until and time.monotonic() < self._paused_until:
                continue  # queued before we learnt shadowing is off: given up, uncounted
            try:
                result = await self._send(sample)
            except Exception:  # a fault of ours: counted, logged, the sender goes on
                log.exception("shadow: mirroring a %s:%s request failed", sample.model,
                              sample.version)
                result = Outcome("failed")
            if result.outcome == "off":
                self._paused_until = time.monotonic() + PAUSE_SECONDS
            self._log_change(result.outcome)
            metrics.observe_shadow(model=sample.model, version=sample.version,
                                   outcome=result.outcome, pairs=result.pairs,
                                   disagreements=result.disagreements)

    async def _send(self, sample: Sample) -> Outcome:
        client = self._client
        if client is None:
            return Outcome("failed")
        if sum(t.array.size for t in sample.inputs) > THREAD_ENCODE_ELEMENTS:
            body = await asyncio.to_thread(encode_request, sample)
        else:
            body = encode_request(sample)
        headers = {"content-type": "application/json", SHADOW_HEADER: "1",
                   SHADOW_FROM_HEADER: sample.version}
        if self.settings.host is not None:
            headers["host"] = self.settings.host
        url = f"{self.settings.target}/v2/models/{sample.model}/infer"
        try:
            async with asyncio.timeout(self.settings.timeout):  # the whole exchange
                response = await client.post(url, content=body, headers=headers)
        except (httpx.HTTPError, TimeoutError):
            return Outcome("failed")
        return judge(sample, response.status_code, response.content)

    def _log_change(self, outcome: str) -> None:
        if outcome == self._last:
            return
        self._last = outcome
        if outcome == "off":
            log.info("shadow: mirrored requests come back to this version: shadowing is "
                     "off; trying again every %g s", PAUSE_SECONDS)
        elif outcome == "answered":
            log.info("shadow: the canary answers mirrored requests")
        elif outcome == "failed":
            log.warning("shadow: mirrored requests to %s fail (counted as "
                        "outcome=\"failed\")", self.settings.target)


def encode_request(sample: Sample) -> bytes:
    """The OIP v2 JSON infer request for a sample, asking for the compared output only."""
    doc = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape),
                       "data": to_json_data(t.array, t.datatype)} for t in sample.inputs],
           "outputs": [{"name": COMPARED_OUTPUT[sample.task]}]}
    return json.dumps(doc, separators=(",", ":")).encode()


def judge(sample: Sample, status: int, body: bytes) -> Outcome:
    """The outcome of one mirrored request from the canary's status and body."""
    if status == 409:
        return Outcome("off")
    if status != 200:
        return Outcome("failed")
    name = COMPARED_OUTPUT[sample.task]
    try:
        doc = json.loads(body)
        data = next(o["data"] for o in doc["outputs"]
                    if isinstance(o, dict) and o.get("name") == name)
        differ = count_disagreements(sample.task, sample.answer, data)
    except (ValueError, TypeError, KeyError, StopIteration, RecursionError):
        return Outcome("failed")  # a malformed answer
    return Outcome("answered", pairs=int(sample.answer.size), disagreements=differ)


def count_disagreements(task: str, ours: npt.NDArray[Any], theirs: Any) -> int:
    """Rows on which the canary's answer (`theirs`, a JSON `data` list) disagrees with
    ours; ValueError when it is not an answer to the same rows."""
    if not isinstance(theirs, list):
        raise ValueError("the answer's data is not a list")
    a = np.asarray(ours).reshape(-1)
    b = np.asarray(theirs).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{b.size} values answer {a.size} rows")
    if task == "classification":
        if a.dtype.kind in "iub" and b.dtype.kind in "iub":
            return int(np.count_nonzero(a != b))
        return sum(_label(x) != _label(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))
    if b.dtype.kind not in "iuf":
        raise ValueError("the answer's data is not numeric")
    fa, fb = a.astype(np.float64), b.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        rel = np.abs(fa - fb) / np.maximum(np.abs(fa), 1e-9)
    return int(np.count_nonzero(~(rel <= TOLERANCE)))  # NaN disagrees too


def _label(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value
