"""The one load generator every serving benchmark target is measured with.

Closed loop: `concurrency` workers each send a pre-serialized request, wait for the reply,
record its latency, and repeat, for a warm-up then a measured window. HTTP/1.1 keep-alive
over raw asyncio streams (one connection per worker) and grpc.aio unary calls with raw
bytes (one channel, or `channels` of them shared round-robin by the workers: a server with
several processes on one port sees one connection per channel), so the generator's own cost
is small and identical for every target.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import grpc


@dataclass
class Result:
    requests: int = 0  # answered inside the measured window
    errors: int = 0
    completed: int = 0  # every call answered, warm-up included (for cost per request)
    server_cpu_s: float | None = None  # the server's CPU over the whole run, if the caller read it
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def http_request(host: str, port: int, path: str, body: bytes,
                 content_type: str = "application/json") -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


async def _http_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     request: bytes) -> bool:
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            raise RuntimeError("chunked responses are not supported by this generator")
    await reader.readexactly(length)
    return status == 200


async def run_http(host: str, port: int, request: bytes, *, concurrency: int,
                   warmup: float, duration: float) -> Result:
    result = Result()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    ok = await _http_once(reader, writer, request)
                except (ConnectionError, asyncio.IncompleteReadError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                t1 = time.perf_counter()
                result.completed += 1
                if t0 >= measure_from and t1 <= stop_at:
                    result.requests += 1
                    result.errors += 0 if ok else 1
                    result.latencies.append(t1 - t0)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = duration
    return result


async def run_grpc(target: str, method: str, payload: bytes, *, concurrency: int,
                   warmup: float, duration: float, channels: int = 1) -> Result:
    result = Result()
    # several channels: each with its own subchannel pool, else grpc shares one connection
    options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
    opened = [grpc.aio.insecure_channel(target, options=options)
              for _ in range(max(1, channels))]
    try:
        calls: list[Any] = [ch.unary_unary(method) for ch in opened]
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker(i: int) -> None:
            call = calls[i % len(calls)]
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await call(payload, timeout=10)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                t1 = time.perf_counter()
                result.completed += 1
                if t0 >= measure_from and t1 <= stop_at:
                    result.requests += 1
                    result.errors += 0 if ok else 1
                    result.latencies.append(t1 - t0)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for ch in opened:
            await ch.close()
    result.seconds = duration
    return result
