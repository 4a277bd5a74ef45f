"""The relay and guard in one process: memory channels, a memory audit store, no sockets."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcpfw.model import Effect, Outcome
from mcpfw.proxy.guard import GuardSettings
from mcpfw.proxy.messages import InvalidMessage, decode

from .helpers import MemoryStore, call, request, result_text, running

pytestmark = pytest.mark.anyio


async def test_allowed_call_reaches_the_upstream_unchanged_and_its_answer_comes_back(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        sent = call(7, "read_file", {"path": "/w/a.txt"}, _meta={"progressToken": "p1", "x": [1]})
        sent["extraTopLevel"] = True
        await h.send(sent)
        assert await h.upstream_gets() == sent
        answer = {"jsonrpc": "2.0", "id": 7, "result": {"content": [], "unknown": {"a": 1.5}}}
        await h.reply(answer)
        assert await h.client_gets() == answer
        with anyio.fail_after(5):
            while not h.store.outcomes:
                await anyio.sleep(0)
        ((tool_call, decision),) = h.store.decisions
        assert (tool_call.tool, tool_call.server, tool_call.agent.id) == (
            "read_file",
            "fs",
            "agent-1",
        )
        assert decision.effect is Effect.ALLOW and decision.rule == "reads"
        assert h.store.outcome_of(decision) is Outcome.FORWARDED
        assert h.store.outcomes[0]["latency_ms"] is not None


async def test_denied_call_never_reaches_the_upstream_and_names_rule_message_and_decision(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.send(call(1, "read_file", {"path": "/w/secret.env"}))
        answer = await h.client_gets()
        ((_, decision),) = h.store.decisions
        text = result_text(answer)
        assert answer["id"] == 1 and answer["result"]["isError"] is True
        assert "no-secrets" in text and "never read by agents" in text and decision.id in text
        assert "resultType" not in answer["result"]
        await h.send(request(2, "ping"))
        assert (await h.upstream_gets())["id"] == 2  # the denied call was never sent before it
        assert h.store.outcome_of(decision) is Outcome.DENIED


async def test_modern_era_denial_is_a_complete_result(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
        await h.send(call("a", "write_file", {"path": "x"}, _meta=meta))
        answer = await h.client_gets()
        assert answer["result"]["resultType"] == "complete"
        assert answer["result"]["isError"] is True
        assert h.store.decisions[0][1].rule == "default"


async def test_ask_sends_an_elicitation_with_a_firewall_id_and_accept_forwards(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send(call(5, "delete_file", {"path": "/w/old.txt"}))
        ask = await h.client_gets()
        assert ask["method"] == "elicitation/create" and str(ask["id"]).startswith("mcpfw-")
        assert (
            "delete_file" in ask["params"]["message"] and "/w/old.txt" in ask["params"]["message"]
        )
        await h.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": "accept"}})
        forwarded = await h.upstream_gets()
        assert forwarded["id"] == 5 and forwarded["params"]["name"] == "delete_file"
        await h.reply({"jsonrpc": "2.0", "id": 5, "result": {"content": []}})
        assert (await h.client_gets())["id"] == 5
        with anyio.fail_after(5):
            while not h.store.outcomes:
                await anyio.sleep(0)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.APPROVED


@pytest.mark.parametrize("action", ["decline", "cancel"])
async def test_ask_declined_or_dismissed_is_denied_and_recorded_as_declined(
    tmp_path: Path, action: str
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send(call(5, "delete_file", {"path": "/w/old.txt"}))
        ask = await h.client_gets()
        await h.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"action": action}})
        answer = await h.client_gets()
        assert answer["id"] == 5 and answer["result"]["isError"] is True
        assert "confirm-deletes" in result_text(answer)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.DECLINED


async def test_ask_without_elicitation_capability_is_denied_without_asking(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.initialize(elicitation=False)
        await h.send(call(5, "delete_file", {"path": "/w/old.txt"}))
        answer = await h.client_gets()
        assert answer["id"] == 5 and "cannot ask" in result_text(answer)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.DECLINED


async def test_unanswered_ask_times_out_is_withdrawn_and_denied(tmp_path: Path) -> None:
    settings = GuardSettings(server="fs", ask_timeout_s=0.2)
    async with running(tmp_path, settings=settings) as h:
        await h.initialize()
        await h.send(call(5, "delete_file", {"path": "/w/old.txt"}))
        ask = await h.client_gets()
        withdrawn = await h.client_gets()
        assert withdrawn["method"] == "notifications/cancelled"
        assert withdrawn["params"]["requestId"] == ask["id"]
        answer = await h.client_gets()
        assert "no approval arrived in time" in result_text(answer)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.TIMEOUT


async def test_modern_ask_uses_input_required_and_the_signed_retry_is_forwarded_once(
    tmp_path: Path,
) -> None:
    from .helpers import MODERN_META

    async with running(tmp_path) as h:
        args = {"path": "/w/old.txt"}
        await h.send(call(1, "delete_file", args, _meta=MODERN_META))
        first = (await h.client_gets())["result"]
        assert first["resultType"] == "input_required"
        ((key, question),) = first["inputRequests"].items()
        assert question["method"] == "elicitation/create"
        state = first["requestState"]
        responses = {key: {"action": "accept"}}
        await h.send(
            call(
                2,
                "delete_file",
                args,
                _meta=MODERN_META,
                inputResponses=responses,
                requestState=state,
            )
        )
        forwarded = await h.upstream_gets()
        assert forwarded["id"] == 2
        assert (
            "requestState" not in forwarded["params"]
            and "inputResponses" not in forwarded["params"]
        )
        await h.reply(
            {"jsonrpc": "2.0", "id": 2, "result": {"content": [], "resultType": "complete"}}
        )
        await h.client_gets()
        # The same approval cannot be replayed, nor moved to other arguments.
        await h.send(
            call(
                3,
                "delete_file",
                args,
                _meta=MODERN_META,
                inputResponses=responses,
                requestState=state,
            )
        )
        assert "already used" in result_text(await h.client_gets())
        await h.send(
            call(
                4,
                "delete_file",
                {"path": "/etc"},
                _meta=MODERN_META,
                inputResponses=responses,
                requestState=state,
            )
        )
        assert "different agent, tool or arguments" in result_text(await h.client_gets())
        # The question and its answer are one decision; the bad retries are decided anew.
        decisions = [d for _, d in h.store.decisions]
        assert [d.effect for d in decisions] == [Effect.ASK] * 3
        with anyio.fail_after(5):
            while len(h.store.outcomes) < 3:
                await anyio.sleep(0)
        assert h.store.outcome_of(decisions[0]) is Outcome.APPROVED
        assert h.store.outcome_of(decisions[1]) is Outcome.DECLINED
        assert h.store.outcome_of(decisions[2]) is Outcome.DECLINED


async def test_modern_ask_without_elicitation_capability_is_denied(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        meta = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        await h.send(call(1, "delete_file", {"path": "/w/a"}, _meta=meta))
        answer = await h.client_gets()
        assert answer["result"]["resultType"] == "complete" and "cannot ask" in result_text(answer)


async def test_shadow_rule_is_recorded_but_not_enforced(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.send(call(1, "echo", {"text": "LOUD"}))
        assert (await h.upstream_gets())["id"] == 1
        decision = h.store.decisions[0][1]
        assert decision.effect is Effect.ALLOW
        assert (
            decision.shadow_effect is Effect.DENY
            and decision.shadow_rule == "would-block-echo-loud"
        )


async def test_monitor_mode_forwards_what_it_would_deny_and_records_it_unenforced(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, settings=GuardSettings(server="fs", monitor=True)) as h:
        await h.send(call(1, "read_file", {"path": "/w/secret.env"}))
        assert (await h.upstream_gets())["id"] == 1
        decision = h.store.decisions[0][1]
        assert decision.effect is Effect.DENY and decision.enforced is False


async def test_audit_failure_denies_the_call(tmp_path: Path) -> None:
    async with running(tmp_path, store=MemoryStore(fail_decisions=True)) as h:
        await h.send(call(1, "read_file", {"path": "/w/a"}))
        answer = await h.client_gets()
        assert "audit" in result_text(answer) and answer["result"]["isError"] is True


async def test_audit_failure_allow_forwards_and_counts_each_fail_open(tmp_path: Path) -> None:
    settings = GuardSettings(server="fs", audit_failure="allow")
    async with running(tmp_path, store=MemoryStore(fail_decisions=True), settings=settings) as h:
        await h.send(call(1, "read_file", {"path": "/w/a"}))
        assert (await h.upstream_gets())["id"] == 1
        assert h.session.guard.fail_open_count == 1


async def test_hide_denied_drops_tools_this_agent_can_never_call(tmp_path: Path) -> None:
    async with running(tmp_path, settings=GuardSettings(server="fs", hide_denied=True)) as h:
        await h.send(request(1, "tools/list"))
        await h.upstream_gets()
        tools = [{"name": n, "inputSchema": {}} for n in ("read_file", "shell", "delete_file")]
        await h.reply({"jsonrpc": "2.0", "id": 1, "result": {"tools": tools, "nextCursor": "c"}})
        listed = await h.client_gets()
        assert [t["name"] for t in listed["result"]["tools"]] == ["read_file", "delete_file"]
        assert listed["result"]["nextCursor"] == "c"


async def test_notifications_server_requests_and_unknown_methods_pass_both_ways_unchanged(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        from_client = [
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            request(1, "x-vendor/thing", {"deep": {"a": [1, None, 2.0]}, "_meta": {"k": "v"}}),
            {"jsonrpc": "2.0", "method": "notifications/roots/list_changed", "params": {}},
            {"jsonrpc": "2.0", "id": "s1", "result": {"roots": []}},
        ]
        for message in from_client:
            await h.send(message)
            assert await h.upstream_gets() == message
        from_upstream = [
            {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": "p", "progress": 1, "total": 2},
            },
            {"jsonrpc": "2.0", "id": "s2", "method": "sampling/createMessage", "params": {"m": 1}},
            {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"},
            {"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no such method"}},
        ]
        for message in from_upstream:
            await h.reply(message)
            assert await h.client_gets() == message


async def test_upstream_request_reusing_a_firewall_id_is_renamed_and_restored(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send(call(5, "delete_file", {"path": "/w/a"}))
        ask = await h.client_gets()
        await h.reply({"jsonrpc": "2.0", "id": ask["id"], "method": "roots/list"})
        renamed = await h.client_gets()
        assert renamed["method"] == "roots/list" and renamed["id"] != ask["id"]
        await h.send({"jsonrpc": "2.0", "id": renamed["id"], "result": {"roots": []}})
        assert (await h.upstream_gets())["id"] == ask["id"]


async def test_cancelling_a_call_held_for_approval_never_forwards_it(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send(call(5, "delete_file", {"path": "/w/a"}))
        await h.client_gets()  # the question
        await h.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
        )
        await h.send(request(6, "ping"))
        assert (await h.upstream_gets())["id"] == 6
        with anyio.fail_after(5):
            while not h.store.outcomes:
                await anyio.sleep(0)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.CANCELLED


async def test_cancelling_a_forwarded_call_tells_the_upstream_and_records_it(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.send(call(5, "echo", {"text": "x"}))
        await h.upstream_gets()
        cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 5}}
        await h.send(cancel)
        assert await h.upstream_gets() == cancel
        with anyio.fail_after(5):
            while not h.store.outcomes:
                await anyio.sleep(0)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.CANCELLED


async def test_upstream_exit_answers_pending_and_later_requests_with_an_error(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.send(call(1, "echo", {"text": "x"}))
        await h.upstream_gets()
        await h.send(request(2, "resources/list"))
        await h.upstream_gets()
        h.upstream.gone_reason = "exited with code 3"
        await h.upstream_out.aclose()
        errors = {m["id"]: m["error"] for m in [await h.client_gets(), await h.client_gets()]}
        assert set(errors) == {1, 2}
        assert "exited with code 3" in errors[1]["message"]
        await h.send(request(3, "tools/list"))
        late = await h.client_gets()
        assert late["id"] == 3 and "exited with code 3" in late["error"]["message"]
        with anyio.fail_after(5):
            while not h.store.outcomes:
                await anyio.sleep(0)
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.UPSTREAM_ERROR


async def test_upstream_that_never_answers_times_out_with_an_error_and_a_cancel(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, call_timeout_s=0.2) as h:
        await h.send(call(1, "echo", {"text": "x"}))
        await h.upstream_gets()
        answer = await h.client_gets()
        assert answer["id"] == 1 and "did not answer" in answer["error"]["message"]
        cancel = await h.upstream_gets()
        assert cancel["method"] == "notifications/cancelled" and cancel["params"]["requestId"] == 1
        assert h.store.outcome_of(h.store.decisions[0][1]) is Outcome.TIMEOUT


async def test_malformed_input_gets_json_rpc_errors_and_batches_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        bad = decode(b"{not json")
        assert isinstance(bad, InvalidMessage)
        await h.send(bad)
        assert (await h.client_gets())["error"]["code"] == -32700
        batch = decode(b'[{"jsonrpc":"2.0","id":1,"method":"tools/call"}]')
        await h.send(batch)
        assert (await h.client_gets())["error"]["code"] == -32600
        await h.send(request(9, "tools/call", {"arguments": {}}))
        assert (await h.client_gets())["error"]["code"] == -32602
        assert h.store.decisions == []


async def test_a_tools_call_without_an_id_is_dropped_not_forwarded(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        sneaky = {
            "jsonrpc": "2.0",
            "method": "tools/call",
            "params": {"name": "rm", "arguments": {}},
        }
        await h.send(sneaky)
        await h.send(request(2, "ping"))
        assert (await h.upstream_gets())["id"] == 2  # the id-less call never went upstream
