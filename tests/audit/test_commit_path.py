"""The commit path a sequential caller sees: lingering outcomes and checkpoints off the path."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from mcpfw.audit import EventFilter, open_store
from mcpfw.audit.sqlite_writer import CHECKPOINT_COMMITS
from mcpfw.model import Outcome
from tests.audit.conftest import make_call, make_decision

pytestmark = pytest.mark.anyio


def _count_sqlite_commits(store: Any) -> list[int]:
    counter = [0]
    store._sqlite.connection.set_trace_callback(
        lambda sql: counter.__setitem__(0, counter[0] + (sql.strip().upper() == "COMMIT"))
    )
    return counter


async def test_a_lingering_outcome_shares_the_next_decisions_commit(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with open_store(str(tmp_path / "a.db"), instance="fw-a") as store:
            first = make_decision()
            await store.record_decision(make_call(), first)  # opens the writer connection
            commits = _count_sqlite_commits(store)
            outcome = asyncio.ensure_future(
                store.record_outcome(first.id, Outcome.FORWARDED, latency_ms=1.0, linger_s=10)
            )
            await anyio.lowlevel.checkpoint()  # the outcome joins the batch; no commit starts
            assert commits[0] == 0 and not outcome.done()
            second = make_decision()
            await store.record_decision(make_call(), second)
            await outcome
            events = [e async for e in store.iter_events(EventFilter(kinds=("outcome",)))]
    assert commits[0] == 1
    assert [e.decision_id for e in events] == [first.id]


async def test_a_lingering_outcome_alone_is_committed_when_its_time_is_up(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with open_store(str(tmp_path / "a.db"), instance="fw-a") as store:
            decision = make_decision()
            await store.record_decision(make_call(), decision)
            await store.record_outcome(decision.id, Outcome.DENIED, linger_s=0.01)
            found = await store.get_outcome(decision.id)
            report = await store.verify()
    assert found is not None and found.outcome == "denied"
    assert report.ok and report.events == 2


async def test_closing_the_store_writes_a_lingering_outcome_at_once(tmp_path: Path) -> None:
    url = str(tmp_path / "a.db")
    decision = make_decision()
    with anyio.fail_after(20):
        async with open_store(url, instance="fw-a") as store:
            await store.record_decision(make_call(), decision)
            outcome = asyncio.ensure_future(
                store.record_outcome(decision.id, Outcome.FORWARDED, linger_s=3600)
            )
            await anyio.lowlevel.checkpoint()
        await outcome  # closing wrote it; nobody waited an hour
        async with open_store(url, instance="fw-b", create=False) as reader:
            found = await reader.get_outcome(decision.id)
    assert found is not None and found.outcome == "forwarded"


async def test_the_sqlite_writer_leaves_checkpoints_to_its_own_thread(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with anyio.fail_after(30):
        async with open_store(str(path), instance="fw-a") as store:
            for i in range(CHECKPOINT_COMMITS + 1):
                await store.record_decision(make_call(arguments={"i": i}), make_decision())
            writer = store._sqlite
            assert writer is not None and writer.connection is not None
            autocheckpoint = writer.connection.execute("PRAGMA wal_autocheckpoint").fetchone()
            # the checkpoint thread runs its jobs in order: this one ends after the checkpoint
            await asyncio.get_running_loop().run_in_executor(writer._checkpointer, lambda: None)
            checkpoints = writer.checkpoints
            report = await store.verify()
    assert autocheckpoint == (0,)
    assert checkpoints >= 1
    assert report.ok and report.events == CHECKPOINT_COMMITS + 1
    with sqlite3.connect(path) as conn:  # the file holds every event after the writer closed
        count = conn.execute("SELECT count(*) FROM audit_events").fetchone()
    assert count == (CHECKPOINT_COMMITS + 1,)


async def test_a_small_commit_is_done_on_the_event_loop_when_the_lock_is_free(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(20):
        async with open_store(str(tmp_path / "a.db"), instance="fw-a") as store:
            await store.record_decision(make_call(), make_decision())  # opens the connection
            writer = store._sqlite
            assert writer is not None
            before = writer.inline_commits
            await store.record_decision(make_call(), make_decision())
            inline = writer.inline_commits - before
            report = await store.verify()
    assert inline == 1
    assert report.ok and report.events == 2


async def test_a_commit_that_finds_the_lock_taken_waits_for_it_on_the_thread(
    tmp_path: Path,
) -> None:
    path = tmp_path / "a.db"
    with anyio.fail_after(20):
        async with open_store(str(path), instance="fw-a") as store:
            await store.record_decision(make_call(), make_decision())
            writer = store._sqlite
            assert writer is not None
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # another process's writer holds the lock
            decision = make_decision()
            task = asyncio.ensure_future(store.record_decision(make_call(), decision))
            while writer.lock_waits == 0:  # the inline attempt gave up; the thread now waits
                await anyio.lowlevel.checkpoint()
            assert not task.done()
            other.execute("ROLLBACK")
            other.close()
            await task
            found = await store.get_event(decision.id)
    assert found is not None and found.kind == "decision"
