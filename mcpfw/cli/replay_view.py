"""Rendering for `mcpfw sessions` and `mcpfw replay`: rich tables on a terminal, plain
text when piped, JSON for scripts, and a progress bar for large replays."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import click

from mcpfw.recording.format import Recording, canonical_json
from mcpfw.recording.store import SessionSummary
from mcpfw.replay.core import Change, ReplayReport
from mcpfw.replay.execute import ExecReport
from mcpfw.replay.run import ReplayOutcome

__all__ = ["print_recording", "print_replay", "print_sessions", "progress_bar"]

PROGRESS_THRESHOLD = 2000  # calls; smaller replays finish before a bar is worth drawing


def _terminal() -> bool:
    return sys.stdout.isatty()


def _rich(fmt: str | None) -> bool:
    return fmt == "table" or (fmt is None and _terminal())


def _short(value: Any, width: int = 60) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False))


@contextmanager
def progress_bar() -> Iterator[Callable[[int, int], None]]:
    """A (done, total) callback drawing a bar on a terminal stderr for large replays."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task: list[Any] = []

        def update(done: int, total: int) -> None:
            if total < PROGRESS_THRESHOLD:
                return
            if not task:
                task.append(bar.add_task("replaying", total=total))
            bar.update(task[0], completed=done, total=total)

        yield update


# ---------------------------------------------------------------- sessions


def print_sessions(summaries: Sequence[SessionSummary], *, fmt: str | None) -> None:
    """`mcpfw sessions list` output."""
    if fmt == "json":
        _echo_json(
            [{**s.header.to_json(), "messages": s.messages, "calls": s.calls} for s in summaries]
        )
        return
    if not summaries:
        click.echo("no recorded sessions (record with `mcpfw run --record` or `record: true`)")
        return
    rows = [
        (
            s.header.session_id,
            s.header.agent.id,
            s.header.server,
            s.header.started.isoformat(timespec="seconds"),
            "" if s.header.ended is None else s.header.ended.isoformat(timespec="seconds"),
            str(s.messages),
            str(s.calls),
        )
        for s in summaries
    ]
    _table(("session", "agent", "server", "started", "ended", "messages", "calls"), rows, fmt)


def print_recording(recording: Recording, *, fmt: str | None) -> None:
    """`mcpfw sessions show` output."""
    if fmt == "json":
        _echo_json(
            {
                "session": recording.header.to_json(),
                "messages": [
                    {
                        "seq": m.seq,
                        "time": m.time.isoformat(),
                        "direction": m.direction.value,
                        "source": m.source,
                        "message": m.message,
                        "decision_id": m.decision_id,
                        "redacted": list(m.redacted),
                    }
                    for m in recording.messages
                ],
                "decisions": {k: d.to_json() for k, d in recording.decisions.items()},
            }
        )
        return
    h = recording.header
    click.echo(
        f"session {h.session_id}  agent {h.agent.id}  server {h.server or '-'}  "
        f"started {h.started.isoformat(timespec='seconds')}  {len(recording.messages)} messages"
    )
    rows = []
    for m in recording.messages:
        arrow = "→" if m.direction.value == "c2s" else "←"
        what = m.method or ("error" if "error" in m.message else "result")
        decision = recording.decisions.get(m.decision_id or "")
        verdict = f"{decision.effect.value} ({decision.rule})" if decision else ""
        body = _body(m.message)
        rows.append(
            (
                str(m.seq),
                m.time.isoformat(timespec="milliseconds"),
                arrow + (" mcpfw" if m.source == "firewall" else ""),
                what,
                _short(body if body is not None else "", 70),
                verdict,
            )
        )
    _table(("seq", "time", "dir", "message", "body", "decision"), rows, fmt)


