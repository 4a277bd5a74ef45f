"""Replay's pure core: re-decide recorded calls under a candidate rule set and diff.

Input is a stream of `ReplayCall`s (a rebuilt `ToolCall` plus the decision taken at the
time); output is a `ReplayReport` listing every call whose decision would change: newly
denied, newly allowed, newly asked, or the same effect reached through a different rule.

Redacted arguments: the audit log and recordings hold a marker where a secret was, never
the secret. Replay evaluates the call with the markers in place (that is all it has) and
flags the call *uncertain*: a rule may read the masked value, so neither "changed" nor
"unchanged" can be trusted for it. Uncertain changes are still listed; uncertain calls
whose decision did not change are counted and listed separately, so a CI gate can choose
to fail on them too.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpfw.model import Decision, Effect, ToolCall
from mcpfw.policy import RuleSet, evaluate
from mcpfw.recording.format import RecordedDecision

__all__ = ["Change", "ChangeKind", "ReplayCall", "ReplayReport", "diff_call", "replay"]


class ChangeKind(enum.StrEnum):
    """How a candidate decision differs from the recorded one."""

    NEWLY_DENIED = "newly_denied"
    NEWLY_ALLOWED = "newly_allowed"
    NEWLY_ASKED = "newly_asked"
    RULE_CHANGED = "rule_changed"  # same effect, a different deciding rule


_KIND_FOR_EFFECT = {
    Effect.DENY: ChangeKind.NEWLY_DENIED,
    Effect.ALLOW: ChangeKind.NEWLY_ALLOWED,
    Effect.ASK: ChangeKind.NEWLY_ASKED,
}


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayCall:
    """One recorded `tools/call` with the decision it got at the time."""

    call: ToolCall
    original: RecordedDecision
    redacted: tuple[str, ...] = ()  # JSON pointers into call.arguments that hold a marker
    where: str = ""  # a human reference: "session S seq N" or "audit event E"
    params: Mapping[str, Any] | None = None  # the recorded tools/call params (for --execute)
    result: Mapping[str, Any] | None = None  # the upstream's recorded result, if forwarded
    error: Mapping[str, Any] | None = None  # the upstream's recorded JSON-RPC error, if any
    result_digest: str | None = None  # the audit outcome's result digest, when no full result

    @property
    def uncertain(self) -> bool:
        """True when a masked argument value may have decided the call."""
        return bool(self.redacted)


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """A call whose decision differs under the candidate rule set."""

    kind: ChangeKind
    call: ReplayCall
    after: Decision

    @property
    def before(self) -> RecordedDecision:
        """The recorded decision."""
        return self.call.original

    @property
    def uncertain(self) -> bool:
        """True when a masked argument value may explain the change."""
        return self.call.uncertain

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready, deterministic dict (no timings, no fresh ids)."""
        return {
            "kind": self.kind.value,
            "uncertain": self.uncertain,
            **_call_json(self.call),
            "after": {
                "effect": self.after.effect.value,
                "rule": self.after.rule,
                "matched": list(self.after.matched),
                "reason": self.after.reason,
                "errors": [f"{e.rule}: {e.message}" for e in self.after.errors],
            },
        }


def _call_json(rc: ReplayCall) -> dict[str, Any]:
    return {
        "where": rc.where,
        "session": rc.call.session_id,
        "agent": rc.call.agent.id,
        "server": rc.call.server,
        "tool": rc.call.tool,
        "arguments": dict(rc.call.arguments),
        "redacted": list(rc.redacted),
        "before": {
            "decision_id": rc.original.id,
            "effect": rc.original.effect.value,
            "rule": rc.original.rule,
            "revision": rc.original.revision,
        },
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class ReplayReport:
    """What a candidate rule set would have changed."""

    revision: str  # the candidate's revision
    total: int = 0
    changes: tuple[Change, ...] = ()
    uncertain_unchanged: tuple[ReplayCall, ...] = ()
    candidate_errors: int = 0  # calls where a candidate rule failed to evaluate
    revisions: tuple[str, ...] = ()  # the recorded decisions' rule set revisions
    counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        """True when any decision would differ."""
        return bool(self.changes)

    @property
    def uncertain(self) -> int:
        """Calls with masked arguments (changed or not)."""
        return len(self.uncertain_unchanged) + sum(1 for c in self.changes if c.uncertain)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready, deterministic dict (the `--format json` output)."""
        return {
            "candidate_revision": self.revision,
            "recorded_revisions": list(self.revisions),
            "calls": self.total,
            "changed": len(self.changes),
            "unchanged": self.total - len(self.changes),
            "uncertain": self.uncertain,
            "candidate_errors": self.candidate_errors,
            "counts": {kind.value: self.counts.get(kind.value, 0) for kind in ChangeKind},
            "changes": [c.to_json() for c in self.changes],
            "uncertain_unchanged": [_call_json(rc) for rc in self.uncertain_unchanged],
        }


def diff_call(ruleset: RuleSet, rc: ReplayCall) -> tuple[Decision, ChangeKind | None]:
    """Re-decide one call; return the candidate decision and how it changed (None: same)."""
    after = evaluate(ruleset, rc.call)
    before = rc.original
    if after.effect != before.effect:
        return after, _KIND_FOR_EFFECT[after.effect]
    if after.rule != before.rule:
        return after, ChangeKind.RULE_CHANGED
    return after, None


def replay(
    ruleset: RuleSet,
    calls: Iterable[ReplayCall],
    *,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 256,
) -> ReplayReport:
    """Re-decide every call under `ruleset` and collect the differences, in input order."""
    total = 0
    errors = 0
    changes: list[Change] = []
    uncertain_unchanged: list[ReplayCall] = []
    counts: dict[str, int] = {}
    revisions: dict[str, None] = {}
    for rc in calls:
        total += 1
        if rc.original.revision:
            revisions.setdefault(rc.original.revision, None)
        after, kind = diff_call(ruleset, rc)
        if after.errors:
            errors += 1
        if kind is not None:
            changes.append(Change(kind=kind, call=rc, after=after))
            counts[kind.value] = counts.get(kind.value, 0) + 1
        elif rc.uncertain:
            uncertain_unchanged.append(rc)
        if on_progress is not None and total % progress_every == 0:
            on_progress(total)
    if on_progress is not None:
        on_progress(total)
    return ReplayReport(
        revision=ruleset.revision,
        total=total,
        changes=tuple(changes),
        uncertain_unchanged=tuple(uncertain_unchanged),
        candidate_errors=errors,
        revisions=tuple(revisions),
        counts=counts,
    )
