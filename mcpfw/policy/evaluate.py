"""`evaluate(ruleset, call)`: the decision for one call. Pure, synchronous, never raises.

Order: any enforced deny wins, then ask, then allow, else the rule set's default. Shadow
rules are evaluated the same way but only reported. Fail closed: a deny or ask rule whose
expression errors counts as matched; an allow rule that errors does not match.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any

from mcpfw.model import Agent, Decision, Effect, RuleError, ToolCall
from mcpfw.policy.engine import EvalError
from mcpfw.policy.limits import LimitExceeded, bound_json
from mcpfw.policy.loader import Rule, RuleSet

__all__ = ["evaluate", "may_allow", "variables_for"]

_ORDER = (Effect.DENY, Effect.ASK, Effect.ALLOW)


def variables_for(ruleset: RuleSet, call: ToolCall) -> dict[str, Any]:
    """The CEL variables for a call, bounded; raises `LimitExceeded`."""
    limits = ruleset.limits
    agent = call.agent
    if not isinstance(call.arguments, Mapping):
        raise LimitExceeded("arguments must be a JSON object; denied unevaluated")
    # Everything a client or a token can influence is bounded and made plain JSON: the
    # arguments, and the agent and tool records (claims, roles, annotations, findings).
    return {
        "agent": bound_json(
            {
                "id": agent.id,
                "roles": list(agent.roles),
                "claims": agent.claims,
                "transport": agent.transport,
            },
            limits,
        ),
        "tool": bound_json(
            {
                "name": call.tool,
                "server": call.server,
                "annotations": call.annotations,
                "findings": list(call.findings),
            },
            limits,
        ),
        "args": bound_json(call.arguments, limits),
        "session": {"id": str(call.session_id), "calls": int(call.session_calls)},
        "request": {
            "method": str(call.method),
            "time": call.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    }


def evaluate(ruleset: RuleSet, call: ToolCall, *, monitor: bool = False) -> Decision:
    """The decision for `call` under `ruleset` (monitor=True: the same, but not enforced)."""
    start = time.perf_counter_ns()
    try:
        fields = _decide(ruleset, call)
    except Exception as exc:  # the policy boundary: an internal failure is a deny, never a crash
        fields = {
            "effect": Effect.DENY,
            "rule": "error",
            "reason": f"internal error while evaluating the policy ({type(exc).__name__}); "
            "failing closed",
            "errors": (RuleError(rule="error", message=f"{type(exc).__name__}: {exc}"),),
        }
    elapsed = (time.perf_counter_ns() - start) / 1000.0
    return Decision(revision=ruleset.revision, enforced=not monitor, eval_us=elapsed, **fields)


def _decide(ruleset: RuleSet, call: ToolCall) -> dict[str, Any]:
    candidates = ruleset.index.candidates(call.agent.id, call.server, call.tool)
    try:
        variables = variables_for(ruleset, call)
    except LimitExceeded as exc:
        reason = str(exc) if "unevaluated" in str(exc) else f"{exc}; denied unevaluated"
        return {"effect": Effect.DENY, "rule": "limits", "reason": reason}

    activation: Any = None
    matched: list[Rule] = []
    shadow: list[Rule] = []
    errors: list[RuleError] = []
    failed: set[str] = set()
    for rule in candidates:
        if rule.program is not None:
            if activation is None:
                programs = [r.program for r in candidates if r.program is not None]
                activation = ruleset.compiled_by.activation(variables, programs)
            try:
                hit = rule.program.run(activation)
            except EvalError as exc:
                errors.append(RuleError(rule=rule.id, message=str(exc)))
                failed.add(rule.id)
                hit = rule.effect is not Effect.ALLOW  # fail closed
        else:
            hit = True
        if hit:
            (shadow if rule.shadow else matched).append(rule)

    decider = _pick(matched)
    out: dict[str, Any] = {"matched": tuple(r.id for r in matched), "errors": tuple(errors)}
    if decider is None:
        out.update(
            effect=ruleset.default,
            rule="default",
            reason=f"no rule matched; the default is {ruleset.default.value}",
        )
    else:
        out.update(effect=decider.effect, rule=decider.id, message=decider.message)
        out["reason"] = _reason(decider, failed)
    if shadow:
        would = _pick(matched + shadow)
        out["shadow_matched"] = tuple(r.id for r in shadow)
        out["shadow_effect"] = would.effect if would else ruleset.default
        out["shadow_rule"] = would.id if would else "default"
    return out


def _pick(rules: Iterable[Rule]) -> Rule | None:
    best: Rule | None = None
    for rule in rules:
        if best is None or _ORDER.index(rule.effect) < _ORDER.index(best.effect):
            best = rule
            if rule.effect is Effect.DENY:
                break
    return best


def _reason(rule: Rule, failed: set[str]) -> str:
    if rule.id in failed:
        return f"rule {rule.id} ({rule.effect.value}) failed to evaluate; failing closed"
    verb = {Effect.DENY: "denied", Effect.ASK: "needs approval", Effect.ALLOW: "allowed"}
    return f"{verb[rule.effect]} by rule {rule.id}"


def may_allow(ruleset: RuleSet, agent: Agent, server: str, tool: str) -> bool:
    """False only when this agent can never be allowed to call this tool."""
    candidates = ruleset.index.candidates(agent.id, server, tool)
    enforced = [r for r in candidates if not r.shadow]
    if any(r.effect is Effect.DENY and r.program is None for r in enforced):
        return False
    if ruleset.default is not Effect.DENY:
        return True
    return any(r.effect in (Effect.ALLOW, Effect.ASK) for r in enforced)
