"""`mcpfw sessions`, `mcpfw replay` and `mcpfw serve-recording`.

Exit codes of `mcpfw replay` are made for CI gates: 0 nothing would change, 1 something
would change (or, with --execute, a result differs), 2 the replay could not run.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import anyio
import click

from mcpfw.recording.format import RecordingFormatError, dump_jsonl, load_jsonl
from mcpfw.replay.errors import ReplayError

__all__ = ["parse_time", "replay", "serve_recording", "sessions"]


class CommandError(click.ClickException):
    """A user-fixable problem; exits 2 (1 is reserved for "something changed")."""

    exit_code = 2


_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 date/time (UTC if no zone) or a relative age like 30m, 24h, 7d, 2w."""
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: use ISO 8601 (2026-01-31, 2026-01-31T09:00Z) "
            "or an age (30m, 24h, 7d, 2w)"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _time_option(name: str, help_text: str) -> Callable[[Any], Any]:
    return click.option(
        name,
        callback=lambda _c, _p, v: None if v is None else parse_time(v),
        help=help_text,
    )


_audit_option = click.option(
    "--audit",
    "audit_url",
    metavar="URL",
    help="Audit database (a file path, sqlite:/// or postgresql:// URL). "
    "Default: the config's audit.url, else the per-user database.",
)
_config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="mcpfw.yaml to take the audit URL and redaction settings from.",
)
_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default=None,
    help="Output format (default: a table on a terminal, plain text when piped).",
)


def _fail(message: str) -> NoReturn:
    raise CommandError(message)


def _load_recording_or_fail(path: Path) -> Any:
    try:
        return load_jsonl(path)
    except RecordingFormatError as exc:
        _fail(str(exc))


# ---------------------------------------------------------------- sessions


@click.group()
def sessions() -> None:
    """Recorded sessions: list, show, export, import, prune."""


@sessions.command("list")
@_audit_option
@_config_option
@click.option("--agent", help="Only sessions of this agent.")
@_time_option("--since", "Only sessions started at or after this time (ISO 8601 or 7d, 24h).")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_format_option
def list_(
    audit_url: str | None,
    config_path: Path | None,
    agent: str | None,
    since: datetime | None,
    limit: int,
    fmt: str | None,
) -> None:
    """List recorded sessions, newest first."""
    from mcpfw.cli import replay_view
    from mcpfw.replay.db import list_recorded_sessions

    summaries = _run(
        list_recorded_sessions, audit_url, config_path, agent=agent, since=since, limit=limit
    )
    replay_view.print_sessions(summaries, fmt=fmt)


@sessions.command("show")
@click.argument("session")
@_audit_option
@_config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl"]),
    default=None,
    help="table (default on a terminal), json, or jsonl (the export format).",
)
def show(session: str, audit_url: str | None, config_path: Path | None, fmt: str | None) -> None:
    """Show a recorded session's messages in order."""
    from mcpfw.cli import replay_view
    from mcpfw.replay.db import get_recording

    recording = _run(get_recording, audit_url, config_path, session)
    if fmt == "jsonl":
        dump_jsonl(recording, sys.stdout)
        return
    replay_view.print_recording(recording, fmt=fmt)


@sessions.command("export")
@click.argument("session")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (default: standard output).",
)
@_audit_option
@_config_option
def export(
    session: str, output: Path | None, audit_url: str | None, config_path: Path | None
) -> None:
    """Export a recorded session as versioned JSONL."""
    from mcpfw.replay.db import get_recording

    recording = _run(get_recording, audit_url, config_path, session)
    if output is None:
        dump_jsonl(recording, sys.stdout)
        return
    try:
        dump_jsonl(recording, output)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(
        f"exported session {recording.header.session_id} "
        f"({len(recording.messages)} messages) to {output}",
        err=True,
    )


@sessions.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@_audit_option
@_config_option
def import_(files: tuple[Path, ...], audit_url: str | None, config_path: Path | None) -> None:
    """Import JSONL session recordings into the audit database."""
    from mcpfw.replay.db import import_recordings

    recordings = [_load_recording_or_fail(f) for f in files]
    _run(import_recordings, audit_url, config_path, recordings)
    for f, rec in zip(files, recordings, strict=True):
        click.echo(
            f"imported session {rec.header.session_id} ({len(rec.messages)} messages) from {f}"
        )


@sessions.command("prune")
@click.option(
    "--before",
    required=True,
    callback=lambda _c, _p, v: parse_time(v),
    help="Delete recordings of sessions started before this time (ISO 8601 or 30d).",
)
@_audit_option
@_config_option
def prune(before: datetime, audit_url: str | None, config_path: Path | None) -> None:
    """Delete old recorded sessions (the audit log's decision events are kept)."""
    from mcpfw.replay.db import prune_recordings

    n_sessions, n_messages = _run(prune_recordings, audit_url, config_path, before)
    click.echo(
        f"deleted {n_sessions} recorded session(s), {n_messages} message(s) "
        f"started before {before.isoformat()}"
    )


# ---------------------------------------------------------------- replay


