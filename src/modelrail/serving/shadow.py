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
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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
        self._connections: list[Connection] = []

    def start(self) -> None:
        """Start the senders on the running event loop (the worker's on_startup hook)."""
        if self._senders:
            return
        n = self.settings.concurrency
        # one keep-alive connection per sender: a general-purpose async HTTP client costs
        # stable ~1.5 ms of CPU per mirrored request here (benchmarks/shadow.py), this ~0.1
        self._connections = [Connection(self.settings.target, host=self.settings.host)
                             for _ in range(n)]
        loop = asyncio.get_running_loop()
        self._senders = [loop.create_task(self._send_forever(c), name=f"shadow-sender-{i}")
                         for i, c in enumerate(self._connections)]
        metrics.shadow_queue_depth(self._queue.qsize())
        log.info("shadow: mirroring %g%% of answered requests to %s (%d senders)",
                 self.settings.percent, self.settings.target, n)

    async def close(self) -> None:
        """Cancel the senders (samples still queued are given up) and close the client."""
        senders, self._senders = self._senders, []
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
        for connection in self._connections:
            connection.close()
        self._connections = []

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

    async def _send_forever(self, connection: Connection) -> None:
        while True:
            sample = await self._queue.get()
            metrics.shadow_queue_depth(self._queue.qsize())
            if self._paused_until and time.monotonic() < self._paused_until:
                continue  # queued before we learnt shadowing is off: given up, uncounted
            try:
                result = await self._send(sample, connection)
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

    async def _send(self, sample: Sample, connection: Connection) -> Outcome:
        if sum(t.array.size for t in sample.inputs) > THREAD_ENCODE_ELEMENTS:
            body = await asyncio.to_thread(encode_request, sample)
        else:
            body = encode_request(sample)
        try:
            async with asyncio.timeout(self.settings.timeout):  # the whole exchange
                status, content = await connection.post(
                    f"/v2/models/{sample.model}/infer", body,
                    {SHADOW_HEADER: "1", SHADOW_FROM_HEADER: sample.version})
        except (OSError, EOFError, ValueError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            connection.close()  # its state is unknown: the next request opens another
            return Outcome("failed")
        return judge(sample, status, content)

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


MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a canary answer larger than this is a failure


class Connection:
    """One keep-alive HTTP/1.1 connection to the mirror's target (http or https), opened on
    first use and again after a failure or `Connection: close`. Just what the mirror needs:
    a POST with a body, an answer with Content-Length or chunked."""

    def __init__(self, target: str, *, host: str | None = None) -> None:
        scheme, _, rest = target.partition("://")
        name, _, port = rest.partition(":")
        self.tls = scheme == "https"
        self.addr = (name, int(port) if port else (443 if self.tls else 80))
        self.host = (host or rest).encode("ascii")
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes,
                   headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of one POST; raises on a transport error or a malformed answer
        (the caller closes the connection). A kept-alive connection the server closed
        while idle is opened again once (inference is idempotent)."""
        reused = self._writer is not None and not self._writer.is_closing()
        try:
            return await self._exchange(path, body, headers)
        except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            self.close()
            return await self._exchange(path, body, headers)

    async def _exchange(self, path: str, body: bytes,
                        headers: dict[str, str]) -> tuple[int, bytes]:
        if self._writer is None or self._reader is None or self._writer.is_closing():
            ctx = ssl.create_default_context() if self.tls else None
            self._reader, self._writer = await asyncio.open_connection(*self.addr, ssl=ctx)
        reader, writer = self._reader, self._writer
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(b"POST " + path.encode("ascii") + b" HTTP/1.1\r\nhost: " + self.host
                     + b"\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(body)).encode() + b"\r\n" + extra.encode("latin-1")
                     + b"\r\n" + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip().lower()] = value.strip().lower()
        if "chunked" in fields.get("transfer-encoding", ""):
            content = await _chunks(reader)
        else:
            length = int(fields.get("content-length", "0"))
            if not 0 <= length <= MAX_ANSWER_BYTES:
                raise ValueError(f"an answer of {length} bytes")
            content = await reader.readexactly(length)
        if fields.get("connection") == "close":
            self.close()
        return status, content

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


async def _chunks(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await _trailer(reader)
            return b"".join(parts)
        total += size
        if total > MAX_ANSWER_BYTES:
            raise ValueError(f"an answer of more than {MAX_ANSWER_BYTES} bytes")
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the chunk's CRLF


async def _trailer(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass


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
