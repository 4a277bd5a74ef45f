"""The live upstream `replay --execute` talks to: a stdio command or a streamable-HTTP URL.

Uses the MCP SDK client (era negotiated automatically, response cache off), so the same
replay works against handshake-era and 2026-07-28 servers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict

from mcpfw.replay.execute import ToolCaller, UpstreamCallError

__all__ = ["UpstreamConnectError", "connect_upstream"]


class UpstreamConnectError(Exception):
    """The live upstream could not be started or reached."""


class _RawResult(BaseModel):
    """Any result, every field kept as sent (no re-modelling)."""

    model_config = ConfigDict(extra="allow")


def _errlog() -> TextIO:
    """Where the upstream's stderr goes: ours, or the real one when ours is captured."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr


@asynccontextmanager
async def connect_upstream(
    *,
    command: Sequence[str] | None = None,
    url: str | None = None,
    headers: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> AsyncIterator[ToolCaller]:
    """Connect to one upstream and yield a `ToolCaller` for it."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from mcp.shared.exceptions import MCPError

    server: Any
    if command:
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=command[0], args=list(command[1:]), env=dict(os.environ), cwd=cwd
        )
        server = stdio_client(params, errlog=_errlog())
    elif url:
        server = url
        if headers:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            server = streamable_http_client(
                url, http_client=httpx2.AsyncClient(headers=dict(headers))
            )
    else:
        raise UpstreamConnectError("give an upstream: --upstream-url URL or -- <command...>")

    what = " ".join(command) if command else str(url)
    client = Client(server, cache=None)
    try:
        await client.__aenter__()
    except (OSError, MCPError) as exc:
        raise UpstreamConnectError(f"cannot connect to the upstream {what}: {exc}") from None
    except Exception as exc:  # a top-level boundary: transport errors vary by SDK version
        raise UpstreamConnectError(
            f"cannot connect to the upstream {what}: {type(exc).__name__}: {exc}"
        ) from None

    import mcp_types

    async def call(name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]:
        # The raw result, not the SDK's typed model: the audit log digests what the upstream
        # sent, and re-modelling would add or drop fields.
        request = mcp_types.CallToolRequest(
            params=mcp_types.CallToolRequestParams(name=name, arguments=dict(arguments))
        )
        try:
            raw = await client.session.send_request(request, _RawResult)
        except MCPError as exc:
            raise UpstreamCallError(f"upstream error {exc.code}: {exc.message}") from None
        return raw.model_dump()

    try:
        yield call
    finally:
        await client.__aexit__(None, None, None)
