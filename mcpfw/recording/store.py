"""Recording tables in the audit database, and the queries over them.

Two tables, created by a step appended to the audit schema's migrations:

- `recording_sessions`: one row per recorded session (header: agent, server, times);
- `recording_messages`: one row per relayed message, `(session_id, seq)` unique, the
  redacted JSON-RPC message, the masked pointers, the linked decision id and a snapshot of
  that decision (so a recording stays replayable after the audit log is pruned).

Times are stored as fixed-width UTC ISO 8601 text so they sort and compare the same on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.audit.schema import metadata
from mcpfw.recording.format import (
    FORMAT_VERSION,
    Direction,
    RecordedDecision,
    RecordedMessage,
    Recording,
    SessionHeader,
    canonical_json,
)

__all__ = [
    "SessionSummary",
    "end_session",
    "import_recording",
    "insert_messages",
    "insert_session",
    "link_decision",
    "list_sessions",
    "load_recording",
    "prune_sessions",
    "recording_messages",
    "recording_sessions",
    "time_text",
]

_ID = BigInteger().with_variant(Integer(), "sqlite")

recording_sessions = Table(
    "recording_sessions",
    metadata,
    Column("session_id", String(128), primary_key=True),
    Column("instance", String(128), nullable=False, default=""),
    Column("agent_id", String(256), nullable=False),
    Column("agent", Text, nullable=False),  # JSON: id, roles, claims (redacted), transport
    Column("server", String(256), nullable=False, default=""),
    Column("started", String(40), nullable=False),
    Column("ended", String(40), nullable=True),
    Column("end_reason", Text, nullable=False, default=""),
    Column("note", Text, nullable=False, default=""),
    Column("format_version", Integer, nullable=False, default=FORMAT_VERSION),
    Index("ix_recording_sessions_started", "started"),
    Index("ix_recording_sessions_agent", "agent_id"),
)

recording_messages = Table(
    "recording_messages",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("session_id", String(128), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("time", String(40), nullable=False),
    Column("direction", String(3), nullable=False),
    Column("source", String(16), nullable=False, default=""),
    Column("method", String(256), nullable=True),
    Column("message", Text, nullable=False),  # redacted JSON-RPC message
    Column("redacted", Text, nullable=True),  # JSON list of masked pointers
    Column("decision_id", String(64), nullable=True),
    Column("decision", Text, nullable=True),  # JSON snapshot of the decision
    UniqueConstraint("session_id", "seq", name="uq_recording_messages_session_seq"),
    Index("ix_recording_messages_decision", "decision_id"),
)


def time_text(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text like the audit log's (sorts like the time it stands for)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionSummary:
    """One row of `mcpfw sessions list`."""

    header: SessionHeader
    messages: int
    calls: int


async def insert_session(engine: AsyncEngine, header: SessionHeader) -> None:
    """Create the session row (the header)."""
    async with engine.begin() as conn:
        await _insert_session(conn, header)


async def _insert_session(conn: AsyncConnection, header: SessionHeader) -> None:
    data = header.to_json()
    await conn.execute(
        insert(recording_sessions).values(
            session_id=header.session_id,
            instance=header.instance,
            agent_id=header.agent.id,
            agent=canonical_json(data["agent"]),
            server=header.server,
            started=time_text(header.started),
            ended=None if header.ended is None else time_text(header.ended),
            end_reason="",
            note=header.note,
            format_version=FORMAT_VERSION,
        )
    )


def _message_row(session_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    message = row["message"]
    decision: RecordedDecision | None = row.get("decision")
    method = message.get("method") if isinstance(message, Mapping) else None
    redacted = tuple(row.get("redacted") or ())
    return {
        "session_id": session_id,
        "seq": row["seq"],
        "time": time_text(row["time"]),
        "direction": Direction(row["direction"]).value,
        "source": row.get("source") or "",
        "method": method if isinstance(method, str) else None,
        "message": canonical_json(message),
        "redacted": canonical_json(list(redacted)) if redacted else None,
        "decision_id": row.get("decision_id"),
        "decision": None if decision is None else canonical_json(decision.to_json()),
    }


async def insert_messages(
    engine: AsyncEngine, session_id: str, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Append messages (dicts with seq, time, direction, message, redacted, decision...)."""
    if not rows:
        return
    async with engine.begin() as conn:
        await conn.execute(insert(recording_messages), [_message_row(session_id, r) for r in rows])


async def link_decision(
    engine: AsyncEngine, session_id: str, seq: int, decision: RecordedDecision
) -> None:
    """Attach a decision to a message that was written before the decision was made."""
    m = recording_messages
    async with engine.begin() as conn:
        await conn.execute(
            update(m)
            .where(m.c.session_id == session_id, m.c.seq == seq)
            .values(decision_id=decision.id, decision=canonical_json(decision.to_json()))
        )


async def end_session(engine: AsyncEngine, session_id: str, ended: datetime, reason: str) -> None:
    """Mark a session ended."""
    async with engine.begin() as conn:
        await conn.execute(
            update(recording_sessions)
            .where(recording_sessions.c.session_id == session_id)
            .values(ended=time_text(ended), end_reason=reason)
        )


