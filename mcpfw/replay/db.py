"""Replay's access to the audit database: recorded sessions and decision events.

Opening goes through `mcpfw.audit.open_store`, so the schema (including the recording
tables) is created or migrated exactly as the firewall does it. Read-only commands refuse
to create a missing SQLite file: a typo in `--audit` says so instead of showing an empty,
freshly created database.
"""

from __future__ import annotations

import gc
import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcpfw.audit.errors import AuditError
from mcpfw.audit.events import AuditEvent, RecordedCall, time_text
from mcpfw.audit.redaction import RedactionConfig, Redactor
from mcpfw.audit.schema import audit_events
from mcpfw.audit.urls import default_audit_url, normalize_audit_url, sqlite_path
from mcpfw.model import Agent, Effect, ToolCall
from mcpfw.policy import ArgLimits
from mcpfw.recording.format import RecordedDecision, Recording
from mcpfw.recording.store import (
    SessionSummary,
    import_recording,
    list_sessions,
    load_recording,
    prune_sessions,
)
from mcpfw.recording.writer import message_redactor
from mcpfw.replay.calls import calls_from_recording
from mcpfw.replay.core import ReplayCall
from mcpfw.replay.errors import ReplayError
from mcpfw.replay.sources import CallFilter, filter_calls, recordings_from_db, resolve_session

__all__ = [
    "audit_calls",
    "calls_from_database",
    "get_recording",
    "import_recordings",
    "limits_for",
    "list_recorded_sessions",
    "open_engine",
    "prune_recordings",
    "redactor_for",
]

MessageRedactor = Callable[[Any], tuple[Any, tuple[str, ...]]]


def _config(config_path: Path | None) -> Any:
    if config_path is None:
        return None
    from mcpfw.config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise ReplayError(f"the config does not load:\n{exc}") from None


def redactor_for(config_path: Path | None) -> MessageRedactor:
    """The message redactor the firewall would use with this config (defaults without)."""
    cfg = _config(config_path)
    redaction = RedactionConfig()
    if cfg is not None:
        try:
            redaction = RedactionConfig(
                pointers=tuple(cfg.audit.redact), detect_secrets=cfg.audit.detect_secrets
            )
        except AuditError as exc:
            raise ReplayError(f"{config_path}: {exc}") from None
    return message_redactor(Redactor(redaction))


def limits_for(config_path: Path | None) -> ArgLimits | None:
    """The argument limits of the config (None: the policy's defaults)."""
    cfg = _config(config_path)
    if cfg is None:
        return None
    return ArgLimits(
        max_depth=cfg.limits.max_depth,
        max_bytes=cfg.limits.max_bytes,
        max_items=cfg.limits.max_items,
    )


def _url(audit_url: str | None, config_path: Path | None) -> str:
    cfg = _config(config_path)
    raw = audit_url or (cfg.audit.url if cfg is not None else None)
    try:
        return normalize_audit_url(raw) if raw else default_audit_url()
    except AuditError as exc:
        raise ReplayError(str(exc)) from None


@asynccontextmanager
async def open_engine(
    audit_url: str | None, config_path: Path | None, *, create: bool = False
) -> AsyncIterator[AsyncEngine]:
    """The audit database's engine, schema migrated (ReplayError if it cannot be opened)."""
    from mcpfw.audit import open_store

    url = _url(audit_url, config_path)
    path = sqlite_path(url)
    if not create and path and not Path(path).exists():
        raise ReplayError(f"no audit database at {path} (give --audit or --config)")
    try:
        async with open_store(url) as store:
            yield store.engine
    except AuditError as exc:
        raise ReplayError(f"audit database {url}: {exc}") from None
    except (SQLAlchemyError, OSError) as exc:
        raise ReplayError(f"audit database {url}: {exc}") from None


async def list_recorded_sessions(
    audit_url: str | None,
    config_path: Path | None,
    *,
    agent: str | None,
    since: datetime | None,
    limit: int,
) -> list[SessionSummary]:
    """`mcpfw sessions list`."""
    async with open_engine(audit_url, config_path) as engine:
        return await list_sessions(engine, agent=agent, since=since, limit=limit)


