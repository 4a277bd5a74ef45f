"""Recording: the JSONL format, message redaction, the writer and its tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from mcpfw.audit.redaction import RedactionConfig, Redactor
from mcpfw.audit.schema import metadata
from mcpfw.model import Agent, Decision, Effect
from mcpfw.recording import (
    FORMAT_VERSION,
    Direction,
    RecordedDecision,
    RecordedMessage,
    Recording,
    RecordingFormatError,
    SessionHeader,
    dumps_jsonl,
    import_recording,
    list_sessions,
    load_jsonl,
    load_recording,
    message_redactor,
    open_recorder,
    parse_jsonl,
    recording_messages,
    recording_sessions,
)

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _recording() -> Recording:
    decision = RecordedDecision(id="d1", effect=Effect.ALLOW, rule="read-ws", matched=("read-ws",))
    msgs = (
        RecordedMessage(
            seq=1,
            time=T0,
            direction=Direction.CLIENT_TO_SERVER,
            message={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "read_file", "arguments": {"path": "/ws/a"}},
            },
            decision_id="d1",
        ),
        RecordedMessage(
            seq=2,
            time=T0 + timedelta(milliseconds=5),
            direction=Direction.SERVER_TO_CLIENT,
            message={
                "jsonrpc": "2.0",
                "id": 1,
                "result": {"content": [{"type": "text", "text": "A"}]},
            },
            decision_id="d1",
            redacted=("/result/x",),
        ),
    )
    header = SessionHeader(
        session_id="s1",
        agent=Agent(id="ci-bot", roles=("ci",), claims={"team": "core"}),
        server="fs",
        started=T0,
    )
    return Recording(header=header, messages=msgs, decisions={"d1": decision})


def test_a_recording_survives_a_jsonl_round_trip() -> None:
    rec = _recording()
    text = dumps_jsonl(rec)
    back = parse_jsonl(text.splitlines())
    assert back.header == rec.header
    assert back.messages == rec.messages
    assert dict(back.decisions) == dict(rec.decisions)


def test_the_first_line_carries_the_format_and_its_version() -> None:
    first = json.loads(dumps_jsonl(_recording()).splitlines()[0])
    assert first["format"] == "mcpfw-session"
    assert first["version"] == FORMAT_VERSION
    assert first["session"]["agent"]["id"] == "ci-bot"


def test_a_decision_is_embedded_once_on_the_first_message_that_names_it() -> None:
    lines = [json.loads(x) for x in dumps_jsonl(_recording()).splitlines()[1:]]
    assert lines[0]["decision"]["rule"] == "read-ws"
    assert "decision" not in lines[1]
    assert lines[1]["decision_id"] == "d1"


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        (["{not json"], 1, "invalid JSON"),
        (['{"format": "other", "version": 1}'], 1, "not an mcpfw session recording"),
        (['{"format": "mcpfw-session", "version": 99, "session": {}}'], 1, "upgrade mcpfw"),
        ([], 1, "empty file"),
    ],
)
def test_a_bad_file_is_reported_with_its_line(lines: list[str], line: int, words: str) -> None:
    with pytest.raises(RecordingFormatError) as err:
        parse_jsonl(lines, source="x.jsonl")
    assert err.value.line == line
    assert words in str(err.value)
    assert str(err.value).startswith(f"x.jsonl:{line}:")


def test_a_message_line_with_a_missing_field_or_bad_order_names_the_line() -> None:
    good = dumps_jsonl(_recording()).splitlines()
    missing = json.loads(good[1])
    del missing["time"]
    with pytest.raises(RecordingFormatError, match=r"x:2: missing field 'time'"):
        parse_jsonl([good[0], json.dumps(missing)], source="x")
    with pytest.raises(RecordingFormatError, match=r"x:3: seq 1 is not after"):
        parse_jsonl([good[0], good[1], good[1]], source="x")
    bad_dir = json.loads(good[1])
    bad_dir["direction"] = "up"
    with pytest.raises(RecordingFormatError, match="direction must be"):
        parse_jsonl([good[0], json.dumps(bad_dir)], source="x")


def test_a_missing_file_is_a_format_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(RecordingFormatError, match="no such file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_message_redaction_masks_configured_pointers_and_detected_secrets() -> None:
    redact = message_redactor(Redactor(RedactionConfig(pointers=("/note",))))
    message = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {
            "name": "fetch",
            "arguments": {"url": "https://x", "note": "private", "token": "abc123"},
        },
    }
    out, paths = redact(message)
    args = out["params"]["arguments"]
    assert args["url"] == "https://x"
    assert "private" not in json.dumps(out) and "abc123" not in json.dumps(out)
    assert set(paths) == {"/params/arguments/note", "/params/arguments/token"}
    result = {
        "jsonrpc": "2.0",
        "id": 3,
        "result": {"content": [{"type": "text", "text": "key AKIAABCDEFGHIJKLMNOP"}]},
    }
    out, paths = redact(result)
    assert "AKIAABCDEFGHIJKLMNOP" not in json.dumps(out)
    assert paths == ("/result/content/0/text",)


async def _engine(tmp_path: Path) -> Any:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(
            lambda c: metadata.create_all(c, tables=[recording_sessions, recording_messages])
        )
    return engine


@pytest.mark.anyio
async def test_the_recorder_writes_every_message_in_order_linked_to_its_decision(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path)
    redact = message_redactor(Redactor())
    decision = Decision(effect=Effect.DENY, rule="no-env", matched=("no-env",))
    with anyio.fail_after(10):
        async with open_recorder(
            engine, session_id="s-rec", agent=Agent(id="a1"), server="fs", redact=redact
        ) as rec:
            rec.record(Direction.CLIENT_TO_SERVER, {"jsonrpc": "2.0", "id": 0, "method": "ping"})
            rec.record(Direction.SERVER_TO_CLIENT, {"jsonrpc": "2.0", "id": 0, "result": {}})
            call = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "read_file", "arguments": {"password": "hunter2"}},
            }
            rec.record("c2s", call, decision=decision)
            rec.record(
                "s2c",
                {"jsonrpc": "2.0", "id": 1, "result": {"isError": True, "content": []}},
                decision_id=decision.id,
                source="firewall",
            )
        loaded = await load_recording(engine, "s-rec")
        sessions = await list_sessions(engine)
    await engine.dispose()
    assert loaded is not None
    assert [m.seq for m in loaded.messages] == [1, 2, 3, 4]
    assert [m.direction.value for m in loaded.messages] == ["c2s", "s2c", "c2s", "s2c"]
    assert loaded.messages[2].decision_id == decision.id
    assert loaded.messages[3].source == "firewall"
    assert loaded.decisions[decision.id].rule == "no-env"
    assert "hunter2" not in json.dumps(loaded.messages[2].message)
    assert loaded.messages[2].redacted == ("/params/arguments/password",)
    assert loaded.header.ended is not None
    assert [(s.header.session_id, s.messages, s.calls) for s in sessions] == [("s-rec", 4, 1)]


@pytest.mark.anyio
async def test_an_imported_recording_reads_back_identically_and_cannot_be_imported_twice(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path)
    rec = _recording()
    await import_recording(engine, rec)
    back = await load_recording(engine, "s1")
    with pytest.raises(ValueError, match="already in the database"):
        await import_recording(engine, rec)
    await engine.dispose()
    assert back is not None
    assert dumps_jsonl(back) == dumps_jsonl(rec)


@pytest.mark.anyio
async def test_the_recorder_accepts_sdk_messages_as_relayed(tmp_path: Path) -> None:
    from mcp.shared.message import SessionMessage
    from mcp.types import JSONRPCRequest

    engine = await _engine(tmp_path)
    msg = SessionMessage(
        JSONRPCRequest(jsonrpc="2.0", id=7, method="x/unknown", params={"extra": {"kept": True}})
    )
    with anyio.fail_after(10):
        async with open_recorder(
            engine, session_id="s-sdk", agent=Agent(id="a"), redact=message_redactor(Redactor())
        ) as rec:
            rec.record("c2s", msg)
        loaded = await load_recording(engine, "s-sdk")
    await engine.dispose()
    assert loaded is not None
    assert loaded.messages[0].message == {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "x/unknown",
        "params": {"extra": {"kept": True}},
    }


def test_tool_schemas_keep_property_names_that_look_like_secrets() -> None:
    redact = message_redactor(Redactor())
    schema = {"type": "object", "properties": {"token": {"type": "string"}}}
    listing = {
        "jsonrpc": "2.0",
        "id": 2,
        "result": {
            "tools": [
                {
                    "name": "fetch",
                    "inputSchema": schema,
                    "description": "example key AKIAABCDEFGHIJKLMNOP",
                }
            ]
        },
    }
    out, paths = redact(listing)
    tool = out["result"]["tools"][0]
    assert tool["inputSchema"] == schema
    assert "AKIAABCDEFGHIJKLMNOP" not in tool["description"]
    assert paths == ("/result/tools/0/description",)


# ---------------------------------------------------------------- both backends


def _plain_dsn(url: str) -> str:
    return "postgresql://" + url.partition("://")[2].partition("?")[0]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """An empty audit database on each backend (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        yield str(tmp_path / "audit.db")
        return
    import asyncio
    import uuid

    import asyncpg

    base: str = request.getfixturevalue("postgres_url")
    schema = "t_rec_" + uuid.uuid4().hex[:12]
    yield f"{base}{'&' if '?' in base else '?'}schema={schema}"

    async def drop() -> None:
        conn = await asyncpg.connect(_plain_dsn(base))
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.mark.anyio
async def test_recordings_are_stored_and_read_back_on_both_backends(store_url: str) -> None:
    from mcpfw.audit import open_store

    decision = Decision(effect=Effect.ALLOW, rule="r1", matched=("r1",))
    with anyio.fail_after(30):
        async with open_store(store_url, instance="rec-test") as store:
            redact = message_redactor(store.redactor)
            async with open_recorder(
                store.engine, session_id="s-both", agent=Agent(id="a"), server="fs", redact=redact
            ) as rec:
                seq = rec.record(
                    "c2s",
                    {
                        "jsonrpc": "2.0",
                        "id": 1,
                        "method": "tools/call",
                        "params": {"name": "t", "arguments": {"x": 1}},
                    },
                )
                await rec.flush()  # written before its decision exists: linked afterwards
                rec.attach(seq, decision)
                rec.record(
                    "s2c", {"jsonrpc": "2.0", "id": 1, "result": {"content": []}}, decision=decision
                )
            await import_recording(store.engine, _recording())
            loaded = await load_recording(store.engine, "s-both")
            listed = await list_sessions(store.engine, agent="ci-bot")
    assert loaded is not None
    assert [m.decision_id for m in loaded.messages] == [decision.id, decision.id]
    assert loaded.decisions[decision.id].rule == "r1"
    assert [s.header.session_id for s in listed] == ["s1"]


# ---------------------------------------------------------------- through the real firewall


@pytest.mark.anyio
@pytest.mark.slow
async def test_mcpfw_run_record_stores_the_whole_session_linked_to_its_decisions(
    tmp_path: Path,
) -> None:
    import os
    import sys

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from mcpfw.audit import open_store

    root = Path(__file__).resolve().parent.parent
    db = tmp_path / "audit.db"
    args = [
        "-m", "mcpfw.cli.replay_cmds", "run", "--record", "--agent", "dev", "--role", "developer",
        "--rules", str(root / "fixtures/sessions/rules/original.yaml"), "--audit", str(db),
        "--server", "notes", "--", sys.executable, str(root / "fixtures/sessions/notes_server.py"),
    ]  # fmt: skip
    params = StdioServerParameters(command=sys.executable, args=args, env=dict(os.environ))
    with anyio.fail_after(60):
        async with Client(stdio_client(params, errlog=sys.__stderr__), cache=None,
                          mode="legacy") as client:  # fmt: skip
            await client.list_tools()
            ok = await client.call_tool("read_file", {"path": "/ws/README.md"})
            denied = await client.call_tool("read_file", {"path": "/ws/.env", "apiKey": "s3cr3t!"})
        assert not ok.is_error and denied.is_error
        async with open_store(str(db), instance="reader") as store:
            (summary,) = await list_sessions(store.engine)
            rec = await load_recording(store.engine, summary.header.session_id)
            decisions = await store.list_events()
    assert rec is not None
    assert rec.header.agent.id == "dev" and rec.header.server == "notes"
    assert rec.header.started <= rec.messages[0].time  # not when the store happened to open
    methods = [(m.direction.value, m.method or "response") for m in rec.messages]
    assert methods[:4] == [
        ("c2s", "initialize"), ("s2c", "response"),
        ("c2s", "notifications/initialized"), ("c2s", "tools/list"),
    ]  # fmt: skip
    assert [m.seq for m in rec.messages] == list(range(1, len(rec.messages) + 1))
    calls = [m for m in rec.messages if m.method == "tools/call"]
    assert [rec.decisions[c.decision_id or ""].rule for c in calls] == [
        "workspace-read", "no-env-files"
    ]  # fmt: skip
    # each call's response carries the same decision; the denial is the firewall's own answer
    answers = {m.decision_id: m for m in rec.messages if m.is_response and m.decision_id}
    assert answers[calls[0].decision_id].source == ""
    assert answers[calls[1].decision_id].source == "firewall"
    # the recording and the audit log agree on the decisions, and the secret is in neither
    logged = {e.id for e in decisions if e.kind == "decision"}
    assert {c.decision_id for c in calls} <= logged
    assert "s3cr3t!" not in json.dumps([m.message for m in rec.messages])
    assert calls[1].redacted == ("/params/arguments/apiKey",)


# ---------------------------------------------------------------- the recorded upstream


def _served() -> Any:
    from mcpfw.recording import RecordedUpstream

    redact = message_redactor(Redactor(RedactionConfig(pointers=("/note",))))
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "save", "arguments": {"note": "private text"}},
    }
    recorded_call, paths = redact(call)
    msgs = [
        ({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "x"}},
         "c2s", ""),
        ({"jsonrpc": "2.0", "id": 1, "result": {"protocolVersion": "2025-06-18"}}, "s2c", ""),
        ({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
          "params": {"name": "read", "arguments": {"p": 1}, "_meta": {"progressToken": 1}}},
         "c2s", ""),
        ({"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "one"}]}},
         "s2c", ""),
        ({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
          "params": {"name": "read", "arguments": {"p": 1}}}, "c2s", ""),
        ({"jsonrpc": "2.0", "id": 3, "result": {"content": [{"type": "text", "text": "two"}]}},
         "s2c", ""),
        ({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
          "params": {"name": "rm", "arguments": {"p": 1}}}, "c2s", ""),
        ({"jsonrpc": "2.0", "id": 4, "result": {"isError": True, "content": []}}, "s2c",
         "firewall"),
        (recorded_call, "c2s", ""),
        ({"jsonrpc": "2.0", "id": 5, "result": {"content": [{"type": "text", "text": "saved"}]}},
         "s2c", ""),
    ]  # fmt: skip
    rec = Recording(
        header=_recording().header,
        messages=tuple(
            RecordedMessage(seq=i + 1, time=T0, direction=Direction(d), message=m, source=src)
            for i, (m, d, src) in enumerate(msgs)
        ),
        source="s.jsonl",
    )
    assert paths == ("/params/arguments/note",)
    return RecordedUpstream(rec, redact=lambda m: redact(m)[0])


