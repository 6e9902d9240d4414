"""Running the app under uvicorn with the connection-level limits an ASGI app cannot set itself.

uvicorn has no deadline for the request headers, and accepts connections until the process runs
out of file descriptors. ``BoundedH11Protocol`` adds both: a connection that has not sent complete
headers within ``header_timeout`` seconds (first request or a later one on a kept-alive connection)
is closed, and connections beyond ``max_connections`` are closed as soon as they are accepted,
before a byte is read. The body deadline is the app's (``create_app(body_timeout=)``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_KEEP_ALIVE = 5
MAX_HEADER_BYTES = 16 * 1024


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a hard cap on open connections."""

    max_connections = DEFAULT_MAX_CONNECTIONS
    header_timeout = DEFAULT_HEADER_TIMEOUT

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        if len(self.connections) > self.max_connections:
            logger.warning("connection from %s refused: %d connections open (limit %d)",
                           _addr(self.client), len(self.connections) - 1, self.max_connections)
            self.transport.abort()
            return
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_deadline)

    def _header_deadline(self) -> None:
        """Close the connection if it is still waiting for (or receiving) a request's headers."""
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return
        logger.info("connection from %s closed: no complete request headers within %g s",
                    _addr(self.client), self.header_timeout)
        self.transport.close()


def _addr(client: Any) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (the connection cap must fit under it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, max_connections: int = DEFAULT_MAX_CONNECTIONS,
               header_timeout: float = DEFAULT_HEADER_TIMEOUT, keep_alive: int = DEFAULT_KEEP_ALIVE,
               log_level: str = "info") -> None:
    """Serve ``app`` until interrupted, with bounded connections, header deadline and keep-alive."""
    fds = raise_fd_limit()
    if max_connections + 64 > fds:
        logger.warning("max_connections %d is close to the open-files limit %d", max_connections, fds)
    protocol = type("Bounded", (BoundedH11Protocol,), {"max_connections": max_connections,
                                                       "header_timeout": header_timeout})
    uvicorn.run(app, host=host, port=port, http=protocol, log_level=log_level, timeout_keep_alive=keep_alive,
                limit_concurrency=max_connections, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                backlog=min(2048, max_connections * 2))
