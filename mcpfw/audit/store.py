"""The async audit store: the writer (writer.py) on any database, plus migrations and queries.

On PostgreSQL each instance locks only its own chain head row while committing: no global lock
between instances. SQLite files are written through `SqliteWriter` as in `AuditWriter`;
in-memory SQLite shares the engine's one connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.audit.chain import GENESIS, HASHED_COLUMNS, event_hash
from mcpfw.audit.engine import EngineInfo, make_engine
from mcpfw.audit.errors import AuditError, AuditWriteError
from mcpfw.audit.events import time_text
from mcpfw.audit.migrations import current_version, latest_version, migrate_sync
from mcpfw.audit.queries import AuditReader
from mcpfw.audit.redaction import RedactionConfig, Redactor
from mcpfw.audit.schema import audit_chains, audit_events
from mcpfw.audit.sql import Database
from mcpfw.audit.sqlite_writer import ChainConflict, HeadMissing
from mcpfw.audit.urls import default_audit_url
from mcpfw.audit.writer import AuditWriter, default_instance, why
from mcpfw.model import utcnow

__all__ = ["AuditStore", "default_instance", "open_store"]


class AuditStore(AuditWriter, AuditReader):
    """Writes (`AuditWriter`) and reads (`AuditReader`) one audit database, of any kind."""

    _conflicts = (*AuditWriter._conflicts, IntegrityError)

    def __init__(
        self, engine: AsyncEngine, info: EngineInfo, *, instance: str, redactor: Redactor
    ) -> None:
        AuditWriter.__init__(self, info, instance=instance, redactor=redactor)
        AuditReader.__init__(self, engine, info)
        self._wconn: AsyncConnection | None = None

    @classmethod
    async def open(
        cls,
        url: str | None = None,
        *,
        instance: str | None = None,
        redaction: RedactionConfig | None = None,
        create: bool = True,
    ) -> AuditStore:
        """Open (and create or migrate) a store. Prefer `open_store` (closes it for you)."""
        raw = url if url else default_audit_url()
        redactor = Redactor(redaction)
        engine, info = make_engine(raw, create=create)
        store = cls(engine, info, instance=instance or default_instance(), redactor=redactor)
        try:
            await store._prepare(create=create)
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def _prepare(self, *, create: bool) -> None:
        try:
            if await self._up_to_date(create=create):
                return  # the common case: one read, no write transaction
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
                async with conn.begin():
                    if self.info.is_postgres and self.info.schema:
                        await conn.exec_driver_sql(
                            f'CREATE SCHEMA IF NOT EXISTS "{self.info.schema}"'
                        )
                    await conn.run_sync(
                        lambda c: migrate_sync(
                            c, applied_at=time_text(utcnow()), is_postgres=self.info.is_postgres
                        )
                    )
        except AuditError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            raise AuditError(f"cannot open the audit database {self.info.url}: {why(exc)}") from exc

    async def _up_to_date(self, *, create: bool) -> bool:
        async with self.engine.connect() as conn:
            version = await conn.run_sync(current_version)
        if version is None:
            if create:
                return False
            raise AuditError(
                f"{self.info.url} is not an mcpfw audit database (no schema_version table)"
            )
        if version > latest_version():
            raise AuditError(
                f"the audit database has schema version {version}, newer than this mcpfw "
                f"understands ({latest_version()}); upgrade mcpfw or use another database"
            )
        return version == latest_version()

    @property
    def schema_version(self) -> int:
        """The schema version this store wrote or migrated to."""
        return latest_version()

    # -- writing on PostgreSQL and in-memory SQLite -----------------------------------------

    def database(self) -> Database:
        from mcpfw.audit.sql_sa import SaDatabase

        return SaDatabase(self.engine)

    async def _close_backend(self) -> None:
        await self._drop_writer()
        await super()._close_backend()
        await self.engine.dispose()

    async def _writer(self) -> AsyncConnection:
        # One connection held for the writer's lifetime: no pool checkout/reset per commit.
        if self._wconn is None or self._wconn.closed or self._wconn.invalidated:
            conn = await self.engine.connect()
            self._wconn = await conn.execution_options(sqlite_begin="IMMEDIATE")
        return self._wconn

    async def _drop_writer(self) -> None:
        conn, self._wconn = self._wconn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):  # broken: the pool drops it
                await conn.close()

    async def _commit_once(self, rows: list[dict[str, Any]]) -> tuple[int, str]:
        if self._sqlite is not None:
            return await super()._commit_once(rows)
        conn = await self._writer()
        async with conn.begin():
            return await self._chain(conn, rows)

    async def _commit_failed(self) -> None:
        await self._drop_writer()

    async def _chain(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> tuple[int, str]:
        # Lock this chain's head row first (PostgreSQL: FOR UPDATE, one row per instance, no
        # global lock), so writers sharing a chain id queue up instead of deadlocking on seq.
        now = time_text(utcnow())
        locate = (
            select(audit_chains.c.seq, audit_chains.c.hash)
            .where(audit_chains.c.instance == self.instance)
            .with_for_update()
        )
        found = (await conn.execute(locate)).first()
        if found is None:
            exists = select(audit_events.c.seq).where(audit_events.c.instance == self.instance)
            if (await conn.execute(exists.limit(1))).first() is not None:
                raise HeadMissing(self.instance)
            # imported here: `mcpfw run` on SQLite never loads the PostgreSQL dialect
            if self.info.is_postgres:
                from sqlalchemy.dialects.postgresql import insert as dialect
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect  # type: ignore[assignment]
            await conn.execute(
                dialect(audit_chains)
                .values(instance=self.instance, seq=0, hash=GENESIS, updated=now)
                .on_conflict_do_nothing(index_elements=["instance"])
            )
            found = (await conn.execute(locate)).first()
        if found is None:  # pragma: no cover - the row was just created
            raise AuditWriteError(f"cannot create the head of audit chain {self.instance!r}")
        head = (int(found.seq), str(found.hash))
        seq, prev = head
        chained = []
        for row in rows:
            seq += 1
            values = dict(row, seq=seq, prev_hash=prev)
            prev = values["hash"] = event_hash(prev, [values[c] for c in HASHED_COLUMNS])
            chained.append(values)
        await conn.execute(insert(audit_events), chained)
        result = await conn.execute(
            update(audit_chains)
            .where(audit_chains.c.instance == self.instance, audit_chains.c.seq == head[0])
            .values(seq=seq, hash=prev, updated=now)
        )
        if result.rowcount != 1:
            raise ChainConflict()
        return seq, prev


def open_store(
    url: str | None = None,
    *,
    instance: str | None = None,
    redaction: RedactionConfig | None = None,
    create: bool = True,
) -> AbstractAsyncContextManager[AuditStore]:
    """Open the audit store at `url` (default `default_audit_url()`), creating or migrating
    its schema; `instance` is this writer's chain id (default `host:pid`). With create=False a
    missing database is an `AuditError` instead of being created (for readers such as the CLI).
    """
    return _open_store(url, instance=instance, redaction=redaction, create=create)


@asynccontextmanager
async def _open_store(
    url: str | None,
    *,
    instance: str | None,
    redaction: RedactionConfig | None,
    create: bool,
) -> AsyncIterator[AuditStore]:
    store = await AuditStore.open(url, instance=instance, redaction=redaction, create=create)
    try:
        yield store
    finally:
        await store.aclose()