def _body(message: Mapping[str, Any]) -> Any:
    """What a message says, without the `_meta` envelope that hides it in a narrow column."""
    if "method" in message:
        params = message.get("params")
        if not isinstance(params, Mapping):
            return ""
        if message["method"] == "tools/call":
            return f"{params.get('name')} {canonical_json(params.get('arguments') or {})}"
        return {k: v for k, v in params.items() if k != "_meta"}
    body = message.get("result", message.get("error"))
    if isinstance(body, Mapping):
        return {k: v for k, v in body.items() if k not in ("_meta", "resultType", "cacheScope")}
    return body if body is not None else ""


# ---------------------------------------------------------------- replay

_KIND_LABEL = {
    "newly_denied": "newly denied",
    "newly_allowed": "newly allowed",
    "newly_asked": "newly asked",
    "rule_changed": "rule changed",
}
_KIND_STYLE = {
    "newly_denied": "red",
    "newly_allowed": "yellow",
    "newly_asked": "magenta",
    "rule_changed": "cyan",
}


def _summary(report: ReplayReport) -> str:
    parts = [f"{report.counts.get(k, 0)} {label}" for k, label in _KIND_LABEL.items()]
    line = f"{report.total} calls replayed under candidate {report.revision[:12]}: " + ", ".join(
        parts
    )
    if report.uncertain:
        line += (
            f"; {report.uncertain} uncertain (redacted arguments: a masked value may decide "
            "the call)"
        )
    if report.candidate_errors:
        line += f"; {report.candidate_errors} calls hit candidate rule errors"
    return line


def print_replay(outcome: ReplayOutcome, *, fmt: str | None) -> None:
    """`mcpfw replay` output."""
    report = outcome.report
    if fmt == "json":
        data = report.to_json()
        data["sources"] = list(outcome.sources)
        if outcome.execution is not None:
            data["execution"] = outcome.execution.to_json()
        _echo_json(data)
        return
    if report.changes:
        rows = [_change_row(c) for c in report.changes]
        _table(
            ("change", "agent", "tool", "arguments", "before", "after", "where"),
            rows,
            fmt,
            styles=[_KIND_STYLE[c.kind.value] for c in report.changes],
        )
    if report.uncertain_unchanged:
        click.echo(
            f"{len(report.uncertain_unchanged)} unchanged call(s) had redacted arguments and "
            "could not be judged with certainty:"
        )
        for rc in report.uncertain_unchanged[:20]:
            click.echo(f"  {rc.where}: {rc.call.tool} ({', '.join(p or '/' for p in rc.redacted)})")
    if outcome.execution is not None:
        _print_execution(outcome.execution, fmt)
    click.echo(_summary(report))
    click.echo("changed" if report.changed else "no decision would change")


def _change_row(c: Change) -> tuple[str, ...]:
    label = _KIND_LABEL[c.kind.value] + (" ?" if c.uncertain else "")
    return (
        label,
        c.call.call.agent.id,
        c.call.call.tool,
        _short(dict(c.call.call.arguments), 48),
        f"{c.before.effect.value} ({c.before.rule})",
        f"{c.after.effect.value} ({c.after.rule})",
        c.call.where,
    )


def _print_execution(execution: ExecReport, fmt: str | None) -> None:
    rows = [
        (
            r.status.value,
            r.call.call.tool,
            _short(dict(r.call.call.arguments), 40),
            r.detail,
            r.call.where,
        )
        for r in execution.results
    ]
    if rows:
        _table(("result", "tool", "arguments", "detail", "where"), rows, fmt)
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in execution.counts.items())
    click.echo(f"re-executed against the live upstream: {counts or 'no calls'}")


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    fmt: str | None,
    *,
    styles: Sequence[str] | None = None,
) -> None:
    if _rich(fmt):
        from rich.console import Console
        from rich.table import Table

        table = Table(*headers, show_lines=False)
        for i, row in enumerate(rows):
            table.add_row(*row, style=styles[i] if styles else None)
        Console().print(table)
        return
    click.echo("\t".join(headers))
    for row in rows:
        click.echo("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
