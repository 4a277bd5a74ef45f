"""YAML with positions: every value keeps the node it came from, for file:line:column errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["Located", "Problem", "did_you_mean", "parse", "plain"]


@dataclass(frozen=True, slots=True)
class Problem:
    """A problem found at a 1-based line and column."""

    line: int
    column: int
    message: str
    text: str = ""


@dataclass(frozen=True, slots=True)
class Located:
    """A YAML node with its 1-based start position."""

    node: yaml.Node
    line: int
    column: int


def parse(text: str) -> yaml.Node | Problem | None:
    """The document's node tree, a syntax `Problem`, or None for an empty document."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        return Problem(line, column, f"YAML syntax error: {what}")
    except yaml.YAMLError as exc:
        return Problem(1, 1, f"YAML error: {exc}")
    except RecursionError:  # PyYAML composes nested nodes recursively
        return Problem(1, 1, "YAML nested too deeply to load")


def at(node: yaml.Node) -> Located:
    """`node` with its position."""
    return Located(node, node.start_mark.line + 1, node.start_mark.column + 1)


def plain(node: yaml.Node) -> Any:
    """The Python value of a node (safe YAML types only)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def mapping_items(
    node: yaml.MappingNode, problems: list[Problem]
) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Key → (key node, value node); duplicate and non-string keys become problems."""
    out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
    for key_node, value_node in node.value:
        key = plain(key_node) if isinstance(key_node, yaml.ScalarNode) else None
        pos = at(key_node)
        if not isinstance(key, str):
            problems.append(Problem(pos.line, pos.column, "keys must be strings", str(key)))
            continue
        if key in out:
            first = at(out[key][0])
            problems.append(
                Problem(
                    pos.line, pos.column, f"duplicate key {key!r} (first at line {first.line})", key
                )
            )
            continue
        out[key] = (key_node, value_node)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean "x"?)' when a choice is close to `word`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
