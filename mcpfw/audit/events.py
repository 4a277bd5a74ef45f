"""Audit events as stored and as read back.

Writers turn model records into row dicts (`decision_row`, `outcome_row`, …) — redacted,
with everything that is not a filter column in the canonical `data` JSON. Readers get
`AuditEvent`s, and replay gets `RecordedCall`s: the `ToolCall` and `Decision` rebuilt from a
decision event (arguments as stored, i.e. redacted).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mcpfw.audit.redaction import Redactor, clean_text
from mcpfw.model import Agent, Decision, Effect, Outcome, RuleError, ToolCall, new_id

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "AuditEvent",
    "EventFilter",
    "RecordedCall",
    "decision_row",
    "digest",
    "outcome_row",
    "parse_time",
    "session_end_row",
    "session_start_row",
    "time_text",
]

EXPORT_FORMAT = "mcpfw-audit"
EXPORT_VERSION = 1

KINDS = ("session_start", "decision", "outcome", "session_end")

_DATA_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), sort_keys=True, default=str
)


def _make_encode() -> Callable[[Any], str]:
    # json's C encoder built once (JSONEncoder.encode builds one per call). No cycle check:
    # it only ever sees copies made by the redactor, which are acyclic and depth-bounded, or
    # the original arguments inside `digest`, which catches RecursionError.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has it
        return _DATA_ENCODER.encode
    encoder = make(None, str, json.encoder.encode_basestring, None, ":", ",", True, False, True)

    def encode(value: Any) -> str:
        return "".join(encoder(value, 0))

    return encode


_encode = _make_encode()
_MAX_ARGS_TEXT = 1 << 20  # stored arguments above 1 MiB are replaced by a note


def time_text(value: datetime) -> str:
    """Fixed-width UTC ISO 8601 text, as stored: `2026-11-25T21:45:00.123456Z`."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """The inverse of `time_text`."""
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def digest(value: Any) -> str:
    """`sha256:<hex>` of the canonical JSON of a value (sorted keys, compact, UTF-8)."""
    try:
        text = _encode(value)
    except (ValueError, TypeError, RecursionError):
        text = "unencodable:" + repr(value)[:1_000_000]
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _data(value: Mapping[str, Any]) -> str:
    return clean_text(_encode(value))


def _row(kind: str, when: datetime, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": columns.pop("id") if "id" in columns else new_id(),
        "kind": kind,
        "time": time_text(when),
        "session_id": "",
        "agent_id": "",
        "server": "",
        "tool": "",
        "effect": None,
        "enforced": None,
        "rule": None,
        "shadow_effect": None,
        "decision_id": None,
        "outcome": None,
    }
    row.update(columns)
    # One bad value must not fail a whole group commit: text columns are always clean text.
    for key in ("session_id", "agent_id", "server", "tool", "rule", "id", "decision_id"):
        value = row[key]
        if value is None and key in ("rule", "decision_id"):
            continue
        if not isinstance(value, str):
            value = "" if value is None else str(value)
        row[key] = value if value.isascii() else clean_text(value)
    return row


def _masked(pairs: tuple[tuple[str, str], ...], prefix: str) -> list[dict[str, str]]:
    return [{"path": prefix + path, "kind": kind} for path, kind in pairs]


def session_start_row(
    redactor: Redactor,
    *,
    session_id: str,
    agent: Agent,
    server: str,
    detail: Mapping[str, Any] | None,
    when: datetime,
) -> dict[str, Any]:
    """A session_start event row."""
    claims = redactor.redact(dict(agent.claims), use_pointers=False)
    details = redactor.redact(dict(detail or {}), use_pointers=False)
    data = {
        "roles": list(agent.roles),
        "transport": agent.transport,
        "claims": claims.value,
        "detail": details.value,
        "redacted": _masked(claims.masked, "/claims") + _masked(details.masked, "/detail"),
    }
    return _row(
        "session_start",
        when,
        session_id=session_id,
        agent_id=agent.id,
        server=server,
        data=_data(data),
    )


def decision_row(redactor: Redactor, call: ToolCall, decision: Decision) -> dict[str, Any]:
    """A decision event row: the call (arguments redacted) and verdict.

    `args_digest` covers the original arguments when nothing in them was masked, so whoever
    holds them can prove what was sent. When something was masked it covers the stored,
    redacted arguments instead (`args_digest_of: "redacted"`): a plain digest of the originals
    would let a reader of the log confirm a guessed secret (a PIN, a short password) offline.
    """
    args = redactor.redact(dict(call.arguments))
    claims = redactor.redact(dict(call.agent.claims), use_pointers=False)
    rstr = redactor.redact_str
    data = {
        "arguments": args.value,
        "args_digest": digest(args.value if args.masked else call.arguments),
        "args_digest_of": "redacted" if args.masked else "original",
        "redacted": _masked(args.masked, "/arguments") + _masked(claims.masked, "/claims"),
        "roles": list(call.agent.roles),
        "claims": claims.value,
        "transport": call.agent.transport,
        "request_id": call.request_id,
        "session_calls": call.session_calls,
        "annotations": redactor.redact(dict(call.annotations), use_pointers=False).value,
        "findings": list(call.findings),
        "method": call.method,
        "call_time": time_text(call.time),
        "matched": list(decision.matched),
        "message": rstr(decision.message),
        "reason": rstr(decision.reason),
        "shadow_rule": decision.shadow_rule,
        "shadow_matched": list(decision.shadow_matched),
        "errors": [{"rule": e.rule, "message": rstr(e.message)} for e in decision.errors],
        "revision": decision.revision,
        "eval_us": decision.eval_us,
    }
    text = _data(data)
    if len(text) > _MAX_ARGS_TEXT:  # keep the event, drop the bulk
        size = len(_data(args.value))
        data["arguments"] = {"[mcpfw]": f"arguments not stored: {size} bytes after redaction"}
        text = _data(data)
    return _row(
        "decision",
        decision.time,
        id=decision.id,
        session_id=call.session_id,
        agent_id=call.agent.id,
        server=call.server,
        tool=call.tool,
        effect=str(decision.effect),
        enforced=1 if decision.enforced else 0,
        rule=decision.rule,
        shadow_effect=None if decision.shadow_effect is None else str(decision.shadow_effect),
        decision_id=decision.id,
        data=text,
    )


def outcome_row(
    redactor: Redactor,
    *,
    decision_id: str,
    outcome: Outcome,
    latency_ms: float | None,
    is_error: bool | None,
    result: Any,
    detail: str,
    context: tuple[str, str, str, str] | None,
    when: datetime,
) -> dict[str, Any]:
    """An outcome event row; `context` is (session, agent, server, tool) of its decision."""
    session_id, agent_id, server, tool = context or ("", "", "", "")
    data = {
        "latency_ms": latency_ms,
        "is_error": is_error,
        "result_digest": None if result is None else digest(result),
        "detail": redactor.redact_str(detail),
    }
    return _row(
        "outcome",
        when,
        session_id=session_id,
        agent_id=agent_id,
        server=server,
        tool=tool,
        decision_id=decision_id,
        outcome=str(outcome),
        data=_data(data),
    )


def session_end_row(
    redactor: Redactor,
    *,
    session_id: str,
    reason: str,
    context: tuple[str, str] | None,
    when: datetime,
) -> dict[str, Any]:
    """A session_end event row; `context` is (agent, server) of its session_start."""
    agent_id, server = context or ("", "")
    return _row(
        "session_end",
        when,
        session_id=session_id,
        agent_id=agent_id,
        server=server,
        data=_data({"reason": redactor.redact_str(reason)}),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _read_time(value: Any) -> datetime:
    # a row edited by hand must still list (verify reports it); it sorts as the epoch
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return _EPOCH


def _read_data(value: Any) -> Mapping[str, Any]:
    try:
        data = json.loads(value)
    except (TypeError, ValueError):
        data = None
    if isinstance(data, dict):
        return data
    return {"[mcpfw]": f"unreadable data: {str(value)[:200]!r}"}


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditEvent:
    """One stored event, as read back."""

    id: str
    instance: str
    seq: int
    kind: str
    time: datetime
    session_id: str
    agent_id: str
    server: str
    tool: str
    effect: str | None
    enforced: bool | None
    rule: str | None
    shadow_effect: str | None
    decision_id: str | None
    outcome: str | None
    data: Mapping[str, Any]
    prev_hash: str
    hash: str

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEvent:
        """Build from a database row mapping."""
        enforced = row["enforced"]
        return cls(
            id=row["id"],
            instance=row["instance"],
            seq=row["seq"] if type(row["seq"]) is int else -1,
            kind=row["kind"],
            time=_read_time(row["time"]),
            session_id=row["session_id"],
            agent_id=row["agent_id"],
            server=row["server"],
            tool=row["tool"],
            effect=row["effect"],
            enforced=None if enforced is None else bool(enforced),
            rule=row["rule"],
            shadow_effect=row["shadow_effect"],
            decision_id=row["decision_id"],
            outcome=row["outcome"],
            data=_read_data(row["data"]),
            prev_hash=row["prev_hash"],
            hash=row["hash"],
        )

    def to_json(self) -> dict[str, Any]:
        """The stable export shape (format version `EXPORT_VERSION`)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "time": time_text(self.time),
            "instance": self.instance,
            "seq": self.seq,
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "server": self.server,
            "tool": self.tool,
            "effect": self.effect,
            "enforced": self.enforced,
            "rule": self.rule,
            "shadow_effect": self.shadow_effect,
            "decision_id": self.decision_id,
            "outcome": self.outcome,
            "data": dict(self.data),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class EventFilter:
    """Which events to read. Text filters accept `*` and `?` globs; times are inclusive."""

    kinds: tuple[str, ...] = ()
    agent: str | None = None
    tool: str | None = None
    server: str | None = None
    effect: str | None = None
    rule: str | None = None  # the deciding rule, or any matched rule
    session: str | None = None
    instance: str | None = None
    decision_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    shadow: bool | None = None  # True: decisions with a shadow verdict or not enforced


