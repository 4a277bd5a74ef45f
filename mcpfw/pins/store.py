"""Pins in the audit database: one row per (server, tool), plus a history of pin events.

Works on the audit store's `database()` (sql.py): plain `sqlite3` under `mcpfw run`, a
SQLAlchemy engine elsewhere (SQLite or PostgreSQL); an engine can be passed directly too.
Several firewall processes may share one database: first-use pinning tolerates a concurrent
insert of the same pin, and every change is a single transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from mcpfw.audit.sql import Database, DuplicateKey, SqlError, Transaction
from mcpfw.model import utcnow
from mcpfw.pins.canonical import canonical_definition, definition_digest
from mcpfw.pins.drift import Pin, PinStatus, ToolCheck, canonical_text, compare
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.scanner import Finding, finding_dict

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["PinEvent", "PinStore", "PinStoreError"]

_PIN_COLUMNS = (
    "server",
    "tool",
    "digest",
    "definition",
    "approved_by",
    "approved_at",
    "first_seen",
    "seen_digest",
    "seen_definition",
    "seen_at",
    "findings",
)
_INSERT_PIN = (
    f"INSERT INTO tool_pins ({', '.join(_PIN_COLUMNS)}) "
    f"VALUES ({', '.join(':' + c for c in _PIN_COLUMNS)})"
)
_INSERT_EVENT = (
    "INSERT INTO tool_pin_events "
    "(time, server, tool, kind, digest, previous_digest, actor, detail) "
    "VALUES (:time, :server, :tool, :kind, :digest, :previous_digest, :actor, :detail)"
)
_PINS = "SELECT * FROM tool_pins"
_ORDER = " ORDER BY server, tool"


class PinEvent(dict[str, Any]):
    """One row of the pin history: time, server, tool, kind, digest, previous_digest, actor."""


def _ts(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text, like the audit log's times."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _aware(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _pin(row: Mapping[str, Any]) -> Pin:
    findings = _json(row["findings"]) or []
    return Pin(
        server=row["server"],
        tool=row["tool"],
        digest=row["digest"] or "",
        definition=_json(row["definition"]),
        approved_by=row["approved_by"] or "",
        approved_at=_aware(row["approved_at"]),
        first_seen=_aware(row["first_seen"]),
        seen_digest=row["seen_digest"] or "",
        seen_definition=_json(row["seen_definition"]),
        seen_at=_aware(row["seen_at"]),
        findings=tuple(findings),
    )


def _where(server: str | None, tool: str | None) -> tuple[str, dict[str, Any]]:
    """A WHERE clause for an optional server and tool (empty when both are None)."""
    terms, params = [], {}
    if server is not None:
        terms.append("server = :server")
        params["server"] = server
    if tool is not None:
        terms.append("tool = :tool")
        params["tool"] = tool
    return (" WHERE " + " AND ".join(terms) if terms else ""), params


class PinStore:
    """Read and change pins in the audit database (a `Database`, or an async engine)."""

    def __init__(self, database: Database | AsyncEngine) -> None:
        if isinstance(database, Database):
            self.database: Database = database
        else:
            from mcpfw.audit.sql_sa import SaDatabase

            self.database = SaDatabase(database)

    async def create_tables(self) -> None:
        """Create the pin tables if missing (the audit migrations do this for real stores)."""
        from mcpfw.audit.sql_sa import SaDatabase

        if not isinstance(self.database, SaDatabase):
            raise PinStoreError("create_tables needs an engine: open the store with open_store")
        from mcpfw.pins.tables import pin_events, tool_pins

        async with self.database.engine.begin() as conn:
            await conn.run_sync(
                lambda sync: tool_pins.metadata.create_all(
                    sync, tables=[tool_pins, pin_events], checkfirst=True
                )
            )

    async def _read(self, what: str, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        try:
            async with self.database.transaction() as tx:
                return await tx.rows(sql, params)
        except SqlError as exc:
            raise PinStoreError(f"cannot read {what}: {exc}") from exc

    # ------------------------------------------------------------------ reading

    async def pins(self, server: str | None = None, tool: str | None = None) -> list[Pin]:
        """Pins ordered by server and tool, optionally for one server (and one tool)."""
        where, params = _where(server, tool)
        return [_pin(row) for row in await self._read("pins", _PINS + where + _ORDER, params)]

    async def pin(self, server: str, tool: str) -> Pin | None:
        """One pin, or None."""
        found = await self.pins(server, tool)
        return found[0] if found else None

    async def tool_names(self, *, exclude_server: str) -> set[str]:
        """Names of the tools pinned for every other server (for shadowing checks)."""
        sql = "SELECT tool FROM tool_pins WHERE server <> :server"
        return {row["tool"] for row in await self._read("pins", sql, {"server": exclude_server})}

    async def events(self, server: str | None = None, tool: str | None = None) -> list[PinEvent]:
        """The pin history, oldest first."""
        where, params = _where(server, tool)
        sql = "SELECT * FROM tool_pin_events" + where + " ORDER BY id"
        out = []
        for row in await self._read("pin events", sql, params):
            event = PinEvent(row)
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
        where, params = _where(server, None)
        pins = {row["tool"]: _pin(row) for row in await self._read("pins", _PINS + where, params)}
        checks = compare(pins, tools, trust_on_first_use=trust_on_first_use)
        if all(c.tool in pins and pins[c.tool].seen_digest == c.digest for c in checks):
            return checks
        for attempt in range(3):
            try:
                async with self.database.transaction(write=True) as tx:
                    return await self._observe(
                        tx, server, tools, findings or {}, trust_on_first_use
                    )
            except DuplicateKey:
                if attempt == 2:
                    raise PinStoreError("pins keep changing under us; giving up") from None
                continue  # another firewall pinned the same tool first: compare again
            except SqlError as exc:
                raise PinStoreError(f"cannot record pins: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _observe(
        self,
        tx: Transaction,
        server: str,
        tools: Sequence[Mapping[str, Any]],
        findings: Mapping[str, Sequence[Finding]],
        trust_on_first_use: bool,
    ) -> list[ToolCheck]:
        where, params = _where(server, None)
        pins = {row["tool"]: _pin(row) for row in await tx.rows(_PINS + where, params)}
        checks = compare(pins, tools, trust_on_first_use=trust_on_first_use)
        now = _ts(utcnow())
        for check in checks:
            found = json.dumps([finding_dict(f) for f in findings.get(check.tool, ())])
            text = canonical_text(check.definition)
            pin = pins.get(check.tool)
            if pin is None:
                trusted = check.status is PinStatus.NEW
                await tx.execute(
                    _INSERT_PIN,
                    {
                        "server": server,
                        "tool": check.tool,
                        "digest": check.digest if trusted else "",
                        "definition": text if trusted else None,
                        "approved_by": "tofu" if trusted else "",
                        "approved_at": now if trusted else None,
                        "first_seen": now,
                        "seen_digest": check.digest,
                        "seen_definition": text,
                        "seen_at": now,
                        "findings": found,
                    },
                )
                kind = "pinned" if trusted else "unapproved"
                await _event(tx, server, check.tool, kind, check.digest, "", "tofu", found)
                continue
            if pin.seen_digest != check.digest and check.status is not PinStatus.PINNED:
                kind = "duplicate" if check.status is PinStatus.DUPLICATE else "drift"
                if pin.digest:
                    await _event(tx, server, check.tool, kind, check.digest, pin.digest, "", found)
            await tx.execute(
                "UPDATE tool_pins SET seen_digest = :seen_digest, seen_definition = :text, "
                "seen_at = :now, findings = :findings WHERE server = :server AND tool = :tool",
                {
                    "seen_digest": check.digest,
                    "text": text,
                    "now": now,
                    "findings": found,
                    "server": server,
                    "tool": check.tool,
                },
            )
        return checks

    # ------------------------------------------------------------------ human decisions

    async def approve(
        self, server: str, tool: str | None = None, *, actor: str, digest_prefix: str = ""
    ) -> list[Pin]:
        """Accept the latest seen definition of one tool, or of every drifted/unapproved tool.

        With `digest_prefix`, only a seen definition whose digest starts with it is accepted,
        so what gets approved is exactly what the human reviewed.
        """
        changed: list[Pin] = []
        where, params = _where(server, tool)
        try:
            async with self.database.transaction(write=True) as tx:
                for row in await tx.rows(_PINS + where + _ORDER, params):
                    pin = _pin(row)
                    if not pin.seen_digest or pin.seen_digest == pin.digest:
                        continue
                    if digest_prefix and not pin.seen_digest.startswith(digest_prefix):
                        continue
                    await _approve(tx, server, pin.tool, pin.seen_digest, row["seen_definition"],
                                   actor)  # fmt: skip
                    await _event(tx, server, pin.tool, "approved", pin.seen_digest, pin.digest,
                                 actor)  # fmt: skip
                    changed.append(pin)
        except SqlError as exc:
            raise PinStoreError(f"cannot approve pins: {exc}") from exc
        return changed

    async def preapprove(
        self, server: str, tools: Sequence[Mapping[str, Any]], *, actor: str
    ) -> list[str]:
        """Pin the given definitions as approved (before or instead of first use)."""
        names: list[str] = []
        try:
            async with self.database.transaction(write=True) as tx:
                for tool in tools:
                    name = tool.get("name")
                    if not isinstance(name, str) or not name:
                        raise PinStoreError("every tool definition needs a string `name`")
                    digest = definition_digest(tool)
                    text = canonical_text(canonical_definition(tool))
                    where, params = _where(server, name)
                    rows = await tx.rows(_PINS + where, params)
                    if rows:
                        await _approve(tx, server, name, digest, text, actor)
                    else:
                        await tx.execute(
                            _INSERT_PIN,
                            {
                                **dict.fromkeys(_PIN_COLUMNS),
                                "server": server,
                                "tool": name,
                                "digest": digest,
                                "definition": text,
                                "approved_by": actor,
                                "approved_at": _ts(utcnow()),
                                "findings": "[]",
                            },
                        )
                    previous = rows[0]["digest"] if rows else ""
                    await _event(tx, server, name, "approved", digest, previous or "", actor)
                    names.append(name)
        except SqlError as exc:
            raise PinStoreError(f"cannot pre-approve pins: {exc}") from exc
        return names

    async def reset(self, server: str | None = None, tool: str | None = None, *, actor: str) -> int:
        """Forget pins (all, one server's, or one tool's); they are re-pinned on next sight."""
        where, params = _where(server, tool)
        try:
            async with self.database.transaction(write=True) as tx:
                count = await tx.execute("DELETE FROM tool_pins" + where, params)
                await _event(tx, server or "*", tool or "*", "reset", "", "", actor)
        except SqlError as exc:
            raise PinStoreError(f"cannot reset pins: {exc}") from exc
        return count


async def _approve(
    tx: Transaction, server: str, tool: str, digest: str, definition: str | None, actor: str
) -> None:
    await tx.execute(
        "UPDATE tool_pins SET digest = :digest, definition = :definition, "
        "approved_by = :actor, approved_at = :now WHERE server = :server AND tool = :tool",
        {
            "digest": digest,
            "definition": definition,
            "actor": actor,
            "now": _ts(utcnow()),
            "server": server,
            "tool": tool,
        },
    )


async def _event(
    tx: Transaction,
    server: str,
    tool: str,
    kind: str,
    digest: str,
    previous: str,
    actor: str,
    detail: str = "",
) -> None:
    await tx.execute(
        _INSERT_EVENT,
        {
            "time": _ts(utcnow()),
            "server": server,
            "tool": tool,
            "kind": kind,
            "digest": digest,
            "previous_digest": previous,
            "actor": actor,
            "detail": detail,
        },
    )
