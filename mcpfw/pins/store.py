"""Pins in the audit database: one row per (server, tool), plus a history of pin events.

Works on any SQLAlchemy async engine the audit store uses (SQLite or PostgreSQL). Several
firewall processes may share one database: first-use pinning tolerates a concurrent insert of
the same pin, and every change is a single transaction.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mcpfw.model import utcnow
from mcpfw.pins.canonical import canonical_definition, definition_digest
from mcpfw.pins.drift import Pin, PinStatus, ToolCheck, canonical_text, compare
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.scanner import Finding, finding_dict
from mcpfw.pins.tables import pin_events, tool_pins

__all__ = ["PinEvent", "PinStore", "PinStoreError"]


class PinEvent(dict[str, Any]):
    """One row of the pin history: time, server, tool, kind, digest, previous_digest, actor."""


def _ts(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text, like the audit log's times."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _aware(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _pin(row: Any) -> Pin:
    findings = _json(row.findings) or []
    return Pin(
        server=row.server,
        tool=row.tool,
        digest=row.digest or "",
        definition=_json(row.definition),
        approved_by=row.approved_by or "",
        approved_at=_aware(row.approved_at),
        first_seen=_aware(row.first_seen),
        seen_digest=row.seen_digest or "",
        seen_definition=_json(row.seen_definition),
        seen_at=_aware(row.seen_at),
        findings=tuple(findings),
    )


class PinStore:
    """Read and change pins through an async engine (the audit store's `engine`)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; on SQLite it takes the write lock up front (BEGIN IMMEDIATE),
        so concurrent writers wait (busy timeout) instead of failing to upgrade a read lock."""
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    async def create_tables(self) -> None:
        """Create the pin tables if missing (the audit migrations do this for real stores)."""
        async with self._writing() as conn:
            await conn.run_sync(
                lambda sync: tool_pins.metadata.create_all(
                    sync, tables=[tool_pins, pin_events], checkfirst=True
                )
            )

    # ------------------------------------------------------------------ reading

    async def pins(self, server: str | None = None, tool: str | None = None) -> list[Pin]:
        """Pins ordered by server and tool, optionally for one server (and one tool)."""
        query = select(tool_pins).order_by(tool_pins.c.server, tool_pins.c.tool)
        if server is not None:
            query = query.where(tool_pins.c.server == server)
        if tool is not None:
            query = query.where(tool_pins.c.tool == tool)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot read pins: {exc}") from exc
        return [_pin(row) for row in rows]

    async def pin(self, server: str, tool: str) -> Pin | None:
        """One pin, or None."""
        found = await self.pins(server, tool)
        return found[0] if found else None

    async def tool_names(self, *, exclude_server: str) -> set[str]:
        """Names of the tools pinned for every other server (for shadowing checks)."""
        query = select(tool_pins.c.tool).where(tool_pins.c.server != exclude_server)
        try:
            async with self.engine.connect() as conn:
                return {row.tool for row in (await conn.execute(query)).all()}
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot read pins: {exc}") from exc

    async def events(self, server: str | None = None, tool: str | None = None) -> list[PinEvent]:
        """The pin history, oldest first."""
        query = select(pin_events).order_by(pin_events.c.id)
        if server is not None:
            query = query.where(pin_events.c.server == server)
        if tool is not None:
            query = query.where(pin_events.c.tool == tool)
        try:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot read pin events: {exc}") from exc
        out = []
        for row in rows:
            event = PinEvent(row._asdict())
            event["time"] = _aware(event["time"])
            out.append(event)
        return out

    # ------------------------------------------------------------------ observing listings

    async def observe(
        self,
        server: str,
        tools: Sequence[Mapping[str, Any]],
        *,
        findings: Mapping[str, Sequence[Finding]] | None = None,
        trust_on_first_use: bool = True,
    ) -> list[ToolCheck]:
        """Compare a listing with the pins; pin new tools (TOFU) and record drift.

        A listing identical to the last one seen is only read, never written: agents list
        tools often, and a write would take the database's write lock every time.
        """
        try:
            async with self.engine.connect() as conn:
                query = select(tool_pins).where(tool_pins.c.server == server)
                pins = {row.tool: _pin(row) for row in (await conn.execute(query)).all()}
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot read pins: {exc}") from exc
        checks = compare(pins, tools, trust_on_first_use=trust_on_first_use)
        if all(c.tool in pins and pins[c.tool].seen_digest == c.digest for c in checks):
            return checks
        for attempt in range(3):
            try:
                async with self._writing() as conn:
                    return await self._observe(
                        conn, server, tools, findings or {}, trust_on_first_use
                    )
            except IntegrityError:
                if attempt == 2:
                    raise PinStoreError("pins keep changing under us; giving up") from None
                continue  # another firewall pinned the same tool first: compare again
            except SQLAlchemyError as exc:
                raise PinStoreError(f"cannot record pins: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _observe(
        self,
        conn: AsyncConnection,
        server: str,
        tools: Sequence[Mapping[str, Any]],
        findings: Mapping[str, Sequence[Finding]],
        trust_on_first_use: bool,
    ) -> list[ToolCheck]:
        rows = (await conn.execute(select(tool_pins).where(tool_pins.c.server == server))).all()
        pins = {row.tool: _pin(row) for row in rows}
        checks = compare(pins, tools, trust_on_first_use=trust_on_first_use)
        now = _ts(utcnow())
        for check in checks:
            found = json.dumps([finding_dict(f) for f in findings.get(check.tool, ())])
            text = canonical_text(check.definition)
            pin = pins.get(check.tool)
            if pin is None:
                trusted = check.status is PinStatus.NEW
                await conn.execute(
                    insert(tool_pins).values(
                        server=server,
                        tool=check.tool,
                        digest=check.digest if trusted else "",
                        definition=text if trusted else None,
                        approved_by="tofu" if trusted else "",
                        approved_at=now if trusted else None,
                        first_seen=now,
                        seen_digest=check.digest,
                        seen_definition=text,
                        seen_at=now,
                        findings=found,
                    )
                )
                kind = "pinned" if trusted else "unapproved"
                await self._event(conn, server, check.tool, kind, check.digest, "", "tofu", found)
                continue
            if pin.seen_digest != check.digest and check.status is not PinStatus.PINNED:
                kind = "duplicate" if check.status is PinStatus.DUPLICATE else "drift"
                if pin.digest:
                    await self._event(
                        conn, server, check.tool, kind, check.digest, pin.digest, "", found
                    )
            await conn.execute(
                update(tool_pins)
                .where(tool_pins.c.server == server, tool_pins.c.tool == check.tool)
                .values(seen_digest=check.digest, seen_definition=text, seen_at=now, findings=found)
            )
        return checks

    async def _event(
        self,
        conn: AsyncConnection,
        server: str,
        tool: str,
        kind: str,
        digest: str,
        previous: str,
        actor: str,
        detail: str = "",
    ) -> None:
        await conn.execute(
            insert(pin_events).values(
                time=_ts(utcnow()),
                server=server,
                tool=tool,
                kind=kind,
                digest=digest,
                previous_digest=previous,
                actor=actor,
                detail=detail,
            )
        )

    # ------------------------------------------------------------------ human decisions

    async def approve(
        self, server: str, tool: str | None = None, *, actor: str, digest_prefix: str = ""
    ) -> list[Pin]:
        """Accept the latest seen definition of one tool, or of every drifted/unapproved tool.

        With `digest_prefix`, only a seen definition whose digest starts with it is accepted,
        so what gets approved is exactly what the human reviewed.
        """
        changed: list[Pin] = []
        try:
            async with self._writing() as conn:
                query = select(tool_pins).where(tool_pins.c.server == server)
                if tool is not None:
                    query = query.where(tool_pins.c.tool == tool)
                for row in (await conn.execute(query)).all():
                    pin = _pin(row)
                    if not pin.seen_digest or pin.seen_digest == pin.digest:
                        continue
                    if digest_prefix and not pin.seen_digest.startswith(digest_prefix):
                        continue
                    now = _ts(utcnow())
                    await conn.execute(
                        update(tool_pins)
                        .where(tool_pins.c.server == server, tool_pins.c.tool == pin.tool)
                        .values(
                            digest=pin.seen_digest,
                            definition=row.seen_definition,
                            approved_by=actor,
                            approved_at=now,
                        )
                    )
                    await self._event(
                        conn, server, pin.tool, "approved", pin.seen_digest, pin.digest, actor
                    )
                    changed.append(pin)
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot approve pins: {exc}") from exc
        return changed

    async def preapprove(
        self, server: str, tools: Sequence[Mapping[str, Any]], *, actor: str
    ) -> list[str]:
        """Pin the given definitions as approved (before or instead of first use)."""
        names: list[str] = []
        try:
            async with self._writing() as conn:
                for tool in tools:
                    name = tool.get("name")
                    if not isinstance(name, str) or not name:
                        raise PinStoreError("every tool definition needs a string `name`")
                    digest = definition_digest(tool)
                    text = canonical_text(canonical_definition(tool))
                    now = _ts(utcnow())
                    row = (
                        await conn.execute(
                            select(tool_pins).where(
                                tool_pins.c.server == server, tool_pins.c.tool == name
                            )
                        )
                    ).first()
                    values = {
                        "digest": digest,
                        "definition": text,
                        "approved_by": actor,
                        "approved_at": now,
                    }
                    if row is None:
                        await conn.execute(
                            insert(tool_pins).values(
                                server=server, tool=name, first_seen=None, findings="[]", **values
                            )
                        )
                    else:
                        await conn.execute(
                            update(tool_pins)
                            .where(tool_pins.c.server == server, tool_pins.c.tool == name)
                            .values(**values)
                        )
                    previous = row.digest if row is not None else ""
                    await self._event(conn, server, name, "approved", digest, previous or "", actor)
                    names.append(name)
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot pre-approve pins: {exc}") from exc
        return names

    async def reset(self, server: str | None = None, tool: str | None = None, *, actor: str) -> int:
        """Forget pins (all, one server's, or one tool's); they are re-pinned on next sight."""
        query = delete(tool_pins)
        if server is not None:
            query = query.where(tool_pins.c.server == server)
        if tool is not None:
            query = query.where(tool_pins.c.tool == tool)
        try:
            async with self._writing() as conn:
                count = (await conn.execute(query)).rowcount or 0
                await self._event(conn, server or "*", tool or "*", "reset", "", "", actor)
        except SQLAlchemyError as exc:
            raise PinStoreError(f"cannot reset pins: {exc}") from exc
        return int(count)
