"""A lean streamable-HTTP client for `mcpfw serve`'s shared upstream sessions.

`mcpfw serve` carries every agent's calls over one upstream session, so the client side of
that session is on the hot path of every call. General-purpose clients cost ~1 ms of CPU per
request (measured: httpx2 ~1 100 requests/s on this machine, httpx 0.28 ~260, h11 ~110 µs of CPU
per request); this one
speaks plain HTTP/1.1 (requests written directly, responses parsed here: sized, chunked or
until close) over a pool of keep-alive connections and relays raw JSON:

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

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit

import anyio
from anyio.abc import ObjectSendStream, TaskGroup

__all__ = ["http_session"]

log = logging.getLogger("mcpfw.upstream")

Raw = dict[str, Any]
_MAX_CONNECTIONS = 64
_MAX_EVENT = 16 * 1024 * 1024
_CONNECT_TIMEOUT_S = 10.0
_MAX_HEAD = 64 * 1024
_TRANSPORT_ERRORS = (
    OSError,
    ConnectionError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    ValueError,  # a malformed chunk size
    asyncio.IncompleteReadError,  # the connection ended inside a response
    asyncio.LimitOverrunError,  # a response head over _MAX_HEAD
)


class _SessionGone(Exception):
    """The upstream no longer knows our session (HTTP 404)."""


class _BadResponse(ConnectionError):
    """The upstream's bytes are not an HTTP/1.1 response we can read."""


class _Response:
    """Status and headers of one response; the body is read through `_Conn`."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        encoding = headers.get("transfer-encoding", "").lower()
        self.chunked = "chunked" in encoding
        length = headers.get("content-length")
        self.length = int(length) if length is not None and length.isdigit() else None
        self.keep_alive = headers.get("connection", "").lower() != "close" and (
            self.chunked or self.length is not None
        )


class _Conn:
    """One keep-alive HTTP/1.1 connection (requests written by hand, responses parsed here).

    On asyncio streams rather than anyio's socket stream: anyio pauses and resumes reading
    around every receive (two more event-loop operations per read), which costs more than the
    parsing here on every call. Cancellation and deadlines (anyio scopes) work as usual.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, head: bytes, body: bytes | None) -> _Response:
        self.writer.write(head + body if body else head)
        await self.writer.drain()  # waits only when the upstream is not reading (bounded by
        # the caller's deadline)
        raw = (await self.reader.readuntil(b"\r\n\r\n"))[:-4]
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise _BadResponse(f"not an HTTP/1.1 response: {status_line[:80]!r}")
        headers: dict[str, str] = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        if 100 <= status < 200:  # interim (100 Continue): the real answer follows
            return await self.request(b"", None)
        return _Response(status, headers)

    async def body(self, response: _Response) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (chunked, sized, or until the connection closes)."""
        if response.chunked:
            while True:
                size_line = await self.reader.readuntil(b"\r\n")
                size = int(size_line[:-2].split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers, up to the empty line
                    return
                yield await self.reader.readexactly(size)
                await self.reader.readexactly(2)
        elif response.length is not None:
            if response.length:
                yield await self.reader.readexactly(response.length)
        else:
            while chunk := await self.reader.read(65536):
                yield chunk

    async def aclose(self) -> None:
        self.writer.close()


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
        # fast_acquire: a free slot is taken without yielding to the event loop (the request
        # then waits on the socket anyway); anyio's default yields once on every acquire.
        self._slots = anyio.Semaphore(_MAX_CONNECTIONS, fast_acquire=True)
        self._ssl = ssl.create_default_context() if self.tls else None

    async def _connect(self) -> _Conn:
        with anyio.fail_after(_CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
                limit=_MAX_HEAD,  # a response head (or chunk-size line) longer than this fails
            )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Conn(reader, writer)

    def _head(self, method: str, body: bytes | None) -> bytes:
        lines = [f"{method} {self.target} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in self._headers(method, body)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

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
        head = self._head(method, body)
        async with self._slots:
            while self._idle:  # a pooled connection the server closed while idle is retried
                conn = self._idle.pop()
                try:
                    response = await conn.request(head, body)
                except BaseException as exc:  # a cancelled caller must not leak the connection
                    with anyio.CancelScope(shield=True):
                        await conn.aclose()
                    if isinstance(exc, _TRANSPORT_ERRORS):
                        continue
                    raise
                return await self._finish(conn, response, deliver, expect_init)
            conn = await self._connect()
            try:
                response = await conn.request(head, body)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()
                raise
            return await self._finish(conn, response, deliver, expect_init)

    async def _finish(
        self, conn: _Conn, response: _Response, deliver: Any, expect_init: bool
    ) -> int:
        ok = False
        try:
            if expect_init and "mcp-session-id" in response.headers:
                self.session_id = response.headers["mcp-session-id"]
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "text/event-stream" and response.status == 200:
                await _read_sse(conn.body(response), deliver)
            else:
                data = b"".join([chunk async for chunk in conn.body(response)])
                if data and kind == "application/json":
                    await _deliver_json(data, deliver, answer=True)
            ok = response.keep_alive
            return response.status
        finally:
            if ok:
                self._idle.append(conn)
            else:
                with anyio.CancelScope(shield=True):
                    await conn.aclose()

    async def aclose(self) -> None:
        for conn in self._idle:
            await conn.aclose()
        self._idle.clear()


async def _deliver_json(data: bytes, deliver: Any, *, answer: bool = False) -> None:
    """Deliver the messages of a JSON body; `answer`: the whole body of a JSON answer."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        log.warning("upstream sent invalid JSON: %s", exc)
        return
    if answer and isinstance(value, dict):
        await deliver(value, answer=True)  # the one message of a JSON answer
        return
    for message in value if isinstance(value, list) else [value]:
        if isinstance(message, dict):
            await deliver(message)


