"""The pin tables. They live in the audit database and are created by an audit migration."""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

__all__ = ["pin_events", "tool_pins"]

metadata = MetaData()

tool_pins = Table(
    "tool_pins",
    metadata,
    Column("server", String(255), primary_key=True),
    Column("tool", String(255), primary_key=True),
    Column("digest", String(64), nullable=False, default=""),  # approved; "" = none yet
    Column("definition", Text, nullable=True),  # approved canonical definition (JSON)
    Column("approved_by", String(255), nullable=False, default=""),
    Column("approved_at", DateTime(timezone=True), nullable=True),
    Column("first_seen", DateTime(timezone=True), nullable=True),
    Column("seen_digest", String(64), nullable=True),  # latest seen from the upstream
    Column("seen_definition", Text, nullable=True),
    Column("seen_at", DateTime(timezone=True), nullable=True),
    Column("findings", Text, nullable=False, default="[]"),  # scanner findings on latest (JSON)
)

pin_events = Table(
    "tool_pin_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("server", String(255), nullable=False, index=True),
    Column("tool", String(255), nullable=False),
    Column("kind", String(32), nullable=False),  # pinned|unapproved|drift|duplicate|approved|reset
    Column("digest", String(64), nullable=False, default=""),
    Column("previous_digest", String(64), nullable=False, default=""),
    Column("actor", String(255), nullable=False, default=""),
    Column("detail", Text, nullable=False, default=""),
)
