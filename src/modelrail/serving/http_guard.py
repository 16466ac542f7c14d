"""Slow and surplus HTTP clients cannot hold a serving worker's connections.

uvicorn (under BentoML) has a keep-alive timeout but no deadline for a request's headers
or body, and no cap on open connections: 200 clients that never finished their headers were
all still connected after 95 s. `install()` (called by the service module in every worker,
before BentoML builds its uvicorn config) makes uvicorn's "auto" HTTP protocol this
subclass of its httptools protocol, which
  - closes a connection whose request headers are not complete `header_timeout` seconds
    after the connection opened or the request's first byte arrived (408, then close);
  - closes a connection whose request body is not complete `body_timeout` seconds after its
    headers (408, then close; the handler sees a disconnect, answered as the client's fault);
  - answers 503 and closes a new connection beyond `max_connections` open in this worker.
Each closure is counted in `modelrail_connections_closed_total{reason}`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelrail.serving import metrics

PROTOCOL_PATH = "modelrail.serving.http_guard:GuardedHttpToolsProtocol"


@dataclass(frozen=True)
class GuardSettings:
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 1000


def install(settings: GuardSettings) -> None:
    """Make uvicorn's "auto" HTTP protocol the guarded one, with these limits."""
    import uvicorn.config

    GuardedHttpToolsProtocol.settings = settings
    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL_PATH


def _reply(status: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header and body deadlines and a connection cap."""

    settings = GuardSettings()  # set by install(), per worker process
    _guard: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.settings.max_connections:
            metrics.connection_closed("over_limit")
            transport.write(_reply("503 Service Unavailable", (
                f"this worker already holds {self.settings.max_connections} connections "
                "(MODELRAIL_MAX_CONNECTIONS); retry, or reuse a connection")))
            transport.close()
            return
        self._arm("header_timeout", self.settings.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._guard is None:  # not re-armed by each byte: the deadline is absolute
            self._arm("header_timeout", self.settings.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body_timeout", self.settings.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, reason: str, seconds: float) -> None:
        self._disarm()
        self._guard = self.loop.call_later(seconds, self._expired, reason, seconds)

    def _disarm(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _expired(self, reason: str, seconds: float) -> None:
        self._guard = None
        if self.transport is None or self.transport.is_closing():
            return
        metrics.connection_closed(reason)
        part = "headers" if reason == "header_timeout" else "body"
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(_reply("408 Request Timeout", (
                f"the request's {part} did not arrive within {seconds:g} s "
                f"(MODELRAIL_{reason.upper()})")))
        self.transport.close()