async def _read_sse(chunks: AsyncIterator[bytes], deliver: Any) -> None:
    buffer = b""
    data_lines: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        if len(buffer) > _MAX_EVENT:
            raise _BadResponse("an SSE event over the size limit")
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
    gone = anyio.Event()

    async def deliver(message: Raw, *, answer: bool = False) -> None:
        result = message.get("result")
        if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
            client.protocol_version = client.protocol_version or result["protocolVersion"]
        # The whole answer to a POST, as JSON: nothing else came on its connection, so it may
        # go straight to the caller waiting for it (no hop through the read stream and its
        # reader task). SSE answers keep the stream: their messages stay in order.
        take = write.take_response
        if answer and take is not None and take(message):
            return
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
        except (*_TRANSPORT_ERRORS, TimeoutError) as exc:
            if "id" in message and "method" in message:
                await deliver(_error(message["id"], f"upstream {url} unreachable: {exc}"))
            if is_init:
                gone.set()

    async def get_stream() -> None:
        try:
            status = await client.exchange("GET", None, deliver)
            log.debug("upstream GET stream ended (HTTP %d)", status)
        except (*_TRANSPORT_ERRORS, TimeoutError):
            pass

    async with anyio.create_task_group() as tg:
        write = _InlineWriter(lambda message: post(message, tg))

        async def watch_gone() -> None:
            await gone.wait()
            await to_reader.aclose()

        tg.start_soon(watch_gone)
        try:
            yield read, write
        finally:
            write.cancel_all()
            tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                if client.session_id:
                    with suppress(*_TRANSPORT_ERRORS):
                        await client.exchange("DELETE", None, _discard)
                await client.aclose()


class _InlineWriter(ObjectSendStream[Raw]):
    """The session's write side: each message is POSTed by the task that sends it.

    No hand-off to a writer task and no task per request: the caller's own task writes the
    request and reads the answer, which is delivered to the read side like any other message.
    The caller's deadline (the shared upstream's per-call timeout) therefore bounds the whole
    exchange, and the session's end cancels exchanges still running.
    """

    def __init__(self, post: Callable[[Raw], Awaitable[None]]) -> None:
        self._post = post
        self._running: set[anyio.CancelScope] = set()
        self._closed = False
        # Set by the reader side (`SharedUpstream`): takes a response whose caller waits for
        # it, and says whether it did; a response it does not take goes to the read stream.
        self.take_response: Callable[[Raw], bool] | None = None

    async def send(self, item: Raw) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        with anyio.CancelScope() as scope:
            self._running.add(scope)
            try:
                await self._post(item)
            finally:
                self._running.discard(scope)

    def cancel_all(self) -> None:
        self._closed = True
        for scope in self._running:
            scope.cancel()

    async def aclose(self) -> None:
        self._closed = True


async def _discard(message: Raw) -> None:
    return None


def _error(request_id: Any, message: str) -> Raw:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": -32603, "message": message}}