def _header(row: Any) -> SessionHeader:
    agent = json.loads(row.agent)
    return SessionHeader.from_json(
        {
            "id": row.session_id,
            "agent": agent,
            "server": row.server,
            "started": row.started,
            "ended": row.ended,
            "instance": row.instance,
            "note": row.note,
        }
    )


async def list_sessions(
    engine: AsyncEngine,
    *,
    agent: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> list[SessionSummary]:
    """Recorded sessions, newest first, with message and tools/call counts."""
    m = recording_messages
    counts = (
        select(
            m.c.session_id,
            func.count().label("messages"),
            func.sum((m.c.method == "tools/call").cast(Integer)).label("calls"),
        )
        .group_by(m.c.session_id)
        .subquery()
    )
    s = recording_sessions
    query = select(s, counts.c.messages, counts.c.calls).outerjoin(
        counts, counts.c.session_id == s.c.session_id
    )
    if agent:
        query = query.where(s.c.agent_id == agent)
    if since is not None:
        query = query.where(s.c.started >= time_text(since))
    if until is not None:
        query = query.where(s.c.started < time_text(until))
    query = query.order_by(s.c.started.desc(), s.c.session_id.desc())
    if limit is not None:
        query = query.limit(limit)
    async with engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [
        SessionSummary(header=_header(r), messages=int(r.messages or 0), calls=int(r.calls or 0))
        for r in rows
    ]


async def session_ids_matching(engine: AsyncEngine, prefix: str) -> list[str]:
    """Session ids equal to, or starting with, `prefix` (so users can type a short id)."""
    s = recording_sessions
    async with engine.connect() as conn:
        exact = (
            (await conn.execute(select(s.c.session_id).where(s.c.session_id == prefix)))
            .scalars()
            .all()
        )
        if exact:
            return list(exact)
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await conn.execute(
            select(s.c.session_id).where(s.c.session_id.like(like, escape="\\")).limit(10)
        )
        return list(rows.scalars().all())


async def load_recording(engine: AsyncEngine, session_id: str) -> Recording | None:
    """A whole recorded session from the database, or None if there is no such session."""
    s, m = recording_sessions, recording_messages
    async with engine.connect() as conn:
        head = (await conn.execute(select(s).where(s.c.session_id == session_id))).first()
        if head is None:
            return None
        rows = (
            await conn.execute(select(m).where(m.c.session_id == session_id).order_by(m.c.seq))
        ).all()
    messages: list[RecordedMessage] = []
    decisions: dict[str, RecordedDecision] = {}
    for r in rows:
        messages.append(
            RecordedMessage(
                seq=r.seq,
                time=_parse_time(r.time),
                direction=Direction(r.direction),
                message=json.loads(r.message),
                decision_id=r.decision_id,
                source=r.source,
                redacted=tuple(json.loads(r.redacted)) if r.redacted else (),
            )
        )
        if r.decision:
            d = RecordedDecision.from_json(json.loads(r.decision))
            decisions.setdefault(d.id, d)
    return Recording(header=_header(head), messages=tuple(messages), decisions=decisions)


async def prune_sessions(engine: AsyncEngine, before: datetime) -> tuple[int, int]:
    """Delete recorded sessions started before `before`; returns (sessions, messages)."""
    s, m = recording_sessions, recording_messages
    cutoff = time_text(before)
    async with engine.begin() as conn:
        old = select(s.c.session_id).where(s.c.started < cutoff).scalar_subquery()
        messages = await conn.execute(delete(m).where(m.c.session_id.in_(old)))
        sessions = await conn.execute(delete(s).where(s.c.started < cutoff))
    return int(sessions.rowcount or 0), int(messages.rowcount or 0)


async def import_recording(engine: AsyncEngine, recording: Recording) -> None:
    """Store a recording read from JSONL (raises ValueError if the session id exists)."""
    s = recording_sessions
    async with engine.begin() as conn:
        found = await conn.execute(
            select(s.c.session_id).where(s.c.session_id == recording.header.session_id)
        )
        if found.first() is not None:
            raise ValueError(f"session {recording.header.session_id} is already in the database")
        await _insert_session(conn, recording.header)
        rows: list[dict[str, Any]] = []
        written: set[str] = set()
        for msg in recording.messages:
            decision = None
            if msg.decision_id and msg.decision_id not in written:
                decision = recording.decisions.get(msg.decision_id)
                written.add(msg.decision_id)
            rows.append(
                _message_row(
                    recording.header.session_id,
                    {
                        "seq": msg.seq,
                        "time": msg.time,
                        "direction": msg.direction,
                        "message": msg.message,
                        "redacted": msg.redacted,
                        "decision_id": msg.decision_id,
                        "decision": decision,
                        "source": msg.source,
                    },
                )
            )
        for start in range(0, len(rows), 500):
            await conn.execute(insert(recording_messages), rows[start : start + 500])
