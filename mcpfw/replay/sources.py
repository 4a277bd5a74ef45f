"""Where replayed calls come from: recording files, recorded sessions in the audit
database, and the audit log's decision events (for calls that were never fully recorded).

Every source yields `ReplayCall`s. When a call is both recorded and in the audit log, the
recording wins (it has the full result and the tool annotations) and the decision event
is skipped, so no call is replayed twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from mcpfw.recording.format import Recording, load_jsonl
from mcpfw.recording.store import list_sessions, load_recording, session_ids_matching
from mcpfw.replay.calls import calls_from_recording
from mcpfw.replay.core import ReplayCall
from mcpfw.replay.errors import ReplayError

__all__ = [
    "CallFilter",
    "SessionNotFoundError",
    "calls_from_files",
    "filter_calls",
    "recordings_from_db",
]


class SessionNotFoundError(ReplayError):
    """A session id given on the command line is not in the database."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CallFilter:
    """Which calls to replay."""

    sessions: tuple[str, ...] = ()
    agent: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def accepts(self, rc: ReplayCall) -> bool:
        """True when the call passes every filter."""
        if self.agent and rc.call.agent.id != self.agent:
            return False
        if self.since is not None and rc.call.time < self.since:
            return False
        return not (self.until is not None and rc.call.time >= self.until)


def filter_calls(calls: Iterable[ReplayCall], flt: CallFilter) -> Iterator[ReplayCall]:
    """The calls that pass `flt`."""
    return (rc for rc in calls if flt.accepts(rc))


def calls_from_files(paths: Sequence[str | Path], flt: CallFilter) -> list[ReplayCall]:
    """Every call of the recording files (RecordingFormatError on a bad file)."""
    out: list[ReplayCall] = []
    for path in paths:
        recording = load_jsonl(path)
        out.extend(filter_calls(calls_from_recording(recording), flt))
    return out


async def resolve_session(engine: AsyncEngine, given: str) -> str:
    """A full session id from a full or unambiguous short one."""
    found = await session_ids_matching(engine, given)
    if not found:
        raise SessionNotFoundError(f"no recorded session {given!r} in the audit database")
    if len(found) > 1:
        raise SessionNotFoundError(
            f"session {given!r} is ambiguous: it starts {', '.join(found[:5])}; give more of it"
        )
    return found[0]


async def recordings_from_db(
    engine: AsyncEngine, flt: CallFilter
) -> tuple[list[Recording], list[str]]:
    """The recorded sessions the filter names (all when it names none), and the given
    session ids that are not recorded (they may still have decision events)."""
    missing: list[str] = []
    if flt.sessions:
        ids = []
        for given in flt.sessions:
            try:
                ids.append(await resolve_session(engine, given))
            except SessionNotFoundError:
                missing.append(given)
    else:
        summaries = await list_sessions(engine, agent=flt.agent, until=flt.until)
        ids = [s.header.session_id for s in reversed(summaries)]
    out = []
    for sid in ids:
        recording = await load_recording(engine, sid)
        if recording is not None:
            out.append(recording)
    return out, missing