class _CommandAfterDashes(click.Command):
    """Keeps everything after `--` as the upstream command (not as SESSION arguments)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["mcpfw.upstream_command"] = tuple(args[cut + 1 :])
            args = args[:cut]
        return super().parse_args(ctx, args)


@click.command(cls=_CommandAfterDashes)
@click.option(
    "--rules",
    "rules",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="The candidate rule files or directories (repeatable).",
)
@click.argument("session_ids", metavar="[SESSION]...", nargs=-1)
@_time_option("--since", "Only calls at or after this time (ISO 8601 or an age: 7d, 24h).")
@_time_option("--until", "Only calls before this time.")
@click.option("--agent", help="Only calls of this agent.")
@click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Replay a JSONL recording instead of the database (repeatable).",
)
@click.option(
    "--recorded-only",
    is_flag=True,
    help="Only recorded sessions; skip decision events that were not recorded.",
)
@click.option("--engine", type=click.Choice(["auto", "cel-expr", "cel-python"]), default=None)
@click.option(
    "--fail-on-uncertain",
    is_flag=True,
    help="Exit 1 also when calls with redacted arguments could not be judged.",
)
@click.option("--execute", is_flag=True, help="Re-send allowed calls to a live upstream.")
@click.option("--upstream-url", metavar="URL", help="The live upstream for --execute (HTTP).")
@click.option(
    "--upstream-header",
    "upstream_headers",
    multiple=True,
    metavar="NAME:VALUE",
    help="An HTTP header for the live upstream (repeatable).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds to wait for each re-executed call.",
)
@_audit_option
@_config_option
@_format_option
@click.pass_context
def replay(
    ctx: click.Context,
    rules: tuple[Path, ...],
    session_ids: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    agent: str | None,
    files: tuple[Path, ...],
    recorded_only: bool,
    engine: str | None,
    fail_on_uncertain: bool,
    execute: bool,
    upstream_url: str | None,
    upstream_headers: tuple[str, ...],
    timeout_s: float,
    audit_url: str | None,
    config_path: Path | None,
    fmt: str | None,
) -> None:
    """Re-decide recorded tool calls under candidate rules and show what would change.

    \b
    Exit status: 0 nothing would change, 1 something would change, 2 error.
    \b
    mcpfw replay --rules rules-new/ --since 7d
    mcpfw replay --rules rules-new/ --file session.jsonl --format json
    mcpfw replay --rules rules-new/ --file s.jsonl --execute -- npx my-mcp-server
    """
    from mcpfw.cli import replay_view
    from mcpfw.replay.run import ReplayRequest, run_replay

    command: tuple[str, ...] = ctx.meta.get("mcpfw.upstream_command", ())
    if execute and not (command or upstream_url):
        _fail("--execute needs a live upstream: --upstream-url URL, or -- <command...> at the end")
    if (command or upstream_url) and not execute:
        _fail("an upstream was given without --execute; add --execute to re-send calls")
    if command and upstream_url:
        _fail("give either --upstream-url or -- <command...>, not both")
    if files and session_ids:
        _fail("give either --file recordings or SESSION ids from the database, not both")
    headers: dict[str, str] = {}
    for h in upstream_headers:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            _fail(f"--upstream-header {h!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    request = ReplayRequest(
        rules=rules,
        engine=engine,
        files=files,
        sessions=session_ids,
        since=since,
        until=until,
        agent=agent,
        recorded_only=recorded_only,
        execute=execute,
        upstream_command=command,
        upstream_url=upstream_url,
        upstream_headers=headers,
        timeout_s=timeout_s,
        audit_url=audit_url,
        config_path=config_path,
    )
    progress = replay_view.progress_bar()
    try:
        with progress as on_progress:
            outcome = anyio.run(run_replay, request, on_progress)
    except ReplayError as exc:
        _fail(str(exc))
    replay_view.print_replay(outcome, fmt=fmt)
    if outcome.report.total == 0:
        click.echo(
            "mcpfw: warning: no recorded tool calls matched ("
            + "; ".join(outcome.sources)
            + "): nothing was compared",
            err=True,
        )
    changed = outcome.report.changed or (
        outcome.execution is not None and outcome.execution.changed
    )
    if fail_on_uncertain and outcome.report.uncertain_unchanged:
        changed = True
    ctx.exit(1 if changed else 0)


# ---------------------------------------------------------------- serve-recording


@click.command("serve-recording")
@click.argument("recording_file", type=click.Path(path_type=Path))
@_config_option
@click.option("--http", "http", is_flag=True, help="Serve streamable HTTP at /mcp, not stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP bind address.")
@click.option("--port", type=click.IntRange(0, 65535), default=8766, show_default=True)
def serve_recording(
    recording_file: Path, config_path: Path | None, http: bool, host: str, port: int
) -> None:
    """Serve a JSONL recording as an MCP server (for offline agent and policy tests).

    Answers initialize / server/discover, tools/list and every recorded request with the
    recorded response; a request that was never recorded gets a JSON-RPC error naming it.
    Stdio by default; --http serves http://HOST:PORT/mcp.
    """
    from mcpfw.recording.serve import RecordedUpstream, serve_stdio
    from mcpfw.replay.db import redactor_for

    recording = _load_recording_or_fail(recording_file)
    redact = _call_or_fail(redactor_for, config_path)
    upstream = RecordedUpstream(recording, redact=lambda v: redact(v)[0])
    if not http:
        anyio.run(serve_stdio, upstream)
        return
    import uvicorn

    from mcpfw.recording.serve_http import recording_app

    click.echo(f"serving {recording_file} at http://{host}:{port}/mcp", err=True)
    config = uvicorn.Config(
        recording_app(upstream), host=host, port=port, log_level="warning", access_log=False
    )
    try:
        uvicorn.Server(config).run()
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


# ---------------------------------------------------------------- helpers


def _call_or_fail(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except ReplayError as exc:
        _fail(str(exc))


def _run(
    fn: Callable[..., Any],
    audit_url: str | None,
    config_path: Path | None,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run an async database helper, turning user-fixable errors into exit 2."""

    async def main() -> Any:
        return await fn(audit_url, config_path, *args, **kwargs)

    try:
        return anyio.run(main)
    except ReplayError as exc:
        _fail(str(exc))


if __name__ == "__main__":  # `python -m mcpfw.cli.replay_cmds serve-recording ...` (tests)
    from mcpfw.cli import main

    main()