async def get_recording(audit_url: str | None, config_path: Path | None, session: str) -> Recording:
    """One recorded session by full or short id."""
    async with open_engine(audit_url, config_path) as engine:
        sid = await resolve_session(engine, session)
        recording = await load_recording(engine, sid)
    if recording is None:  # deleted between the two reads
        raise ReplayError(f"no recorded session {session!r}")
    return recording


async def prune_recordings(
    audit_url: str | None, config_path: Path | None, before: datetime
) -> tuple[int, int]:
    """`mcpfw sessions prune`: (sessions, messages) deleted."""
    async with open_engine(audit_url, config_path) as engine:
        return await prune_sessions(engine, before)


async def import_recordings(
    audit_url: str | None, config_path: Path | None, recordings: Sequence[Recording]
) -> None:
    """`mcpfw sessions import`: all or nothing per file."""
    async with open_engine(audit_url, config_path, create=True) as engine:
        for rec in recordings:
            try:
                await import_recording(engine, rec)
            except ValueError as exc:
                raise ReplayError(f"{rec.source}: {exc}") from None


def _event_filter(flt: CallFilter, session_ids: Sequence[str]) -> Any:
    e = audit_events
    cond = [e.c.kind == "decision"]
    if session_ids:
        cond.append(e.c.session_id.in_(list(session_ids)))
    if flt.agent:
        cond.append(e.c.agent_id == flt.agent)
    if flt.since is not None:
        cond.append(e.c.time >= time_text(flt.since))
    # Events are stamped when decided, a moment after the call arrived: `since` on the event
    # time is a safe prefilter; the exact filters run on the call time afterwards.
    return and_(*cond)


_COLUMNS = (
    audit_events.c.id,
    audit_events.c.time,
    audit_events.c.session_id,
    audit_events.c.agent_id,
    audit_events.c.server,
    audit_events.c.tool,
    audit_events.c.effect,
    audit_events.c.enforced,
    audit_events.c.rule,
    audit_events.c.shadow_effect,
    audit_events.c.data,
)


async def audit_calls(
    engine: AsyncEngine,
    flt: CallFilter,
    *,
    session_ids: Sequence[str] = (),
    skip: frozenset[str] = frozenset(),
    with_outcomes: bool = True,
) -> list[ReplayCall]:
    """Replay calls rebuilt from the audit log's decision events (arguments as stored)."""
    e = audit_events
    query = select(*_COLUMNS).where(_event_filter(flt, session_ids)).order_by(e.c.time, e.c.seq)
    digests: dict[str, str] = {}
    out: list[ReplayCall] = []
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=5000))
        async for part in result.partitions():
            with bulk_load():
                for row in part:
                    if row[0] in skip:
                        continue
                    rc = replay_call_from_row(row)
                    if flt.accepts(rc):
                        out.append(rc)
        if with_outcomes and out:
            oq = select(e.c.decision_id, e.c.data).where(e.c.kind == "outcome")
            if flt.since is not None:
                oq = oq.where(e.c.time >= time_text(flt.since))
            async for rid, data in await conn.stream(oq):
                d = json.loads(data).get("result_digest")
                if rid and d:
                    digests[rid] = d
    if digests:
        out = [
            replace(rc, result_digest=digests[rc.original.id]) if rc.original.id in digests else rc
            for rc in out
        ]
    return out


@contextmanager
def bulk_load() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small records: they hold no
    cycles, and its repeated full passes over a growing list made reading 30 000 events
    2.4x slower."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _time(text: str) -> datetime:
    # `2026-11-25T21:45:00.123456Z`; fromisoformat is ~20x faster than strptime.
    return datetime.fromisoformat(text)


