"""`mcpfw serve` in front of HTTP upstreams, and several instances sharing one PostgreSQL log."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from mcpfw.audit import EventFilter, open_store
from mcpfw.proxy.http_serve import bind_socket, uvicorn_server

from . import http_upstream_fixture as fixture
from .http_harness import sdk_client, serving, token, tool_text, write_config

pytestmark = pytest.mark.anyio

WAIT = 30


@asynccontextmanager
async def http_upstream() -> AsyncIterator[str]:
    """The fixture upstream over streamable HTTP on a free loopback port."""
    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn_server(fixture.app())
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
    assert len(initializes) == 1  # one upstream session for every agent and era


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
