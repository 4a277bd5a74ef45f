"""The async audit store: group-committed, hash-chained writes on SQLite or PostgreSQL.

Writers call `record_*`; each call builds its (redacted) row, joins the pending batch and
waits. One flush task per store takes everything pending, chains it (seq, prev_hash, hash) in
arrival order, inserts it and moves the chain head in ONE transaction, then wakes every waiter:
concurrent callers share commits, and a failed commit fails every caller of that batch with
`AuditWriteError` (nothing is dropped silently). The chain head is updated with a
compare-and-swap on its seq, so two processes that share a chain id never fork it, and on
PostgreSQL each instance locks only its own head row: no global lock between instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.audit.chain import GENESIS, event_hash
from mcpfw.audit.engine import EngineInfo, make_engine
from mcpfw.audit.errors import AuditError, AuditWriteError
from mcpfw.audit.events import (
    decision_row,
    outcome_row,
    session_end_row,
    session_start_row,
    time_text,
)
from mcpfw.audit.migrations import current_version, latest_version, migrate_sync
from mcpfw.audit.queries import AuditReader
from mcpfw.audit.redaction import RedactionConfig, Redactor
from mcpfw.audit.schema import HASHED_COLUMNS, audit_chains, audit_events
from mcpfw.audit.sqlite_writer import ChainConflict, HeadMissing, SqliteWriter
from mcpfw.audit.urls import default_audit_url
from mcpfw.model import Agent, Decision, Outcome, ToolCall, utcnow

__all__ = ["AuditStore", "default_instance", "open_store"]

MAX_BATCH = 2000  # events per transaction
_CONTEXT_CACHE = 10_000  # decisions remembered to fill their outcome's session/agent/tool
_RETRIES = 5


def default_instance() -> str:
    """This process's chain id: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


class _ChainConflict(Exception):
    """Another writer moved this chain's head: reload it and chain the batch again."""


