"""`mcpfw audit …` called in-process: output and exit codes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mcpfw.audit import AuditStore, open_store
from mcpfw.cli import main
from mcpfw.model import Agent, Decision, Effect, Outcome, ToolCall, utcnow

ROOT = Path(__file__).resolve().parents[2]
ALICE = Agent(id="ci-alice", roles=("dev",))
BOB = Agent(id="bob", roles=("admin",))


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["audit", *args], env=env, catch_exceptions=False)


async def _record(url: str, items: list[tuple[Agent, str, Effect, str, Outcome]]) -> list[str]:
    ids = []
    async with open_store(url, instance="fw-test") as store:
        for i, (agent, tool, effect, rule, outcome) in enumerate(items):
            call = ToolCall(
                agent=agent, tool=tool, server="fs", arguments={"i": i}, session_id="s1"
            )
            decision = Decision(
                effect=effect,
                rule=rule,
                shadow_effect=Effect.DENY if rule == "shadowed" else None,
                time=utcnow() - timedelta(days=30) if rule == "old" else utcnow(),
            )
            await store.record_decision(call, decision)
            await store.record_outcome(decision.id, outcome, latency_ms=2.0, is_error=False)
            ids.append(decision.id)
    return ids


@pytest.fixture
def db(tmp_path: Path) -> tuple[str, list[str]]:
    path = str(tmp_path / "audit.db")
    ids = asyncio.run(
        _record(
            path,
            [
                (ALICE, "read_file", Effect.ALLOW, "old", Outcome.FORWARDED),
                (ALICE, "read_file", Effect.ALLOW, "workspace-read", Outcome.FORWARDED),
                (BOB, "delete_file", Effect.DENY, "no-delete", Outcome.DENIED),
                (ALICE, "write_file", Effect.ASK, "shadowed", Outcome.DECLINED),
            ],
        )
    )
    return path, ids


def test_list_shows_decisions_newest_first_with_their_outcome(db: tuple[str, list[str]]) -> None:
    path, ids = db
    result = run("list", "--audit", path)
    assert result.exit_code == 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "decision" in lines[0] and "outcome" in lines[0]
    assert ids[3] in lines[1] and "declined" in lines[1] and "shadow:deny" in lines[1]
    assert ids[2] in lines[2] and "deny" in lines[2] and "no-delete" in lines[2]
    assert len(lines) == 5


def test_list_filters_and_json_output(db: tuple[str, list[str]]) -> None:
    path, ids = db
    by_agent = json.loads(
        run("list", "--audit", path, "--agent", "ci-*", "--format", "json").output
    )
    denies = run("list", "--audit", path, "--effect", "deny", "--format", "jsonl").output
    shadow = json.loads(run("list", "--audit", path, "--shadow", "--format", "json").output)
    recent = json.loads(run("list", "--audit", path, "--since", "7d", "--format", "json").output)
    assert {e["agent_id"] for e in by_agent} == {"ci-alice"} and len(by_agent) == 3
    (deny,) = [json.loads(line) for line in denies.splitlines()]
    assert deny["id"] == ids[2] and deny["outcome_event"]["outcome"] == "denied"
    assert [e["id"] for e in shadow] == [ids[3]]
    assert ids[0] not in {e["id"] for e in recent} and len(recent) == 3


def test_list_pages_and_says_how_to_get_more(db: tuple[str, list[str]]) -> None:
    path, ids = db
    first = run("list", "--audit", path, "--limit", "3")
    second = run("list", "--audit", path, "--limit", "3", "--page", "2")
    assert "--page 2" in first.output
    assert ids[0] in second.output and ids[0] not in first.output


def test_list_of_all_kinds_includes_outcomes(db: tuple[str, list[str]]) -> None:
    path, _ = db
    events = json.loads(run("list", "--audit", path, "--kind", "all", "--format", "json").output)
    assert sorted(e["kind"] for e in events).count("outcome") == 4


def test_show_prints_a_decision_with_its_outcome_by_id_or_prefix(
    db: tuple[str, list[str]],
) -> None:
    path, ids = db
    table = run("show", ids[2], "--audit", path)
    as_json = json.loads(run("show", ids[2][:-4], "--audit", path, "--format", "json").output)
    assert table.exit_code == 0
    assert "no-delete" in table.output and "denied" in table.output and "bob" in table.output
    assert as_json["event"]["id"] == ids[2]
    assert as_json["outcome"]["outcome"] == "denied"


def test_show_of_an_unknown_id_is_a_clear_error(db: tuple[str, list[str]]) -> None:
    path, _ = db
    result = run("show", "nope", "--audit", path)
    assert result.exit_code == 2
    assert "no event 'nope'" in result.output


def test_stats_count_by_agent_tool_and_rule(db: tuple[str, list[str]]) -> None:
    path, _ = db
    table = run("stats", "--audit", path)
    data = json.loads(run("stats", "--audit", path, "--format", "json").output)
    assert table.exit_code == 0 and "4 decisions" in table.output
    assert "rules that deny most" in table.output
    assert (data["decisions"], data["allows"], data["denies"], data["asks"]) == (4, 2, 1, 1)
    assert data["by_rule"][0] == {
        "key": "no-delete", "calls": 1, "allows": 0, "denies": 1, "asks": 0, "shadow_denies": 0,
    }  # fmt: skip
    assert {r["key"]: r["calls"] for r in data["by_agent"]} == {"ci-alice": 3, "bob": 1}
    assert data["outcomes"] == {"forwarded": 2, "denied": 1, "declined": 1}


def test_export_writes_a_versioned_header_then_every_event_oldest_first(
    db: tuple[str, list[str]], tmp_path: Path
) -> None:
    path, ids = db
    out = tmp_path / "export.jsonl"
    result = CliRunner().invoke(main, ["audit", "export", "--audit", path, "-o", str(out)])
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert result.exit_code == 0 and "exported 8 events" in result.output
    assert lines[0]["type"] == "header"
    assert (lines[0]["format"], lines[0]["version"]) == ("mcpfw-audit", 1)
    assert [e["seq"] for e in lines[1:]] == sorted(e["seq"] for e in lines[1:])
    assert lines[1]["id"] == ids[0] and len(lines) == 9


def test_verify_says_ok_with_counts(db: tuple[str, list[str]]) -> None:
    path, _ = db
    result = run("verify", "--audit", path)
    assert result.exit_code == 0
    assert "OK: 8 events in 1 chains verified" in result.output


def test_verify_names_the_first_broken_event_and_exits_1(db: tuple[str, list[str]]) -> None:
    path, ids = db
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE audit_events SET effect = 'allow' WHERE id = ?", (ids[2],))
    table = run("verify", "--audit", path)
    data = json.loads(run("verify", "--audit", path, "--format", "json").output)
    assert table.exit_code == 1
    assert "BROKEN" in table.output and "edited" in table.output and ids[2] in table.output
    assert data["ok"] is False
    assert data["chains"][0]["broken"]["event_id"] == ids[2]


def test_prune_keeps_the_log_verifiable(db: tuple[str, list[str]]) -> None:
    path, ids = db
    dry = run("prune", "--audit", path, "--before", "7d", "--dry-run")
    done = json.loads(run("prune", "--audit", path, "--before", "7d", "--format", "json").output)
    verify = run("verify", "--audit", path)
    remaining = run("list", "--audit", path, "--format", "json").output
    # the old decision goes; its outcome was written now, so it stays (and the rest after it)
    assert dry.exit_code == 0 and "would prune 1 event older than" in dry.output
    assert done["pruned"] == 1 and done["chains"][0]["checkpoint_seq"] == 1
    assert verify.exit_code == 0 and "OK: 7 events" in verify.output
    assert ids[0] not in remaining and ids[1] in remaining


def test_tail_prints_the_last_events(db: tuple[str, list[str]]) -> None:
    path, ids = db
    result = run("tail", "--audit", path, "-n", "2", "--max-events", "2", "--kind-less-flag")
    assert result.exit_code != 0  # unknown option is a usage error
    ok = run("tail", "--audit", path, "-n", "2", "--max-events", "2", "--format", "jsonl")
    events = [json.loads(line) for line in ok.output.splitlines()]
    assert [e["kind"] for e in events] == ["decision", "outcome"]
    assert events[0]["id"] == ids[3]


def test_tail_follows_events_written_after_it_started(
    db: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = db
    holder: dict[str, Result] = {}
    started = threading.Event()
    original = AuditStore.iter_events

    def iter_events(self: AuditStore, *args: Any, **kw: Any) -> Any:
        async def events() -> Any:
            async for event in original(self, *args, **kw):
                yield event
            started.set()  # tail has read what was there: it is following now

        return events()

    monkeypatch.setattr(AuditStore, "iter_events", iter_events)

    def follow() -> None:
        holder["result"] = CliRunner().invoke(
            main,
            ["audit", "tail", "--audit", path, "-n", "0", "--max-events", "2",
             "--interval", "0.05", "--format", "jsonl"],
        )  # fmt: skip

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert started.wait(timeout=20)
    new_ids = asyncio.run(_record(path, [(BOB, "fetch", Effect.DENY, "egress", Outcome.DENIED)]))
    thread.join(timeout=20)
    assert not thread.is_alive()
    events = [json.loads(line) for line in holder["result"].output.splitlines()]
    assert [e["kind"] for e in events] == ["decision", "outcome"]
    assert events[0]["id"] == new_ids[0]


def test_a_missing_database_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    for command in ("list", "verify", "stats", "export", "tail"):
        result = run(command, "--audit", str(missing))
        assert result.exit_code == 2, command
        assert "no audit database at" in result.output
        assert "Traceback" not in result.output
    assert not missing.exists()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_text("this is not sqlite " * 100)
    result = run("verify", "--audit", str(junk))
    assert result.exit_code == 2
    assert "cannot open the audit database" in result.output


def test_a_bad_date_is_a_clear_error(db: tuple[str, list[str]]) -> None:
    path, _ = db
    result = run("list", "--audit", path, "--since", "last tuesday")
    assert result.exit_code == 2
    assert "--since 'last tuesday': not a date" in result.output


def test_the_database_comes_from_mcpfw_audit_when_not_given(db: tuple[str, list[str]]) -> None:
    path, _ = db
    result = run("verify", env={"MCPFW_AUDIT": path})
    assert result.exit_code == 0 and "OK: 8 events" in result.output


def test_the_commands_work_on_postgresql(postgres_url: str) -> None:
    schema = "t_cli_" + uuid.uuid4().hex[:10]
    url = f"{postgres_url}{'&' if '?' in postgres_url else '?'}schema={schema}"
    try:
        asyncio.run(_record(url, [(ALICE, "read_file", Effect.ALLOW, "r", Outcome.FORWARDED)]))
        verify = run("verify", "--audit", url)
        listed = json.loads(run("list", "--audit", url, "--format", "json").output)
    finally:
        from tests.audit.conftest import _drop_schema

        asyncio.run(_drop_schema(postgres_url, schema))
    assert verify.exit_code == 0 and "OK: 2 events" in verify.output
    assert [e["tool"] for e in listed] == ["read_file"]


def test_every_audit_command_is_documented() -> None:
    docs = (ROOT / "docs" / "audit.md").read_text(encoding="utf-8")
    group = main.get_command(None, "audit")  # type: ignore[arg-type]
    assert group is not None
    names = group.list_commands(None)  # type: ignore[attr-defined, arg-type]
    assert set(names) == {"list", "show", "tail", "stats", "export", "verify", "prune"}
    for name in names:
        assert f"mcpfw audit {name}" in docs, name


def test_rows_mangled_by_hand_are_listed_and_reported_never_a_traceback(
    db: tuple[str, list[str]],
) -> None:
    path, ids = db
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE audit_events SET time = 'yesterday', data = '[1', seq = 'x' WHERE id = ?",
            (ids[1],),
        )
        conn.execute("UPDATE audit_chains SET seq = 'many'")
    listed = run("list", "--audit", path, "--kind", "all")
    shown = run("show", ids[1], "--audit", path)
    verify = run("verify", "--audit", path)
    assert listed.exit_code == 0 and ids[1] in listed.output
    assert shown.exit_code == 0 and "unreadable data" in shown.output
    assert verify.exit_code == 1 and "BROKEN" in verify.output