def _ask(up: Any, method: str, params: Any, rid: int = 99) -> Any:
    return up.answer({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})


def test_the_recorded_upstream_answers_handshakes_whatever_the_client_sends() -> None:
    up = _served()
    answer = _ask(up, "initialize", {"protocolVersion": "2025-11-25", "clientInfo": {"n": 1}}, 7)
    assert answer == {"jsonrpc": "2.0", "id": 7, "result": {"protocolVersion": "2025-06-18"}}
    assert _ask(up, "ping", None)["result"] == {}
    assert up.answer({"jsonrpc": "2.0", "method": "notifications/initialized"}) is None


def test_repeated_calls_get_their_recorded_answers_in_order_then_the_last_again() -> None:
    up = _served()
    texts = [
        _ask(up, "tools/call", {"name": "read", "arguments": {"p": 1}, "_meta": {"x": n}})[
            "result"
        ]["content"][0]["text"]
        for n in range(3)
    ]
    assert texts == ["one", "two", "two"]


def test_a_never_recorded_request_gets_an_error_naming_it() -> None:
    up = _served()
    unknown = _ask(up, "resources/read", {"uri": "file:///x"})["error"]
    assert unknown["code"] == -32601
    assert unknown["message"] == "resources/read was never recorded in s.jsonl"
    other_args = _ask(up, "tools/call", {"name": "read", "arguments": {"p": 2}})["error"]
    assert other_args["code"] == -32602
    assert 'tools/call read with arguments {"p":2} was not recorded' in other_args["message"]
    assert other_args["data"]["recorded_arguments"] == [{"p": 1}, {"p": 1}]
    denied = _ask(up, "tools/call", {"name": "rm", "arguments": {"p": 1}})["error"]
    assert "denied by the firewall" in denied["message"]


