"""The audit database schema (current shape). Created and upgraded by `migrations.py`.

Every table of the audit database — including those later features add (tool pins, session
recordings) — is declared on this one `metadata`, so one database holds one consistent schema.

`audit_events` is the append-only log. The columns listed in `HASHED_COLUMNS` are exactly what
the hash chain covers; everything that is not a filterable column lives in `data`, a JSON text
column stored byte for byte as hashed (text, not JSON/JSONB, so no database re-encodes it).
Times are fixed-width UTC ISO 8601 text (`2026-11-25T21:45:00.123456Z`) so they sort and
compare identically on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from mcpfw.audit.chain import HASHED_COLUMNS  # declared with the chain, re-exported here

__all__ = [
    "HASHED_COLUMNS",
    "audit_chains",
    "audit_checkpoints",
    "audit_events",
    "metadata",
    "schema_version",
]

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("description", Text, nullable=False, default=""),
    Column("applied_at", String(40), nullable=False),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("instance", String(256), nullable=False),  # the chain this event belongs to
    Column("seq", BigInteger, nullable=False),  # 1, 2, 3 … within the chain
    Column("kind", String(32), nullable=False),  # session_start | decision | outcome | session_end
    Column("time", String(40), nullable=False),
    Column("session_id", String(256), nullable=False, default=""),
    Column("agent_id", String(256), nullable=False, default=""),
    Column("server", String(256), nullable=False, default=""),
    Column("tool", String(256), nullable=False, default=""),
    Column("effect", String(16), nullable=True),  # decision: allow | deny | ask
    Column("enforced", SmallInteger, nullable=True),  # decision: 1 enforced, 0 monitor mode
    Column("rule", String(256), nullable=True),  # decision: deciding rule
    Column("shadow_effect", String(16), nullable=True),  # decision: what shadow rules said
    Column("decision_id", String(64), nullable=True),  # decision: its own id; outcome: its decision
    Column("outcome", String(32), nullable=True),  # outcome: forwarded | denied | …
    Column("data", Text, nullable=False),  # canonical JSON of everything else
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("instance", "seq", name="uq_audit_events_chain"),
    Index("ix_audit_events_time", "time"),
    Index("ix_audit_events_session", "session_id"),
    Index("ix_audit_events_agent", "agent_id"),
    Index("ix_audit_events_decision", "decision_id"),
)

# The head of every chain, moved in the same transaction as the events it covers. It makes a
# truncated tail detectable and lets several processes share a chain id without forking it
# (compare-and-swap on seq).
audit_chains = Table(
    "audit_chains",
    metadata,
    Column("instance", String(256), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("updated", String(40), nullable=False),
)

# Written by `prune`: the last pruned event of a chain; `verify` starts from the newest one.
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("instance", String(256), primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("event_time", String(40), nullable=False),  # time of the last pruned event
    Column("pruned", BigInteger, nullable=False),  # events deleted by this prune
    Column("created", String(40), nullable=False),
)
