"""Prefilter index: which rules can apply to an (agent, server, tool) triple at all.

Rules whose `tools` are all literal names are bucketed by name; the rest (globs, or no tool
filter) are checked for every call. Results are cached per triple, so a steady stream of
calls from the same agent to the same tool does one dict lookup before evaluating CEL.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING

from mcpfw.policy.glob import glob_match, is_glob

if TYPE_CHECKING:
    from mcpfw.policy.loader import Rule

__all__ = ["RuleIndex", "globs_match"]

_CACHE_SIZE = 4096


def globs_match(patterns: tuple[str, ...], value: str) -> bool:
    """True when `patterns` is empty (no filter) or one of them matches `value`."""
    if not patterns:
        return True
    return any(glob_match(value, p) if is_glob(p) else p == value for p in patterns)


class RuleIndex:
    """Candidate rules for a call, in file order."""

    __slots__ = ("_any_tool", "_by_tool", "_cache", "_rules")

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self._rules = rules
        self._by_tool: dict[str, list[int]] = {}
        self._any_tool: list[int] = []
        for i, rule in enumerate(rules):
            if rule.tools and not any(is_glob(t) for t in rule.tools):
                for t in dict.fromkeys(rule.tools):
                    self._by_tool.setdefault(t, []).append(i)
            else:
                self._any_tool.append(i)
        self._cache: dict[tuple[str, str, str], tuple[Rule, ...]] = {}

    def candidates(self, agent: str, server: str, tool: str) -> tuple[Rule, ...]:
        """The rules whose agents/servers/tools prefilters all match."""
        key = (agent, server, tool)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        order = heapq.merge(self._by_tool.get(tool, ()), self._any_tool)
        out = tuple(
            r
            for r in (self._rules[i] for i in order)
            if globs_match(r.tools, tool)
            and globs_match(r.agents, agent)
            and globs_match(r.servers, server)
        )
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = out
        return out
