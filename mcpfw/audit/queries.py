"""The read side of the audit log: queries for the CLI and replay, verify, and prune.

All reads are ordinary SQL over `audit_events` and behave the same on SQLite and PostgreSQL.
Long reads (`iter_events`, `iter_calls`) page with a keyset on (time, id), so they hold no
transaction open and can run while firewalls keep writing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from mcpfw.audit.chain import (
    VerifyReport,
)
from mcpfw.audit.engine import EngineInfo
from mcpfw.audit.errors import AuditError
from mcpfw.audit.events import AuditEvent, EventFilter, RecordedCall, time_text
from mcpfw.audit.schema import audit_chains, audit_events
from mcpfw.audit.verify import ChainPrune, PruneResult, prune_database, verify_database

__all__ = ["AuditReader", "AuditStats", "ChainPrune", "PruneResult", "StatRow"]

_C = audit_events.c


@dataclass(frozen=True, kw_only=True, slots=True)
class StatRow:
    """Decision counts for one key (an agent, a tool or a rule)."""

    key: str
    calls: int
    allows: int
    denies: int
    asks: int
    shadow_denies: int


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditStats:
    """Counts over a window of decisions."""

    decisions: int
    allows: int
    denies: int
    asks: int
    shadow_denies: int  # decisions whose shadow rules said deny
    unenforced: int  # decisions made in monitor mode
    outcomes: dict[str, int] = field(default_factory=dict)
    by_agent: tuple[StatRow, ...] = ()
    by_tool: tuple[StatRow, ...] = ()  # key: "server/tool" (or "tool" without a server)
    by_rule: tuple[StatRow, ...] = ()  # deciding rules, most denies first


def _like(column: Any, pattern: str) -> ColumnElement[bool]:
    if "*" not in pattern and "?" not in pattern:
        return column == pattern  # type: ignore[no-any-return]
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")  # type: ignore[no-any-return]


def _where(flt: EventFilter) -> list[ColumnElement[bool]]:
    cond: list[ColumnElement[bool]] = []
    if flt.kinds:
        cond.append(_C.kind.in_(flt.kinds))
    for column, value in (
        (_C.agent_id, flt.agent),
        (_C.tool, flt.tool),
        (_C.server, flt.server),
        (_C.rule, flt.rule),
        (_C.instance, flt.instance),
    ):
        if value is not None:
            cond.append(_like(column, value))
    if flt.effect is not None:
        cond.append(_C.effect == flt.effect)
    if flt.session is not None:
        cond.append(_C.session_id == flt.session)
    if flt.decision_id is not None:
        cond.append(_C.decision_id == flt.decision_id)
    if flt.since is not None:
        cond.append(_C.time >= time_text(flt.since))
    if flt.until is not None:
        cond.append(_C.time <= time_text(flt.until))
    if flt.shadow is True:
        cond.append(_C.kind == "decision")
        cond.append(or_(_C.shadow_effect.is_not(None), _C.enforced == 0))
    elif flt.shadow is False:
        cond.append(_C.kind == "decision")
        cond.append(and_(_C.shadow_effect.is_(None), _C.enforced == 1))
    return cond


class AuditReader:
    """Queries over an audit database (the `AuditStore` base)."""

    def __init__(self, engine: AsyncEngine, info: EngineInfo) -> None:
        self.engine = engine
        self.info = info

    async def _rows(self, query: Any) -> Sequence[Any]:
        try:
            async with self.engine.connect() as conn:
                return (await conn.execute(query)).mappings().all()
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit database {self.info.url}: {exc}") from exc

    async def list_events(
        self,
        flt: EventFilter | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
    ) -> list[AuditEvent]:
        """One page of events matching `flt`, newest first by default (time, then id)."""
        order = (_C.time.desc(), _C.id.desc()) if newest_first else (_C.time, _C.id)
        query = (
            select(audit_events)
            .where(*_where(flt or EventFilter()))
            .order_by(*order)
            .limit(limit)
            .offset(offset)
        )
        return [AuditEvent.from_row(row) for row in await self._rows(query)]

    async def iter_events(
        self, flt: EventFilter | None = None, *, batch: int = 1000
    ) -> AsyncIterator[AuditEvent]:
        """Every matching event, oldest first (time, then id), read in pages."""
        cond = _where(flt or EventFilter())
        last: tuple[str, str] | None = None
        while True:
            page_cond = list(cond)
            if last is not None:
                page_cond.append(or_(_C.time > last[0], and_(_C.time == last[0], _C.id > last[1])))
            query = select(audit_events).where(*page_cond).order_by(_C.time, _C.id).limit(batch)
            rows = await self._rows(query)
            for row in rows:
                yield AuditEvent.from_row(row)
            if len(rows) < batch:
                return
            last = (rows[-1]["time"], rows[-1]["id"])

    async def iter_calls(
        self, flt: EventFilter | None = None, *, batch: int = 1000, outcomes: bool = True
    ) -> AsyncIterator[RecordedCall]:
        """Decision events rebuilt as (ToolCall, Decision), oldest first, with their outcome."""
        base = flt or EventFilter()
        flt = EventFilter(**{**_fields(base), "kinds": ("decision",)})
        pending: list[AuditEvent] = []
        async for event in self.iter_events(flt, batch=batch):
            pending.append(event)
            if len(pending) >= batch:
                for call in await self._calls(pending, outcomes):
                    yield call
                pending = []
        for call in await self._calls(pending, outcomes):
            yield call

    async def _calls(self, events: list[AuditEvent], outcomes: bool) -> list[RecordedCall]:
        found = await self.outcomes_for([e.id for e in events]) if outcomes and events else {}
        return [RecordedCall.from_event(e, found.get(e.id)) for e in events]

    async def get_event(self, event_id: str) -> AuditEvent | None:
        """The event with this id, or with this unique id prefix (at least 6 characters)."""
        rows = await self._rows(select(audit_events).where(_C.id == event_id))
        if not rows and len(event_id) >= 6:
            prefix = event_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = await self._rows(
                select(audit_events).where(_C.id.like(prefix + "%", escape="\\")).limit(2)
            )
            if len(rows) > 1:
                raise AuditError(f"the id prefix {event_id!r} matches several events")
        return AuditEvent.from_row(rows[0]) if rows else None

    async def get_outcome(self, decision_id: str) -> AuditEvent | None:
        """The (last) outcome event of a decision."""
        return (await self.outcomes_for([decision_id])).get(decision_id)

    async def outcomes_for(self, decision_ids: Iterable[str]) -> dict[str, AuditEvent]:
        """decision id -> its (last) outcome event."""
        ids = list(decision_ids)
        out: dict[str, AuditEvent] = {}
        for start in range(0, len(ids), 500):
            query = (
                select(audit_events)
                .where(_C.kind == "outcome", _C.decision_id.in_(ids[start : start + 500]))
                .order_by(_C.time, _C.id)
            )
            for row in await self._rows(query):
                event = AuditEvent.from_row(row)
                out[str(event.decision_id)] = event
        return out

    async def stats(self, flt: EventFilter | None = None, *, top: int = 10) -> AuditStats:
        """Decision counts by effect, agent, tool and rule over the events matching `flt`."""
        base = flt or EventFilter()
        cond = _where(EventFilter(**{**_fields(base), "kinds": ("decision",)}))

        def n(expr: ColumnElement[bool]) -> Any:
            return func.coalesce(func.sum(case((expr, 1), else_=0)), 0)

        counts = (
            func.count(),
            n(_C.effect == "allow"),
            n(_C.effect == "deny"),
            n(_C.effect == "ask"),
            n(_C.shadow_effect == "deny"),
            n(_C.enforced == 0),
        )

        async def grouped(key: Any, order: Any) -> tuple[StatRow, ...]:
            query = select(key.label("key"), *counts).where(*cond).group_by(key)
            query = query.order_by(order, key).limit(top)
            return tuple(
                StatRow(
                    key=str(r[0]),
                    calls=int(r[1]),
                    allows=int(r[2]),
                    denies=int(r[3]),
                    asks=int(r[4]),
                    shadow_denies=int(r[5]),
                )
                for r in await self._tuples(query)
            )

        total = (await self._tuples(select(*counts).where(*cond)))[0]
        tool_key = case((_C.server == "", _C.tool), else_=_C.server + "/" + _C.tool)
        out_cond = _where(EventFilter(**{**_fields(base), "kinds": ("outcome",)}))
        outcome_rows = await self._tuples(
            select(_C.outcome, func.count()).where(*out_cond).group_by(_C.outcome)
        )
        return AuditStats(
            decisions=int(total[0]),
            allows=int(total[1]),
            denies=int(total[2]),
            asks=int(total[3]),
            shadow_denies=int(total[4]),
            unenforced=int(total[5]),
            outcomes={str(r[0]): int(r[1]) for r in outcome_rows},
            by_agent=await grouped(_C.agent_id, func.count().desc()),
            by_tool=await grouped(tool_key, func.count().desc()),
            by_rule=await grouped(_C.rule, counts[2].desc()),
        )

    async def _tuples(self, query: Any) -> Sequence[Any]:
        try:
            async with self.engine.connect() as conn:
                return (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise AuditError(f"cannot read the audit database {self.info.url}: {exc}") from exc

    async def chain_heads(self) -> dict[str, tuple[int, str]]:
        """instance -> (seq, hash) of every chain's head record."""
        rows = await self._tuples(
            select(audit_chains.c.instance, audit_chains.c.seq, audit_chains.c.hash)
        )
        return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}

    async def verify(self, *, batch: int = 5000) -> VerifyReport:
        """Recompute every chain from its latest checkpoint; name the first break of each."""
        return await verify_database(self.engine, self.info, batch=batch)

    async def prune(
        self, before: datetime, *, dry_run: bool = False, force: bool = False
    ) -> PruneResult:
        """Delete each chain's events older than `before` (a prefix of the chain), recording a
        checkpoint (last pruned seq and hash) that `verify` then starts from. Refuses to prune
        a log that does not verify unless force=True (pruning would erase the evidence)."""
        if not force:
            report = await self.verify()
            if not report.ok:
                bad = ", ".join(c.instance for c in report.breaks)
                raise AuditError(
                    f"the audit log does not verify (chains: {bad}); run `mcpfw audit verify` "
                    "and keep the evidence before pruning (or force it)"
                )
        return await prune_database(self.engine, self.info, before, dry_run=dry_run)


def _fields(flt: EventFilter) -> dict[str, Any]:
    return {name: getattr(flt, name) for name in EventFilter.__dataclass_fields__}
