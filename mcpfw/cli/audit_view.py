"""Rendering for `mcpfw audit`: rich tables and lines on a terminal, stable JSON shapes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcpfw.audit import AuditEvent, AuditStats, EventFilter, StatRow, VerifyReport

__all__ = [
    "event_line",
    "event_time",
    "fmt_time",
    "json_event",
    "n_events",
    "show_event",
    "stat_table",
    "stats_json",
    "tool",
    "verdict",
    "verify_json",
]

EFFECT_STYLE = {"allow": "green", "deny": "bold red", "ask": "yellow"}


def event_time(event: AuditEvent) -> str:
    return event.time.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def verdict(event: AuditEvent) -> Text:
    if event.kind == "decision" and event.effect:
        label = event.effect + ("" if event.enforced else " (monitor)")
        text = Text(label, style=EFFECT_STYLE.get(event.effect, ""))
        if event.shadow_effect:
            text.append(f" shadow:{event.shadow_effect}", style="dim")
        return text
    if event.kind == "outcome":
        return Text(event.outcome or "", style="cyan")
    return Text(event.kind.replace("_", " "), style="dim")


def tool(event: AuditEvent) -> str:
    return f"{event.server}/{event.tool}" if event.server and event.tool else event.tool


def event_line(event: AuditEvent) -> Text:
    line = Text(f"{event_time(event)}  {event.id}  ")
    line.append_text(verdict(event))
    parts = [event.agent_id, tool(event)]
    if event.rule:
        parts.append(f"rule={event.rule}")
    if event.kind == "outcome" and event.decision_id:
        parts.append(f"decision={event.decision_id}")
    if event.session_id:
        parts.append(f"session={event.session_id}")
    line.append("  " + "  ".join(p for p in parts if p))
    return line


def json_event(event: AuditEvent, outcome: AuditEvent | None = None) -> dict[str, Any]:
    out = event.to_json()
    if event.kind == "decision":
        out["outcome_event"] = None if outcome is None else outcome.to_json()
    return out


def show_event(console: Console, event: AuditEvent) -> None:
    table = Table(box=None, show_header=False, pad_edge=False, title_justify="left")
    table.title = f"{event.kind.replace('_', ' ')} {event.id}"
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows: list[tuple[str, Any]] = [
        ("time (UTC)", event_time(event)),
        ("chain", f"{event.instance} #{event.seq}"),
        ("session", event.session_id),
        ("agent", event.agent_id),
        ("tool", tool(event)),
    ]
    if event.kind == "decision":
        rows += [("decision", verdict(event)), ("rule", event.rule or "")]
    if event.kind == "outcome":
        rows += [("outcome", event.outcome or ""), ("decision id", event.decision_id or "")]
    for key, value in event.data.items():
        if value in (None, "", [], {}):
            continue
        if not isinstance(value, str):
            compact = json.dumps(value, ensure_ascii=False)
            value = compact if len(compact) <= 100 else json.dumps(value, indent=2)
        rows.append((key, value))
    rows += [("hash", event.hash), ("prev hash", event.prev_hash)]
    for key, value in rows:
        if value not in ("", None):
            table.add_row(key, value)
    console.print(table)


def n_events(n: int) -> str:
    return f"{n} event" if n == 1 else f"{n} events"


def fmt_time(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def stat_table(title: str, rows: tuple[StatRow, ...]) -> Table:
    table = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in ("", "calls", "allow", "deny", "ask", "shadow deny"):
        table.add_column(column, justify="left" if not column else "right")
    for r in rows:
        table.add_row(
            r.key or "-", str(r.calls), str(r.allows), str(r.denies), str(r.asks),
            str(r.shadow_denies),
        )  # fmt: skip
    return table


def stats_json(result: AuditStats, flt: EventFilter) -> dict[str, Any]:
    def rows(items: tuple[StatRow, ...]) -> list[dict[str, Any]]:
        return [
            {
                "key": r.key,
                "calls": r.calls,
                "allows": r.allows,
                "denies": r.denies,
                "asks": r.asks,
                "shadow_denies": r.shadow_denies,
            }
            for r in items
        ]

    return {
        "since": fmt_time(flt.since) or None,
        "until": fmt_time(flt.until) or None,
        "decisions": result.decisions,
        "allows": result.allows,
        "denies": result.denies,
        "asks": result.asks,
        "shadow_denies": result.shadow_denies,
        "unenforced": result.unenforced,
        "outcomes": result.outcomes,
        "by_agent": rows(result.by_agent),
        "by_tool": rows(result.by_tool),
        "by_rule": rows(result.by_rule),
    }


def verify_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "events": report.events,
        "chains": [
            {
                "instance": c.instance,
                "events": c.events,
                "checkpoint_seq": c.checkpoint_seq,
                "first_seq": c.first_seq,
                "last_seq": c.last_seq,
                "head_hash": c.head_hash,
                "broken": None
                if c.broken is None
                else {
                    "kind": c.broken.kind,
                    "seq": c.broken.seq,
                    "event_id": c.broken.event_id,
                    "message": c.broken.message,
                },
            }
            for c in report.chains
        ],
    }
