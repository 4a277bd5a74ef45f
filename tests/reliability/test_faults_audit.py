"""Fault injection on the audit log: every failure to commit denies the call (fail closed),
says why, and the firewall keeps serving once the database is back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcpfw.proxy.guard import GuardSettings

from .support import (
    audited_calls,
    call,
    echo_roundtrip,
    outcomes_settled,
    result_text,
    sqlite_relay,
)

pytestmark = pytest.mark.anyio


def cap_database_size(store: Any, *, grow_by_pages: int) -> None:
    """Limit the audit file to its current size plus `grow_by_pages` (PRAGMA max_page_count on
    the store's SQLite write connection): a full disk without needing a tiny filesystem."""
    writer = store._sqlite
    assert writer is not None, "the SQLite store writes through its one-hop writer"
    conn = writer.connection or writer._connect()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + grow_by_pages}")


def _denied_for_audit(message: dict[str, Any]) -> str:
    assert message["result"]["isError"] is True
    text = result_text(message)
    assert "rule 'audit'" in text and "the audit log is unavailable" in text
    return text


async def test_a_store_whose_commit_raises_denies_the_call_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await echo_roundtrip(h, 1, "before")
        await outcomes_settled(store, 1)

        async def broken(rows: Any) -> None:
            raise OSError("I/O error writing the audit database")

        with monkeypatch.context() as patched:
            patched.setattr(store, "_commit", broken)
            await h.send(call(2, "echo", {"text": "during"}))
            _denied_for_audit(await h.client_gets())
        await echo_roundtrip(h, 3, "after")
        await outcomes_settled(store, 2)
        report = await store.verify()
    assert report.ok
    # the failed decision could not be written; the ones before and after are there, complete
    assert await audited_calls(store) == [
        ("echo", "allow", "reads", "forwarded"),
        ("echo", "allow", "reads", "forwarded"),
    ]


async def test_a_full_disk_denies_the_call_and_writes_resume_when_space_returns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await echo_roundtrip(h, 1, "before")
        await outcomes_settled(store, 1)
        cap_database_size(store, grow_by_pages=0)  # SQLite's own SQLITE_FULL from here on
        big = "x" * 20_000  # several pages of arguments: the insert needs room
        await h.send(call(2, "echo", {"text": big}))
        text = _denied_for_audit(await h.client_gets())
        assert "decision" in text
        assert "database or disk is full" in caplog.text
        cap_database_size(store, grow_by_pages=1_000_000)  # space is back
        await echo_roundtrip(h, 3, "after")
        await outcomes_settled(store, 2)
        assert (await store.verify()).ok
    assert [c[3] for c in await audited_calls(store)] == ["forwarded", "forwarded"]


async def test_a_database_locked_by_another_process_denies_within_the_audit_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = GuardSettings(server="fs", audit_timeout_s=0.5)
    async with sqlite_relay(tmp_path, settings=settings) as (h, store):
        await echo_roundtrip(h, 1, "before")
        await outcomes_settled(store, 1)
        other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None, timeout=1)
        try:
            other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
            with anyio.fail_after(5):  # well under SQLite's 10 s busy timeout
                await h.send(call(2, "echo", {"text": "while locked"}))
                _denied_for_audit(await h.client_gets())
            assert "not committed within 0.5 s" in caplog.text
        finally:
            other.execute("ROLLBACK")
            other.close()
        await echo_roundtrip(h, 3, "after")
        await outcomes_settled(store, 2)
        assert (await store.verify()).ok
    calls = await audited_calls(store)
    # the timed-out decision may still land once the lock is gone; the call was never forwarded
    assert calls[0] == calls[-1] == ("echo", "allow", "reads", "forwarded")
    assert all(c[3] == "forwarded" for c in calls if c[3] is not None)
    assert len(calls) in (2, 3)


async def test_an_audit_database_that_cannot_be_opened_denies_every_call_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mcpfw.model import Agent
    from mcpfw.proxy.reload import RuleHolder
    from mcpfw.proxy.runner import RunOptions, run_stdio

    from .memory_front import memory_front, raw_upstream_argv

    (tmp_path / "rules.yaml").write_text("default: allow\nrules: []\n")
    corrupt = tmp_path / "audit.db"
    corrupt.write_bytes(b"this is not an SQLite database" * 100)
    holder = RuleHolder([tmp_path / "rules.yaml"])
    holder.load()
    options = RunOptions(
        agent=Agent(id="agent-1"),
        rules=holder,
        settings=GuardSettings(server="raw"),
        audit_url=str(corrupt),
        command=tuple(raw_upstream_argv()),
    )
    async with memory_front() as front:
        with anyio.fail_after(15):
            async with anyio.create_task_group() as tg:
                status: list[int] = []

                async def serve() -> None:
                    status.append(await run_stdio(options, front=front.context()))

                tg.start_soon(serve)
                init = await front.request(
                    "initialize", {"protocolVersion": "2025-06-18", "capabilities": {}}
                )
                assert init["result"]["serverInfo"]["name"] == "raw-upstream"
                for rid in (10, 11):  # denied, and the firewall keeps answering
                    answer = await front.request(
                        "tools/call", {"name": "echo", "arguments": {"text": "x"}}, rid=rid
                    )
                    _denied_for_audit(answer)
                pong = await front.request("ping", {})
                assert pong["result"] == {}
                await front.close()
    assert status == [0]
    assert "the audit log cannot be opened" in caplog.text and "not a database" in caplog.text


async def test_a_database_that_turned_read_only_denies_the_call_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with sqlite_relay(tmp_path) as (h, store):
        await echo_roundtrip(h, 1, "before")
        await outcomes_settled(store, 1)
        writer = store._sqlite
        assert writer is not None
        writable = writer.connection or writer._connect()
        # what a remount read-only (or lost permissions) looks like to SQLite
        path = (tmp_path / "audit.db").resolve()
        writer.connection = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        try:
            await h.send(call(2, "echo", {"text": "while read-only"}))
            _denied_for_audit(await h.client_gets())
            assert "readonly database" in caplog.text
        finally:
            if writer.connection is not None:
                writer.connection.close()
            writer.connection = None  # reopened read-write on the next batch
            writable.close()
        await echo_roundtrip(h, 3, "after")
        await outcomes_settled(store, 2)
        assert (await store.verify()).ok
    assert [c[3] for c in await audited_calls(store)] == ["forwarded", "forwarded"]