@dataclass(frozen=True, kw_only=True, slots=True)
class RecordedCall:
    """A decision event rebuilt for replay: the call as recorded, the decision then made."""

    event: AuditEvent
    call: ToolCall
    decision: Decision
    outcome: AuditEvent | None = None
    redacted_paths: tuple[str, ...] = field(default=())  # arguments masked before storage

    @classmethod
    def from_event(cls, event: AuditEvent, outcome: AuditEvent | None = None) -> RecordedCall:
        """Rebuild the ToolCall and Decision of a decision event."""
        d = event.data
        agent = Agent(
            id=event.agent_id,
            roles=tuple(d.get("roles", ())),
            claims=dict(d.get("claims") or {}),
            transport=str(d.get("transport", "stdio")),
        )
        call_time = d.get("call_time")
        call = ToolCall(
            agent=agent,
            tool=event.tool,
            server=event.server,
            arguments=dict(d.get("arguments") or {}),
            session_id=event.session_id,
            session_calls=int(d.get("session_calls") or 0),
            request_id=d.get("request_id"),
            annotations=dict(d.get("annotations") or {}),
            findings=tuple(d.get("findings") or ()),
            method=str(d.get("method") or "tools/call"),
            time=parse_time(call_time) if call_time else event.time,
        )
        decision = Decision(
            effect=Effect(event.effect or "deny"),
            rule=event.rule or "",
            id=event.id,
            enforced=bool(event.enforced),
            matched=tuple(d.get("matched") or ()),
            message=str(d.get("message") or ""),
            reason=str(d.get("reason") or ""),
            shadow_effect=Effect(event.shadow_effect) if event.shadow_effect else None,
            shadow_rule=d.get("shadow_rule"),
            shadow_matched=tuple(d.get("shadow_matched") or ()),
            errors=tuple(
                RuleError(rule=str(e.get("rule", "")), message=str(e.get("message", "")))
                for e in d.get("errors") or ()
            ),
            revision=str(d.get("revision") or ""),
            eval_us=float(d.get("eval_us") or 0.0),
            time=event.time,
        )
        paths = tuple(
            str(m["path"])[len("/arguments") :]
            for m in d.get("redacted") or ()
            if str(m.get("path", "")).startswith("/arguments")
        )
        return cls(event=event, call=call, decision=decision, outcome=outcome, redacted_paths=paths)
