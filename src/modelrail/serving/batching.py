"""Adaptive batching across requests (opt-in: MODELRAIL_BATCHING=adaptive).

Requests that reach inference during the same turn of the worker's event loop are joined
into one onnxruntime call; nothing waits for a window, so a lone request runs at once and
adds no latency. Each request is validated alone before it joins (inference.prepare), so
a bad request is refused on its own and never reaches a batch. If a joined call fails, each
request is run alone, so only a request that fails by itself gets an error.

Measured in BENCHMARKS.md (benchmarks/batching.py): in process, one call for a loop turn's
rows saves at most 4-5 µs of CPU per request on the example models (onnxruntime answers
one row in ~6 µs and 64 rows in 8-47 µs), against ~340 µs a request costs the server; two
live servers side by side measured 0.86-1.22x on REST, inside the 0.92-1.12x that identical
code showed on gRPC in the same run. No measurable win on these models, so it is off by
default; it is for models whose per-call cost dominates a request. gRPC never batches:
grpc.aio hands the loop one call per turn, so its batches were of one (first A/B: 0.84-1.08x)
and only the REST adapter offers its requests (execute's `may_batch`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

Outputs = dict[str, npt.NDArray[Any]]


class Batcher:
    """Joins the rows of concurrent requests for one model into calls of at most
    `max_elements` input elements (larger requests should not come here)."""

    def __init__(self, run: Any, *, max_elements: int) -> None:
        self.run = run  # rows (FP32 [n, features]) -> {output name: array with n rows}
        self.max_elements = max_elements
        self.pending: list[tuple[npt.NDArray[np.float32], asyncio.Future[Outputs]]] = []
        self.scheduled = False
        self.calls = 0  # onnxruntime calls made for batches (for tests and benchmarks)
        self.joined = 0  # requests answered from a joined call

    async def submit(self, x: npt.NDArray[np.float32]) -> Outputs:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self.pending.append((x, future))
        if not self.scheduled:
            self.scheduled = True
            self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """When the queued rows run: on the loop's next turn (no waiting window)."""
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        group: list[tuple[npt.NDArray[np.float32], asyncio.Future[Outputs]]] = []
        size = 0
        for item in pending:
            if group and size + item[0].size > self.max_elements:
                self._run_group(group)
                group, size = [], 0
            group.append(item)
            size += item[0].size
        if group:
            self._run_group(group)

    def _run_group(self, group: list[tuple[npt.NDArray[np.float32],
                                           asyncio.Future[Outputs]]]) -> None:
        live = [(x, f) for x, f in group if not f.done()]  # a cancelled request drops out
        if len(live) == 1:
            self._run_alone(*live[0])
            return
        if not live:
            return
        self.calls += 1
        try:
            out = self.run(np.concatenate([x for x, _ in live]))
        except Exception:  # the joined call failed: each request runs alone
            for x, future in live:
                self._run_alone(x, future)
            return
        at = 0
        for x, future in live:
            n = len(x)
            future.set_result({name: value[at:at + n] for name, value in out.items()})
            at += n
        self.joined += len(live)

    def _run_alone(self, x: npt.NDArray[np.float32], future: asyncio.Future[Outputs]) -> None:
        try:
            future.set_result(self.run(x))
        except Exception as exc:
            future.set_exception(exc)
