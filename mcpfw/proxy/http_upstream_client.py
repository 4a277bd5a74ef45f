"""A lean streamable-HTTP client for `mcpfw serve`'s shared upstream sessions.

`mcpfw serve` carries every agent's calls over one upstream session, so the client side of
that session is on the hot path of every call. General-purpose clients cost ~1 ms of CPU per
request (measured: httpx2 ~1 100 requests/s on this machine, httpx 0.28 ~260); this one
speaks HTTP/1.1 through `h11` over a pool of keep-alive connections and relays raw JSON:

- each message is one POST (`Content-Type: application/json`, `Accept: application/json,
  text/event-stream`, the session id and negotiated protocol version once known, and the
  upstream's own configured headers; never anything from an agent);
- a JSON answer is delivered as is; an SSE answer is streamed, each `data:` event delivered;
  202 means nothing to deliver;
- after `initialize` a GET stream is opened for server-initiated messages (if the upstream
  offers one);
- a 404 on an established session means the upstream forgot it: the connection ends and the
  shared upstream reconnects (a new `initialize`); a transport failure on a request is
  answered with a JSON-RPC error for that request, so no caller waits forever.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
import h11
from anyio.abc import ByteStream, TaskGroup

__all__ = ["http_session"]

log = logging.getLogger("mcpfw.upstream")

Raw = dict[str, Any]
_MAX_CONNECTIONS = 64
_MAX_EVENT = 16 * 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
_TRANSPORT_ERRORS = (OSError, ConnectionError, h11.ProtocolError, anyio.BrokenResourceError)


class _SessionGone(Exception):
    """The upstream no longer knows our session (HTTP 404)."""


class _Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_EVENT)

    async def send(self, *events: Any) -> None:
        data = b"".join(self.h11.send(e) or b"" for e in events)
        await self.stream.send(data)

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
            self.h11.receive_data(data)

    def reusable(self) -> bool:
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False


class _Client:
    def __init__(self, url: str, headers: Mapping[str, str]) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        authority = parts.netloc.rpartition("@")[2]
        self.base_headers = [("host", authority), *((k, v) for k, v in headers.items())]
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self._idle: list[_Conn] = []
        self._slots = anyio.Semaphore(_MAX_CONNECTIONS)
        self._ssl = ssl.create_default_context() if self.tls else None

    async def _connect(self) -> _Conn:
        with anyio.fail_after(_CONNECT_TIMEOUT_S):
            stream: ByteStream
            if self._ssl is not None:
                stream = await anyio.connect_tcp(
                    self.host,
                    self.port,
                    tls=True,
                    ssl_context=self._ssl,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(self.host, self.port)
        return _Conn(stream)

    def _headers(self, method: str, body: bytes | None) -> list[tuple[str, str]]:
        headers = list(self.base_headers)
        if method == "POST":
            headers += [
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("content-length", str(len(body or b""))),
            ]
        else:
            headers.append(("accept", "text/event-stream"))
        if self.session_id:
            headers.append(("mcp-session-id", self.session_id))
        if self.protocol_version:
            headers.append(("mcp-protocol-version", self.protocol_version))
        return headers

    async def exchange(
        self, method: str, body: bytes | None, deliver: Any, *, expect_init: bool = False
    ) -> int:
        """One HTTP request; delivers every JSON-RPC message of the answer; returns the status."""
        async with self._slots:
            while self._idle:  # a pooled connection the server closed while idle is retried
                conn = self._idle.pop()
                try:
                    response = await self._start(conn, method, body)
                except (OSError, ConnectionError, h11.ProtocolError, anyio.BrokenResourceError):
                    with anyio.CancelScope(shield=True):
                        await conn.stream.aclose()
                    continue
                return await self._finish(conn, response, deliver, expect_init)
            conn = await self._connect()
            try:
                response = await self._start(conn, method, body)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.stream.aclose()
                raise
            return await self._finish(conn, response, deliver, expect_init)

    async def _start(self, conn: _Conn, method: str, body: bytes | None) -> h11.Response:
        request = h11.Request(
            method=method, target=self.target, headers=self._headers(method, body)
        )
        parts = [request, h11.Data(data=body)] if body else [request]
        await conn.send(*parts, h11.EndOfMessage())
        response = await conn.next_event()
        if not isinstance(response, h11.Response):
            raise ConnectionError(f"no HTTP response ({type(response).__name__})")
        return response

    async def _finish(
        self, conn: _Conn, response: h11.Response, deliver: Any, expect_init: bool
    ) -> int:
        ok = False
        try:
            headers = {k.decode().lower(): v.decode() for k, v in response.headers}
            if expect_init and "mcp-session-id" in headers:
                self.session_id = headers["mcp-session-id"]
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "text/event-stream" and response.status_code == 200:
                await _read_sse(conn, deliver)
            else:
                chunks = []
                while not isinstance(event := await conn.next_event(), h11.EndOfMessage):
                    if isinstance(event, h11.Data):
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.ConnectionClosed):
                        break
                data = b"".join(chunks)
                if data and kind == "application/json":
                    await _deliver_json(data, deliver)
            ok = conn.reusable()
            return int(response.status_code)
        finally:
            if ok:
                self._idle.append(conn)
            else:
                with anyio.CancelScope(shield=True):
                    await conn.stream.aclose()

    async def aclose(self) -> None:
        for conn in self._idle:
            await conn.stream.aclose()
        self._idle.clear()


async def _deliver_json(data: bytes, deliver: Any) -> None:
    try:
        value = json.loads(data)
    except ValueError as exc:
        log.warning("upstream sent invalid JSON: %s", exc)
        return
    for message in value if isinstance(value, list) else [value]:
        if isinstance(message, dict):
            await deliver(message)


async def _read_sse(conn: _Conn, deliver: Any) -> None:
    buffer = b""
    data_lines: list[bytes] = []
    while True:
        event = await conn.next_event()
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return
        if not isinstance(event, h11.Data):
            continue
        buffer += bytes(event.data)
        *lines, buffer = buffer.replace(b"\r\n", b"\n").split(b"\n")
        for line in lines:
            if not line:
                if data_lines:
                    await _deliver_json(b"\n".join(data_lines), deliver)
                    data_lines = []
            elif line.startswith(b"data:"):
                data_lines.append(line[5:].lstrip(b" "))


@asynccontextmanager
async def http_session(
    url: str, headers: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[Any, Any]]:
    """One MCP session to a streamable-HTTP upstream as a (read, write) pair of raw dicts."""
    client = _Client(url, headers or {})
    to_reader, read = anyio.create_memory_object_stream[Any](256)
    write, from_writer = anyio.create_memory_object_stream[Raw](256)
    gone = anyio.Event()

    async def deliver(message: Raw) -> None:
        result = message.get("result")
        if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            client.protocol_version = client.protocol_version or result["protocolVersion"]
        try:
            await to_reader.send(message)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug("upstream message after the session ended: dropped")

    async def post(message: Raw, tg: TaskGroup) -> None:
        is_init = message.get("method") == "initialize"
        try:
            status = await client.exchange(
                "POST",
                json.dumps(message, separators=(",", ":")).encode(),
                deliver,
                expect_init=is_init,
            )
            if status == 404 and client.session_id:
                raise _SessionGone()
            if status >= 400 and "id" in message and "method" in message:
                await deliver(_error(message["id"], f"upstream answered HTTP {status}"))
            if is_init and status == 200 and client.session_id:
                tg.start_soon(get_stream)
        except _SessionGone:
            log.warning("upstream %s forgot our session; reconnecting", url)
            gone.set()
        except (
            OSError,
            ConnectionError,
            h11.ProtocolError,
            anyio.BrokenResourceError,
            TimeoutError,
        ) as exc:
            if "id" in message and "method" in message:
                await deliver(_error(message["id"], f"upstream {url} unreachable: {exc}"))
            if is_init:
                gone.set()

    async def get_stream() -> None:
        try:
            status = await client.exchange("GET", None, deliver)
            log.debug("upstream GET stream ended (HTTP %d)", status)
        except (
            OSError,
            ConnectionError,
            h11.ProtocolError,
            anyio.BrokenResourceError,
            TimeoutError,
        ):
            pass

    async def writer(tg: TaskGroup) -> None:
        async with from_writer:
            async for message in from_writer:
                tg.start_soon(post, message, tg)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer, tg)

        async def watch_gone() -> None:
            await gone.wait()
            await to_reader.aclose()

        tg.start_soon(watch_gone)
        try:
            yield read, write
        finally:
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                if client.session_id:
                    with suppress(
                        OSError, ConnectionError, h11.ProtocolError, anyio.BrokenResourceError
                    ):
                        await client.exchange("DELETE", None, _discard)
                await client.aclose()


async def _discard(message: Raw) -> None:
    return None


def _error(request_id: Any, message: str) -> Raw:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": message}}
