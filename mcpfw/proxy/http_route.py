"""The ASGI handler of one MCP path of `mcpfw serve` (`/mcp` or `/mcp/<server>`).

Every request passes, in order: Host/Origin check (403), bearer authentication (401 with
`WWW-Authenticate`), body size/time/depth limits (413/408/400), then the era's own handling:
stateless 2026-07-28 POSTs (the SDK's inbound classifier: envelope and `Mcp-Method`/`Mcp-Name`
equal to the body, else 400/-32020), or handshake-era sessions (`initialize`, then
`Mcp-Session-Id` bound to the identity that opened it; GET stream; DELETE).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import anyio
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    InboundLadderRejection,
    classify_inbound_request,
    find_duplicated_routing_header,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from mcpfw.model import Agent, new_id
from mcpfw.proxy.auth import AuthError, www_authenticate
from mcpfw.proxy.http_checks import BadRequest, read_json_body
from mcpfw.proxy.http_endpoint import CallContext
from mcpfw.proxy.http_session import AgentSession, Exchange
from mcpfw.proxy.messages import PROTOCOL_VERSION_KEY, classify
from mcpfw.proxy.shared_upstream import Raw, error_message

if TYPE_CHECKING:
    from mcpfw.proxy.http_front import HttpFirewall

__all__ = ["SESSION_HEADER", "McpRoute", "send_json"]

log = logging.getLogger("mcpfw.serve")

SESSION_HEADER = "mcp-session-id"
_PING_S = 15.0
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def _dumps(message: Any) -> bytes:
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate from a `\ud800` escape: keep it escaped
        return json.dumps(message, separators=(",", ":")).encode()


def _sse(message: Raw) -> bytes:
    return b"event: message\r\ndata: " + _dumps(message) + b"\r\n\r\n"


async def send_json(
    send: Send, status: int, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    data = _dumps(body) if body is not None else b""
    raw_headers = [(b"content-length", str(len(data)).encode())]
    if body is not None:
        raw_headers.append((b"content-type", b"application/json"))
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": data})


class _Request:
    """What the route needs of a request, without Starlette's per-request parsing costs."""

    __slots__ = ("header_list", "headers", "method", "receive")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.receive = receive
        self.header_list = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        self.headers = dict(self.header_list)  # names are lower-case in ASGI

    async def stream(self) -> AsyncIterator[bytes]:
        """The request body's chunks."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise BadRequest(400, -32600, "the client went away")
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class McpRoute:
    """The ASGI handler of one MCP path (`/mcp` or `/mcp/<server>`)."""

    def __init__(self, firewall: HttpFirewall, server: str) -> None:
        self.fw = firewall
        self.endpoint = firewall.endpoints[server]
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = _Request(scope, receive)
        try:
            self.fw.origin.check(request.headers.get("host"), request.headers.get("origin"))
        except BadRequest as exc:
            await send_json(send, exc.status, error_message(None, exc.code, exc.message))
            return
        try:
            agent = await self.fw.authenticator.authenticate(request.headers.get("authorization"))
        except AuthError as exc:
            header = www_authenticate(self.fw.metadata_url(Request(scope, receive)), exc)
            body = {"error": exc.error or "unauthorized", "error_description": exc.description}
            await send_json(send, 401, body, {"www-authenticate": header})
            return
        if request.method == "GET":
            await self._get(request, agent, send, receive)
        elif request.method == "DELETE":
            await self._delete(request, agent, send)
        else:
            await self._post(request, agent, scope, receive, send)

    # --- session lookup ------------------------------------------------------------------------

    async def _session(self, request: _Request, agent: Agent, send: Send) -> AgentSession | None:
        """The request's session, or None after answering 400/404/403."""
        sid = request.headers.get(SESSION_HEADER)
        if not sid:
            await send_json(send, 400, error_message(None, -32600, "Missing Mcp-Session-Id"))
            return None
        session = self.fw.sessions.get(sid)
        if session is None or session.endpoint != self.server:
            await send_json(send, 404, error_message(None, -32600, "Session not found"))
            return None
        if session.agent.id != agent.id:
            log.warning(
                "session %s… of %r presented by %r: refused", sid[:8], session.agent.id, agent.id
            )
            await send_json(
                send, 403, error_message(None, -32600, "this session belongs to another identity")
            )
            return None
        return session

    async def _delete(self, request: _Request, agent: Agent, send: Send) -> None:
        session = await self._session(request, agent, send)
        if session is not None:
            await self.fw._close_session(session, "closed by the client")
            await send_json(send, 200, None)

    async def _get(self, request: _Request, agent: Agent, send: Send, receive: Receive) -> None:
        session = await self._session(request, agent, send)
        if session is None:
            return
        if session.get_stream_open:
            await send_json(send, 409, error_message(None, -32600, "a GET stream is already open"))
            return
        session.get_stream_open = True
        headers = [*_SSE_HEADERS, (SESSION_HEADER.encode(), session.id.encode())]
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                while True:
                    with anyio.move_on_after(_PING_S) as idle:
                        try:
                            message = await session.out_recv.receive()
                        except (anyio.EndOfStream, anyio.ClosedResourceError):
                            break
                    body = b": ping\r\n\r\n" if idle.cancelled_caught else _sse(message)
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                tg.cancel_scope.cancel()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client went away
        finally:
            session.get_stream_open = False

    # --- POST ----------------------------------------------------------------------------------

    async def _post(
        self, request: _Request, agent: Agent, scope: Scope, receive: Receive, send: Send
    ) -> None:
        content_type = request.headers.get("content-type", "application/json")
        if not content_type.lower().startswith("application/json"):
            await send_json(
                send, 415, error_message(None, -32600, "Content-Type must be application/json")
            )
            return
        limits = self.fw.limits
        try:
            body = await read_json_body(
                request,
                max_bytes=limits.max_body_bytes,
                max_depth=limits.max_json_depth,
                timeout_s=limits.read_timeout_s,
            )
        except BadRequest as exc:
            await send_json(send, exc.status, error_message(None, exc.code, exc.message))
            return
        if isinstance(body, list):
            await send_json(
                send, 400, error_message(None, -32600, "JSON-RPC batches are not supported")
            )
            return
        kind = classify(body) if isinstance(body, dict) else "invalid"
        if kind == "request" and not _valid_id(body.get("id")):
            kind = "invalid"  # MCP request ids are strings or integers, never null
        if kind == "invalid":
            await send_json(send, 400, error_message(None, -32600, "not a JSON-RPC message"))
            return
        accept = request.headers.get("accept", "")
        sse_ok = "text/event-stream" in accept or "*/*" in accept
        if _is_modern(request, body):
            await self._post_modern(request, agent, body, kind, sse_ok, receive, send)
        else:
            await self._post_handshake(request, agent, body, kind, sse_ok, receive, send)

    async def _post_modern(
        self,
        request: _Request,
        agent: Agent,
        body: Raw,
        kind: str,
        sse_ok: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        if kind == "notification":
            await send_json(send, 202, None)  # 2026-07-28 defines none client→server over HTTP
            return
        if kind == "response":
            await send_json(
                send, 400, error_message(None, -32600, "2026-07-28 clients cannot post responses")
            )
            return
        duplicated = find_duplicated_routing_header(request.header_list)
        verdict = (
            InboundLadderRejection(-32020, f"{duplicated} header appears more than once")
            if duplicated
            else classify_inbound_request(body, headers=request.headers)
        )
        if isinstance(verdict, InboundLadderRejection):
            error = error_message(body.get("id"), verdict.code, verdict.message, verdict.data)
            await send_json(send, ERROR_CODE_HTTP_STATUS.get(verdict.code, 400), error)
            return
        exchange = Exchange(None, streaming=sse_ok)
        ctx = CallContext(
            agent=agent, exchange=exchange, session=None, modern=True, session_id=new_id()
        )
        await _respond(
            send, receive, exchange, lambda: self.endpoint.handle(ctx, body), {}, modern=True
        )

    async def _post_handshake(
        self,
        request: _Request,
        agent: Agent,
        body: Raw,
        kind: str,
        sse_ok: bool,
        receive: Receive,
        send: Send,
    ) -> None:
        if not request.headers.get(SESSION_HEADER):
            if kind == "request" and body.get("method") == "initialize":
                await self._initialize(agent, body, send)
            else:
                await send_json(
                    send,
                    400,
                    error_message(
                        body.get("id"), -32600, "Missing Mcp-Session-Id (send initialize first)"
                    ),
                )
            return
        session = await self._session(request, agent, send)
        if session is None:
            return
        if kind == "response":
            if not session.resolve(body):
                log.debug("session %s: a response nobody waits for", session.id[:8])
            await send_json(send, 202, None)
            return
        if kind == "notification":
            await self._notification(session, body)
            await send_json(send, 202, None)
            return
        if body.get("method") == "initialize":
            await send_json(
                send, 400, error_message(body.get("id"), -32600, "session already initialized")
            )
            return
        exchange = Exchange(session, streaming=sse_ok)
        ctx = CallContext(
            agent=agent, exchange=exchange, session=session, modern=False, session_id=session.id
        )
        request_id = body.get("id")
        scope = anyio.CancelScope()

        async def handle() -> Raw:
            with scope:
                return await self.endpoint.handle(ctx, body)
            return error_message(request_id, -32800, "request cancelled")

        key = _id_key(request_id)
        session.inflight[key] = scope
        try:
            headers = {SESSION_HEADER: session.id}
            await _respond(send, receive, exchange, handle, headers, modern=False)
        finally:
            session.inflight.pop(key, None)

    async def _initialize(self, agent: Agent, body: Raw, send: Send) -> None:
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        assert isinstance(params, dict)
        capabilities = params.get("capabilities")
        session, evicted = self.fw.sessions.open(
            agent,
            self.server,
            str(params.get("protocolVersion", "")),
            capabilities if isinstance(capabilities, dict) else {},
        )
        for old in evicted:
            await self.fw._after_close(old, "evicted (idle, or too many sessions)")
        result = self.endpoint.initialize_result(params.get("protocolVersion"))
        session.protocol_version = result["protocolVersion"]
        for name in self.endpoint.upstreams:
            self.fw.upstreams[name].subscribe(session)
        log.info(
            "session %s… opened by agent %r on /mcp%s",
            session.id[:8],
            agent.id,
            f"/{self.server}" if self.server else "",
        )
        response = {"jsonrpc": "2.0", "id": body.get("id"), "result": result}
        await send_json(send, 200, response, {SESSION_HEADER: session.id})

    async def _notification(self, session: AgentSession, body: Raw) -> None:
        method = body.get("method")
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        assert isinstance(params, dict)
        if method == "notifications/cancelled":
            scope = session.inflight.get(_id_key(params.get("requestId")))
            if scope is not None:
                scope.cancel()  # the upstream is told by UpstreamSession.request
            return
        if method in ("notifications/initialized", "notifications/roots/list_changed"):
            return
        if method == "tools/call":  # no id: it cannot be decided and answered, never relay it
            log.warning("session %s: dropped a tools/call sent as a notification", session.id[:8])
            return
        if self.server:  # anything else goes to the one upstream of a per-server endpoint
            await self.fw.upstreams[self.server].notify(str(method), params or None, session)


def _valid_id(request_id: Any) -> bool:
    return isinstance(request_id, str | int) and not isinstance(request_id, bool)


def _id_key(request_id: Any) -> object:
    return (type(request_id).__name__, request_id) if isinstance(request_id, str | int) else None


def _is_modern(request: _Request, body: Raw) -> bool:
    version = request.headers.get("mcp-protocol-version")
    if version is not None:
        return version not in HANDSHAKE_PROTOCOL_VERSIONS
    params = body.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return isinstance(meta, dict) and PROTOCOL_VERSION_KEY in meta


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # a broken receive channel: the client is gone for our purposes
        log.debug("receive failed while a request was in progress", exc_info=True)
    scope.cancel()


async def _respond(
    send: Send,
    receive: Receive,
    exchange: Exchange,
    handler: Callable[[], Awaitable[Raw]],
    headers: Mapping[str, str],
    *,
    modern: bool,
) -> None:
    """Run `handler` and answer with JSON, or with SSE once related messages arrive first.

    The handler runs in this task, inside a cancel scope; a plain asyncio task watches for the
    client going away (and cancels that scope); a third, the SSE pump, starts only if a message
    for the client arrives before the answer (progress, an elicitation). A plain call costs one
    small task and no task group (an anyio task group and its cancellation cost more than the
    rest of this function on every call; `mcpfw serve` always runs on asyncio, under uvicorn).
    """
    pump_task: asyncio.Task[None] | None = None

    async def pump() -> None:
        assert exchange.events is not None
        raw_headers = [*_SSE_HEADERS, *((k.encode(), v.encode()) for k, v in headers.items())]
        await send({"type": "http.response.start", "status": 200, "headers": raw_headers})
        while True:
            with anyio.move_on_after(_PING_S):
                try:
                    message = await exchange.events.receive()
                except anyio.EndOfStream:
                    break
                await send({"type": "http.response.body", "body": _sse(message), "more_body": True})
                continue
            await send({"type": "http.response.body", "body": b": ping\r\n\r\n", "more_body": True})

    def start_pump() -> None:
        nonlocal pump_task
        pump_task = asyncio.ensure_future(pump())

    scope = anyio.CancelScope()
    watcher = asyncio.ensure_future(_watch_disconnect(receive, scope))
    exchange.on_first = start_pump
    try:
        with scope:
            try:
                result = await handler()
            except anyio.get_cancelled_exc_class():
                raise
            except Exception:  # top-level boundary of one request: log it, answer an error
                log.exception("internal error while handling a request")
                result = error_message(None, -32603, "internal error in mcpfw")
            finally:
                exchange.finish()
            if pump_task is not None:
                await pump_task  # every message before the answer (a cancel here cancels it)
                await send({"type": "http.response.body", "body": _sse(result), "more_body": False})
            else:
                await send_json(send, _status(result, modern), result, headers)
    finally:
        watcher.cancel()
        if pump_task is not None and not pump_task.done():
            pump_task.cancel()


def _status(message: Raw, modern: bool) -> int:
    error = message.get("error")
    if isinstance(error, dict) and (modern or message.get("id") is None):
        code = error.get("code")
        return (
            ERROR_CODE_HTTP_STATUS.get(code, 200 if modern else 400)
            if isinstance(code, int)
            else 400
        )
    return 200
