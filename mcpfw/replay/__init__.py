"""Replay: re-decide recorded tool calls under a candidate rule set and show what changes.

    report = replay(load_ruleset(["rules-new/"]), calls_from_recording(load_jsonl(path)))
    report.changed, report.changes, report.to_json()

The core (`core.py`, `calls.py`) is pure and synchronous; `db.py` reads the audit database,
`execute.py`/`upstream.py` re-send calls to a live upstream, `run.py` ties one CLI run
together.
"""

from __future__ import annotations

from mcpfw.replay.calls import calls_from_recording
from mcpfw.replay.core import Change, ChangeKind, ReplayCall, ReplayReport, diff_call, replay
from mcpfw.replay.errors import ReplayError

__all__ = [
    "Change",
    "ChangeKind",
    "ReplayCall",
    "ReplayError",
    "ReplayReport",
    "calls_from_recording",
    "diff_call",
    "replay",
]
