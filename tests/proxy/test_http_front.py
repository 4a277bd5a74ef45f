"""`mcpfw serve` end to end: real uvicorn on loopback, real clients, a real stdio upstream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types as types
import pytest
from mcp.shared.exceptions import MCPError

from mcpfw.audit import EventFilter

from .http_harness import (
    MODERN,
    Rpc,
    Served,
    last_message,
    sdk_client,
    serving,
    stdio_upstream,
    token,
    tool_text,
    write_config,
)

pytestmark = pytest.mark.anyio

WAIT = 20  # seconds: the bound on every test's waits


async def _decisions(served: Served, agent: str) -> list[Any]:
    store = served.firewall.audit_store
    events = await store.list_events(EventFilter(kinds=("decision",), agent=agent), limit=100)
    return list(events)


async def test_agents_with_different_tokens_see_their_own_tools_and_get_their_own_decisions(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, extra="hide_denied: true\n")
    agents = {
        "ci-bot": token("ci-bot"),
        "boss": token("boss", ("admin",)),
        "guest": token("guest"),
    }
    seen: dict[str, tuple[list[str], Any]] = {}
    with anyio.fail_after(WAIT):
        async with serving(config) as served:

            async def agent(name: str, bearer: str) -> None:
                async with sdk_client(served.mcp("fs"), bearer, mode="legacy") as client:
                    tools = [t.name for t in (await client.list_tools()).tools]
                    result = await client.call_tool("echo", {"who": name})
                    seen[name] = (sorted(tools), result)

            async with anyio.create_task_group() as tg:
                for name, bearer in agents.items():
                    tg.start_soon(agent, name, bearer)
            decisions = {name: await _decisions(served, name) for name in agents}

    ci_tools = ["confirm", "delete_file", "echo", "progress", "read_file", "seen", "slow"]
    assert seen["boss"][0] == sorted([*ci_tools, "crash"])  # admin: every tool
    assert seen["ci-bot"][0] == ci_tools  # its allow rule's tools, plus what it may be asked
    assert seen["guest"][0] == ["confirm", "delete_file"]  # only what an ask rule could allow
    assert tool_text(seen["ci-bot"][1]) == {"tool": "echo", "arguments": {"who": "ci-bot"}}
    assert tool_text(seen["boss"][1]) == {"tool": "echo", "arguments": {"who": "boss"}}
    assert seen["guest"][1].is_error and "rule 'default'" in seen["guest"][1].content[0].text
    assert [(d.effect, d.rule) for d in decisions["ci-bot"]] == [("allow", "ci-read")]
    assert [(d.effect, d.rule) for d in decisions["boss"]] == [("allow", "admin-all")]
    assert [(d.effect, d.rule) for d in decisions["guest"]] == [("deny", "default")]
    assert all(d.server == "fs" and d.tool == "echo" for ds in decisions.values() for d in ds)


async def test_an_api_key_is_its_configured_agent(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), "ci-key-1")
            await rpc.initialize()
            answer = await rpc.request("tools/call", {"name": "read_file", "arguments": {}})
            decisions = await _decisions(served, "ci-apikey")
    assert answer["result"].get("isError") is not True
    assert [(d.effect, d.rule) for d in decisions] == [("allow", "ci-read")]


async def test_a_session_presented_with_another_identity_is_refused(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            owner = Rpc(http, served.mcp("fs"), token("ci-bot"))
            session_id = await owner.initialize()
            thief = Rpc(http, served.mcp("fs"), token("root-mallory", ("admin",)))
            thief.headers["mcp-session-id"] = session_id
            stolen = await thief.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
            still_ok = await owner.request("tools/list")
    assert stolen.status_code == 403
    assert "tools" in still_ok["result"]


async def test_modern_headers_that_do_not_match_the_body_are_rejected_with_32020(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            call = {"name": "echo", "arguments": {}}
            wrong_name = await rpc.modern("tools/call", call, name="read_file")
            wrong_method = await rpc.post(
                {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {**call, "_meta": {
                    "io.modelcontextprotocol/protocolVersion": MODERN,
                    "io.modelcontextprotocol/clientCapabilities": {}}}},
                **{"mcp-protocol-version": MODERN, "mcp-method": "tools/list", "mcp-name": "echo"},
            )  # fmt: skip
            matching = await rpc.modern("tools/call", call, name="echo")
            decisions = await _decisions(served, "ci-bot")
    for refused in (wrong_name, wrong_method):
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == -32020
    assert matching.status_code == 200
    assert matching.json()["result"]["resultType"] == "complete"
    assert len(decisions) == 1  # the refused requests never reached the guard


@pytest.mark.parametrize("mode", ["legacy", MODERN, "auto"])
async def test_the_sdk_client_works_in_each_era(tmp_path: Path, mode: str) -> None:
    with anyio.fail_after(WAIT):
        async with (
            serving(write_config(tmp_path)) as served,
            sdk_client(served.mcp("fs"), token("ci-bot"), mode=mode) as client,
        ):
            tools = await client.list_tools()
            allowed = await client.call_tool("echo", {"n": 1})
            denied = await client.call_tool("read_file", {"path": "/etc/key.pem"})
    assert "echo" in [t.name for t in tools.tools]
    assert tool_text(allowed) == {"tool": "echo", "arguments": {"n": 1}}
    assert denied.is_error and "no-secrets" in denied.content[0].text
    assert "secrets are never read" in denied.content[0].text


async def test_the_aggregate_endpoint_prefixes_tools_and_rules_see_the_original_name(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, upstreams={"fs": stdio_upstream(), "git": stdio_upstream()})
    with anyio.fail_after(WAIT):
        async with (
            serving(config) as served,
            sdk_client(served.mcp(), token("ci-bot"), mode="legacy") as client,
        ):
            names = [t.name for t in (await client.list_tools()).tools]
            result = await client.call_tool("git__echo", {"x": 1})
            denied = await client.call_tool("fs__read_file", {"path": "a.pem"})
            with pytest.raises(MCPError) as unknown:
                await client.call_tool("nope__echo", {})
            decisions = await _decisions(served, "ci-bot")
    assert "fs__echo" in names and "git__echo" in names and "echo" not in names
    assert tool_text(result) == {"tool": "echo", "arguments": {"x": 1}}
    assert denied.is_error and "no-secrets" in denied.content[0].text
    assert unknown.value.error.code == -32602
    assert sorted((d.server, d.tool, d.rule) for d in decisions) == [
        ("fs", "read_file", "no-secrets"),
        ("git", "echo", "ci-read"),
    ]


async def test_one_upstream_process_serves_every_agent(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served:
            for name in ("ci-a", "ci-b", "ci-c"):
                async with sdk_client(served.mcp("fs"), token(name), mode="legacy") as client:
                    await client.call_tool("echo", {})
            async with sdk_client(served.mcp("fs"), token("root", ("admin",))) as client:
                seen = tool_text(await client.call_tool("seen", {}))
    methods = [m.get("method") for m in seen["messages"]]
    assert methods.count("initialize") == 1
    assert methods.count("tools/call") == 4


async def test_no_agent_token_reaches_a_stdio_upstream(tmp_path: Path) -> None:
    bearer = token("root", ("admin",), marker="do-not-leak")
    with anyio.fail_after(WAIT):
        async with (
            serving(write_config(tmp_path)) as served,
            sdk_client(served.mcp("fs"), bearer, mode="legacy") as client,
        ):
            await client.call_tool("echo", {"hello": "world"})
            seen = json.dumps(tool_text(await client.call_tool("seen", {})))
    assert "hello" in seen  # the upstream really did report what it saw
    assert bearer not in seen and "do-not-leak" not in seen and "Bearer" not in seen


async def test_elicitation_asks_the_agent_and_an_accept_forwards(tmp_path: Path) -> None:
    answers: list[str] = []

    async def approve(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        answers.append(params.message)
        return types.ElicitResult(action="accept", content={})

    async def refuse(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="decline")

    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served:
            url, bearer = served.mcp("fs"), token("ci-bot")
            async with sdk_client(url, bearer, mode="legacy", elicitation_callback=approve) as c:
                approved = await c.call_tool("delete_file", {"path": "/tmp/x"})
            async with sdk_client(url, bearer, mode="legacy", elicitation_callback=refuse) as c:
                declined = await c.call_tool("delete_file", {"path": "/tmp/y"})
            async with sdk_client(url, bearer, mode="legacy") as c:
                unsupported = await c.call_tool("delete_file", {"path": "/tmp/z"})
            await served.firewall.gate.settled()  # type: ignore[attr-defined]
            store = served.firewall.audit_store
            outcomes = await store.list_events(EventFilter(kinds=("outcome",)), limit=10)
    assert tool_text(approved) == {"tool": "delete_file", "arguments": {"path": "/tmp/x"}}
    assert "ci-bot" in answers[0] and "delete_file" in answers[0]
    assert declined.is_error and "declined" in declined.content[0].text
    assert unsupported.is_error and "cannot ask" in unsupported.content[0].text
    assert sorted(o.outcome for o in outcomes) == ["approved", "declined", "declined"]


async def test_progress_and_upstream_elicitation_reach_the_calling_agent(tmp_path: Path) -> None:
    progress: list[float] = []
    asked: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def answer(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={})

    rules = "default: allow\nrules: []\n"
    with anyio.fail_after(WAIT):
        async with (
            serving(write_config(tmp_path, rules=rules)) as served,
            sdk_client(
                served.mcp("fs"), token("ci-bot"), mode="legacy", elicitation_callback=answer
            ) as client,
        ):
            result = await client.call_tool("progress", {}, progress_callback=on_progress)
            confirmed = await client.call_tool("confirm", {})
    assert progress == [1, 2]
    assert tool_text(result)["tool"] == "progress"
    assert asked == ["really?"]
    assert tool_text(confirmed)["reply"]["action"] == "accept"


async def test_hot_reloaded_rules_apply_to_the_next_call(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with anyio.fail_after(WAIT):
        async with (
            serving(config) as served,
            sdk_client(served.mcp("fs"), token("ci-bot"), mode="legacy") as client,
        ):
            before = await client.call_tool("echo", {})
            (tmp_path / "rules.yaml").write_text("default: deny\nrules: []\n")
            holder = served.firewall.gate.guards["fs"].rules  # type: ignore[attr-defined]
            await holder.reload_if_changed(force=True)
            after = await client.call_tool("echo", {})
    assert not before.is_error
    assert after.is_error and "rule 'default'" in after.content[0].text


async def test_requests_from_other_origins_hosts_or_too_big_are_refused(tmp_path: Path) -> None:
    extra = "  max_body_bytes: 2000\n  max_json_depth: 10\n"
    config = write_config(tmp_path, extra=extra)
    with anyio.fail_after(WAIT):
        async with serving(config) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
            evil_origin = await rpc.post(ping, origin="http://evil.example")
            rebound = await rpc.post(ping, host="evil.example")
            local_origin = await rpc.post(
                {**ping, "method": "initialize", "params": {"protocolVersion": "2025-06-18",
                 "capabilities": {}, "clientInfo": {"name": "x", "version": "1"}}},
                origin="http://localhost:3000",
            )  # fmt: skip
            big = await rpc.post({**ping, "params": {"x": "a" * 5000}})
            deep: Any = 1
            for _ in range(50):
                deep = [deep]
            nested = await rpc.post({**ping, "params": {"x": deep}})
            batch = await rpc.post([ping, ping])
            null_id = await rpc.post({**ping, "id": None})
            garbage = await http.post(served.mcp("fs"), content=b"{nope", headers=rpc.headers)
            health = await http.get(f"{served.url}/healthz")
            ready = await http.get(f"{served.url}/readyz")
    assert evil_origin.status_code == 403 and rebound.status_code == 403
    assert local_origin.status_code == 200
    assert big.status_code == 413
    assert nested.status_code == 400 and nested.json()["error"]["code"] == -32600
    assert batch.status_code == 400
    assert null_id.status_code == 400 and null_id.json()["error"]["code"] == -32600
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


async def test_a_deleted_session_is_gone_and_its_end_is_recorded(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            session_id = await rpc.initialize()
            await rpc.request("tools/call", {"name": "echo", "arguments": {}})
            deleted = await http.delete(served.mcp("fs"), headers=rpc.headers)
            after = await rpc.post({"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
            store = served.firewall.audit_store
            kinds = [e.kind for e in await store.list_events(EventFilter(session=session_id))]
    assert deleted.status_code == 200
    assert after.status_code == 404
    assert "session_end" in kinds and "session_start" in kinds


async def test_a_cancelled_call_cancels_the_upstream_request(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            await rpc.initialize()
            upstream = served.firewall.upstreams["fs"].members[0]  # a command: one session
            responses: list[dict[str, Any]] = []

            async def slow_call() -> None:
                body = {"jsonrpc": "2.0", "id": 77, "method": "tools/call",
                        "params": {"name": "slow", "arguments": {"seconds": 60}}}  # fmt: skip
                responses.append(last_message(await rpc.post(body)))

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                while not upstream._pending:  # the call has reached the upstream
                    await anyio.wait_all_tasks_blocked()
                cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled",
                          "params": {"requestId": 77}}  # fmt: skip
                await rpc.post(cancel)
            await served.firewall.gate.settled()  # type: ignore[attr-defined]
            outcomes = await served.firewall.audit_store.list_events(
                EventFilter(kinds=("outcome",)), limit=5
            )
    assert responses[0]["error"]["code"] == -32800
    assert not upstream._pending
    assert [o.outcome for o in outcomes] == ["cancelled"]


async def test_an_upstream_crash_fails_the_call_clearly_and_the_upstream_comes_back(
    tmp_path: Path,
) -> None:
    rules = "default: allow\nrules: []\n"
    with anyio.fail_after(WAIT):
        async with (
            serving(write_config(tmp_path, rules=rules)) as served,
            sdk_client(served.mcp("fs"), token("ci-bot"), mode="legacy") as client,
        ):
            upstream = served.firewall.upstreams["fs"]
            with pytest.raises(MCPError) as crashed:
                await client.call_tool("crash", {})
            await upstream.wait_ready(WAIT)  # reconnected: a new process, a new handshake
            after = await client.call_tool("echo", {"again": True})
            await served.firewall.gate.settled()  # type: ignore[attr-defined]
            outcomes = await served.firewall.audit_store.list_events(
                EventFilter(kinds=("outcome",)), limit=5
            )
    assert crashed.value.error.code == -32603
    assert "went away" in crashed.value.error.message
    assert tool_text(after) == {"tool": "echo", "arguments": {"again": True}}
    assert sorted(o.outcome for o in outcomes) == ["forwarded", "upstream_error"]


async def test_monitor_mode_forwards_what_the_rules_deny_and_records_it_unenforced(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, extra="mode: monitor\n")
    with anyio.fail_after(WAIT):
        async with (
            serving(config) as served,
            sdk_client(served.mcp("fs"), token("guest"), mode="legacy") as client,
        ):
            result = await client.call_tool("echo", {"x": 1})
            decisions = await _decisions(served, "guest")
    assert tool_text(result) == {"tool": "echo", "arguments": {"x": 1}}
    assert [(d.effect, d.rule, d.enforced) for d in decisions] == [("deny", "default", False)]


async def test_a_2026_client_is_asked_through_input_required_and_its_retry_is_forwarded(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            caps = {"io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}
            call = {"name": "delete_file", "arguments": {"path": "/tmp/a"}, "_meta": caps}
            first = (await rpc.modern("tools/call", call, name="delete_file")).json()["result"]
            ((key, ask),) = first["inputRequests"].items()
            retry = {
                **call,
                "requestState": first["requestState"],
                "inputResponses": {key: {"action": "accept", "content": {}}},
            }
            second = (await rpc.modern("tools/call", retry, name="delete_file")).json()
            replayed = (await rpc.modern("tools/call", retry, name="delete_file")).json()
    assert first["resultType"] == "input_required"
    assert ask["method"] == "elicitation/create" and "ci-bot" in ask["params"]["message"]
    assert json.loads(second["result"]["content"][0]["text"])["tool"] == "delete_file"
    assert replayed["result"]["isError"] is True  # an approval is used once


async def test_an_upstream_that_cannot_start_is_reported_not_waited_for(tmp_path: Path) -> None:
    missing = json.dumps({"command": str(tmp_path / "no-such-server")})
    config = write_config(tmp_path, upstreams={"fs": stdio_upstream(), "gone": missing})
    with anyio.fail_after(WAIT):
        async with serving(config) as served, httpx.AsyncClient() as http:
            ready = await http.get(f"{served.url}/readyz")
            rpc = Rpc(http, served.mcp("gone"), token("ci-bot"))
            await rpc.initialize()
            answer = await rpc.request("tools/call", {"name": "echo", "arguments": {}})
            healthy = Rpc(http, served.mcp("fs"), token("ci-bot"))
            await healthy.initialize()
            works = await healthy.request("tools/call", {"name": "echo", "arguments": {}})
    assert ready.status_code == 503 and "gone" in ready.json()["unavailable"]
    assert answer["error"]["code"] == -32603 and "unavailable" in answer["error"]["message"]
    assert works["result"].get("isError") is not True


async def test_a_body_that_does_not_arrive_in_time_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, extra="  read_timeout_s: 0.2\n")
    with anyio.fail_after(WAIT):
        async with serving(config) as served:
            port = int(served.url.rsplit(":", 1)[1])
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                head = (
                    "POST /mcp/fs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {token('ci-bot')}\r\n"
                    "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
                )
                await stream.send(head.encode())
                answer = await stream.receive()
    assert answer.startswith(b"HTTP/1.1 408")


async def test_a_session_follows_the_roles_of_the_token_on_each_request(tmp_path: Path) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            admin = Rpc(http, served.mcp("fs"), token("boss", ("admin",)))
            await admin.initialize()
            call = {"name": "echo", "arguments": {}}
            before = await admin.request("tools/call", call)
            demoted = Rpc(http, served.mcp("fs"), token("boss"))  # same agent, role revoked
            demoted.headers["mcp-session-id"] = admin.headers["mcp-session-id"]
            after = await demoted.request("tools/call", call)
    assert before["result"].get("isError") is not True
    assert after["result"]["isError"] is True
    assert "rule 'default'" in after["result"]["content"][0]["text"]


async def test_outcomes_linger_for_a_shared_commit_and_every_call_still_gets_one(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(WAIT):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient() as http:
            guards = served.firewall.gate.guards  # type: ignore[attr-defined]
            rpc = Rpc(http, served.mcp("fs"), token("ci-bot"))
            await rpc.initialize()
            for n in range(5):
                await rpc.request("tools/call", {"name": "echo", "arguments": {"n": n}})
            await served.firewall.gate.settled()  # type: ignore[attr-defined]
            store = served.firewall.audit_store
            decisions = await store.list_events(EventFilter(kinds=("decision",)), limit=10)
            outcomes = await store.list_events(EventFilter(kinds=("outcome",)), limit=10)
    assert all(g.settings.outcome_linger_s > 0 for g in guards.values())
    assert sorted(o.decision_id for o in outcomes) == sorted(d.id for d in decisions)
    assert [o.outcome for o in outcomes] == ["forwarded"] * 5
