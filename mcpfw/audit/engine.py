"""Creating the SQLAlchemy async engine for an audit URL (SQLite or PostgreSQL).

SQLite: WAL journal, `synchronous=NORMAL` by default. In WAL mode a commit is written to the
WAL file before `COMMIT` returns, so it survives a crash or kill of the firewall process; only
an OS crash or power loss can lose the last transactions (never corrupt the file). That is the
durability the write-ahead decision log needs at ~10x the throughput of FULL, which fsyncs
every commit. `?synchronous=full` on the URL selects FULL for power-loss durability.
Transactions are opened explicitly (`BEGIN IMMEDIATE` for writers) so the writer takes the
lock up front and readers get a consistent snapshot.

PostgreSQL: `?schema=NAME` on the URL puts the tables in that schema (created if missing).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from mcpfw.audit.errors import AuditError
from mcpfw.audit.urls import EngineInfo, normalize_audit_url, sqlite_file_info, sync_level

__all__ = ["EngineInfo", "make_engine", "safe_url"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def safe_url(url: str | URL) -> str:
    """The URL with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def make_engine(raw: str, *, create: bool) -> tuple[AsyncEngine, EngineInfo]:
    """An engine for `raw` (path or URL). With create=False a missing SQLite file is an error."""
    try:
        url = make_url(normalize_audit_url(raw))
    except ArgumentError as exc:
        raise AuditError(f"invalid audit URL {raw!r}: {exc}") from exc
    query = dict(url.query)
    schema = query.pop("schema", None)
    sync = query.pop("synchronous", None)
    url = url.set(query=query)
    if url.get_backend_name() == "postgresql":
        if isinstance(schema, tuple) or (schema is not None and not _NAME.match(schema)):
            raise AuditError(f"invalid schema name {schema!r} in the audit URL")
        connect_args: dict[str, Any] = {"server_settings": {"application_name": "mcpfw"}}
        if schema:
            connect_args["server_settings"]["search_path"] = schema
        engine = create_async_engine(url, connect_args=connect_args, pool_pre_ping=False)
        return engine, EngineInfo(
            url=safe_url(url), is_postgres=True, sqlite_file=None, schema=schema
        )
    database = url.database or ""
    memory = database in ("", ":memory:")
    level = sync_level(sync)
    if not memory:
        sqlite_file_info(database, level, create=create)
    if memory:
        engine = create_async_engine(url, poolclass=StaticPool)
    else:
        engine = create_async_engine(url, pool_size=4, max_overflow=4)
    _sqlite_events(engine, wal=not memory, synchronous=level)
    return engine, EngineInfo(
        url=safe_url(url), is_postgres=False, sqlite_file=database, synchronous=level
    )


def _sqlite_events(engine: AsyncEngine, *, wal: bool, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=10000")
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")
