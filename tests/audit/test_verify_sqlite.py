"""The SQLite fast verify path (SQLite builds the canonical text) agrees with the pure
verifier on every log, untouched or tampered with, whatever text the events hold."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfw.audit import open_store
from mcpfw.audit.chain import verify_rows
from mcpfw.audit.schema import HASHED_COLUMNS
from mcpfw.audit.verify import _LATEST_CHECKPOINTS, _make_starts, _verify_sqlite_file
from mcpfw.model import Agent, Decision, Effect, ToolCall

COLUMNS = ", ".join((*HASHED_COLUMNS, "prev_hash", "hash"))


async def _write(path: str, texts: list[str]) -> None:
    async with open_store(path, instance="fw") as store:
        for text in texts:
            call = ToolCall(agent=Agent(id=text or "a"), tool=text, arguments={"t": text})
            await store.record_decision(call, Decision(effect=Effect.ALLOW, rule=text or "r"))


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database with the schema and nothing else, copied by every example (fast)."""
    path = tmp_path_factory.mktemp("template") / "audit.db"

    async def create() -> None:
        async with open_store(str(path), instance="none"):
            pass

    asyncio.run(create())
    return path


def _pure(path: str) -> object:
    with sqlite3.connect(path) as conn:
        heads = conn.execute("SELECT instance, seq, hash FROM audit_chains").fetchall()
        starts = _make_starts(heads, conn.execute(_LATEST_CHECKPOINTS).fetchall())
        rows = conn.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY instance, seq")
        return verify_rows(rows.fetchall(), starts)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    texts=st.lists(st.text(max_size=12), min_size=2, max_size=8),
    mutation=st.sampled_from(["none", "edit", "delete", "swap", "retype"]),
    data=st.data(),
)
def test_the_fast_path_reports_exactly_what_the_pure_verifier_reports(
    tmp_path_factory: pytest.TempPathFactory,
    empty_db: Path,
    texts: list[str],
    mutation: str,
    data: st.DataObject,
) -> None:
    path = str(tmp_path_factory.mktemp("fast") / "audit.db")
    shutil.copy(empty_db, path)
    asyncio.run(_write(path, texts))
    seq = data.draw(st.integers(1, len(texts)))
    with sqlite3.connect(path) as conn:
        if mutation == "edit":
            conn.execute("UPDATE audit_events SET tool = tool || 'x' WHERE seq = ?", (seq,))
        elif mutation == "delete":
            conn.execute("DELETE FROM audit_events WHERE seq = ?", (seq,))
        elif mutation == "swap" and seq < len(texts):
            for old, new in ((seq, -1), (seq + 1, seq), (-1, seq + 1)):
                conn.execute("UPDATE audit_events SET seq = ? WHERE seq = ?", (new, old))
        elif mutation == "retype":
            conn.execute("UPDATE audit_events SET enforced = 1.5 WHERE seq = ?", (seq,))
    fast = _verify_sqlite_file(path, 3)  # batches of 3: chains cross batch boundaries
    assert fast == _pure(path)
    assert fast.ok == (mutation == "none" or (mutation == "swap" and seq == len(texts)))
