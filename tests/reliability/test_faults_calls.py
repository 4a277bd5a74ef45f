"""Fault injection around one call: rule errors, oversized arguments, broken reloads, an upstream
that crashes or hangs, a client that cancels or goes away. Each ends in a defined state: the
call is denied or answered with a clear error, every decision is in the audit log (a real SQLite
store), and the next call still works."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest

from mcpfw.model import Outcome

from .support import (
    audited_calls,
    call,
    echo_roundtrip,
    outcomes_settled,
    result_text,
    sqlite_relay,
)

pytestmark = pytest.mark.anyio

UPSTREAM_GONE, TIMEOUT = -32003, -32001


async def test_a_rule_that_fails_to_evaluate_fails_closed_and_the_error_is_recorded(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        # `args.path.startsWith` on a number: the deny rule errors, so it counts as matched
        await h.send(call(1, "read_file", {"path": 42}))
        denied = await h.client_gets()
        assert denied["result"]["isError"] and "rule 'no-etc'" in result_text(denied)
        # `args.n > 3` on a string: the allow rule errors, so it does not match (default deny)
        await h.send(call(2, "count", {"n": "many"}))
        assert "rule 'default'" in result_text(await h.client_gets())
        await echo_roundtrip(h, 3)
        await outcomes_settled(store, 3)
        events = [e for e in await store.list_events() if e.kind == "decision"]
    assert await audited_calls(store) == [
        ("read_file", "deny", "no-etc", "denied"),
        ("count", "deny", "default", "denied"),
        ("echo", "allow", "reads", "forwarded"),
    ]
    errors = {e.tool: str(e.data.get("errors")) for e in events}
    assert "startsWith" in errors["read_file"] and "_>_" in errors["count"]


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"path": "/w/" + "a" * 300_000}, "larger than the limit"),
        ({"path": "/w", "deep": eval("[" * 200 + "]" * 200)}, "nested deeper"),
        ({"path": "/w", "many": list(range(20_000))}, "more than the limit"),
        ({"path": "/w\x00/etc/passwd"}, "NUL"),
    ],
    ids=["huge string", "deep nesting", "many items", "NUL byte"],
)
async def test_arguments_over_the_bounds_are_denied_unevaluated_and_recorded(
    tmp_path: Path, arguments: dict[str, object], reason: str
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await h.send(call(1, "read_file", arguments))
        denied = await h.client_gets()
        assert denied["result"]["isError"] and "rule 'limits'" in result_text(denied)
        assert reason in result_text(denied)
        await echo_roundtrip(h, 2)
        await outcomes_settled(store, 2)
    assert [c[1:] for c in await audited_calls(store)] == [
        ("deny", "limits", "denied"),
        ("allow", "reads", "forwarded"),
    ]


BROKEN_EDITS = {
    "CEL syntax": b"default: allow\nrules:\n  - id: x\n    effect: allow\n    when: 'args.'\n",
    "YAML syntax": b"rules: [\n",
    "binary garbage": b"\xff\xfe\x00\x01" * 64,
    "nested 5000 deep": b"rules: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "empty file": b"",
    "unknown effect": b"rules:\n  - id: x\n    effect: maybe\n",
}


async def test_broken_rule_edits_keep_the_last_good_rules_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        rules = tmp_path / "rules.yaml"
        good = h.holder.current.revision
        with caplog.at_level(logging.ERROR, logger="mcpfw.rules"):
            for rid, broken in enumerate(BROKEN_EDITS.values()):
                rules.write_bytes(broken)
                assert await h.holder.reload_if_changed(force=True) is False
                assert h.holder.current.revision == good
                await echo_roundtrip(h, rid)  # the old rules still allow it
            rules.unlink()  # a deleted rule file too
            assert await h.holder.reload_if_changed(force=True) is False
            await echo_roundtrip(h, "after-delete")
        assert h.holder.failed_reloads == len(BROKEN_EDITS) + 1
        assert "nested too deeply" in caplog.text and "keeping" in caplog.text
        await outcomes_settled(store, len(BROKEN_EDITS) + 1)
    calls = await audited_calls(store)
    assert len(calls) == len(BROKEN_EDITS) + 1
    assert {c[1:] for c in calls} == {("allow", "reads", "forwarded")}


async def test_an_upstream_crash_mid_call_is_an_error_and_later_calls_are_still_decided(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await h.send(call(1, "sleep", {"seconds": 5}))
        await h.upstream_gets()
        await h.upstream_out.aclose()  # the upstream process died with the call in flight
        crashed = await h.client_gets()
        assert crashed["id"] == 1 and crashed["error"]["code"] == UPSTREAM_GONE
        assert "closed the connection" in crashed["error"]["message"]
        await h.send(call(2, "echo", {"text": "anyone?"}))  # allowed, but nowhere to go
        gone = await h.client_gets()
        assert gone["id"] == 2 and gone["error"]["code"] == UPSTREAM_GONE
        await h.send(call(3, "read_file", {"path": "/etc/passwd"}))  # denials still answered
        assert "rule 'no-etc'" in result_text(await h.client_gets())
        await outcomes_settled(store, 3)
    assert await audited_calls(store) == [
        ("sleep", "allow", "reads", "upstream_error"),
        ("echo", "allow", "reads", "upstream_error"),
        ("read_file", "deny", "no-etc", "denied"),
    ]


async def test_a_hanging_upstream_times_out_with_a_cancel_and_the_next_call_succeeds(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path, call_timeout_s=0.3) as (h, store):
        await h.send(call(1, "sleep", {"seconds": 3600}))
        await h.upstream_gets()
        with anyio.fail_after(5):
            timed_out = await h.client_gets()
        assert timed_out["error"]["code"] == TIMEOUT and "within 0.3 s" in str(timed_out)
        cancel = await h.upstream_gets()  # the upstream is told to stop working on it
        assert cancel["method"] == "notifications/cancelled"
        assert cancel["params"]["requestId"] == 1
        await echo_roundtrip(h, 2)
        await outcomes_settled(store, 2)
    assert [c[3] for c in await audited_calls(store)] == ["timeout", "forwarded"]


async def test_a_cancelled_call_is_recorded_as_cancelled_and_the_relay_keeps_serving(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await h.send(call(1, "sleep", {"seconds": 3600}))
        await h.upstream_gets()
        await h.send(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}}
        )
        relayed = await h.upstream_gets()
        assert relayed["method"] == "notifications/cancelled"
        await echo_roundtrip(h, 2)
        await outcomes_settled(store, 2)
    assert [c[3] for c in await audited_calls(store)] == [Outcome.CANCELLED, "forwarded"]


async def test_a_client_that_disconnects_mid_call_leaves_every_decision_recorded(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await h.send(call(1, "sleep", {"seconds": 3600}))
        await h.send(call(2, "read_file", {"path": "/etc/shadow"}))
        await h.upstream_gets()
        await h.to_relay.aclose()  # the agent went away with call 1 in flight
        with anyio.fail_after(5):  # the relay winds down within its grace period
            while not h.relay.dead and h.relay._pending:
                await anyio.sleep(0.01)
        calls = await audited_calls(store)
    assert sorted(calls) == [
        ("read_file", "deny", "no-etc", "denied"),
        ("sleep", "allow", "reads", "cancelled"),
    ]


@pytest.mark.slow
async def test_the_config_per_upstream_timeout_applies_to_a_real_hanging_upstream(
    tmp_path: Path,
) -> None:
    from mcpfw.audit import open_store

    from .memory_front import raw_upstream_argv
    from .raw_client import mcpfw_run

    command, *args = raw_upstream_argv()
    (tmp_path / "rules.yaml").write_text("default: allow\nrules: []\n")
    (tmp_path / "mcpfw.yaml").write_text(
        f"rules: {tmp_path / 'rules.yaml'}\n"
        f"audit: {{url: {tmp_path / 'audit.db'}}}\n"
        "upstreams:\n"
        f"  raw: {{command: {command}, args: {args}, timeout_s: 0.5}}\n"
    )
    with anyio.fail_after(30):
        async with mcpfw_run(
            "--config", str(tmp_path / "mcpfw.yaml"), "--server", "raw", "--agent", "a"
        ) as client:
            await client.initialize()
            hung = await client.request(
                "tools/call", {"name": "sleep", "arguments": {"seconds": 600}}
            )
            assert hung["error"]["code"] == TIMEOUT and "within 0.5 s" in hung["error"]["message"]
            ok = await client.request("tools/call", {"name": "echo", "arguments": {"text": "hi"}})
            assert ok["result"]["content"][0]["text"] == "hi"
    async with open_store(str(tmp_path / "audit.db"), create=False) as store:
        assert [c[3] for c in await audited_calls(store)] == ["timeout", "forwarded"]
        assert (await store.verify()).ok


async def test_an_upstream_that_stops_reading_its_input_does_not_hang_the_relay(
    tmp_path: Path,
) -> None:
    async with sqlite_relay(tmp_path, call_timeout_s=0.3) as (h, store):
        # the upstream is stuck: it never takes another message (the harness buffers 16)
        for rid in range(30):
            await h.send(call(rid, "echo", {"text": "x" * 1000}))
        answers = {}
        with anyio.fail_after(10):
            while len(answers) < 30:
                message = await h.client_gets()
                answers[message["id"]] = message["error"]
        assert {e["code"] for e in answers.values()} <= {TIMEOUT, UPSTREAM_GONE}
        assert any("stopped reading its input" in e["message"] for e in answers.values())
        await h.send({"jsonrpc": "2.0", "id": "p", "method": "ping"})
        pong = await h.client_gets()  # answered at once, not stuck behind the full pipe
        assert pong["error"]["code"] == UPSTREAM_GONE
        await outcomes_settled(store, 30)
    outcomes = [c[3] for c in await audited_calls(store)]
    assert len(outcomes) == 30 and set(outcomes) <= {"timeout", "upstream_error"}