def test_a_call_with_a_redacted_value_matches_its_recording() -> None:
    up = _served()
    answer = _ask(up, "tools/call", {"name": "save", "arguments": {"note": "other private"}})
    assert answer["result"]["content"][0]["text"] == "saved"


@pytest.mark.anyio
@pytest.mark.slow
async def test_mcpfw_serve_records_each_agent_session_in_both_eras(tmp_path: Path) -> None:
    from mcpfw.audit import open_store
    from mcpfw.replay import calls_from_recording
    from tests.proxy.http_harness import (
        sdk_client,
        serving,
        stdio_upstream,
        token,
        write_config,
    )

    config = write_config(
        tmp_path,
        upstreams={"fs": stdio_upstream(), "git": stdio_upstream()},
        extra="record: true\n",
    )
    with anyio.fail_after(60):
        async with serving(config) as served:
            async with sdk_client(served.mcp("fs"), token("ci-bot"), mode="legacy") as client:
                await client.list_tools()
                await client.call_tool("echo", {"n": 1})
                await client.call_tool("read_file", {"path": "/etc/key.pem"})
            async with sdk_client(served.mcp(), token("ci-bot"), mode="2026-07-28") as client:
                await client.call_tool("git__echo", {"n": 2})
        async with open_store(str(tmp_path / "audit.db"), instance="reader") as store:
            summaries = await list_sessions(store.engine)
            recs = {
                s.header.server: await load_recording(store.engine, s.header.session_id)
                for s in summaries
            }
    assert set(recs) == {"fs", "*"}
    handshake, modern = recs["fs"], recs["*"]
    assert handshake is not None and modern is not None
    first = handshake.messages[0]
    assert (first.method, first.source) == ("initialize", "firewall")
    calls = list(calls_from_recording(handshake))
    assert [(c.call.tool, c.original.effect.value, c.original.rule) for c in calls] == [
        ("echo", "allow", "ci-read"), ("read_file", "deny", "no-secrets")
    ]  # fmt: skip
    (aggregated,) = calls_from_recording(modern)
    assert (aggregated.call.server, aggregated.call.tool) == ("git", "echo")
    assert aggregated.result is not None and aggregated.original.rule == "ci-read"