def replay_call_from_row(row: Sequence[Any]) -> ReplayCall:
    """A decision event row (the `_COLUMNS`) as a ReplayCall.

    The same reading as `mcpfw.audit.RecordedCall.from_event` (a test holds them equal),
    without building an `AuditEvent` and `Decision` first: replay reads tens of thousands
    of events per second. Masked claims count as uncertain, like masked arguments.
    """
    eid, when, session_id, agent_id, server, tool, effect, enforced, rule, shadow, data = row
    d = json.loads(data)
    agent = Agent(
        id=agent_id,
        roles=tuple(d.get("roles", ())),
        claims=dict(d.get("claims") or {}),
        transport=str(d.get("transport", "stdio")),
    )
    call_time = d.get("call_time")
    arguments = dict(d.get("arguments") or {})
    call = ToolCall(
        agent=agent,
        tool=tool,
        server=server,
        arguments=arguments,
        session_id=session_id,
        session_calls=int(d.get("session_calls") or 0),
        request_id=d.get("request_id"),
        annotations=dict(d.get("annotations") or {}),
        findings=tuple(d.get("findings") or ()),
        method=str(d.get("method") or "tools/call"),
        time=_time(call_time or when),
    )
    original = RecordedDecision(
        id=eid,
        effect=Effect(effect or "deny"),
        rule=rule or "",
        enforced=bool(enforced),
        matched=tuple(d.get("matched") or ()),
        reason=str(d.get("reason") or ""),
        revision=str(d.get("revision") or ""),
        shadow_effect=Effect(shadow) if shadow else None,
        shadow_rule=d.get("shadow_rule"),
    )
    redacted: list[str] = []
    for m in d.get("redacted") or ():
        path = str(m.get("path", ""))
        if path.startswith("/arguments"):
            redacted.append(path[len("/arguments") :])
        elif path.startswith("/claims"):
            redacted.append("agent" + path)
    return ReplayCall(
        call=call,
        original=original,
        redacted=tuple(redacted),
        where=f"audit event {eid}",
        params={"name": tool, "arguments": arguments},
    )


def replay_call_from_event(event: AuditEvent, result_digest: str | None = None) -> ReplayCall:
    """One decision event (as the audit reader returns it) as a ReplayCall."""
    rec = RecordedCall.from_event(event)
    masked_claims = tuple(
        str(m.get("path"))
        for m in event.data.get("redacted") or ()
        if str(m.get("path", "")).startswith("/claims")
    )
    return ReplayCall(
        call=rec.call,
        original=RecordedDecision.from_decision(rec.decision),
        redacted=rec.redacted_paths + tuple("agent" + p for p in masked_claims),
        where=f"audit event {event.id}",
        params={"name": rec.call.tool, "arguments": dict(rec.call.arguments)},
        result_digest=result_digest,
    )


async def calls_from_database(
    audit_url: str | None,
    config_path: Path | None,
    flt: CallFilter,
    *,
    recorded_only: bool = False,
    with_outcomes: bool = False,
) -> tuple[list[ReplayCall], tuple[str, ...]]:
    """Recorded sessions first; then decision events no recording covers; in time order."""
    async with open_engine(audit_url, config_path) as engine:
        recordings, missing = await recordings_from_db(engine, flt)
        calls: list[ReplayCall] = []
        for rec in recordings:
            calls.extend(filter_calls(calls_from_recording(rec), flt))
        covered = frozenset(rc.original.id for rc in calls) | frozenset(
            d for rec in recordings for d in rec.decisions
        )
        from_audit: list[ReplayCall] = []
        if not recorded_only:
            ids = [rec.header.session_id for rec in recordings] + missing if flt.sessions else []
            from_audit = await audit_calls(
                engine, flt, session_ids=ids, skip=covered, with_outcomes=with_outcomes
            )
        found = {rc.call.session_id for rc in from_audit}
        unknown = [m for m in missing if m not in found]
        if unknown:
            raise ReplayError(
                "no recorded session and no decision events for session(s) "
                + ", ".join(unknown)
                + " in the audit database"
            )
    merged = sorted(calls + from_audit, key=lambda rc: rc.call.time)
    sources = [f"{len(recordings)} recorded session(s)"]
    if not recorded_only:
        sources.append(f"{len(from_audit)} decision event(s) without a recording")
    return merged, tuple(sources)
