"""The streamable-HTTP front of `mcpfw serve`: a Starlette app for many authenticated agents.

Paths:

- `POST|GET|DELETE /mcp/<server>`: one configured upstream; `/mcp`: all of them, tool names
  prefixed `<server>__`.
- `GET /.well-known/oauth-protected-resource[/mcp...]`: RFC 9728 metadata (unauthenticated).
- `GET /healthz` (the process is up) and `GET /readyz` (every upstream is connected).

Every MCP request passes, in order: Host/Origin check (403), bearer authentication (401 with
`WWW-Authenticate`), body size/time/depth limits (413/408/400), then one of two eras:

- 2026-07-28 (an `MCP-Protocol-Version` header that is not a handshake-era version, or a body
  carrying the per-request `_meta` envelope): each POST stands alone; the SDK's own inbound
  classifier checks the envelope and that `Mcp-Method`/`Mcp-Name` equal the body (else HTTP 400
  with JSON-RPC error -32020).
- handshake era: `initialize` opens a session bound to the caller's identity; its
  `Mcp-Session-Id` is refused (403) when presented by anyone else. GET opens the session's
  stream for notifications and server→client requests; DELETE ends the session.

A request's answer is JSON, unless the upstream sends something for it first (progress, an
elicitation) and the client accepts SSE: then the POST becomes an SSE stream carrying those
messages and finally the answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from mcpfw.config import AuthConfig
from mcpfw.proxy.auth import Authenticator, protected_resource_metadata
from mcpfw.proxy.http_checks import OriginPolicy
from mcpfw.proxy.http_endpoint import Endpoint, ToolGate
from mcpfw.proxy.http_route import McpRoute
from mcpfw.proxy.http_session import AgentSession, SessionTable
from mcpfw.proxy.shared_upstream import SharedUpstream

__all__ = ["FrontLimits", "HttpFirewall", "SessionGate"]

log = logging.getLogger("mcpfw.serve")

_EXPIRY_EVERY_S = 60.0


class SessionGate(ToolGate, Protocol):
    """A tool gate that is also told when agent sessions end (for the audit log)."""

    async def session_closed(self, session: AgentSession, reason: str) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class FrontLimits:
    max_body_bytes: int = 1_048_576
    max_json_depth: int = 64
    read_timeout_s: float = 30.0
    session_idle_s: float = 3600.0
    startup_timeout_s: float = 30.0


_MCP_METHODS = frozenset({"GET", "POST", "DELETE"})


class _McpDispatch:
    """The outermost ASGI app: MCP paths to their handler directly, the rest to Starlette."""

    __slots__ = ("fallback", "routes")

    def __init__(self, routes: Mapping[str, McpRoute], fallback: Starlette) -> None:
        self.routes = dict(routes)
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in _MCP_METHODS:
            route = self.routes.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await self.fallback(scope, receive, send)


class HttpFirewall:
    """Everything `mcpfw serve` runs: upstreams, sessions, endpoints, and the ASGI app."""

    def __init__(
        self,
        *,
        upstreams: Mapping[str, SharedUpstream],
        gate: SessionGate,
        authenticator: Authenticator,
        auth: AuthConfig,
        origin: OriginPolicy,
        limits: FrontLimits | None = None,
        public_url: str | None = None,
    ) -> None:
        self.upstreams = dict(upstreams)
        self.gate = gate
        self.authenticator = authenticator
        self.auth = auth
        self.origin = origin
        self.limits = limits or FrontLimits()
        self.public_url = public_url.rstrip("/") if public_url else None
        self.sessions = SessionTable(idle_timeout_s=self.limits.session_idle_s)
        self.audit_store: Any = None  # set by open_http_firewall (tests read it)
        self.endpoints = {"": Endpoint("", self.upstreams, gate)}
        self.endpoints.update({name: Endpoint(name, self.upstreams, gate) for name in upstreams})

    # --- app -----------------------------------------------------------------------------------

    def app(self) -> ASGIApp:
        """The ASGI app; its lifespan connects every upstream (kept until shutdown).

        MCP requests (`/mcp`, `/mcp/<server>`; GET, POST, DELETE) go straight to their route
        handler: Starlette's middleware and routing cost more per call than the handler's own
        checks. Everything else (metadata, health, lifespan, 404/405/redirects) is Starlette's.
        """
        mcp_routes = {"/mcp": McpRoute(self, "")}
        mcp_routes.update({f"/mcp/{name}": McpRoute(self, name) for name in self.upstreams})
        routes = [
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/.well-known/oauth-protected-resource", self._metadata, methods=["GET"]),
            Route(
                "/.well-known/oauth-protected-resource/{path:path}",
                self._metadata,
                methods=["GET"],
            ),
        ]
        routes += [
            Route(path, route, methods=list(_MCP_METHODS)) for path, route in mcp_routes.items()
        ]
        return _McpDispatch(mcp_routes, Starlette(routes=routes, lifespan=self._lifespan))

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> Any:
        # Outcome writes run after answers are sent (decisions were committed before
        # forwarding); this task group outlives the upstreams so every outcome is written.
        async with anyio.create_task_group() as outcomes:
            if hasattr(self.gate, "background"):
                self.gate.background = outcomes
            async with anyio.create_task_group() as tg:
                for upstream in self.upstreams.values():
                    await tg.start(upstream.run)
                # Serve once every upstream is connected (or has had its chance: /readyz).
                async with anyio.create_task_group() as waiting:
                    for upstream in self.upstreams.values():
                        waiting.start_soon(self._await_upstream, upstream)
                tg.start_soon(self._expire_sessions)
                try:
                    yield
                finally:
                    with anyio.CancelScope(shield=True):
                        for session in self.sessions.all():
                            await self._close_session(session, "firewall shutting down")
                        await self.gate.aclose()
                        if hasattr(self.gate, "settled"):
                            await self.gate.settled()  # every outcome written before we go
                    tg.cancel_scope.cancel()
            if hasattr(self.gate, "background"):
                self.gate.background = None

    async def _await_upstream(self, upstream: SharedUpstream) -> None:
        with anyio.move_on_after(self.limits.startup_timeout_s):
            await upstream.first_attempt.wait()  # a failed start is not waited out
        if not upstream.ready:
            log.error(
                "upstream %r is not available (%s); serving without it until it connects",
                upstream.name,
                upstream.last_error,
            )

    async def _expire_sessions(self) -> None:
        while True:
            await anyio.sleep(_EXPIRY_EVERY_S)
            for session in self.sessions.expire():
                await self._after_close(session, "idle timeout")

    async def _close_session(self, session: AgentSession, reason: str) -> None:
        self.sessions.close(session.id)
        await self._after_close(session, reason)

    async def _after_close(self, session: AgentSession, reason: str) -> None:
        for upstream in self.upstreams.values():
            upstream.unsubscribe(session)
        await self.gate.session_closed(session, reason)

    # --- plain routes --------------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        down = {n: u.last_error for n, u in self.upstreams.items() if not u.ready}
        body = {"status": "ready" if not down else "not ready", "unavailable": down}
        return JSONResponse(body, status_code=200 if not down else 503)

    def base_url(self, request: Request) -> str:
        if self.public_url:
            return self.public_url
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return f"{request.url.scheme}://{host}"

    async def _metadata(self, request: Request) -> Response:
        path = request.path_params.get("path")
        resource = self.base_url(request) + (f"/{path}" if path else "/mcp")
        return JSONResponse(protected_resource_metadata(resource, self.auth))

    def metadata_url(self, request: Request) -> str:
        return f"{self.base_url(request)}/.well-known/oauth-protected-resource{request.url.path}"
