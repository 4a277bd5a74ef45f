"""Checking (and creating) a SQLite audit file's schema with plain `sqlite3`.

`mcpfw run` writes its log without SQLAlchemy when it can: a file whose schema is current is
used as it is, and a new, empty file gets the current schema from `sqlite_ddl.py` (the exact
SQL the migrations produce, generated from them and checked by a test). Any other file (an
older schema to migrate, a database holding other tables) is left to the migrations.
"""

from __future__ import annotations

import sqlite3

from mcpfw.audit.errors import AuditError
from mcpfw.audit.events import time_text
from mcpfw.audit.sqlite_ddl import STATEMENTS, VERSIONS
from mcpfw.audit.urls import EngineInfo
from mcpfw.model import utcnow

__all__ = ["SCHEMA_VERSION", "prepare_sqlite", "schema_version"]

SCHEMA_VERSION = VERSIONS[-1][0]  # the version this code writes (= migrations.latest_version())
BUSY_TIMEOUT_S = 10.0


def schema_version(conn: sqlite3.Connection) -> int | None:
    """The file's schema version; None without a `schema_version` table (0 when it is empty)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if found is None:
        return None
    value = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    return int(value) if value is not None else 0


def prepare_sqlite(info: EngineInfo) -> bool:
    """True when the file at `info.sqlite_file` now has the current schema (created here if it
    was new and empty); False when the migrations must handle it. Raises `AuditError` for a file
    from a newer mcpfw, or one that cannot be opened or is not a database."""
    path = info.sqlite_file or ""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit database {path}: {exc}") from exc
    try:
        version = _check(conn, path)
        if version is not None:
            return version == SCHEMA_VERSION
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            return False  # tables of something else: the migrations add ours beside them
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = _check(conn, path)  # another process may have created it meanwhile
            if version is None:
                for statement in STATEMENTS:
                    conn.execute(statement)
                now = time_text(utcnow())
                conn.executemany(
                    "INSERT INTO schema_version (version, description, applied_at) "
                    "VALUES (?, ?, ?)",
                    [(version, description, now) for version, description in VERSIONS],
                )
                version = SCHEMA_VERSION
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return version == SCHEMA_VERSION
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit database {path}: {exc}") from exc
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, path: str) -> int | None:
    version = schema_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise AuditError(
            f"the audit database has schema version {version}, newer than this mcpfw "
            f"understands ({SCHEMA_VERSION}); upgrade mcpfw or use another database"
        )
    return version
