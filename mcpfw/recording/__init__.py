"""Session recording: every JSON-RPC message of a session, in order, redacted, linked to
its decisions; stored in the audit database and exported as versioned JSONL.

    async with open_recorder(store.engine, session_id=..., agent=..., server=...,
                             redact=message_redactor(redactor)) as recorder:
        recorder.record("c2s", message, decision=decision)   # never blocks
"""

from __future__ import annotations

from mcpfw.recording.format import (
    FORMAT,
    FORMAT_VERSION,
    Direction,
    RecordedDecision,
    RecordedMessage,
    Recording,
    RecordingFormatError,
    SessionHeader,
    canonical_json,
    dump_jsonl,
    dumps_jsonl,
    load_jsonl,
    parse_jsonl,
)
from mcpfw.recording.serve import RecordedUpstream
from mcpfw.recording.store import (
    SessionSummary,
    import_recording,
    list_sessions,
    load_recording,
    recording_messages,
    recording_sessions,
)
from mcpfw.recording.writer import SessionRecorder, message_redactor, open_recorder

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Direction",
    "RecordedDecision",
    "RecordedMessage",
    "RecordedUpstream",
    "Recording",
    "RecordingFormatError",
    "SessionHeader",
    "SessionRecorder",
    "SessionSummary",
    "canonical_json",
    "dump_jsonl",
    "dumps_jsonl",
    "import_recording",
    "list_sessions",
    "load_jsonl",
    "load_recording",
    "message_redactor",
    "open_recorder",
    "parse_jsonl",
    "recording_messages",
    "recording_sessions",
]
