"""The recorded-session records and their versioned JSONL form.

A recording is one session between one agent and one upstream: a header (who, which
server, when) and every JSON-RPC message in the order the firewall relayed it, each with
its time, its direction, and, for a `tools/call`, the decision the firewall took. Messages
are stored redacted (the audit log's redaction), and each lists the JSON pointers that
were masked, so replay can tell which calls it cannot judge with certainty.

JSONL layout (one JSON object per line, UTF-8):

    {"format": "mcpfw-session", "version": 1, "session": {...header...}}
    {"seq": 1, "time": "...", "direction": "c2s", "message": {...}, "decision_id": null, ...}
    ...

A message line that carries a decision for the first time embeds it as `"decision"`, so an
exported file is self-contained: it can be replayed and served without the database.
"""

from __future__ import annotations

import enum
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from mcpfw.model import Agent, Decision, Effect

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Direction",
    "RecordedDecision",
    "RecordedMessage",
    "Recording",
    "RecordingFormatError",
    "SessionHeader",
    "canonical_json",
    "dump_jsonl",
    "dumps_jsonl",
    "load_jsonl",
    "parse_jsonl",
]

FORMAT = "mcpfw-session"
FORMAT_VERSION = 1


class RecordingFormatError(ValueError):
    """A recording file that cannot be read: names the file, the line and what is wrong."""

    def __init__(self, source: str, line: int, message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        super().__init__(f"{source}:{line}: {message}")


class Direction(enum.StrEnum):
    """Which way a message travelled through the firewall."""

    CLIENT_TO_SERVER = "c2s"  # from the agent towards the upstream
    SERVER_TO_CLIENT = "s2c"  # from the upstream (or the firewall itself) towards the agent


def canonical_json(value: Any) -> str:
    """The canonical JSON text of a value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedDecision:
    """The part of an original decision that replay compares against."""

    id: str
    effect: Effect
    rule: str
    enforced: bool = True
    matched: tuple[str, ...] = ()
    reason: str = ""
    revision: str = ""
    shadow_effect: Effect | None = None
    shadow_rule: str | None = None

    @classmethod
    def from_decision(cls, decision: Decision) -> RecordedDecision:
        """The recorded form of a live decision."""
        return cls(
            id=decision.id,
            effect=decision.effect,
            rule=decision.rule,
            enforced=decision.enforced,
            matched=tuple(decision.matched),
            reason=decision.reason,
            revision=decision.revision,
            shadow_effect=decision.shadow_effect,
            shadow_rule=decision.shadow_rule,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "effect": self.effect.value,
            "rule": self.rule,
            "enforced": self.enforced,
            "matched": list(self.matched),
            "reason": self.reason,
            "revision": self.revision,
            "shadow_effect": None if self.shadow_effect is None else self.shadow_effect.value,
            "shadow_rule": self.shadow_rule,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecordedDecision:
        """Read the dict written by `to_json` (raises KeyError/ValueError/TypeError if bad)."""
        shadow = data.get("shadow_effect")
        return cls(
            id=_str(data["id"], "decision.id"),
            effect=Effect(data["effect"]),
            rule=_str(data["rule"], "decision.rule"),
            enforced=bool(data.get("enforced", True)),
            matched=tuple(_str(m, "decision.matched") for m in data.get("matched") or ()),
            reason=str(data.get("reason") or ""),
            revision=str(data.get("revision") or ""),
            shadow_effect=None if shadow is None else Effect(shadow),
            shadow_rule=data.get("shadow_rule"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedMessage:
    """One JSON-RPC message as the firewall relayed it (redacted)."""

    seq: int
    time: datetime
    direction: Direction
    message: Mapping[str, Any]
    decision_id: str | None = None
    source: str = ""  # "firewall" when mcpfw answered itself (a denial, a protocol error)
    redacted: tuple[str, ...] = ()  # JSON pointers into `message` whose values were masked

    @property
    def method(self) -> str | None:
        """The JSON-RPC method of a request or notification, else None."""
        method = self.message.get("method")
        return method if isinstance(method, str) else None

    @property
    def is_request(self) -> bool:
        """True for a request (has a method and an id)."""
        return "method" in self.message and "id" in self.message

    @property
    def is_response(self) -> bool:
        """True for a result or error response."""
        return "method" not in self.message and (
            "result" in self.message or "error" in self.message
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionHeader:
    """Who talked to which upstream, when."""

    session_id: str
    agent: Agent
    server: str = ""
    started: datetime
    ended: datetime | None = None
    instance: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.session_id,
            "agent": {
                "id": self.agent.id,
                "roles": list(self.agent.roles),
                "claims": dict(self.agent.claims),
                "transport": self.agent.transport,
            },
            "server": self.server,
            "started": self.started.isoformat(),
            "ended": None if self.ended is None else self.ended.isoformat(),
            "instance": self.instance,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionHeader:
        """Read the dict written by `to_json`."""
        agent = data["agent"]
        if not isinstance(agent, Mapping):
            raise TypeError("session.agent must be an object")
        claims = agent.get("claims") or {}
        if not isinstance(claims, Mapping):
            raise TypeError("session.agent.claims must be an object")
        ended = data.get("ended")
        return cls(
            session_id=_str(data["id"], "session.id"),
            agent=Agent(
                id=_str(agent["id"], "session.agent.id"),
                roles=tuple(_str(r, "session.agent.roles") for r in agent.get("roles") or ()),
                claims=dict(claims),
                transport=str(agent.get("transport") or "stdio"),
            ),
            server=str(data.get("server") or ""),
            started=_time(data["started"], "session.started"),
            ended=None if ended is None else _time(ended, "session.ended"),
            instance=str(data.get("instance") or ""),
            note=str(data.get("note") or ""),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Recording:
    """A whole recorded session: header, messages in order, decisions by id."""

    header: SessionHeader
    messages: tuple[RecordedMessage, ...] = ()
    decisions: Mapping[str, RecordedDecision] = field(default_factory=dict)
    source: str = ""  # where it was read from (a file path or "db"), for messages


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where} must be a string, got {type(value).__name__}")
    return value


def _time(value: Any, where: str) -> datetime:
    text = _str(value, where)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{where} is not an ISO 8601 time: {text!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{where} has no timezone: {text!r}")
    return parsed


def _message_line(msg: RecordedMessage, decision: RecordedDecision | None) -> dict[str, Any]:
    line: dict[str, Any] = {
        "seq": msg.seq,
        "time": msg.time.isoformat(),
        "direction": msg.direction.value,
        "message": msg.message,
        "decision_id": msg.decision_id,
    }
    if msg.source:
        line["source"] = msg.source
    if msg.redacted:
        line["redacted"] = list(msg.redacted)
    if decision is not None:
        line["decision"] = decision.to_json()
    return line


def iter_jsonl_lines(recording: Recording) -> Iterator[str]:
    """Each line of the JSONL form, without newlines."""
    yield canonical_json(
        {"format": FORMAT, "version": FORMAT_VERSION, "session": recording.header.to_json()}
    )
    written: set[str] = set()
    for msg in recording.messages:
        decision = None
        if msg.decision_id and msg.decision_id not in written:
            decision = recording.decisions.get(msg.decision_id)
            if decision is not None:
                written.add(msg.decision_id)
        yield canonical_json(_message_line(msg, decision))


def dumps_jsonl(recording: Recording) -> str:
    """The JSONL text of a recording."""
    return "".join(line + "\n" for line in iter_jsonl_lines(recording))


def dump_jsonl(recording: Recording, out: IO[str] | str | os.PathLike[str]) -> None:
    """Write a recording as JSONL to an open text file or a path."""
    if isinstance(out, (str, os.PathLike)):
        with open(out, "w", encoding="utf-8") as fp:
            dump_jsonl(recording, fp)
        return
    for line in iter_jsonl_lines(recording):
        out.write(line + "\n")


def load_jsonl(path: str | os.PathLike[str]) -> Recording:
    """Read a recording file; raises RecordingFormatError naming the line at fault."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecordingFormatError(str(p), 0, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingFormatError(str(p), 0, f"cannot read: {exc}") from None
    return parse_jsonl(text.splitlines(), source=str(p))


def parse_jsonl(lines: Iterable[str], *, source: str = "<recording>") -> Recording:
    """Parse the JSONL lines of one recording."""
    header: SessionHeader | None = None
    messages: list[RecordedMessage] = []
    decisions: dict[str, RecordedDecision] = {}
    last_seq = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RecordingFormatError(source, number, f"invalid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise RecordingFormatError(source, number, "each line must be a JSON object")
        if header is None:
            header = _parse_header(data, source, number)
            continue
        try:
            msg, decision = _parse_message(data)
        except (KeyError, TypeError, ValueError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise RecordingFormatError(source, number, what) from None
        if msg.seq <= last_seq:
            raise RecordingFormatError(
                source, number, f"seq {msg.seq} is not after the previous seq {last_seq}"
            )
        last_seq = msg.seq
        messages.append(msg)
        if decision is not None:
            decisions[decision.id] = decision
    if header is None:
        raise RecordingFormatError(source, 1, "empty file: expected a header line")
    return Recording(header=header, messages=tuple(messages), decisions=decisions, source=source)


def _parse_header(data: Mapping[str, Any], source: str, number: int) -> SessionHeader:
    if data.get("format") != FORMAT:
        raise RecordingFormatError(
            source, number, f'not an mcpfw session recording (expected "format": "{FORMAT}")'
        )
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise RecordingFormatError(source, number, "header has no valid integer version")
    if version > FORMAT_VERSION:
        raise RecordingFormatError(
            source,
            number,
            f"format version {version} is newer than this mcpfw reads ({FORMAT_VERSION}); "
            "upgrade mcpfw",
        )
    session = data.get("session")
    if not isinstance(session, Mapping):
        raise RecordingFormatError(source, number, 'header has no "session" object')
    try:
        return SessionHeader.from_json(session)
    except KeyError as exc:
        raise RecordingFormatError(source, number, f"header session is missing {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RecordingFormatError(source, number, str(exc)) from None


def _parse_message(data: Mapping[str, Any]) -> tuple[RecordedMessage, RecordedDecision | None]:
    seq = data["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise TypeError("seq must be an integer")
    message = data["message"]
    if not isinstance(message, dict):
        raise TypeError("message must be a JSON-RPC object")
    decision_id = data.get("decision_id")
    if decision_id is not None:
        decision_id = _str(decision_id, "decision_id")
    redacted = data.get("redacted") or []
    if not isinstance(redacted, list):
        raise TypeError("redacted must be a list of JSON pointers")
    decision = None
    raw_decision = data.get("decision")
    if raw_decision is not None:
        if not isinstance(raw_decision, Mapping):
            raise TypeError("decision must be an object")
        decision = RecordedDecision.from_json(raw_decision)
        if decision_id is None:
            decision_id = decision.id
    try:
        direction = Direction(data["direction"])
    except ValueError:
        raise ValueError(f'direction must be "c2s" or "s2c", got {data["direction"]!r}') from None
    msg = RecordedMessage(
        seq=seq,
        time=_time(data["time"], "time"),
        direction=direction,
        message=message,
        decision_id=decision_id,
        source=str(data.get("source") or ""),
        redacted=tuple(_str(p, "redacted") for p in redacted),
    )
    return msg, decision
