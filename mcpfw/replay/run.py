"""One `mcpfw replay` run: load the candidate rules, gather the calls, diff, maybe execute.

The CLI only parses options and renders; everything a replay does lives here, so tests and
scripts can run a replay without click.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mcpfw.policy import ArgLimits, RuleSet, RuleSetError, load_ruleset
from mcpfw.recording.format import RecordingFormatError
from mcpfw.replay.core import ReplayCall, ReplayReport, replay
from mcpfw.replay.errors import ReplayError
from mcpfw.replay.execute import ExecReport, execute
from mcpfw.replay.sources import CallFilter, calls_from_files

__all__ = ["ReplayOutcome", "ReplayRequest", "load_candidate", "run_replay"]

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayRequest:
    """Everything `mcpfw replay` was asked to do."""

    rules: tuple[Path, ...]
    engine: str | None = None
    files: tuple[Path, ...] = ()
    sessions: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    agent: str | None = None
    recorded_only: bool = False
    execute: bool = False
    upstream_command: tuple[str, ...] = ()
    upstream_url: str | None = None
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    audit_url: str | None = None
    config_path: Path | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayOutcome:
    """The diff, and the re-execution report when --execute was given."""

    ruleset: RuleSet
    report: ReplayReport
    execution: ExecReport | None = None
    sources: tuple[str, ...] = ()  # what was read, for the summary line


def load_candidate(
    paths: tuple[Path, ...], *, engine: str | None, limits: ArgLimits | None = None
) -> RuleSet:
    """Load the candidate rule set; every load error becomes one ReplayError message."""
    for p in paths:
        if not p.exists():
            raise ReplayError(f"--rules {p}: no such file or directory")
    try:
        return load_ruleset(list(paths), engine=engine or "auto", limits=limits)
    except RuleSetError as exc:
        lines = "\n".join(f"  {e}" for e in exc.errors)
        raise ReplayError(
            f"the candidate rules do not load ({len(exc.errors)} error(s)):\n{lines}"
        ) from None


async def gather_calls(request: ReplayRequest) -> tuple[list[ReplayCall], tuple[str, ...]]:
    """The calls to replay, in time order, and a description of where they came from."""
    flt = CallFilter(
        sessions=request.sessions, agent=request.agent, since=request.since, until=request.until
    )
    if request.files:
        try:
            calls = calls_from_files(request.files, flt)
        except RecordingFormatError as exc:
            raise ReplayError(str(exc)) from None
        return calls, tuple(str(f) for f in request.files)
    from mcpfw.replay.db import calls_from_database

    return await calls_from_database(
        request.audit_url,
        request.config_path,
        flt,
        recorded_only=request.recorded_only,
        with_outcomes=request.execute,  # result digests matter only when re-executing
    )


async def run_replay(request: ReplayRequest, on_progress: Progress | None = None) -> ReplayOutcome:
    """Run one replay end to end."""
    from mcpfw.replay.db import limits_for, redactor_for

    ruleset = load_candidate(
        request.rules, engine=request.engine, limits=limits_for(request.config_path)
    )
    calls, sources = await gather_calls(request)
    total = len(calls)

    def progress(done: int) -> None:
        if on_progress is not None:
            on_progress(done, total)

    report = replay(ruleset, calls, on_progress=progress)
    execution = None
    if request.execute:
        from mcpfw.replay.upstream import UpstreamConnectError, connect_upstream

        redact = redactor_for(request.config_path)

        def connect() -> object:
            return connect_upstream(
                command=request.upstream_command or None,
                url=request.upstream_url,
                headers=request.upstream_headers,
            )

        try:
            execution = await execute(
                ruleset,
                calls,
                connect,  # type: ignore[arg-type]
                redact=lambda v: redact(v)[0],
                timeout_s=request.timeout_s,
                on_progress=progress,
            )
        except UpstreamConnectError as exc:
            raise ReplayError(str(exc)) from None
    return ReplayOutcome(ruleset=ruleset, report=report, execution=execution, sources=sources)
