"""The pin tables, declared on the audit schema's `metadata` and created by audit migration 2.

Times are fixed-width UTC ISO 8601 text, like the audit log's, so they sort and compare the
same on SQLite and PostgreSQL. Definitions and findings are canonical JSON text.
"""

from __future__ import annotations

from sqlalchemy import Column, Integer, String, Table, Text

from mcpfw.audit.schema import metadata

__all__ = ["pin_events", "tool_pins"]

tool_pins = Table(
    "tool_pins",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("tool", String(255), primary_key=True),
    Column("digest", String(64), nullable=False, default=""),  # approved; "" = none yet
    Column("definition", Text, nullable=True),  # approved canonical definition (JSON)
    Column("approved_by", String(255), nullable=False, default=""),
    Column("approved_at", String(40), nullable=True),
    Column("first_seen", String(40), nullable=True),
    Column("seen_digest", String(64), nullable=True),  # latest seen from the upstream
    Column("seen_definition", Text, nullable=True),
    Column("seen_at", String(40), nullable=True),
    Column("findings", Text, nullable=False, default="[]"),  # scanner findings on latest (JSON)
)

pin_events = Table(
    "tool_pin_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", String(40), nullable=False),
    Column("server", String(255), nullable=False, index=True),
    Column("tool", String(255), nullable=False),
    Column("kind", String(32), nullable=False),  # pinned|unapproved|drift|duplicate|approved|reset
    Column("digest", String(64), nullable=False, default=""),
    Column("previous_digest", String(64), nullable=False, default=""),
    Column("actor", String(255), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)
