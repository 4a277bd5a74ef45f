"""A request-header deadline for uvicorn's h11 protocol (slowloris and idle connections).

uvicorn arms its keep-alive timer only after a response, and disarms it on any byte received,
so a connection that never sends a request, or sends its headers one byte at a time, is kept
open forever; enough of them exhaust `limit_concurrency` (every new request gets 503) or the
process's file descriptors. `header_deadline_protocol(t)` gives an h11 protocol class that
closes a connection whose request line and headers are not complete within `t` seconds of the
connection opening or of the previous response; a request body has its own limit
(`read_json_body`'s 408).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_deadline_protocol"]


class _Deadline:
    """The deadline itself, shared by the h11 and httptools protocols (mixed in before them)."""

    header_timeout_s = 30.0
    _deadline: asyncio.TimerHandle | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    def connection_made(self, transport: Any) -> None:  # uvicorn narrows it to Transport
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing():
            self._arm()  # the next request on this keep-alive connection has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _waiting_for_headers(self) -> bool:
        return True

    def _too_slow(self) -> None:
        self._deadline = None
        if self._waiting_for_headers() and not self.transport.is_closing():
            self.transport.close()


class _HeaderDeadlineProtocol(_Deadline, H11Protocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def _waiting_for_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE


def _httptools_protocol() -> Any:
    """The same deadline on uvicorn's httptools protocol (about twice as fast as h11), or None."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools is not installed
        return None

    class HeaderDeadlineHttpTools(_Deadline, HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            self._disarm()  # the request line and headers are in
            super().on_headers_complete()

    return HeaderDeadlineHttpTools


def header_deadline_protocol(timeout_s: float) -> Any:
    """A protocol class for `uvicorn.Config(http=...)` with a `timeout_s` header deadline:
    httptools when installed (the faster parser), else h11."""
    base = _httptools_protocol() or _HeaderDeadlineProtocol
    return type("HeaderDeadline", (base,), {"header_timeout_s": timeout_s})
