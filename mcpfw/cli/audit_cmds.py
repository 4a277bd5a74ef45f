"""`mcpfw audit`: review what agents did — list, show, tail, stats, export, verify, prune.

Every command reads the log at `--audit PATH_OR_URL` (default: `$MCPFW_AUDIT`, else the
default SQLite file) and never creates one. Rich tables on a terminal; `--format json|jsonl`
for scripts. Errors (missing or unreadable database, bad dates) exit 2 with a one-line
message; `verify` exits 1 when a chain is broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcpfw.audit import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    AuditError,
    AuditEvent,
    AuditStats,
    AuditStore,
    EventFilter,
    VerifyReport,
    default_audit_url,
    open_store,
)
from mcpfw.cli import audit_view as view
from mcpfw.model import utcnow

__all__ = ["audit"]

T = TypeVar("T")
KINDS = ("session_start", "decision", "outcome", "session_end")
TAIL_LOOKBACK = timedelta(seconds=5)


class AuditCliError(click.ClickException):
    """A user-facing error: one line, exit status 2."""

    exit_code = 2


def _console() -> Console:
    return Console(soft_wrap=False, highlight=False, width=None if sys.stdout.isatty() else 200)


def parse_when(value: str, *, option: str) -> datetime:
    """`2026-11-25`, `2026-11-25T10:00`, `...Z`/`+02:00`, `now`, or `30m`/`24h`/`7d`/`2w` ago."""
    text = value.strip()
    if text == "now":
        return utcnow()
    rel = re.fullmatch(r"(\d+)\s*([smhdw])", text)
    if rel:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
        return utcnow() - timedelta(**{unit[rel.group(2)]: int(rel.group(1))})
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise AuditCliError(
            f"{option} {value!r}: not a date; use 2026-11-25, 2026-11-25T10:00Z, "
            "or a span ago such as 30m, 24h, 7d"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except AuditError as exc:
        raise AuditCliError(str(exc)) from None


def _url(audit_url: str | None) -> str:
    return audit_url or default_audit_url()


def _with_store(fn: Callable[[AuditStore], Awaitable[T]], audit_url: str | None) -> T:
    async def body() -> T:
        async with open_store(_url(audit_url), create=False, instance="mcpfw-cli") as store:
            return await fn(store)

    return _run(body())


def audit_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`--audit PATH_OR_URL`."""
    return click.option(
        "--audit",
        "audit_url",
        envvar="MCPFW_AUDIT",
        metavar="PATH_OR_URL",
        help="Audit database: a SQLite file or a postgresql:// URL "
        "(default: $MCPFW_AUDIT, else ~/.local/share/mcpfw/audit.db).",
    )(fn)


