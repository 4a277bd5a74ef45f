"""The records that flow through the firewall: who calls, what they call, what was decided.

One `ToolCall` is built per intercepted `tools/call`; the policy turns it into a `Decision`;
the audit store writes both, then an `Outcome`; replay reads them back. Everything here is a
frozen, keyword-only dataclass and depends on the standard library only.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "Agent",
    "Decision",
    "Effect",
    "Outcome",
    "RuleError",
    "ToolCall",
    "new_id",
    "utcnow",
]


class Effect(enum.StrEnum):
    """What a rule, or the whole policy, says about a call."""

    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"


class Outcome(enum.StrEnum):
    """What finally happened to a call after its decision."""

    FORWARDED = "forwarded"  # sent upstream (allowed, or monitor mode)
    DENIED = "denied"  # answered by the firewall with a denial
    APPROVED = "approved"  # ask: a human accepted, then forwarded
    DECLINED = "declined"  # ask: a human declined/cancelled, or no way to ask
    UPSTREAM_ERROR = "upstream_error"  # forwarded, the upstream failed or went away
    TIMEOUT = "timeout"  # forwarded, no answer in time (or the ask timed out)
    CANCELLED = "cancelled"  # the client cancelled or disconnected


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # base32, lower case
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)  # 10 bits -> 2 characters


def new_id() -> str:
    """A 26-char id that sorts by creation time (48-bit ms timestamp + 80 random bits)."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


@dataclass(frozen=True, kw_only=True, slots=True)
class Agent:
    """Who is calling: an id from the config or a token, with roles and token claims."""

    id: str
    roles: tuple[str, ...] = ()
    claims: Mapping[str, Any] = field(default_factory=dict)
    transport: str = "stdio"  # "stdio" | "http"


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCall:
    """One intercepted `tools/call`, as the policy sees it."""

    agent: Agent
    tool: str  # the upstream's own tool name (never the aggregated, prefixed one)
    server: str = ""  # the upstream's configured name
    arguments: Mapping[str, Any] = field(default_factory=dict)
    session_id: str = ""
    session_calls: int = 0  # tools/call requests earlier in this session
    request_id: str | int | None = None  # the JSON-RPC id as the client sent it
    annotations: Mapping[str, Any] = field(default_factory=dict)  # from the upstream's tools/list
    findings: tuple[str, ...] = ()  # description-scanner findings for this tool (pins)
    method: str = "tools/call"
    time: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleError:
    """A rule whose expression failed while evaluating one call."""

    rule: str
    message: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Decision:
    """The policy's verdict on one call; every field is written to the audit log."""

    effect: Effect  # the enforced result (deny wins, then ask, then allow, else default)
    rule: str  # the deciding rule id, or "default", or a built-in reason such as "limits"
    id: str = field(default_factory=new_id)
    enforced: bool = True  # False in monitor mode: recorded, never enforced
    matched: tuple[str, ...] = ()  # every enforced rule that matched (errors fail closed)
    message: str = ""  # the deciding rule's message, if it has one
    reason: str = ""  # a human explanation: why this effect
    shadow_effect: Effect | None = None  # what the shadow rules would have decided
    shadow_rule: str | None = None
    shadow_matched: tuple[str, ...] = ()
    errors: tuple[RuleError, ...] = ()
    revision: str = ""  # digest of the rule set's sources
    eval_us: float = 0.0  # evaluation time in microseconds
    time: datetime = field(default_factory=utcnow)
