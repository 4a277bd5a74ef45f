"""`mcpfw replay --execute`: re-send recorded calls, through the candidate policy, to a live
upstream and compare what comes back with what was recorded.

Each recorded call is first re-decided under the candidate rules. Only calls the candidate
allows are sent (an `ask` has no human to ask during a replay, so it is not sent either).
Calls whose recorded arguments were redacted are never sent: the upstream would receive
the redaction marker instead of the value. Results are compared in two ways:

- digest: sha256 of the canonical JSON of the result's `content`, `structuredContent` and
  `isError` (the live result is redacted first, like the recording was); for a call known
  only from the audit log, the audit's own digest of the whole raw result;
- content: the same three parts compared field by field, naming the parts that differ.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from mcpfw.audit.events import digest as audit_digest
from mcpfw.model import Decision, Effect
from mcpfw.policy import RuleSet, evaluate
from mcpfw.recording.format import canonical_json
from mcpfw.replay.core import ReplayCall

__all__ = [
    "ExecReport",
    "ExecResult",
    "ExecStatus",
    "ToolCaller",
    "execute",
    "normalize_result",
    "result_digest",
]


class ExecStatus(enum.StrEnum):
    """What re-executing one call showed."""

    SAME = "same"  # sent; the result matches the recorded one
    DIFFERENT = "different"  # sent; the result differs
    UNCOMPARED = "uncompared"  # sent; nothing was recorded to compare with
    NOT_SENT = "not_sent"  # the candidate denied or would ask, or the arguments were redacted
    FAILED = "failed"  # sent; the upstream failed (JSON-RPC error, timeout, gone)


class ToolCaller(Protocol):
    """Calls one tool on the live upstream and returns its result as a JSON dict."""

    async def __call__(self, name: str, arguments: Mapping[str, Any]) -> Mapping[str, Any]: ...


Redactor = Callable[[Any], Any]


def normalize_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The compared part of a tools/call result: content, structuredContent, isError."""
    return {
        "content": result.get("content") or [],
        "structuredContent": result.get("structuredContent"),
        "isError": bool(result.get("isError", False)),
    }


def result_digest(result: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the normalized result."""
    return hashlib.sha256(canonical_json(normalize_result(result)).encode()).hexdigest()


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecResult:
    """One re-executed (or deliberately not sent) call."""

    call: ReplayCall
    decision: Decision
    status: ExecStatus
    detail: str = ""
    recorded_digest: str | None = None
    live_digest: str | None = None
    differing: tuple[str, ...] = ()  # which of content / structuredContent / isError differ
    live: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "where": self.call.where,
            "tool": self.call.call.tool,
            "arguments": dict(self.call.call.arguments),
            "candidate": {"effect": self.decision.effect.value, "rule": self.decision.rule},
            "status": self.status.value,
            "detail": self.detail,
            "recorded_digest": self.recorded_digest,
            "live_digest": self.live_digest,
            "differing": list(self.differing),
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class ExecReport:
    """Every call's re-execution result, in order."""

    results: tuple[ExecResult, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when any sent call came back different or failed."""
        return any(r.status in (ExecStatus.DIFFERENT, ExecStatus.FAILED) for r in self.results)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "counts": {s.value: self.counts.get(s.value, 0) for s in ExecStatus},
            "results": [r.to_json() for r in self.results],
        }


def _compare(
    rc: ReplayCall, decision: Decision, live: Mapping[str, Any], redact: Redactor | None
) -> ExecResult:
    shown = redact(dict(live)) if redact is not None else dict(live)
    live_norm = normalize_result(shown)
    live_digest = result_digest(shown)
    if rc.result is None and rc.result_digest is None:
        return ExecResult(
            call=rc,
            decision=decision,
            status=ExecStatus.UNCOMPARED,
            detail="no recorded result to compare with",
            live_digest=live_digest,
            live=shown,
        )
    if rc.result is None:
        # The audit log keeps `sha256:` + the digest of the whole raw result (unredacted).
        live_digest = audit_digest(dict(live))
        same = rc.result_digest == live_digest
        return ExecResult(
            call=rc,
            decision=decision,
            status=ExecStatus.SAME if same else ExecStatus.DIFFERENT,
            detail="" if same else "result digest differs from the audit log's",
            recorded_digest=rc.result_digest,
            live_digest=live_digest,
            live=shown,
        )
    recorded_norm = normalize_result(rc.result)
    differing = tuple(k for k in recorded_norm if recorded_norm[k] != live_norm[k])
    return ExecResult(
        call=rc,
        decision=decision,
        status=ExecStatus.DIFFERENT if differing else ExecStatus.SAME,
        detail=("differs in " + ", ".join(differing)) if differing else "",
        recorded_digest=result_digest(rc.result),
        live_digest=live_digest,
        differing=differing,
        live=shown,
    )


async def execute(
    ruleset: RuleSet,
    calls: Iterable[ReplayCall],
    connect: Callable[[], AbstractAsyncContextManager[ToolCaller]],
    *,
    redact: Redactor | None = None,
    timeout_s: float = 30.0,
    on_progress: Callable[[int], None] | None = None,
) -> ExecReport:
    """Re-decide each call, send the allowed ones through one upstream connection, compare."""
    results: list[ExecResult] = []
    counts: dict[str, int] = {}

    def add(result: ExecResult) -> None:
        results.append(result)
        counts[result.status.value] = counts.get(result.status.value, 0) + 1
        if on_progress is not None:
            on_progress(len(results))

    async with connect() as call_tool:
        for rc in calls:
            decision = evaluate(ruleset, rc.call)
            if decision.effect is not Effect.ALLOW:
                verb = "denied" if decision.effect is Effect.DENY else "would ask"
                add(
                    ExecResult(
                        call=rc,
                        decision=decision,
                        status=ExecStatus.NOT_SENT,
                        detail=f"candidate {verb} (rule {decision.rule})",
                    )
                )
                continue
            if rc.redacted:
                add(
                    ExecResult(
                        call=rc,
                        decision=decision,
                        status=ExecStatus.NOT_SENT,
                        detail="arguments were redacted ("
                        + ", ".join(p or "/" for p in rc.redacted)
                        + "); the upstream would get the marker, not the value",
                    )
                )
                continue
            try:
                with anyio.fail_after(timeout_s):
                    live = await call_tool(rc.call.tool, rc.call.arguments)
            except TimeoutError:
                add(_failed(rc, decision, f"no answer within {timeout_s:g} s"))
                continue
            except UpstreamCallError as exc:
                add(_failed(rc, decision, str(exc)))
                continue
            add(_compare(rc, decision, live, redact))
    return ExecReport(results=tuple(results), counts=counts)


class UpstreamCallError(Exception):
    """The live upstream answered a call with a protocol error or went away."""


def _failed(rc: ReplayCall, decision: Decision, detail: str) -> ExecResult:
    return ExecResult(call=rc, decision=decision, status=ExecStatus.FAILED, detail=detail)
