"""A small async SQL interface to the audit database, for the tables that live beside the log.

Features that keep tables in the audit database (tool pins) write plain SQL with `:name`
parameters, which both implementations accept unchanged:

- `SqliteDatabase`: a SQLite file through plain `sqlite3` on a worker thread, so `mcpfw run`
  never imports SQLAlchemy;
- `SaDatabase` (sql_sa.py): any SQLAlchemy async engine (PostgreSQL, SQLite, in-memory).

    async with database.transaction(write=True) as tx:
        rows = await tx.rows("SELECT tool FROM tool_pins WHERE server = :s", {"s": "fs"})
        await tx.execute("DELETE FROM tool_pins WHERE server = :s", {"s": "fs"})

A write transaction takes the write lock up front (SQLite `BEGIN IMMEDIATE`), so concurrent
writers wait for it (busy timeout) instead of failing to upgrade a read lock. Every database
error comes out as `SqlError` (`DuplicateKey` for a unique-key violation).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread

__all__ = ["Database", "DuplicateKey", "SqlError", "SqliteDatabase", "Transaction"]

Params = Mapping[str, Any] | None


class SqlError(Exception):
    """The database refused or failed a statement (the message is the driver's)."""


class DuplicateKey(SqlError):
    """An insert collided with an existing key (another writer got there first)."""


class Transaction(Protocol):
    """Statements inside one transaction."""

    async def rows(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        """Run a query; its rows as dicts keyed by column name."""
        ...

    async def execute(self, sql: str, params: Params = None) -> int:
        """Run a statement; the number of rows it changed."""
        ...


@runtime_checkable
class Database(Protocol):
    """Where transactions come from."""

    def transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Transaction]:
        """A transaction, committed when the block ends normally, else rolled back."""
        ...


class _SqliteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def rows(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        return await anyio.to_thread.run_sync(self._rows, sql, params)

    async def execute(self, sql: str, params: Params = None) -> int:
        return await anyio.to_thread.run_sync(self._execute, sql, params)

    def _rows(self, sql: str, params: Params) -> list[dict[str, Any]]:
        with _errors():
            cursor = self._conn.execute(sql, params or {})
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _execute(self, sql: str, params: Params) -> int:
        with _errors():
            return self._conn.execute(sql, params or {}).rowcount


class _errors:
    """sqlite3 errors as `SqlError`."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> None:
        if isinstance(exc, sqlite3.IntegrityError):
            raise DuplicateKey(str(exc)) from exc
        if isinstance(exc, sqlite3.Error):
            raise SqlError(str(exc)) from exc


class SqliteDatabase:
    """One SQLite file through one `sqlite3` connection, used by one transaction at a time."""

    def __init__(self, path: str, *, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = anyio.Lock()

    def transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction(write)

    @asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[Transaction]:
        async with self._lock:
            conn = await anyio.to_thread.run_sync(self._begin, write)
            try:
                yield _SqliteTransaction(conn)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._end, "ROLLBACK")
                raise
            await anyio.to_thread.run_sync(self._end, "COMMIT")

    def _begin(self, write: bool) -> sqlite3.Connection:
        with _errors():
            if self._conn is None:
                self._conn = sqlite3.connect(
                    self.path,
                    isolation_level=None,
                    timeout=self.busy_timeout_s,
                    check_same_thread=False,
                )
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            return self._conn

    def _end(self, statement: str) -> None:
        if self._conn is None:  # pragma: no cover - begun transactions have a connection
            return
        try:
            with _errors():
                self._conn.execute(statement)
        except SqlError:
            self._close()  # a connection in an unknown state is not reused
            if statement == "COMMIT":
                raise

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Close the connection (a later transaction opens a new one)."""
        async with self._lock:
            await anyio.to_thread.run_sync(self._close)
