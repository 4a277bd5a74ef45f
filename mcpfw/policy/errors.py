"""Errors raised while loading a rule set.

    Exception
     └── RuleSetError        every LoadError of one load_ruleset() call, found at once
           .errors: tuple[LoadError, ...]

A `LoadError` is a record, not an exception: one problem at `file:line:column`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LoadError", "RuleSetError"]


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadError:
    """One problem in a rule file, at `file:line:column` (both 1-based)."""

    file: str
    line: int
    column: int
    rule_id: str | None
    message: str
    text: str = ""  # the offending text (a field name, an expression, a source line)

    def __str__(self) -> str:
        rule = f"[{self.rule_id}] " if self.rule_id else ""
        return f"{self.file}:{self.line}:{self.column}: {rule}{self.message}"


class RuleSetError(Exception):
    """A rule set could not be loaded; `errors` holds every problem found."""

    def __init__(self, errors: tuple[LoadError, ...] | list[LoadError]) -> None:
        self.errors: tuple[LoadError, ...] = tuple(errors)
        count = len(self.errors)
        head = f"{count} error{'s' if count != 1 else ''} in rule set"
        super().__init__("\n".join([head, *(str(e) for e in self.errors)]))
