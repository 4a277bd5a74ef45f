"""The policy core: CEL rule files compiled into a `RuleSet`, and `evaluate(ruleset, call)`.

Pure and synchronous: no I/O beyond reading rule files, no anyio/mcp/sqlalchemy.

    ruleset = load_ruleset(["rules/"])          # raises RuleSetError with every load error
    decision = evaluate(ruleset, call)           # never raises; fails closed
    may_allow(ruleset, agent, server, tool)      # False when this agent can never call the tool
"""

from __future__ import annotations

from mcpfw.policy.errors import LoadError, RuleSetError
from mcpfw.policy.evaluate import evaluate, may_allow
from mcpfw.policy.limits import ArgLimits
from mcpfw.policy.loader import Rule, RuleSet, load_ruleset

__all__ = [
    "ArgLimits",
    "LoadError",
    "Rule",
    "RuleSet",
    "RuleSetError",
    "evaluate",
    "load_ruleset",
    "may_allow",
]