class AuditStore(AuditReader):
    """Writes (and, through `AuditReader`, reads) one audit database."""

    def __init__(
        self, engine: AsyncEngine, info: EngineInfo, *, instance: str, redactor: Redactor
    ) -> None:
        super().__init__(engine, info)
        self.instance = instance
        self.redactor = redactor
        self.commits = 0  # transactions committed by this store's writer
        # (row, its writer's future, whether it starts a commit rather than lingering)
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None], bool]] = []
        self._eager = 0  # pending rows whose writer waits for the commit (all but lingering)
        self._due = False  # a lingering row's time is up: flush whatever is pending
        self._timer: asyncio.TimerHandle | None = None
        self._linger_s = 0.0
        self._flusher: asyncio.Task[None] | None = None
        self._head: tuple[int, str] | None = None  # (seq, hash) as last committed by us
        self._decisions: OrderedDict[str, tuple[str, str, str, str]] = OrderedDict()
        self._sessions: dict[str, tuple[str, str]] = {}
        self._closed = False
        self._wconn: AsyncConnection | None = None
        self._sqlite: SqliteWriter | None = None
        if info.sqlite_file:  # a file: the one-hop writer (in-memory shares the SA connection)
            self._sqlite = SqliteWriter(info.sqlite_file, synchronous=info.synchronous)

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
            raise AuditError(
                f"cannot open the audit database {self.info.url}: {_why(exc)}"
            ) from exc

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

    # -- writing ------------------------------------------------------------------------------

    async def record_session_start(
        self,
        *,
        session_id: str,
        agent: Agent,
        server: str,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """A session opened: who, through which transport, to which upstream."""
        row = session_start_row(
            self.redactor,
            session_id=session_id,
            agent=agent,
            server=server,
            detail=detail,
            when=utcnow(),
        )
        self._sessions[session_id] = (agent.id, server)
        await self._write(row)

    async def record_decision(self, call: ToolCall, decision: Decision) -> None:
        """Write-ahead: returns once the decision event is committed (group-committed)."""
        row = decision_row(self.redactor, call, decision)
        self._decisions[decision.id] = (call.session_id, call.agent.id, call.server, call.tool)
        if len(self._decisions) > _CONTEXT_CACHE:
            self._decisions.popitem(last=False)
        await self._write(row)

    async def record_outcome(
        self,
        decision_id: str,
        outcome: Outcome,
        *,
        latency_ms: float | None = None,
        is_error: bool | None = None,
        result: Any = None,
        detail: str = "",
        linger_s: float = 0.0,
    ) -> None:
        """What happened to a decided call; stores a digest of the result, never the result.

        With `linger_s`, the event may wait that long for another write to share its commit
        (the next call's decision, say) instead of starting a commit of its own, which the next
        decision would then queue behind. It is committed when this returns, either way.
        """
        row = outcome_row(
            self.redactor,
            decision_id=decision_id,
            outcome=outcome,
            latency_ms=latency_ms,
            is_error=is_error,
            result=result,
            detail=detail,
            context=self._decisions.pop(decision_id, None),
            when=utcnow(),
        )
        await self._write(row, linger_s=linger_s)

    async def record_session_end(self, session_id: str, *, reason: str = "") -> None:
        """A session closed."""
        row = session_end_row(
            self.redactor,
            session_id=session_id,
            reason=reason,
            context=self._sessions.pop(session_id, None),
            when=utcnow(),
        )
        await self._write(row)

    async def aclose(self) -> None:
        """Wait for pending writes, then close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        self._kick()  # lingering rows are written now
        flusher = self._flusher
        if flusher is not None and not flusher.done():
            await asyncio.wait({flusher})
        await self._drop_writer()
        if self._sqlite is not None:
            await self._sqlite.aclose()
        await self.engine.dispose()

    async def _write(self, row: dict[str, Any], *, linger_s: float = 0.0) -> None:
        # The first writer commits at once; writers arriving while a commit is in flight queue
        # up and share the next one. A lingering row starts no commit: it rides along with the
        # next one, or its timer starts one.
        if self._closed:
            raise AuditWriteError("the audit store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        row["instance"] = self.instance
        eager = linger_s <= 0 or len(self._pending) >= MAX_BATCH
        self._pending.append((row, future, eager))
        if eager:
            self._eager += 1
            self._start_flusher(loop)
        else:
            self._linger_s = linger_s
            if self._timer is None:
                self._timer = loop.call_later(linger_s, self._kick)
        await future

    def _kick(self) -> None:
        """Flush whatever is pending now, lingering rows included."""
        self._timer = None
        if self._pending:
            self._due = True
            self._start_flusher(asyncio.get_running_loop())

    def _start_flusher(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            await self._flush_batches()
        finally:
            if self._pending and self._timer is None and not self._closed:
                # only lingering rows are left: their timer writes them
                self._timer = asyncio.get_running_loop().call_later(self._linger_s, self._kick)

    async def _flush_batches(self) -> None:
        while self._pending and (self._eager > 0 or self._due or self._closed):
            self._due = False
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            self._eager -= sum(1 for _, _, eager in batch if eager)
            error: BaseException | None = None
            try:
                await self._commit([row for row, _, _ in batch])
            except BaseException as exc:  # every waiter of the batch must hear of it
                error = exc
                self._head = None
            for _, future, _ in batch:
                if future.done():
                    continue  # the caller was cancelled
                if error is None:
                    future.set_result(None)
                elif isinstance(error, AuditWriteError):
                    future.set_exception(error)
                else:
                    wrapped = AuditWriteError(f"audit commit failed: {_why(error)}")
                    wrapped.__cause__ = error
                    future.set_exception(wrapped)
            if error is not None and not isinstance(error, Exception):
                for _, future, _ in self._pending:
                    if not future.done():
                        future.set_exception(AuditWriteError("the audit writer was stopped"))
                self._pending.clear()
                self._eager = 0
                raise error

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

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        for _ in range(_RETRIES):
            try:
                if self._sqlite is not None:
                    head = await self._sqlite.commit(
                        self.instance, self._head, rows, time_text(utcnow())
                    )
                else:
                    conn = await self._writer()
                    async with conn.begin():
                        head = await self._chain(conn, rows)
                self._head = head
                self.commits += 1
                return
            except (_ChainConflict, ChainConflict, IntegrityError, sqlite3.IntegrityError):
                self._head = None  # someone else advanced this chain: reload and retry
            except BaseException:
                await self._drop_writer()
                raise
        raise AuditWriteError(
            f"audit chain {self.instance!r} kept changing under this writer: another process "
            "is writing with the same instance id"
        )

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
            raise _ChainConflict()
        return seq, prev


def _why(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return (
        str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else type(exc).__name__
    )


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
