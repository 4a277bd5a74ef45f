"""`mcpfw sessions`, `mcpfw replay` and `mcpfw serve-recording`, called in-process (and the
recorded-upstream server also as a real stdio subprocess answering the MCP SDK client)."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from mcpfw.audit import open_store
from mcpfw.cli import main
from mcpfw.cli.replay_cmds import parse_time
from mcpfw.model import Agent, Outcome, ToolCall
from mcpfw.policy import evaluate, load_ruleset

ROOT = Path(__file__).resolve().parent.parent.parent
FIX = ROOT / "fixtures" / "sessions"
DEV = FIX / "dev-handshake.jsonl"
CI = FIX / "ci-modern.jsonl"
RULES = FIX / "rules"


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


# ---------------------------------------------------------------- replay from files


def test_replaying_a_changed_policy_lists_the_changes_and_exits_1() -> None:
    res = invoke("replay", "--rules", RULES / "candidate-readonly.yaml", "--file", DEV)
    assert res.exit_code == 1, res.output
    assert "newly denied" in res.output
    assert "write_file" in res.output
    assert "allow (developer-writes)" in res.output and "deny (default)" in res.output
    assert res.output.rstrip().endswith("changed")


def test_replaying_the_recorded_policy_exits_0_and_names_the_uncertain_call() -> None:
    res = invoke("replay", "--rules", RULES / "original.yaml", "--file", DEV, "--file", CI)
    assert res.exit_code == 0, res.output
    assert "no decision would change" in res.output
    assert "fetch (/token)" in res.output
    strict = invoke(
        "replay", "--rules", RULES / "original.yaml", "--file", DEV, "--fail-on-uncertain"
    )
    assert strict.exit_code == 1


def test_replay_json_output_matches_the_expected_fixture_diff() -> None:
    res = invoke(
        "replay",
        "--rules",
        RULES / "candidate-open-fetch.yaml",
        "--file",
        DEV,
        "--file",
        CI,
        "--format",
        "json",
    )
    assert res.exit_code == 1
    data = json.loads(res.output)
    expected = json.loads((FIX / "expected" / "candidate-open-fetch.json").read_text())
    assert [(c["tool"], c["kind"], c["uncertain"]) for c in data["changes"]] == [
        (c["tool"], c["kind"], c["uncertain"]) for c in expected["changes"]
    ]
    assert data["counts"]["newly_allowed"] == 1
    assert data["sources"] == [str(DEV), str(CI)]


def test_a_replay_that_matches_no_call_says_so() -> None:
    res = invoke("replay", "--rules", RULES / "original.yaml", "--file", DEV, "--agent", "nobody")
    assert res.exit_code == 0
    assert "0 calls replayed" in res.output
    assert "no recorded tool calls matched" in res.output


def test_broken_candidate_rules_exit_2_with_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: deny\nrules:\n  - id: x\n    effect: allow\n    when: 'args.('\n")
    res = invoke("replay", "--rules", bad, "--file", DEV)
    assert res.exit_code == 2
    assert f"{bad}:5:" in res.output
    assert "Traceback" not in res.output


def test_a_broken_recording_file_exits_2_naming_the_line(tmp_path: Path) -> None:
    broken = tmp_path / "s.jsonl"
    broken.write_text(DEV.read_text().splitlines()[0] + "\n{oops\n")
    res = invoke("replay", "--rules", RULES / "original.yaml", "--file", broken)
    assert res.exit_code == 2
    assert f"{broken}:2: invalid JSON" in res.output


def test_execute_without_an_upstream_is_a_usage_error() -> None:
    res = invoke("replay", "--rules", RULES / "original.yaml", "--file", DEV, "--execute")
    assert res.exit_code == 2
    assert "--execute needs a live upstream" in res.output


def test_relative_and_absolute_times_are_parsed() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)
    assert parse_time("7d", now=now) == now - timedelta(days=7)
    assert parse_time("2026-01-02") == datetime(2026, 1, 2, tzinfo=UTC)
    with pytest.raises(Exception, match="is not a time"):
        parse_time("last tuesday")


# ---------------------------------------------------------------- the database


def _store_calls(db: Path) -> list[str]:
    """Decision events (no recording) as the firewall writes them, under the original rules."""
    rules = load_ruleset([RULES / "original.yaml"])
    agent = Agent(id="nightly", roles=("developer",))
    t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    calls = [
        ("write_file", {"path": "/ws/a.txt", "content": "x"}),
        ("read_file", {"path": "/ws/README.md", "password": "hunter2"}),
        ("delete_file", {"path": "/ws/a.txt"}),
    ]
    ids: list[str] = []

    async def write() -> None:
        async with open_store(str(db), instance="test") as store:
            await store.record_session_start(session_id="audit-only", agent=agent, server="notes")
            for n, (tool, args) in enumerate(calls):
                call = ToolCall(
                    agent=agent,
                    tool=tool,
                    server="notes",
                    arguments=args,
                    session_id="audit-only",
                    session_calls=n,
                    time=t0 + timedelta(minutes=n),
                )
                decision = evaluate(rules, call)
                ids.append(decision.id)
                await store.record_decision(call, decision)
                await store.record_outcome(decision.id, Outcome.FORWARDED, result={"content": []})
            await store.record_session_end("audit-only")

    anyio.run(write)
    return ids


def test_sessions_import_list_show_and_export_round_trip(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    res = invoke("sessions", "import", DEV, CI, "--audit", db)
    assert res.exit_code == 0, res.output
    assert res.output.count("imported session") == 2
    listing = invoke("sessions", "list", "--audit", db, "--format", "json")
    sessions = json.loads(listing.output)
    assert {s["agent"]["id"]: s["calls"] for s in sessions} == {"claude-desktop": 6, "ci-bot": 4}
    dev_id = json.loads(DEV.read_text().splitlines()[0])["session"]["id"]
    shown = invoke("sessions", "show", dev_id[:20], "--audit", db)
    assert shown.exit_code == 0
    assert "deny (no-env-files)" in shown.output
    out = tmp_path / "again.jsonl"
    assert invoke("sessions", "export", dev_id, "--audit", db, "-o", out).exit_code == 0
    assert out.read_text() == DEV.read_text()
    again = invoke("sessions", "import", DEV, "--audit", db)
    assert again.exit_code == 2
    assert "already in the database" in again.output


def test_an_unknown_session_or_missing_database_exits_2(tmp_path: Path) -> None:
    missing = invoke("sessions", "list", "--audit", tmp_path / "nope.db")
    assert missing.exit_code == 2
    assert "no audit database" in missing.output
    db = tmp_path / "audit.db"
    invoke("sessions", "import", CI, "--audit", db)
    res = invoke("sessions", "show", "zzz", "--audit", db)
    assert res.exit_code == 2
    assert "no recorded session 'zzz'" in res.output


def test_replay_reads_decision_events_from_the_sqlite_audit_log(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    _store_calls(db)
    res = invoke(
        "replay",
        "--rules",
        RULES / "candidate-strict-changes.yaml",
        "--audit",
        db,
        "--format",
        "json",
    )
    assert res.exit_code == 1, res.output
    data = json.loads(res.output)
    assert data["calls"] == 3
    assert [(c["tool"], c["kind"], c["uncertain"]) for c in data["changes"]] == [
        ("write_file", "newly_asked", False),
        ("delete_file", "newly_denied", False),
    ]
    # the stored password was masked: that call is re-decided on the marker and flagged
    assert [u["redacted"] for u in data["uncertain_unchanged"]] == [["/password"]]
    assert "hunter2" not in res.output


def test_replay_from_the_database_combines_recordings_and_decision_events_once(
    tmp_path: Path,
) -> None:
    db = tmp_path / "audit.db"
    _store_calls(db)
    invoke("sessions", "import", DEV, CI, "--audit", db)
    res = invoke("replay", "--rules", RULES / "original.yaml", "--audit", db, "--format", "json")
    data = json.loads(res.output)
    assert data["calls"] == 3 + 10
    assert data["changed"] == 0
    only = invoke(
        "replay",
        "--rules",
        RULES / "original.yaml",
        "--audit",
        db,
        "--format",
        "json",
        "--agent",
        "nightly",
        "--since",
        "2026-11-20T08:01:00Z",
    )
    assert json.loads(only.output)["calls"] == 2
    one = invoke(
        "replay",
        "--rules",
        RULES / "candidate-readonly.yaml",
        "--audit",
        db,
        "audit-only",
        "--format",
        "json",
    )
    assert [c["where"].split()[0] for c in json.loads(one.output)["changes"]] == ["audit"]
    unknown = invoke("replay", "--rules", RULES / "original.yaml", "--audit", db, "nope")
    assert unknown.exit_code == 2
    assert "nope" in unknown.output


# ---------------------------------------------------------------- --execute


@pytest.mark.slow
def test_execute_resends_allowed_calls_and_reports_matching_results() -> None:
    res = invoke(
        "replay",
        "--rules",
        RULES / "original.yaml",
        "--file",
        DEV,
        "--format",
        "json",
        "--execute",
        "--",
        sys.executable,
        FIX / "notes_server.py",
    )
    data = json.loads(res.output)
    statuses = {(r["tool"], r["status"]) for r in data["execution"]["results"]}
    assert ("read_file", "same") in statuses and ("write_file", "same") in statuses
    assert ("fetch", "not_sent") in statuses  # redacted arguments are never re-sent
    assert ("delete_file", "not_sent") in statuses  # ask: no human during a replay
    assert data["execution"]["counts"]["different"] == 0
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_execute_notices_an_upstream_that_answers_differently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTES_VARIANT", "changed")
    res = invoke(
        "replay",
        "--rules",
        RULES / "original.yaml",
        "--file",
        CI,
        "--format",
        "json",
        "--execute",
        "--",
        sys.executable,
        FIX / "notes_server.py",
    )
    assert res.exit_code == 1
    different = [
        r for r in json.loads(res.output)["execution"]["results"] if r["status"] == "different"
    ]
    assert [(r["tool"], r["arguments"]["path"], r["differing"]) for r in different] == [
        ("read_file", "/ws/README.md", ["content", "structuredContent"])
    ]


def test_execute_against_an_upstream_that_cannot_start_exits_2() -> None:
    res = invoke(
        "replay",
        "--rules",
        RULES / "original.yaml",
        "--file",
        CI,
        "--execute",
        "--",
        "/nonexistent/mcp-server",
    )
    assert res.exit_code == 2
    assert "cannot connect to the upstream" in res.output


# ---------------------------------------------------------------- serve-recording


def _params(recording: Path) -> Any:
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcpfw.cli.replay_cmds", "serve-recording", str(recording)],
        env=dict(os.environ),
    )
    # explicit errlog: stdio_client's default was bound at import time, maybe to a CliRunner
    return stdio_client(params, errlog=sys.__stderr__ or sys.stderr)


@pytest.mark.anyio
@pytest.mark.slow
async def test_serve_recording_answers_a_real_sdk_client_from_a_handshake_recording() -> None:
    from mcp import Client
    from mcp.shared.exceptions import MCPError

    with anyio.fail_after(30):
        async with Client(_params(DEV), cache=None) as client:  # auto: discover, then initialize
            assert client.protocol_version == "2025-11-25"
            tools = await client.list_tools()
            assert [t.name for t in tools.tools] == [
                "read_file",
                "write_file",
                "delete_file",
                "fetch",
            ]
            result = await client.call_tool("read_file", {"path": "/ws/README.md"})
            assert result.content[0].text == "# demo workspace\n"  # type: ignore[union-attr]
            with pytest.raises(MCPError) as never:
                await client.call_tool("read_file", {"path": "/etc/passwd"})
            assert never.value.code == -32602
            assert "/etc/passwd" in never.value.message and "not recorded" in never.value.message
            with pytest.raises(MCPError) as denied:
                await client.call_tool("read_file", {"path": "/ws/.env"})
            assert "denied by the firewall" in denied.value.message


@pytest.mark.anyio
@pytest.mark.slow
async def test_serve_recording_answers_a_modern_era_client_and_matches_redacted_values() -> None:
    from mcp import Client

    with anyio.fail_after(30):
        async with Client(_params(CI), cache=None) as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("read_file", {"path": "/ws/src/app.py"})
            assert result.content[0].text == "print('hello')\n"  # type: ignore[union-attr]
    fake_token = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
    with anyio.fail_after(30):
        async with Client(_params(DEV), cache=None, mode="legacy") as client:
            # the recording holds a marker, not the token: the request is redacted the same
            # way before matching, so the real token still finds its recorded answer
            result = await client.call_tool(
                "fetch", {"url": "https://docs.internal/mcp", "token": fake_token}
            )
            assert "fetched https://docs.internal/mcp" in result.content[0].text  # type: ignore[union-attr]


def test_serve_recording_of_a_missing_file_exits_2(tmp_path: Path) -> None:
    res = invoke("serve-recording", tmp_path / "none.jsonl")
    assert res.exit_code == 2
    assert "no such file" in res.output


def test_the_fast_event_reader_agrees_with_the_audit_readers_rebuild(tmp_path: Path) -> None:
    from mcpfw.audit import AuditEvent, EventFilter
    from mcpfw.replay.db import audit_calls, replay_call_from_event
    from mcpfw.replay.sources import CallFilter

    db = tmp_path / "audit.db"
    _store_calls(db)

    async def both() -> tuple[list[Any], list[Any]]:
        async with open_store(str(db), instance="reader") as store:
            fast = await audit_calls(store.engine, CallFilter(), with_outcomes=False)
            events = await store.list_events(EventFilter(kinds=("decision",)), newest_first=False)
        return fast, [replay_call_from_event(e) for e in events if isinstance(e, AuditEvent)]

    fast, slow = anyio.run(both)
    assert len(fast) == 3
    assert fast == slow


def test_every_command_and_option_is_documented() -> None:
    import click

    from mcpfw.cli.replay_cmds import replay, serve_recording, sessions

    doc = (ROOT / "docs" / "replay.md").read_text()
    commands: list[tuple[str, click.Command]] = [
        ("mcpfw replay", replay),
        ("mcpfw serve-recording", serve_recording),
    ]
    assert isinstance(sessions, click.Group)
    commands += [(f"mcpfw sessions {n}", c) for n, c in sessions.commands.items()]
    for name, command in commands:
        assert name in doc, name
        for param in command.params:
            if isinstance(param, click.Option) and param.name not in ("audit_url", "config_path"):
                assert any(o in doc for o in param.opts), f"{name} {param.opts}"
    assert "--audit" in doc and "--config" in doc


@pytest.mark.anyio
@pytest.mark.slow
@pytest.mark.parametrize(("recording", "era"), [(DEV, "2025-11-25"), (CI, "2026-07-28")])
async def test_serve_recording_over_http_answers_a_real_sdk_client(
    recording: Path, era: str
) -> None:
    import socket

    import httpx
    import uvicorn
    from mcp import Client

    from mcpfw.recording import RecordedUpstream, load_jsonl
    from mcpfw.recording.serve_http import recording_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(recording_app(RecordedUpstream(load_jsonl(recording))), log_level="warning")
    )
    url = f"http://127.0.0.1:{port}/mcp"
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            # listening already: connections wait in the backlog until uvicorn accepts them
            tg.start_soon(lambda: server.serve(sockets=[sock]))
            async with Client(url, cache=None) as client:
                assert client.protocol_version == era
                result = await client.call_tool("read_file", {"path": "/ws/README.md"})
                assert "demo workspace" in result.content[0].text  # type: ignore[union-attr]
            async with httpx.AsyncClient() as http:
                body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
                mismatch = await http.post(url, json=body, headers={"Mcp-Method": "tools/call"})
                hostile = await http.post(
                    url, json=body, headers={"Origin": "https://evil.example"}
                )
            server.should_exit = True
    assert mismatch.status_code == 400 and mismatch.json()["error"]["code"] == -32020
    assert hostile.status_code == 403


def test_sessions_prune_deletes_old_recordings_only(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    invoke("sessions", "import", DEV, CI, "--audit", db)
    dev_started = json.loads(DEV.read_text().splitlines()[0])["session"]["started"]
    ci_started = json.loads(CI.read_text().splitlines()[0])["session"]["started"]
    assert dev_started < ci_started
    res = invoke("sessions", "prune", "--before", ci_started, "--audit", db)
    assert res.exit_code == 0, res.output
    assert "deleted 1 recorded session(s), 17 message(s)" in res.output
    left = json.loads(invoke("sessions", "list", "--audit", db, "--format", "json").output)
    assert [s["agent"]["id"] for s in left] == ["ci-bot"]
