"""`mcpfw serve-recording --http`: the recorded upstream over streamable HTTP.

A deliberately small server for offline tests: every POST is answered with one JSON
response from `RecordedUpstream` (no SSE streams, no server-to-client requests). Handshake-
era clients get an `Mcp-Session-Id` on `initialize`; 2026-07-28 requests must carry an
`Mcp-Method` header equal to the body's method (else HTTP 400 with -32020, as the spec says).
Requests whose `Origin` is not a loopback host are refused (DNS rebinding), and it binds
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcpfw.recording.serve import RecordedUpstream

__all__ = ["recording_app"]

_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_MAX_BODY = 4 * 1024 * 1024


def _error(code: int, message: str, status: int, rid: Any = None) -> JSONResponse:
    body = {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status)


def recording_app(upstream: RecordedUpstream) -> Starlette:
    """An ASGI app serving the recording at `/mcp`."""

    async def mcp(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin and (urlsplit(origin).hostname or "") not in _LOOPBACK:
            return _error(-32600, f"origin {origin} is not allowed", 403)
        if request.method == "GET":
            return Response(status_code=405, headers={"allow": "POST, DELETE"})
        if request.method == "DELETE":
            return Response(status_code=200)
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return _error(-32600, "request body too large", 413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(-32700, "parse error: the body is not JSON", 400)
        if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
            return _error(-32600, "expected one JSON-RPC 2.0 message (no batches)", 400)
        method = body.get("method")
        if not isinstance(method, str) or "id" not in body:
            return Response(status_code=202)  # a notification or a response: nothing to answer
        header = request.headers.get("mcp-method")
        if header is not None and header != method:
            return _error(
                -32020, f"Mcp-Method header {header!r} does not match the body ({method!r})",
                400, body.get("id"),
            )  # fmt: skip
        response = upstream.answer(body) or {}
        headers = {}
        if method == "initialize" and "result" in response:
            headers["mcp-session-id"] = uuid.uuid4().hex
        return JSONResponse(response, headers=headers)

    return Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST", "DELETE"])])
