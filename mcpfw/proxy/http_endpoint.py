"""What one `mcpfw serve` path answers: one upstream (`/mcp/<server>`) or all (`/mcp`).

The endpoint owns the MCP-level behaviour of the HTTP front, independent of HTTP itself:

- `initialize` (handshake era) and `server/discover` (2026-07-28) are answered by the firewall
  from the upstream's own handshake (done once, when the shared connection opened).
- `tools/list` is relayed, then filtered per agent (hide-denied) and, on the aggregate
  endpoint, merged from every upstream with names prefixed `<server>__<tool>`.
- `tools/call` goes through the tool gate (the Guard: policy, write-ahead audit, ask) and is
  forwarded only when the gate says so; the upstream sees its own tool name.
- Everything else is relayed unchanged to the one upstream of a per-server endpoint. The
  aggregate endpoint serves tools only (plus ping); other methods are "method not found".

2026-07-28 requests are relayed to the upstream's handshake-era session with the per-request
`io.modelcontextprotocol/*` envelope removed from `_meta` (it describes the agent's hop, not
ours), and results get `resultType: "complete"` when the upstream did not set one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Protocol

import anyio
from mcp_types.version import (
    HANDSHAKE_PROTOCOL_VERSIONS,
    LATEST_HANDSHAKE_VERSION,
    MODERN_PROTOCOL_VERSIONS,
)

from mcpfw.model import Agent, Decision
from mcpfw.proxy.http_session import AgentSession, Exchange
from mcpfw.proxy.shared_upstream import Raw, SharedUpstream, error_message

__all__ = ["SEPARATOR", "CallContext", "Endpoint", "ToolGate", "split_tool_name"]

log = logging.getLogger("mcpfw.serve")

SEPARATOR = "__"  # aggregated tool names: <server>__<tool> (server names never contain "__")
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
_ENVELOPE_PREFIX = "io.modelcontextprotocol/"
_MAX_PAGES = 100
# 2026-07-28 results that carry cache hints (ttlMs, cacheScope)
_CACHEABLE = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list", "resources/read"}
)


@dataclass(kw_only=True, slots=True)
class CallContext:
    """Who sent one request and how to reach them back."""

    agent: Agent
    exchange: Exchange
    session: AgentSession | None  # None for 2026-07-28 (stateless) requests
    modern: bool
    session_id: str  # the Mcp-Session-Id, or a per-request id for stateless requests
    decision: Decision | None = None  # set by the gate on a tools/call (session recording)


Forward = Callable[[Raw | None], Awaitable[Raw]]  # params for upstream → response message


class ToolGate(Protocol):
    """The per-call pipeline (the Guard: policy, audit, ask) as an endpoint needs it."""

    async def filter_tools(self, ctx: CallContext, server: str, result: Raw) -> Raw:
        """A tools/list result as this agent may see it (annotations remembered)."""
        ...

    async def call(self, ctx: CallContext, server: str, request: Raw, forward: Forward) -> Raw:
        """Decide, record, maybe forward `request` (a tools/call naming the upstream's own
        tool); returns the response message (`result` or `error`) for the client."""
        ...


def split_tool_name(name: str) -> tuple[str, str]:
    """`fs__read_file` → (`fs`, `read_file`); no separator → (``, name)."""
    server, sep, tool = name.partition(SEPARATOR)
    return (server, tool) if sep else ("", name)


def strip_envelope(params: Raw | None) -> Raw | None:
    """Params without the 2026-07-28 per-request envelope keys in `_meta`."""
    if not params:
        return params
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not any(k.startswith(_ENVELOPE_PREFIX) for k in meta):
        return params
    kept = {k: v for k, v in meta.items() if not k.startswith(_ENVELOPE_PREFIX)}
    out = dict(params)
    if kept:
        out["_meta"] = kept
    else:
        del out["_meta"]
    return out


class Endpoint:
    """The MCP behaviour of one path; `server` is "" for the aggregate endpoint."""

    def __init__(self, server: str, upstreams: Mapping[str, SharedUpstream], gate: ToolGate):
        self.server = server
        self.upstreams = dict(upstreams) if not server else {server: upstreams[server]}
        self.gate = gate

    @property
    def aggregate(self) -> bool:
        return not self.server

    # --- handshake / discovery ---------------------------------------------------------------

    def capabilities(self) -> Raw:
        if self.aggregate:
            return {"tools": {"listChanged": True}}
        return dict(self.upstreams[self.server].init_result.get("capabilities") or {})

    def server_info(self) -> Raw:
        if self.aggregate:
            return {"name": "mcpfw", "version": version("mcpfw")}
        info = self.upstreams[self.server].init_result.get("serverInfo")
        return dict(info) if isinstance(info, dict) else {"name": self.server, "version": "0"}

    def initialize_result(self, requested: Any) -> Raw:
        negotiated = (
            requested if requested in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        )
        result: Raw = {
            "protocolVersion": negotiated,
            "capabilities": self.capabilities(),
            "serverInfo": self.server_info(),
        }
        instructions = (
            None if self.aggregate else self.upstreams[self.server].init_result.get("instructions")
        )
        if isinstance(instructions, str):
            result["instructions"] = instructions
        return result

    def discover_result(self) -> Raw:
        return {
            "supportedVersions": list(MODERN_PROTOCOL_VERSIONS),
            "capabilities": self.capabilities(),
            "cacheScope": "private",  # tool lists are per agent
            "ttlMs": 0,
            "resultType": "complete",
        }

    # --- requests ----------------------------------------------------------------------------

    async def handle(self, ctx: CallContext, message: Raw) -> Raw:
        """Answer one request; the response carries the request's own id."""
        recordings = getattr(self.gate, "recordings", None)  # mcpfw.recording.http
        if recordings is None:
            return await self._handle(ctx, message)
        handle = recordings.request(ctx, self, message)
        response = await self._handle(ctx, message)
        recordings.response(handle, response, ctx.decision)
        return response

    async def _handle(self, ctx: CallContext, message: Raw) -> Raw:
        request_id = message.get("id")
        method = str(message.get("method"))
        params = message.get("params")
        if params is not None and not isinstance(params, dict):
            return error_message(request_id, INVALID_PARAMS, "params must be an object")
        if method == "ping":
            response: Raw = {"result": {}}
        elif method == "server/discover" and ctx.modern:
            response = {"result": self.discover_result()}
        elif method == "logging/setLevel":
            # The upstream is shared: one agent must not change what the others are sent.
            response = {"result": {}}
        elif method == "tools/list":
            response = await self._tools_list(ctx, params)
        elif method == "tools/call":
            response = await self._tools_call(ctx, message, params or {})
        elif self.aggregate:
            response = error_message(
                request_id,
                METHOD_NOT_FOUND,
                f"{method} is not served on the aggregate endpoint; use /mcp/<server>",
            )
        else:
            response = await self._relay(ctx, method, params)
        result = response.get("result")
        if ctx.modern and isinstance(result, dict):
            result.setdefault("resultType", "complete")
            if method in _CACHEABLE:
                result.setdefault("ttlMs", 0)
                # tools/list is filtered per agent, so never shared across agents' caches
                if method == "tools/list" or "cacheScope" not in result:
                    result["cacheScope"] = "private"
        response["jsonrpc"] = "2.0"
        response["id"] = request_id
        return response

    async def _relay(self, ctx: CallContext, method: str, params: Raw | None) -> Raw:
        upstream = self.upstreams[self.server]
        if method == "resources/subscribe" and ctx.session is not None and params:
            ctx.session.subscriptions.add((self.server, str(params.get("uri", ""))))
        elif method == "resources/unsubscribe" and ctx.session is not None and params:
            ctx.session.subscriptions.discard((self.server, str(params.get("uri", ""))))
        return await upstream.request(method, _hop(ctx, params), ctx.exchange)

    async def _tools_list(self, ctx: CallContext, params: Raw | None) -> Raw:
        if not self.aggregate:
            response = await self.upstreams[self.server].request(
                "tools/list", _hop(ctx, params), ctx.exchange
            )
            result = response.get("result")
            if isinstance(result, dict):
                response["result"] = await self.gate.filter_tools(ctx, self.server, result)
            return response
        merged: dict[str, list[Raw]] = {}

        async def collect(name: str, upstream: SharedUpstream) -> None:
            merged[name] = await self._all_tools(ctx, name, upstream)

        async with anyio.create_task_group() as tg:
            for name, upstream in self.upstreams.items():
                tg.start_soon(collect, name, upstream)
        tools = [tool for name in self.upstreams for tool in merged.get(name, [])]
        return {"result": {"tools": tools}}

    async def _all_tools(self, ctx: CallContext, name: str, upstream: SharedUpstream) -> list[Raw]:
        tools: list[Raw] = []
        params: Raw = {}
        for _ in range(_MAX_PAGES):
            response = await upstream.request("tools/list", params or None, ctx.exchange)
            result = response.get("result")
            if not isinstance(result, dict):
                log.warning("aggregate tools/list: %r answered %s", name, response.get("error"))
                break
            page = (await self.gate.filter_tools(ctx, name, result)).get("tools")
            if isinstance(page, list):
                tools.extend(
                    dict(t, name=f"{name}{SEPARATOR}{t['name']}")
                    for t in page
                    if isinstance(t, dict) and isinstance(t.get("name"), str)
                )
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str):
                break
            params = {"cursor": cursor}
        return tools

    async def _tools_call(self, ctx: CallContext, message: Raw, params: Raw) -> Raw:
        request_id = message.get("id")
        name = params.get("name")
        if not isinstance(name, str) or not name:
            return error_message(request_id, INVALID_PARAMS, "tools/call needs a tool name")
        if self.aggregate:
            server, tool = split_tool_name(name)
            if server not in self.upstreams or not tool:
                return error_message(
                    request_id,
                    INVALID_PARAMS,
                    f"unknown tool {name!r}: aggregated tools are named <server>{SEPARATOR}<tool>",
                )
        else:
            server, tool = self.server, name
        upstream = self.upstreams[server]
        request = dict(message, params=dict(params, name=tool))

        async def forward(forwarded: Raw | None) -> Raw:
            return await upstream.request("tools/call", _hop(ctx, forwarded), ctx.exchange)

        return await self.gate.call(ctx, server, request, forward)


def _hop(ctx: CallContext, params: Raw | None) -> Raw | None:
    return strip_envelope(params) if ctx.modern else params