@pytest.mark.anyio
async def test_replay_reads_decision_events_on_both_backends(store_url: str) -> None:
    from mcpfw.audit import open_store
    from mcpfw.model import ToolCall
    from mcpfw.replay.db import audit_calls
    from mcpfw.replay.sources import CallFilter

    agent = Agent(id="a", roles=("r",))
    decisions = [Decision(effect=Effect.ALLOW, rule="r1"), Decision(effect=Effect.DENY, rule="r2")]
    with anyio.fail_after(30):
        async with open_store(store_url, instance="replay-test") as store:
            for n, decision in enumerate(decisions):
                call = ToolCall(agent=agent, tool="t", arguments={"n": n, "token": "x" * 8},
                                session_id="s", session_calls=n)  # fmt: skip
                await store.record_decision(call, decision)
            calls = await audit_calls(store.engine, CallFilter(agent="a"))
    assert [(c.original.rule, c.call.arguments["n"]) for c in calls] == [("r1", 0), ("r2", 1)]
    assert all(c.redacted == ("/token",) for c in calls)


@pytest.mark.anyio
async def test_a_message_changed_after_it_was_recorded_is_stored_as_it_was(
    tmp_path: Path,
) -> None:
    engine = await _engine(tmp_path)
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
               "params": {"name": "t", "arguments": {"path": "/a"}}}  # fmt: skip
    with anyio.fail_after(10):
        async with open_recorder(
            engine, session_id="s-snap", agent=Agent(id="a"), redact=message_redactor(Redactor())
        ) as rec:
            rec.record("c2s", message)
            message["params"]["arguments"]["path"] = "/changed-later"
        loaded = await load_recording(engine, "s-snap")
    await engine.dispose()
    assert loaded is not None
    assert loaded.messages[0].message["params"]["arguments"] == {"path": "/a"}
