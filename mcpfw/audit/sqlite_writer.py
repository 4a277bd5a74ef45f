"""The SQLite write path: one whole transaction per thread hop.

Through aiosqlite every statement is a round trip to its worker thread (BEGIN, INSERT, UPDATE,
COMMIT: four hops per commit). This writer owns one stdlib `sqlite3` connection on one thread
and runs the whole group commit — read the chain head if unknown, chain the batch, insert it,
move the head, commit — in a single call, which is most of the cost of a small commit.
Readers and migrations keep using the SQLAlchemy engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mcpfw.audit.chain import GENESIS, event_hash
from mcpfw.audit.schema import HASHED_COLUMNS

__all__ = ["ChainConflict", "HeadMissing", "SqliteWriter"]

_COLUMNS = (*HASHED_COLUMNS, "prev_hash", "hash")
_INSERT = (
    f"INSERT INTO audit_events ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


class HeadMissing(Exception):
    """The chain has events but no head record: someone deleted it. Writing on would hide
    whatever else was deleted with it, so the writer stops (every call is denied)."""

    def __init__(self, instance: str) -> None:
        super().__init__(
            f"audit chain {instance!r} has events but its head record is gone (tampering?); "
            "writes stop until an operator checks `mcpfw audit verify`"
        )


class ChainConflict(Exception):
    """Another writer moved this chain's head: reload it and chain the batch again."""


class SqliteWriter:
    """A dedicated connection and thread for one store's commits."""

    def __init__(self, path: str, *, synchronous: str, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self.connection: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcpfw-audit")

    async def commit(
        self, instance: str, head: tuple[int, str] | None, rows: list[dict[str, Any]], now: str
    ) -> tuple[int, str]:
        """Chain `rows` after `head` (None: read it) and commit; return the new head."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._commit, instance, head, rows, now)

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self.connection is not None:
            conn, self.connection = self.connection, None
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        if self.connection is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self.busy_timeout_s,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self.connection = conn
        return self.connection

    def _commit(
        self, instance: str, head: tuple[int, str] | None, rows: list[dict[str, Any]], now: str
    ) -> tuple[int, str]:
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            self._close()  # a broken connection is reopened on the next batch
            raise
        try:
            known = True
            if head is None:
                found = conn.execute(
                    "SELECT seq, hash FROM audit_chains WHERE instance = ?", (instance,)
                ).fetchone()
                known = found is not None
                if (
                    not known
                    and conn.execute(
                        "SELECT 1 FROM audit_events WHERE instance = ? LIMIT 1", (instance,)
                    ).fetchone()
                ):
                    raise HeadMissing(instance)
                head = (int(found[0]), str(found[1])) if found else (0, GENESIS)
            seq, prev = head
            chained = []
            for row in rows:
                seq += 1
                values = [row[c] if c != "seq" else seq for c in HASHED_COLUMNS]
                digest = event_hash(prev, values)
                values.append(prev)
                values.append(digest)
                chained.append(values)
                prev = digest
            conn.executemany(_INSERT, chained)
            if known:
                cur = conn.execute(
                    "UPDATE audit_chains SET seq = ?, hash = ?, updated = ? "
                    "WHERE instance = ? AND seq = ?",
                    (seq, prev, now, instance, head[0]),
                )
                if cur.rowcount != 1:
                    raise ChainConflict()
            else:
                conn.execute(
                    "INSERT INTO audit_chains (instance, seq, hash, updated) VALUES (?, ?, ?, ?)",
                    (instance, seq, prev, now),
                )
            conn.execute("COMMIT")
            return seq, prev
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._close()
            raise
