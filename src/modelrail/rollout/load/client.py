"""ClientTraffic: steady client requests in background threads, counted by outcome.

Stands for the production systems calling a model while a rollout runs: the local
end-to-end tests and benchmarks/rollout.py use it to count every request that failed.
Bounded in time and loopback-only by its callers; stops by itself after `max_seconds`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx


class ClientTraffic:
    def __init__(self, url: str, body: dict[str, Any], *, threads: int = 1,
                 pause: float = 0.005, max_seconds: float = 300.0,
                 headers: dict[str, str] | None = None,
                 bodies: list[dict[str, Any]] | None = None) -> None:
        self.url, self.body = url, body
        # sent in turn instead of `body` (an input distribution, e.g. a shifted one)
        self.bodies = bodies or [body]
        self.headers = headers or {}  # e.g. the route's Host through a gateway
        self.pause, self.max_seconds = pause, max_seconds
        self.results: Counter[object] = Counter()  # HTTP status, or the exception's name
        # the model version of every answer (OIP v2 model_version): who answered users
        self.versions: Counter[str] = Counter()
        # (monotonic time the request was sent, its outcome) of every request that failed
        self.failures: list[tuple[float, object]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True)
                         for _ in range(threads)]

    def start(self) -> ClientTraffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> Counter[object]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        return self.results

    @property
    def failed(self) -> int:
        return sum(n for k, n in self.results.items() if k != 200)

    @property
    def total(self) -> int:
        return sum(self.results.values())

    def _run(self) -> None:
        started = time.monotonic()
        with httpx.Client() as client:
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                outcome: object
                version = None
                sent = time.monotonic()
                body = self.bodies[self.total % len(self.bodies)]
                try:
                    r = client.post(self.url, json=body, headers=self.headers, timeout=10)
                    outcome = r.status_code
                    if outcome == 200:
                        version = _version_of(r)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.results[outcome] += 1
                    if version is not None:
                        self.versions[version] += 1
                    if outcome != 200:
                        self.failures.append((sent, outcome))
                time.sleep(self.pause)


def _version_of(r: httpx.Response) -> str | None:
    try:
        data = r.json()
    except ValueError:
        return None
    version = data.get("model_version") if isinstance(data, dict) else None
    return None if version is None else str(version)
