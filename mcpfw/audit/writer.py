"""Writing the audit log: group-committed, hash-chained events (the `AuditStore` base).

Writers call `record_*`; each call builds its (redacted) row, joins the pending batch and
waits. One flush task per store takes everything pending, chains it (seq, prev_hash, hash) in
arrival order, inserts it and moves the chain head in ONE transaction, then wakes every waiter:
concurrent callers share commits, and a failed commit fails every caller of that batch with
`AuditWriteError` (nothing is dropped silently). The chain head is updated with a
compare-and-swap on its seq, so two processes that share a chain id never fork it.

`AuditWriter` itself commits to a SQLite file through `SqliteWriter` (plain `sqlite3`) and never
imports SQLAlchemy; `AuditStore` (store.py) adds PostgreSQL, in-memory SQLite, migrations and
the query API. `open_writer` gives `mcpfw run` the lighter one whenever it can: a SQLite file
whose schema is current, or new and empty (created here from `sqlite_schema.py`). Anything else
(PostgreSQL, an older schema to migrate, a URL option it does not know) opens the full store.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio.to_thread

from mcpfw.audit.errors import AuditError, AuditWriteError
from mcpfw.audit.events import (
    decision_row,
    outcome_row,
    session_end_row,
    session_start_row,
    time_text,
)
from mcpfw.audit.redaction import RedactionConfig, Redactor
from mcpfw.audit.sql import Database, SqliteDatabase
from mcpfw.audit.sqlite_schema import prepare_sqlite
from mcpfw.audit.sqlite_writer import ChainConflict, SqliteWriter
from mcpfw.audit.urls import EngineInfo, default_audit_url, sqlite_file, sqlite_file_info
from mcpfw.model import Agent, Decision, Outcome, ToolCall, utcnow

__all__ = ["AuditWriter", "default_instance", "open_writer", "why"]

MAX_BATCH = 2000  # events per transaction
_CONTEXT_CACHE = 10_000  # decisions remembered to fill their outcome's session/agent/tool
_RETRIES = 5


def default_instance() -> str:
    """This process's chain id: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def why(exc: BaseException) -> str:
    """The first line of a database error (the driver's own message when wrapped)."""
    orig = getattr(exc, "orig", None)
    return (
        str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else type(exc).__name__
    )


class AuditWriter:
    """Writes one audit database's events (SQLite file: no SQLAlchemy). See the module doc."""

    # Errors meaning another writer moved this chain's head: reload it and chain again.
    _conflicts: tuple[type[BaseException], ...] = (ChainConflict, sqlite3.IntegrityError)

    def __init__(self, info: EngineInfo, *, instance: str, redactor: Redactor) -> None:
        self.info = info
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
        self._sqlite: SqliteWriter | None = None
        self._database: SqliteDatabase | None = None
        if info.sqlite_file:  # a file: the one-hop writer (in-memory shares the SA connection)
            self._sqlite = SqliteWriter(info.sqlite_file, synchronous=info.synchronous)

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
        await self._close_backend()

    async def _close_backend(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.aclose()
        if self._database is not None:
            await self._database.aclose()

    def database(self) -> Database:
        """The same database for the tables that live beside the log (tool pins), open as long
        as this writer is."""
        if self._database is None:
            if not self.info.sqlite_file:  # pragma: no cover - AuditStore serves the others
                raise AuditError(f"no database for {self.info.url}")
            self._database = SqliteDatabase(self.info.sqlite_file)
        return self._database

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
                    wrapped = AuditWriteError(f"audit commit failed: {why(error)}")
                    wrapped.__cause__ = error
                    future.set_exception(wrapped)
            if error is not None and not isinstance(error, Exception):
                for _, future, _ in self._pending:
                    if not future.done():
                        future.set_exception(AuditWriteError("the audit writer was stopped"))
                self._pending.clear()
                self._eager = 0
                raise error

    async def _commit(self, rows: list[dict[str, Any]]) -> None:
        for _ in range(_RETRIES):
            try:
                self._head = await self._commit_once(rows)
                self.commits += 1
                return
            except self._conflicts:
                self._head = None  # someone else advanced this chain: reload and retry
            except BaseException:
                await self._commit_failed()
                raise
        raise AuditWriteError(
            f"audit chain {self.instance!r} kept changing under this writer: another process "
            "is writing with the same instance id"
        )

    async def _commit_once(self, rows: list[dict[str, Any]]) -> tuple[int, str]:
        """Chain `rows` after the head and commit them in one transaction; the new head."""
        if self._sqlite is None:  # pragma: no cover - AuditStore handles the other databases
            raise AuditWriteError("this audit writer has no database")
        return await self._sqlite.commit(self.instance, self._head, rows, time_text(utcnow()))

    async def _commit_failed(self) -> None:
        """A commit failed for a reason other than a chain conflict (reset connections)."""


def open_writer(
    url: str | None = None,
    *,
    instance: str | None = None,
    redaction: RedactionConfig | None = None,
) -> AbstractAsyncContextManager[AuditWriter]:
    """Open the audit log at `url` for writing (created or migrated as `open_store` does).

    On a SQLite file it yields an `AuditWriter` that never imports SQLAlchemy; otherwise (or
    when the schema needs migrating) a full `AuditStore`, which is an `AuditWriter` too.
    """
    return _open_writer(url, instance=instance, redaction=redaction)


@asynccontextmanager
async def _open_writer(
    url: str | None, *, instance: str | None, redaction: RedactionConfig | None
) -> AsyncIterator[AuditWriter]:
    raw = url if url else default_audit_url()
    info = await _light_sqlite(raw)
    if info is None:
        from mcpfw.audit.store import open_store  # imports SQLAlchemy

        async with open_store(raw, instance=instance, redaction=redaction) as store:
            yield store
        return
    writer = AuditWriter(
        info, instance=instance or default_instance(), redactor=Redactor(redaction)
    )
    try:
        yield writer
    finally:
        await writer.aclose()


async def _light_sqlite(raw: str) -> EngineInfo | None:
    """The SQLite file behind `raw`, when `AuditWriter` alone can write it: its schema is
    current, or it was empty and now has the current schema. None: open the full store."""
    found = sqlite_file(raw)
    if found is None or not set(found[1]) <= {"synchronous"}:
        return None  # PostgreSQL, in-memory, or a URL option only SQLAlchemy knows
    database, query = found
    info = sqlite_file_info(database, query.get("synchronous", [None])[-1], create=True)
    return info if await anyio.to_thread.run_sync(prepare_sqlite, info) else None
