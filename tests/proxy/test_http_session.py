"""Agent sessions and exchanges of `mcpfw serve`, without sockets."""

from __future__ import annotations

import pytest

from mcpfw.model import Agent
from mcpfw.proxy.http_checks import BadRequest, OriginPolicy, json_depth
from mcpfw.proxy.http_session import Exchange, SessionTable

pytestmark = pytest.mark.anyio


def test_one_agent_opening_sessions_in_a_loop_only_evicts_its_own() -> None:
    table = SessionTable(max_per_agent=3)
    other, _ = table.open(Agent(id="other"), "fs", "2025-06-18", {})
    mine = [table.open(Agent(id="greedy"), "fs", "2025-06-18", {})[0] for _ in range(3)]
    newest, evicted = table.open(Agent(id="greedy"), "fs", "2025-06-18", {})
    assert evicted == [mine[0]] and mine[0].closed
    assert table.get(other.id) is other and table.get(newest.id) is newest
    assert len(table) == 4


def test_idle_sessions_expire_and_are_reported() -> None:
    table = SessionTable(idle_timeout_s=-1)  # everything is already idle
    first, _ = table.open(Agent(id="a"), "", "2025-06-18", {})
    _, closed = table.open(Agent(id="b"), "", "2025-06-18", {})
    assert closed == [first] and table.get(first.id) is None


async def test_an_exchange_streams_while_open_then_falls_back_to_the_session() -> None:
    table = SessionTable()
    session, _ = table.open(Agent(id="a"), "fs", "2025-06-18", {"elicitation": {}})
    exchange = Exchange(session)
    exchange.notify({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"n": 1}})
    exchange.finish()
    exchange.notify({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"n": 2}})
    on_post = [m["params"]["n"] async for m in exchange.events]
    assert on_post == [1]
    assert session.out_recv.receive_nowait()["params"] == {"n": 2}


async def test_a_stateless_exchange_has_no_back_channel() -> None:
    reply = await Exchange(None).client_request("elicitation/create", {"message": "?"})
    assert reply["error"]["code"] == -32601


def test_json_depth_counts_containers_and_stops_early() -> None:
    assert json_depth(1, limit=10) == 0
    assert json_depth({"a": [1, {"b": []}]}, limit=10) == 4
    deep: object = 1
    for _ in range(1000):
        deep = [deep]
    assert json_depth(deep, limit=5) == 6


@pytest.mark.parametrize(
    ("host", "origin", "allowed"),
    [
        ("127.0.0.1:8765", None, True),
        ("localhost:8765", "http://localhost:3000", True),
        ("[::1]:8765", None, True),
        ("evil.example:8765", None, False),  # DNS rebinding onto loopback
        ("127.0.0.1:8765", "http://evil.example", False),
        ("127.0.0.1:8765", "null", False),
    ],
)
def test_the_origin_policy_on_loopback(host: str, origin: str | None, allowed: bool) -> None:
    policy = OriginPolicy.build("127.0.0.1", (), None)
    if allowed:
        policy.check(host, origin)
    else:
        with pytest.raises(BadRequest) as refused:
            policy.check(host, origin)
        assert refused.value.status == 403


def test_configured_origins_and_public_host_are_accepted() -> None:
    policy = OriginPolicy.build("0.0.0.0", ("https://app.example",), "https://mcp.example")
    policy.check("mcp.example", "https://app.example")
    with pytest.raises(BadRequest):
        policy.check("mcp.example", "http://localhost:3000")  # a list replaces the default
    with pytest.raises(BadRequest):
        policy.check("other.example", None)
