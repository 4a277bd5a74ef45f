"""The audit store behaves the same on SQLite and PostgreSQL (the `audit_url` fixture)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import anyio
import pytest
from sqlalchemy import event, text

from mcpfw.audit import AuditError, AuditWriteError, EventFilter, RedactionConfig, open_store
from mcpfw.audit.events import digest
from mcpfw.model import Agent, Decision, Effect, Outcome, RuleError, ToolCall, utcnow
from tests.audit.conftest import AGENT, make_call, make_decision

pytestmark = pytest.mark.anyio


async def _count_commits(store: Any) -> list[int]:
    """Count COMMITs as the database driver executes them (independent of the store)."""
    counter = [0]
    if store._sqlite is not None:  # SQLite files: the store's own sqlite3 writer connection
        await store.record_decision(make_call(), make_decision())  # opens it
        store._sqlite.connection.set_trace_callback(
            lambda sql: counter.__setitem__(0, counter[0] + (sql.strip().upper() == "COMMIT"))
        )
        return counter

    def on_commit(_conn: Any) -> None:
        counter[0] += 1

    event.listen(store.engine.sync_engine, "commit", on_commit)
    return counter


async def test_a_decision_is_committed_with_everything_replay_needs(audit_url: str) -> None:
    call = make_call(arguments={"path": "/workspace/a.txt", "api_key": "sk-live-123"})
    decision = make_decision(
        Effect.DENY,
        "no-secrets",
        matched=("no-secrets", "other"),
        message="nope",
        reason="path is secret",
        shadow_effect=Effect.DENY,
        shadow_rule="new-rule",
        errors=(RuleError(rule="broken", message="no such key"),),
    )
    with anyio.fail_after(20):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_decision(call, decision)
            event_ = await store.get_event(decision.id)
            calls = [c async for c in store.iter_calls()]
    assert event_ is not None
    assert (event_.kind, event_.instance, event_.seq) == ("decision", "fw-a", 1)
    assert (event_.agent_id, event_.server, event_.tool, event_.session_id) == (
        "ci-bot",
        "fs",
        "read_file",
        "sess-1",
    )
    assert (event_.effect, event_.rule, event_.enforced, event_.shadow_effect) == (
        "deny",
        "no-secrets",
        True,
        "deny",
    )
    assert event_.data["roles"] == ["dev", "ci"]
    assert event_.data["transport"] == "stdio"
    assert event_.data["matched"] == ["no-secrets", "other"]
    assert event_.data["reason"] == "path is secret"
    assert event_.data["revision"] == "abc123"
    assert event_.data["eval_us"] == 12.5
    assert event_.data["errors"] == [{"rule": "broken", "message": "no such key"}]
    assert event_.data["arguments"]["api_key"] == "[REDACTED:secret-key]"
    # something was masked: the digest covers what is stored, never the secret
    assert event_.data["args_digest_of"] == "redacted"
    assert event_.data["args_digest"] == digest(event_.data["arguments"])
    assert event_.data["args_digest"] != digest(dict(call.arguments))
    assert event_.data["redacted"] == [{"path": "/arguments/api_key", "kind": "secret-key"}]
    (recorded,) = calls
    assert recorded.call.agent.roles == ("dev", "ci")
    assert recorded.call.arguments["path"] == "/workspace/a.txt"
    assert recorded.call.request_id == 7
    assert recorded.decision.effect is Effect.DENY
    assert recorded.decision.shadow_rule == "new-rule"
    assert recorded.decision.id == decision.id
    assert recorded.redacted_paths == ("/api_key",)


async def test_an_outcome_carries_its_decisions_context_and_a_result_digest(
    audit_url: str,
) -> None:
    call, decision = make_call(), make_decision()
    result = {"content": [{"type": "text", "text": "file body"}]}
    with anyio.fail_after(20):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_decision(call, decision)
            await store.record_outcome(
                decision.id, Outcome.FORWARDED, latency_ms=3.25, is_error=False, result=result
            )
            outcome = await store.get_outcome(decision.id)
            (recorded,) = [c async for c in store.iter_calls()]
    assert outcome is not None
    assert (outcome.kind, outcome.outcome, outcome.decision_id) == (
        "outcome",
        "forwarded",
        decision.id,
    )
    assert (outcome.tool, outcome.agent_id, outcome.session_id) == ("read_file", "ci-bot", "sess-1")
    assert outcome.data["latency_ms"] == 3.25
    assert outcome.data["is_error"] is False
    assert outcome.data["result_digest"] == digest(result)
    assert "file body" not in str(outcome.to_json())
    assert recorded.outcome is not None and recorded.outcome.id == outcome.id


async def test_session_start_and_end_are_recorded_in_chain_order(audit_url: str) -> None:
    with anyio.fail_after(20):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_session_start(
                session_id="s9", agent=AGENT, server="fs", detail={"client": "claude"}
            )
            await store.record_decision(make_call(session_id="s9"), make_decision())
            await store.record_session_end("s9", reason="client closed")
            events = [e async for e in store.iter_events(EventFilter(session="s9"))]
    assert [(e.kind, e.seq) for e in sorted(events, key=lambda e: e.seq)] == [
        ("session_start", 1),
        ("decision", 2),
        ("session_end", 3),
    ]
    start = next(e for e in events if e.kind == "session_start")
    end = next(e for e in events if e.kind == "session_end")
    assert start.data["detail"] == {"client": "claude"}
    assert (end.agent_id, end.server, end.data["reason"]) == ("ci-bot", "fs", "client closed")


async def test_a_thousand_concurrent_decisions_share_a_few_commits(audit_url: str) -> None:
    with anyio.fail_after(60):
        async with open_store(audit_url, instance="fw-a") as store:
            commits = await _count_commits(store)
            await asyncio.gather(
                *(
                    store.record_decision(make_call(arguments={"i": i}), make_decision())
                    for i in range(1000)
                )
            )
            report = await store.verify()
    assert 1 <= commits[0] <= 10
    assert report.ok and report.events in (1000, 1001)


async def test_a_failed_commit_fails_every_waiting_caller_then_recovers(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_decision(make_call(), make_decision())
            async with store.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_gone"))
            results = await asyncio.gather(
                *(store.record_decision(make_call(), make_decision()) for _ in range(20)),
                return_exceptions=True,
            )
            async with store.engine.begin() as conn:
                await conn.execute(text("ALTER TABLE audit_events_gone RENAME TO audit_events"))
            await store.record_decision(make_call(), make_decision())
            report = await store.verify()
    assert len(results) == 20
    assert all(isinstance(r, AuditWriteError) for r in results)
    assert report.ok and report.events == 2


async def test_two_instances_writing_one_database_each_keep_a_verifiable_chain(
    audit_url: str,
) -> None:
    with anyio.fail_after(60):
        async with (
            open_store(audit_url, instance="fw-1") as one,
            open_store(audit_url, instance="fw-2") as two,
        ):
            await asyncio.gather(
                *(
                    store.record_decision(make_call(arguments={"i": i}), make_decision())
                    for i in range(100)
                    for store in (one, two)
                )
            )
            report = await one.verify()
    assert report.ok
    assert {(c.instance, c.events, c.last_seq) for c in report.chains} == {
        ("fw-1", 100, 100),
        ("fw-2", 100, 100),
    }


async def test_two_writers_sharing_an_instance_id_never_fork_the_chain(audit_url: str) -> None:
    with anyio.fail_after(60):
        async with (
            open_store(audit_url, instance="same") as one,
            open_store(audit_url, instance="same") as two,
        ):
            for round_ in range(5):
                await asyncio.gather(
                    *(
                        store.record_decision(
                            make_call(arguments={"r": round_, "i": i}), make_decision()
                        )
                        for i in range(10)
                        for store in (one, two)
                    )
                )
            report = await one.verify()
    assert report.ok
    (chain,) = report.chains
    assert (chain.events, chain.last_seq) == (100, 100)


async def _populate(store: Any, n: int = 5, **decision: Any) -> list[Decision]:
    decisions = []
    for i in range(n):
        made = make_decision(**decision)
        await store.record_decision(make_call(arguments={"i": i}), made)
        decisions.append(made)
    return decisions


async def test_verify_names_an_event_edited_in_the_database(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            decisions = await _populate(store)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE audit_events SET effect = 'allow', rule = 'x' WHERE id = :id"),
                    {"id": decisions[2].id},
                )
            report = await store.verify()
    assert not report.ok
    (chain,) = report.breaks
    assert chain.broken is not None
    assert (chain.broken.kind, chain.broken.event_id, chain.events) == (
        "edited",
        decisions[2].id,
        2,
    )


async def test_verify_reports_deleted_events_in_the_middle_and_at_the_tail(
    audit_url: str,
) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            decisions = await _populate(store)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text("DELETE FROM audit_events WHERE id = :id"), {"id": decisions[1].id}
                )
            middle = await store.verify()
            async with store.engine.begin() as conn:
                await conn.execute(text("DELETE FROM audit_events WHERE seq >= 2"))
            tail = await store.verify()
    assert middle.breaks[0].broken is not None
    assert (middle.breaks[0].broken.kind, middle.breaks[0].broken.seq) == ("deleted", 2)
    assert tail.breaks[0].broken is not None
    assert (tail.breaks[0].broken.kind, tail.breaks[0].broken.seq) == ("deleted", 2)


async def test_verify_reports_events_swapped_in_the_database_as_reordered(
    audit_url: str,
) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            decisions = await _populate(store)
            async with store.engine.begin() as conn:
                for seq, new in ((2, -1), (4, 2), (-1, 4)):
                    await conn.execute(
                        text("UPDATE audit_events SET seq = :new WHERE seq = :seq"),
                        {"new": new, "seq": seq},
                    )
            report = await store.verify()
    broken = report.breaks[0].broken
    assert broken is not None
    assert (broken.kind, broken.event_id) == ("reordered", decisions[3].id)


async def test_verify_reports_an_event_appended_behind_the_firewalls_back_as_inserted(
    audit_url: str,
) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await _populate(store, 2)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text(
                        "INSERT INTO audit_events (id, instance, seq, kind, time, session_id, "
                        "agent_id, server, tool, data, prev_hash, hash) SELECT 'forged', "
                        "instance, 3, kind, time, session_id, agent_id, server, tool, data, "
                        "hash, prev_hash FROM audit_events WHERE seq = 2"
                    )
                )
            report = await store.verify()
    broken = report.breaks[0].broken
    assert broken is not None
    assert (broken.kind, broken.event_id) == ("inserted", "forged")


async def test_prune_keeps_what_remains_verifiable_and_writing_continues(
    audit_url: str,
) -> None:
    cutoff = utcnow() - timedelta(days=1)
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            old = await _populate(store, 4, time=utcnow() - timedelta(days=10))
            await _populate(store, 3)
            dry = await store.prune(cutoff, dry_run=True)
            after_dry = await store.list_events(limit=100)
            done = await store.prune(cutoff)
            await _populate(store, 2)
            report = await store.verify()
            remaining = await store.list_events(limit=100)
    assert dry.pruned == 4 and dry.dry_run and len(after_dry) == 7
    assert done.pruned == 4
    assert (done.chains[0].checkpoint_seq, done.chains[0].instance) == (4, "fw-a")
    assert report.ok
    assert (report.chains[0].checkpoint_seq, report.chains[0].events) == (4, 5)
    assert len(remaining) == 5
    assert not {d.id for d in old} & {e.id for e in remaining}


async def test_prune_refuses_a_log_that_does_not_verify_unless_forced(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            decisions = await _populate(store, 3)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text("UPDATE audit_events SET tool = 'x' WHERE id = :id"),
                    {"id": decisions[0].id},
                )
            with pytest.raises(AuditError, match="does not verify"):
                await store.prune(utcnow() + timedelta(seconds=1))
            intact = len(await store.list_events(limit=100))
            forced = await store.prune(utcnow() + timedelta(seconds=1), force=True)
    assert intact == 3
    assert forced.pruned == 3


async def test_prune_of_an_intact_log_needs_no_force(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await _populate(store, 3)
            result = await store.prune(utcnow() + timedelta(seconds=1))
            again = await store.prune(utcnow() + timedelta(seconds=1))
            await _populate(store, 1)
            report = await store.verify()
    assert result.pruned == 3 and again.pruned == 0
    assert report.ok and report.chains[0].first_seq == 4


async def test_list_filters_page_and_sort_newest_first(audit_url: str) -> None:
    other = Agent(id="human-1", roles=("admin",))
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_decision(make_call(tool="read_file"), make_decision())
            await store.record_decision(
                make_call(tool="delete_file", agent=other, session_id="s2"),
                make_decision(Effect.DENY, "no-delete"),
            )
            await store.record_decision(
                make_call(tool="write_file", server="git"),
                make_decision(Effect.ASK, "confirm", shadow_effect=Effect.DENY),
            )
            await store.record_decision(make_call(tool="fetch"), make_decision(enforced=False))
            newest = await store.list_events(limit=2)
            second_page = await store.list_events(limit=2, offset=2)
            by_glob = await store.list_events(EventFilter(agent="ci-*"))
            denies = await store.list_events(EventFilter(effect="deny"))
            by_rule = await store.list_events(EventFilter(rule="confirm"))
            by_server = await store.list_events(EventFilter(server="git"))
            by_session = await store.list_events(EventFilter(session="s2"))
            shadow = await store.list_events(EventFilter(shadow=True))
            future = await store.list_events(EventFilter(since=utcnow() + timedelta(hours=1)))
            past = await store.list_events(EventFilter(until=utcnow() - timedelta(hours=1)))
    assert [e.tool for e in newest] == ["fetch", "write_file"]
    assert [e.tool for e in second_page] == ["delete_file", "read_file"]
    assert {e.tool for e in by_glob} == {"read_file", "write_file", "fetch"}
    assert [e.tool for e in denies] == ["delete_file"]
    assert [e.tool for e in by_rule] == ["write_file"]
    assert [e.tool for e in by_server] == ["write_file"]
    assert [e.agent_id for e in by_session] == ["human-1"]
    assert {e.tool for e in shadow} == {"write_file", "fetch"}
    assert future == [] and past == []


async def test_stats_count_decisions_by_agent_tool_and_rule(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            for _ in range(3):
                await store.record_decision(
                    make_call(tool="delete_file"), make_decision(Effect.DENY, "no-delete")
                )
            await store.record_decision(make_call(), make_decision())
            decision = make_decision(Effect.ASK, "confirm", shadow_effect=Effect.DENY)
            await store.record_decision(make_call(tool="write_file"), decision)
            await store.record_outcome(decision.id, Outcome.DECLINED)
            stats = await store.stats()
    assert (stats.decisions, stats.allows, stats.denies, stats.asks, stats.shadow_denies) == (
        5,
        1,
        3,
        1,
        1,
    )
    assert stats.outcomes == {"declined": 1}
    assert stats.by_rule[0].key == "no-delete" and stats.by_rule[0].denies == 3
    assert stats.by_tool[0].key == "fs/delete_file" and stats.by_tool[0].calls == 3
    assert [(r.key, r.calls) for r in stats.by_agent] == [("ci-bot", 5)]


async def test_a_database_from_a_newer_mcpfw_is_refused_not_misread(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with (
            open_store(audit_url, instance="fw-a") as store,
            store.engine.begin() as conn,
        ):
            await conn.execute(
                text(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES (999, 'future', '2030-01-01T00:00:00.000000Z')"
                )
            )
        with pytest.raises(AuditError, match="newer"):
            async with open_store(audit_url, instance="fw-a"):
                pass


async def test_an_older_database_is_migrated_when_opened(
    audit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mcpfw.audit import migrations

    applied: list[int] = []
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await _populate(store, 1)
        step = migrations.Migration(
            version=migrations.latest_version() + 1,
            description="test step",
            apply=lambda conn: applied.append(1),
        )
        monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, step])
        async with open_store(audit_url, instance="fw-a") as store:
            async with store.engine.connect() as conn:
                version = (
                    await conn.execute(text("SELECT max(version) FROM schema_version"))
                ).scalar()
            report = await store.verify()
        async with open_store(audit_url, instance="fw-a"):
            pass  # already at the newest version: the step is not applied twice
    assert applied == [1]
    assert version == step.version
    assert report.ok and report.events == 1


async def test_redaction_pointers_from_the_config_mask_values(audit_url: str) -> None:
    config = RedactionConfig(pointers=("/headers/X-Internal", "/items/*/note"))
    call = make_call(
        arguments={"headers": {"X-Internal": "abc"}, "items": [{"note": "n1"}, {"note": "n2"}]}
    )
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a", redaction=config) as store:
            decision = make_decision()
            await store.record_decision(call, decision)
            event_ = await store.get_event(decision.id)
    assert event_ is not None
    assert event_.data["arguments"] == {
        "headers": {"X-Internal": "[REDACTED:pointer]"},
        "items": [{"note": "[REDACTED:pointer]"}, {"note": "[REDACTED:pointer]"}],
    }
    assert [m["path"] for m in event_.data["redacted"]] == [
        "/arguments/headers/X-Internal",
        "/arguments/items/0/note",
        "/arguments/items/1/note",
    ]


async def test_writing_to_a_closed_store_is_a_write_error(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            pass
        with pytest.raises(AuditWriteError):
            await store.record_decision(make_call(), make_decision())


async def test_text_that_is_not_valid_utf8_is_stored_not_refused(audit_url: str) -> None:
    call = make_call(tool="t\ud800", arguments={"path": "/a\udcff", "k\ud800": 1})
    decision = make_decision()
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await store.record_decision(call, decision)
            event_ = await store.get_event(decision.id)
            report = await store.verify()
    assert event_ is not None and report.ok
    assert event_.tool.startswith("t") and "\ufffd" in event_.tool
    assert event_.data["arguments"]["path"].startswith("/a\ufffd")


@pytest.mark.parametrize(
    ("value", "index"),
    [
        ("x'00ff'", 1),  # a value of the wrong type (a blob), not a crash
        ("CAST(x'c328' AS TEXT)", 2),  # bytes that are not UTF-8
    ],
)
async def test_a_value_written_by_hand_that_no_writer_makes_is_reported_as_an_edit(
    tmp_path: Any, value: str, index: int
) -> None:
    path = str(tmp_path / "audit.db")
    with anyio.fail_after(30):
        async with open_store(path, instance="fw-a") as store:
            decisions = await _populate(store, 3)
            async with store.engine.begin() as conn:
                await conn.execute(
                    text(f"UPDATE audit_events SET tool = {value} WHERE id = :id"),
                    {"id": decisions[index].id},
                )
            report = await store.verify()
    broken = report.breaks[0].broken
    assert broken is not None
    assert (broken.kind, broken.event_id) == ("edited", decisions[index].id)


async def test_odd_values_in_one_call_do_not_fail_the_rest_of_its_batch(audit_url: str) -> None:
    odd = ToolCall(
        agent=Agent(id="ci-bot"),
        tool="read_file",
        session_id=12345,  # type: ignore[arg-type]
        arguments={"raw": b"\x00\xff", "set": {1, 2}, "nested": [float("nan")]},
    )
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            results = await asyncio.gather(
                store.record_decision(odd, make_decision()),
                *(store.record_decision(make_call(), make_decision()) for _ in range(10)),
                return_exceptions=True,
            )
            events = await store.list_events(EventFilter(session="12345"))
            report = await store.verify()
    assert results == [None] * 11
    assert len(events) == 1 and events[0].data["arguments"]["raw"] == "b'\\x00\\xff'"
    assert report.ok and report.events == 11


async def test_replay_reads_every_call_in_order_across_pages_with_its_outcome(
    audit_url: str,
) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            decisions = await _populate(store, 10)
            for decision in decisions[::2]:
                await store.record_outcome(decision.id, Outcome.FORWARDED, latency_ms=1.0)
            calls = [c async for c in store.iter_calls(batch=3)]
            events = [e async for e in store.iter_events(batch=4)]
            only_agent = [c async for c in store.iter_calls(EventFilter(agent="nobody"))]
    assert [c.decision.id for c in calls] == [d.id for d in decisions]
    assert [c.call.arguments["i"] for c in calls] == list(range(10))
    assert [c.outcome is not None for c in calls] == [i % 2 == 0 for i in range(10)]
    assert len(events) == 15 and len({e.id for e in events}) == 15
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert only_agent == []


async def test_a_deleted_chain_head_stops_writes_with_a_clear_error(audit_url: str) -> None:
    with anyio.fail_after(30):
        async with open_store(audit_url, instance="fw-a") as store:
            await _populate(store, 2)
            async with store.engine.begin() as conn:
                await conn.execute(text("DELETE FROM audit_chains"))
        async with open_store(audit_url, instance="fw-a") as store:  # a restarted firewall
            with pytest.raises(AuditWriteError, match="head record is gone"):
                await store.record_decision(make_call(), make_decision())
            report = await store.verify()
    assert not report.ok and report.events == 2
