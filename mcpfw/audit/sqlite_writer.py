"""The SQLite write path: one whole transaction per thread hop.

Through aiosqlite every statement is a round trip to its worker thread (BEGIN, INSERT, UPDATE,
COMMIT: four hops per commit). This writer owns one stdlib `sqlite3` connection on one thread
and runs the whole group commit — read the chain head if unknown, chain the batch, insert it,
move the head, commit — in a single call, which is most of the cost of a small commit.
Readers and migrations keep using the SQLAlchemy engine.

Checkpoints (copying the WAL back into the database file, with an fsync) are taken off the
commit path: SQLite's automatic checkpoint would run inside whichever commit crosses 1 000 WAL
pages and hold that decision (and the call waiting for it) for several milliseconds. The writer
turns it off on its connection and asks a second thread, with its own connection, for a PASSIVE
checkpoint (never blocks writers or readers) every `CHECKPOINT_COMMITS` commits or
`CHECKPOINT_ROWS` rows. Durability is unchanged: a commit is in the WAL when it returns.

A small commit (with `synchronous=NORMAL`, no fsync: ~0.1 ms) is first tried right on the
event loop without waiting for the lock (`busy_timeout` 0): handing it to the thread and back
costs more than the commit itself on a busy machine. If another writer holds the lock, or the
batch is large, or every commit fsyncs (`synchronous=FULL`), the thread does it as before and
waits for the lock up to the busy timeout. Either way there is one commit at a time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mcpfw.audit.chain import GENESIS, HASHED_COLUMNS, event_hash

__all__ = ["CHECKPOINT_COMMITS", "CHECKPOINT_ROWS", "ChainConflict", "HeadMissing", "SqliteWriter"]

log = logging.getLogger("mcpfw.audit")

# A small commit writes a handful of WAL pages: checkpoint well before SQLite's own 1 000 pages.
CHECKPOINT_COMMITS = 64
CHECKPOINT_ROWS = 2000
INLINE_ROWS = 32  # larger batches (hashing, inserting) are committed on the thread
_NO_FSYNC = ("OFF", "NORMAL")


class _Busy(Exception):
    """Another connection holds the write lock: commit on the thread, which waits for it."""


def _busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


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
        self.checkpoints = 0  # checkpoints taken by the checkpoint thread
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcpfw-audit")
        self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcpfw-ckpt")
        self._ckpt_conn: sqlite3.Connection | None = None
        self._checkpointing = False  # set by the writer thread, cleared by the checkpointer
        self._since = (0, 0)  # commits and rows since the last checkpoint was asked for
        self._waits = True  # the connection's busy timeout is on (off for inline attempts)
        self.inline_commits = 0  # commits done on the event loop (the rest on the thread)
        self.lock_waits = 0  # inline attempts that found the lock taken and went to the thread

    async def commit(
        self, instance: str, head: tuple[int, str] | None, rows: list[dict[str, Any]], now: str
    ) -> tuple[int, str]:
        """Chain `rows` after `head` (None: read it) and commit; return the new head."""
        if (
            self.connection is not None
            and len(rows) <= INLINE_ROWS
            and self.synchronous.upper() in _NO_FSYNC
        ):
            try:
                result = self._commit(instance, head, rows, now, wait=False)
            except _Busy:
                self.lock_waits += 1
            else:
                self.inline_commits += 1
                return result
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._commit, instance, head, rows, now)

    async def aclose(self) -> None:
        """Close the connection and stop the thread."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)
        await loop.run_in_executor(self._checkpointer, self._close_checkpointer)
        self._checkpointer.shutdown(wait=True)

    def _close(self) -> None:
        if self.connection is not None:
            conn, self.connection = self.connection, None
            self._waits = True  # a new connection starts with the busy timeout on
            conn.close()

    def _close_checkpointer(self) -> None:
        if self._ckpt_conn is not None:
            conn, self._ckpt_conn = self._ckpt_conn, None
            conn.close()

    def _count(self, rows: int) -> None:
        """After a commit (writer thread): ask for a checkpoint when the WAL has grown."""
        commits, written = self._since[0] + 1, self._since[1] + rows
        if (commits < CHECKPOINT_COMMITS and written < CHECKPOINT_ROWS) or self._checkpointing:
            self._since = (commits, written)
            return
        self._since = (0, 0)
        self._checkpointing = True
        try:
            self._checkpointer.submit(self._checkpoint)
        except RuntimeError:  # shutting down: closing the last connection checkpoints anyway
            self._checkpointing = False

    def _checkpoint(self) -> None:
        try:
            if self._ckpt_conn is None:
                self._ckpt_conn = sqlite3.connect(
                    self.path, isolation_level=None, timeout=0, check_same_thread=False
                )
            self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error as exc:  # the WAL grows until the next try; nothing is lost
            log.warning("audit: WAL checkpoint failed: %s", exc)
            self._close_checkpointer()
        finally:
            self._checkpointing = False

    def _connect(self) -> sqlite3.Connection:
        if self.connection is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=self.busy_timeout_s,
                check_same_thread=False,
            )
            wal = conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            if wal is not None and str(wal[0]).lower() == "wal":
                conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
            self.connection = conn
        return self.connection

    def _commit(
        self,
        instance: str,
        head: tuple[int, str] | None,
        rows: list[dict[str, Any]],
        now: str,
        *,
        wait: bool = True,
    ) -> tuple[int, str]:
        try:
            conn = self._connect()
            if wait != self._waits:
                timeout_ms = int(self.busy_timeout_s * 1000) if wait else 0
                conn.execute(f"PRAGMA busy_timeout={timeout_ms}")
                self._waits = wait
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            if not wait and _busy(exc):
                raise _Busy() from exc
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
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._close()
            if not wait and isinstance(exc, sqlite3.Error) and _busy(exc):
                raise _Busy() from exc  # nothing was committed: the thread tries again, waiting
            raise
        self._count(len(rows))
        return seq, prev
