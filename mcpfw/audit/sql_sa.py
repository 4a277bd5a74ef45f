"""`Database` (sql.py) over a SQLAlchemy async engine: PostgreSQL, SQLite, in-memory SQLite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.audit.sql import DuplicateKey, Params, SqlError, Transaction
from mcpfw.audit.writer import why

__all__ = ["SaDatabase"]


class _SaTransaction:
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def rows(self, sql: str, params: Params = None) -> list[dict[str, Any]]:
        result = await self._conn.execute(text(sql), dict(params or {}))
        return [dict(row) for row in result.mappings().all()]

    async def execute(self, sql: str, params: Params = None) -> int:
        result = await self._conn.execute(text(sql), dict(params or {}))
        return int(result.rowcount or 0)


class SaDatabase:
    """Transactions on an engine's pooled connections."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def transaction(self, *, write: bool = False) -> AbstractAsyncContextManager[Transaction]:
        return self._transaction(write)

    @asynccontextmanager
    async def _transaction(self, write: bool) -> AsyncIterator[Transaction]:
        try:
            async with self.engine.connect() as conn:
                if write:  # SQLite: take the write lock up front (see engine.py)
                    conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    yield _SaTransaction(conn)
        except IntegrityError as exc:
            raise DuplicateKey(why(exc)) from exc
        except SQLAlchemyError as exc:
            raise SqlError(why(exc)) from exc