def format_option(*choices: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format` with the given choices (the first is the default)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="Output format.",
    )


def filter_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The event filters shared by list, tail, stats and export."""
    options = [
        click.option("--agent", help="Agent id (globs: ci-*)."),
        click.option("--tool", help="Tool name (globs allowed)."),
        click.option("--server", help="Upstream server name (globs allowed)."),
        click.option("--effect", type=click.Choice(["allow", "deny", "ask"]), help="Decision."),
        click.option("--rule", help="Deciding rule id (globs allowed)."),
        click.option("--session", help="Session id."),
        click.option("--since", help="From this time: 2026-11-25, 2026-11-25T10:00Z, 24h, 7d."),
        click.option("--until", help="Up to this time (same forms as --since)."),
        click.option(
            "--shadow",
            is_flag=True,
            help="Only decisions that a shadow rule judged, or made in monitor mode.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)

    @wraps(fn)
    def wrapper(**kw: Any) -> Any:
        kw["flt"] = EventFilter(
            agent=kw.pop("agent"),
            tool=kw.pop("tool"),
            server=kw.pop("server"),
            effect=kw.pop("effect"),
            rule=kw.pop("rule"),
            session=kw.pop("session"),
            since=_maybe_when(kw.pop("since"), "--since"),
            until=_maybe_when(kw.pop("until"), "--until"),
            shadow=True if kw.pop("shadow") else None,
        )
        return fn(**kw)

    return wrapper


def _maybe_when(value: str | None, option: str) -> datetime | None:
    return None if value is None else parse_when(value, option=option)


def _kinds(kind: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    if not kind:
        return default
    return () if "all" in kind else tuple(kind)


def _with_kinds(flt: EventFilter, kinds: tuple[str, ...]) -> EventFilter:
    fields = {name: getattr(flt, name) for name in EventFilter.__dataclass_fields__}
    fields["kinds"] = kinds
    return EventFilter(**fields)


@click.group()
def audit() -> None:
    """Review the audit log: what agents called, what was decided, and whether it is intact."""


@audit.command("list")
@audit_option
@filter_options
@click.option(
    "--kind",
    multiple=True,
    type=click.Choice([*KINDS, "all"]),
    help="Event kinds to list (default: decision; repeatable; 'all').",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--page", default=1, show_default=True, type=click.IntRange(1), help="Page number.")
@format_option("table", "json", "jsonl")
def list_(
    audit_url: str | None,
    flt: EventFilter,
    kind: tuple[str, ...],
    limit: int,
    page: int,
    fmt: str,
) -> None:
    """List events, newest first, a page at a time."""
    flt = _with_kinds(flt, _kinds(kind, ("decision",)))

    async def body(store: AuditStore) -> tuple[list[AuditEvent], dict[str, AuditEvent]]:
        events = await store.list_events(flt, limit=limit, offset=(page - 1) * limit)
        ids = [e.id for e in events if e.kind == "decision"]
        return events, await store.outcomes_for(ids)

    events, outcomes = _with_store(body, audit_url)
    if fmt == "json":
        click.echo(json.dumps([view.json_event(e, outcomes.get(e.id)) for e in events], indent=2))
        return
    if fmt == "jsonl":
        for e in events:
            click.echo(json.dumps(view.json_event(e, outcomes.get(e.id))))
        return
    console = _console()
    if not events:
        console.print("no events match" + (f" on page {page}" if page > 1 else ""))
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("time (UTC)", "id", "agent", "tool", "decision", "rule", "outcome", "session"):
        table.add_column(column, no_wrap=column in ("time (UTC)", "id"))
    for e in events:
        result = outcomes.get(e.id)
        table.add_row(
            view.event_time(e),
            e.id,
            e.agent_id,
            view.tool(e),
            view.verdict(e),
            e.rule or "",
            (result.outcome or "") if result else ("" if e.kind != "decision" else "-"),
            e.session_id,
        )
    console.print(table)
    if len(events) == limit:
        console.print(f"[dim]page {page}: more with --page {page + 1}[/dim]")


@audit.command()
@audit_option
@click.argument("event_id")
@format_option("table", "json")
def show(audit_url: str | None, event_id: str, fmt: str) -> None:
    """Show one event (an id or a unique prefix of 6+ characters) with its outcome."""

    async def body(store: AuditStore) -> tuple[AuditEvent | None, AuditEvent | None]:
        event = await store.get_event(event_id)
        if event is None:
            return None, None
        if event.kind == "decision":
            return event, await store.get_outcome(event.id)
        if event.kind == "outcome" and event.decision_id:
            return event, await store.get_event(event.decision_id)
        return event, None

    event, related = _with_store(body, audit_url)
    if event is None:
        raise AuditCliError(f"no event {event_id!r} in the audit log (ids come from `audit list`)")
    if fmt == "json":
        key = "decision" if event.kind == "outcome" else "outcome"
        click.echo(
            json.dumps(
                {"event": event.to_json(), key: None if related is None else related.to_json()},
                indent=2,
            )
        )
        return
    console = _console()
    view.show_event(console, event)
    if related is not None:
        console.print()
        view.show_event(console, related)
    elif event.kind == "decision":
        console.print("\n[dim]no outcome recorded (yet)[/dim]")


@audit.command()
@audit_option
@filter_options
@click.option("-n", "--lines", default=10, show_default=True, type=click.IntRange(0))
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.01))
@click.option("--max-events", type=click.IntRange(1), help="Exit after printing this many.")
@format_option("text", "jsonl")
def tail(
    audit_url: str | None,
    flt: EventFilter,
    lines: int,
    interval: float,
    max_events: int | None,
    fmt: str,
) -> None:
    """Print the last events, then follow new ones as they are written (Ctrl-C stops)."""
    console = _console()

    def emit(event: AuditEvent) -> None:
        if fmt == "jsonl":
            click.echo(json.dumps(event.to_json()))
        else:
            console.print(view.event_line(event))

    async def body(store: AuditStore) -> None:
        printed = 0
        last = await store.list_events(flt, limit=max(lines, 1))
        for event in reversed(last[:lines] if lines else []):
            emit(event)
            printed += 1
            if max_events is not None and printed >= max_events:
                return
        mark = last[0].time if last else utcnow()
        seen: dict[str, datetime] = {e.id: e.time for e in last}
        fields = {n: getattr(flt, n) for n in EventFilter.__dataclass_fields__}
        first = True
        while True:
            if not first:
                await asyncio.sleep(interval)
            # Another writer's event can commit a moment after a newer one: re-read a short
            # window behind the newest event seen, and skip what was already printed.
            since = mark - TAIL_LOOKBACK
            fields["since"] = max(since, flt.since) if flt.since else since
            async for event in store.iter_events(EventFilter(**fields)):
                if event.id in seen:
                    continue
                seen[event.id] = event.time
                mark = max(mark, event.time)
                if first:
                    continue  # already there when tail started (and not asked for by -n)
                emit(event)
                printed += 1
                if max_events is not None and printed >= max_events:
                    return
            first = False
            if len(seen) > 10_000:
                horizon = mark - TAIL_LOOKBACK
                seen = {k: t for k, t in seen.items() if t >= horizon}

    with contextlib.suppress(KeyboardInterrupt):
        _with_store(body, audit_url)


@audit.command()
@audit_option
@filter_options
@click.option("--top", default=10, show_default=True, type=click.IntRange(1))
@format_option("table", "json")
def stats(audit_url: str | None, flt: EventFilter, top: int, fmt: str) -> None:
    """Calls, denies and asks by agent, tool and rule; the rules that deny most."""

    async def body(store: AuditStore) -> AuditStats:
        return await store.stats(flt, top=top)

    result = _with_store(body, audit_url)
    if fmt == "json":
        click.echo(json.dumps(view.stats_json(result, flt), indent=2))
        return
    console = _console()
    window = f"{view.fmt_time(flt.since) or 'the beginning'} to {view.fmt_time(flt.until) or 'now'}"
    console.print(
        f"[bold]{result.decisions}[/bold] decisions from {window}: "
        f"[green]{result.allows} allowed[/green], [red]{result.denies} denied[/red], "
        f"[yellow]{result.asks} asked[/yellow]; {result.shadow_denies} shadow denies; "
        f"{result.unenforced} in monitor mode"
    )
    if result.outcomes:
        console.print(
            "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items()))
        )
    for title, rows in (
        ("by agent", result.by_agent),
        ("by tool", result.by_tool),
        ("rules that deny most", result.by_rule),
    ):
        if rows:
            console.print(view.stat_table(title, rows))


@audit.command()
@audit_option
@filter_options
@click.option(
    "--kind",
    multiple=True,
    type=click.Choice([*KINDS, "all"]),
    help="Event kinds to export (default: all; repeatable).",
)
@click.option(
    "-o",
    "--output",
    type=click.File("w", encoding="utf-8"),
    default="-",
    help="File (default stdout).",
)
def export(audit_url: str | None, flt: EventFilter, kind: tuple[str, ...], output: Any) -> None:
    """Export events as JSONL, oldest first: a header line, then one event per line."""
    flt = _with_kinds(flt, _kinds(kind, ()))

    async def body(store: AuditStore) -> int:
        header = {
            "type": "header",
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "exported_at": utcnow().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "source": store.info.url,
        }
        output.write(json.dumps(header, ensure_ascii=False) + "\n")
        count = 0
        async for event in store.iter_events(flt):
            output.write(json.dumps({"type": "event", **event.to_json()}, ensure_ascii=False))
            output.write("\n")
            count += 1
        return count

    count = _with_store(body, audit_url)
    if output is not sys.stdout and getattr(output, "name", "-") != "<stdout>":
        click.echo(f"exported {count} events to {output.name}", err=True)


@audit.command()
@audit_option
@format_option("table", "json")
def verify(audit_url: str | None, fmt: str) -> None:
    """Recompute every hash chain; exit 1 at the first broken event of any chain."""

    async def body(store: AuditStore) -> VerifyReport:
        return await store.verify()

    report = _with_store(body, audit_url)
    if fmt == "json":
        click.echo(json.dumps(view.verify_json(report), indent=2))
    else:
        console = _console()
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("chain", "events", "from seq", "to seq", "status"):
            table.add_column(column, no_wrap=True)
        for chain in report.chains:
            status = (
                Text("ok", style="green")
                if chain.broken is None
                else Text(f"BROKEN: {chain.broken.kind}", style="bold red")
            )
            table.add_row(
                chain.instance,
                str(chain.events),
                str(chain.checkpoint_seq + 1),
                "" if chain.last_seq is None else str(chain.last_seq),
                status,
            )
        if report.chains:
            console.print(table)
        if report.ok:
            console.print(
                f"[green]OK[/green]: {report.events} events in {len(report.chains)} chains verified"
            )
        for chain in report.breaks:
            assert chain.broken is not None
            b = chain.broken
            console.print(
                f"[bold red]BROKEN[/bold red] chain {chain.instance}: {b.kind} at seq {b.seq}"
                + (f", event {b.event_id}" if b.event_id else "")
                + f": {b.message}"
            )
    if not report.ok:
        sys.exit(1)


@audit.command()
@audit_option
@click.option("--before", required=True, help="Delete events older than this: 2026-01-01, 90d.")
@click.option("--dry-run", is_flag=True, help="Count what would be pruned; change nothing.")
@click.option("--force", is_flag=True, help="Prune even if the log does not verify.")
@format_option("table", "json")
def prune(audit_url: str | None, before: str, dry_run: bool, force: bool, fmt: str) -> None:
    """Delete old events, keeping a checkpoint so the rest still verifies."""
    cutoff = parse_when(before, option="--before")

    async def body(store: AuditStore) -> Any:
        return await store.prune(cutoff, dry_run=dry_run, force=force)

    result = _with_store(body, audit_url)
    if fmt == "json":
        click.echo(
            json.dumps(
                {
                    "before": view.fmt_time(cutoff),
                    "dry_run": dry_run,
                    "pruned": result.pruned,
                    "chains": [
                        {
                            "instance": c.instance,
                            "pruned": c.pruned,
                            "checkpoint_seq": c.checkpoint_seq,
                            "checkpoint_hash": c.checkpoint_hash,
                        }
                        for c in result.chains
                    ],
                },
                indent=2,
            )
        )
        return
    console = _console()
    verb = "would prune" if dry_run else "pruned"
    console.print(f"{verb} {view.n_events(result.pruned)} older than {view.fmt_time(cutoff)}")
    for c in result.chains:
        console.print(
            f"  {c.instance}: {view.n_events(c.pruned)}, checkpoint at seq {c.checkpoint_seq} "
            f"({c.checkpoint_hash[:16]}…)"
        )
