"""Ordered schema migrations, tracked in the `schema_version` table.

`MIGRATIONS` is append-only and lives here, in one place, so every process agrees on the
schema whatever it imported. A later feature adds a step with the next version number and never
edits a released step. Each step is a synchronous function run inside the migration
transaction; it imports its feature's tables lazily (inside the function, keeping the audit
layer free of upward imports) and creates them explicitly:

    def _v2_tool_pins(conn: Connection) -> None:
        from mcpfw.pins.tables import pin_events, tool_pins

        metadata.create_all(conn, tables=[tool_pins, pin_events], checkfirst=True)

    MIGRATIONS.append(Migration(version=2, description="tool pins", apply=_v2_tool_pins))


def _v3_session_recordings(conn: Connection) -> None:
    from mcpfw.recording.store import (  # owned by mcpfw/recording (issue 6)
        recording_messages,
        recording_sessions,
    )

    metadata.create_all(conn, tables=[recording_sessions, recording_messages], checkfirst=True)


MIGRATIONS.append(
    Migration(version=3, description="session recordings", apply=_v3_session_recordings)
)

Changing a table that an earlier step created needs an ALTER in the new step. Opening a
database written by a newer mcpfw (a version above `latest_version()`) is refused rather than
misread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, func, insert, inspect, select, text

from mcpfw.audit.errors import AuditError
from mcpfw.audit.schema import (
    audit_chains,
    audit_checkpoints,
    audit_events,
    metadata,
    schema_version,
)

__all__ = ["MIGRATIONS", "Migration", "current_version", "latest_version", "migrate_sync"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Migration:
    """One step of the schema history."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_audit_log(conn: Connection) -> None:
    metadata.create_all(
        conn, tables=[audit_events, audit_chains, audit_checkpoints], checkfirst=True
    )


MIGRATIONS: list[Migration] = [
    Migration(version=1, description="audit events, chain heads, checkpoints", apply=_v1_audit_log),
]


def _v2_tool_pins(conn: Connection) -> None:
    from mcpfw.pins.tables import pin_events, tool_pins  # owned by mcpfw/pins (issue 7)

    metadata.create_all(conn, tables=[tool_pins, pin_events], checkfirst=True)


MIGRATIONS.append(Migration(version=2, description="tool pins", apply=_v2_tool_pins))


def _v3_session_recordings(conn: Connection) -> None:
    from mcpfw.recording.store import (  # owned by mcpfw/recording (issue 6)
        recording_messages,
        recording_sessions,
    )

    metadata.create_all(conn, tables=[recording_sessions, recording_messages], checkfirst=True)


MIGRATIONS.append(
    Migration(version=3, description="session recordings", apply=_v3_session_recordings)
)


def latest_version() -> int:
    """The schema version this code writes (the last migration step)."""
    return MIGRATIONS[-1].version


# Stable key for pg_advisory_xact_lock: serialises concurrent migrations (startup only).
PG_MIGRATION_LOCK = 0x6D637066


def current_version(conn: Connection) -> int | None:
    """The database's schema version, or None when it has no `schema_version` table."""
    if not inspect(conn).has_table(schema_version.name):
        return None
    value = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return int(value) if value is not None else 0


def migrate_sync(conn: Connection, *, applied_at: str, is_postgres: bool) -> int:
    """Bring the schema up to date inside the caller's transaction; return the version."""
    if is_postgres:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_MIGRATION_LOCK})
    schema_version.create(conn, checkfirst=True)
    current = current_version(conn) or 0
    steps = sorted(MIGRATIONS, key=lambda m: m.version)
    newest = steps[-1].version
    if current > newest:
        raise AuditError(
            f"the audit database has schema version {current}, newer than this mcpfw "
            f"understands ({newest}); upgrade mcpfw or use another database"
        )
    for step in steps:
        if step.version > current:
            step.apply(conn)
            conn.execute(
                insert(schema_version).values(
                    version=step.version, description=step.description, applied_at=applied_at
                )
            )
    return newest


def render_sqlite_ddl() -> str:
    """The text of `sqlite_ddl.py`: the SQL that `migrate_sync` runs on a new SQLite file, as
    SQLite itself recorded it, so `mcpfw run` can create a new log without SQLAlchemy.

    Regenerate after adding a migration: `python -m mcpfw.audit.migrations > \\
    mcpfw/audit/sqlite_ddl.py` (a test fails until you do).
    """
    from sqlalchemy import create_engine

    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        migrate_sync(conn, applied_at="", is_postgres=False)
        # tables in creation order, each followed by its indexes by name (create_all's index
        # order varies from run to run)
        master = list(
            conn.exec_driver_sql(
                "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                "ORDER BY rowid"
            )
        )
        statements = []
        for kind, name, _, sql in master:
            if kind == "table":
                statements.append(str(sql))
                indexes = [(n, q) for k, n, t, q in master if k == "index" and t == name]
                statements.extend(str(q) for _, q in sorted(indexes))
        versions = list(
            conn.execute(select(schema_version.c.version, schema_version.c.description))
        )
    engine.dispose()
    lines = [
        "# ruff: noqa: E501",
        '"""Generated by `python -m mcpfw.audit.migrations`: do not edit it by hand.',
        "",
        "The schema `migrate_sync` creates on a new SQLite file, statement by statement as SQLite",
        "recorded it, and the `schema_version` rows it writes.",
        '"""',
        "",
        "STATEMENTS: tuple[str, ...] = (",
        *(f"    {json.dumps(sql)}," for sql in statements),
        ")",
        "",
        "VERSIONS: tuple[tuple[int, str], ...] = (",
        *(f"    ({int(version)}, {json.dumps(description)})," for version, description in versions),
        ")",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_sqlite_ddl(), end="")
