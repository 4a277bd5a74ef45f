"""`mcpfw serve` in front of HTTP upstreams, and several instances sharing one PostgreSQL log."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver import Context, MCPServer

from mcpfw.audit import EventFilter, open_store
from mcpfw.proxy.http_serve import bind_socket, uvicorn_server

from . import http_upstream_fixture as fixture
from .http_harness import sdk_client, serving, token, tool_text, write_config

pytestmark = pytest.mark.anyio

WAIT = 30


def sdk_upstream_app() -> Any:
    """A real MCP SDK server over streamable HTTP that answers requests as SSE streams."""
    server = MCPServer("sdk-upstream")

    @server.tool()
    async def shout(text: str, ctx: Context) -> str:
        """Upper-case the text, reporting progress first."""
        await ctx.report_progress(1, 2)
        return text.upper()

    return server.streamable_http_app()  # SSE answers (json_response off)


@asynccontextmanager
async def http_upstream(app: Any = None) -> AsyncIterator[str]:
    """An upstream over streamable HTTP on a free loopback port (default: the fixture)."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn_server(app if app is not None else fixture.app())
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve, [sock])
        try:
            yield f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
        finally:
            server.should_exit = True


async def test_an_http_upstream_gets_its_configured_credentials_and_never_the_agent_token(
    tmp_path: Path,
) -> None:
    fixture.SEEN_HEADERS.clear()
    fixture.SEEN_MESSAGES.clear()  # other tests use the fixture too
    bearer = token("root", ("admin",), marker="agent-secret-marker")
    with anyio.fail_after(WAIT):
        async with http_upstream() as url:
            spec = json.dumps({"url": url, "headers": {"X-Upstream-Key": "upstream-cred-1"}})
            config = write_config(tmp_path, upstreams={"api": spec})
            async with serving(config) as served:
                for mode in ("legacy", "2026-07-28"):
                    async with sdk_client(served.mcp("api"), bearer, mode=mode) as client:
                        result = await client.call_tool("echo", {"mode": mode})
                        assert tool_text(result)["arguments"] == {"mode": mode}
    seen = json.dumps(fixture.SEEN_HEADERS)
    assert len(fixture.SEEN_HEADERS) >= 3  # initialize, initialized, two calls
    assert all(h.get("x-upstream-key") == "upstream-cred-1" for h in fixture.SEEN_HEADERS)
    assert bearer not in seen and "agent-secret-marker" not in seen
    assert all("authorization" not in h for h in fixture.SEEN_HEADERS)
    initializes = [m for m in fixture.SEEN_MESSAGES if m.get("method") == "initialize"]
    assert len(initializes) == 4  # the default upstream sessions of a URL, not one per request


async def test_agent_sessions_are_dealt_over_the_upstream_sessions_and_stick_to_theirs(
    tmp_path: Path,
) -> None:
    fixture.SEEN_SESSIONS.clear()
    with anyio.fail_after(WAIT):
        async with http_upstream() as url:
            config = write_config(
                tmp_path, upstreams={"api": json.dumps({"url": url, "sessions": 3})}
            )
            async with serving(config) as served, AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        sdk_client(served.mcp("api"), token(f"ci-{i}", ("ci",)), mode="legacy")
                    )
                    for i in range(6)
                ]
                for turn in range(2):
                    for i, client in enumerate(clients):
                        result = await client.call_tool("echo", {"agent": i, "turn": turn})
                        assert not result.is_error, tool_text(result)
    initializes = [sid for sid, m in fixture.SEEN_SESSIONS if m.get("method") == "initialize"]
    assert sorted(initializes) == ["up-1", "up-2", "up-3"]
    used: dict[int, set[str]] = {}
    for sid, message in fixture.SEEN_SESSIONS:
        if message.get("method") == "tools/call":
            used.setdefault(message["params"]["arguments"]["agent"], set()).add(sid)
    assert len(used) == 6 and all(len(sids) == 1 for sids in used.values())  # sticky
    assert sorted(Counter(min(sids) for sids in used.values()).values()) == [2, 2, 2]  # dealt


async def test_an_sdk_upstream_answering_with_sse_streams_works_through_the_firewall(
    tmp_path: Path,
) -> None:
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    rules = "default: allow\nrules: []\n"
    with anyio.fail_after(WAIT):
        async with http_upstream(sdk_upstream_app()) as url:
            config = write_config(
                tmp_path, upstreams={"sdk": json.dumps({"url": url})}, rules=rules
            )
            async with (
                serving(config) as served,
                sdk_client(served.mcp("sdk"), token("ci-bot"), mode="legacy") as client,
            ):
                tools = [t.name for t in (await client.list_tools()).tools]
                result = await client.call_tool(
                    "shout", {"text": "hello"}, progress_callback=on_progress
                )
    assert tools == ["shout"]
    assert result.content[0].text == "HELLO"
    assert progress == [1]


@pytest.mark.postgres
async def test_two_instances_share_one_postgres_log_each_with_a_verifiable_chain(
    tmp_path: Path, postgres_url: str
) -> None:
    run = uuid.uuid4().hex[:8]
    instances = (f"serve-a-{run}", f"serve-b-{run}")
    with anyio.fail_after(WAIT):
        async with (
            serving(write_config(tmp_path), audit_url=postgres_url, instance=instances[0]) as a,
            serving(write_config(tmp_path), audit_url=postgres_url, instance=instances[1]) as b,
        ):

            async def agent(url: str, name: str) -> None:
                async with sdk_client(url, token(name), mode="legacy") as client:
                    for i in range(5):
                        await client.call_tool("echo", {"i": i})

            async with anyio.create_task_group() as tg:
                for served, name in ((a, f"ci-{run}-1"), (b, f"ci-{run}-2"), (a, f"ci-{run}-3")):
                    tg.start_soon(agent, served.mcp("fs"), name)
        async with open_store(postgres_url, instance=f"reader-{run}") as store:
            report = await store.verify()
            per_instance = {
                name: await store.list_events(EventFilter(instance=name), limit=1000)
                for name in instances
            }
    chains = {c.instance: c for c in report.chains if c.instance in instances}
    assert set(chains) == set(instances)
    assert all(c.ok for c in chains.values())
    decisions = {n: [e for e in evs if e.kind == "decision"] for n, evs in per_instance.items()}
    assert len(decisions[instances[0]]) == 10 and len(decisions[instances[1]]) == 5
    assert {e.agent_id for e in decisions[instances[1]]} == {f"ci-{run}-2"}
