"""YAML loading that remembers where each key and value came from, for `file:line:col` errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Located", "Position", "YamlSyntaxError", "load_located"]

PathKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column in a file."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class YamlSyntaxError(ValueError):
    """The file is not valid YAML; `position` says where."""

    def __init__(self, position: Position, problem: str) -> None:
        super().__init__(f"{position}: YAML syntax error: {problem}")
        self.position = position
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Located:
    """A parsed YAML document plus the position of each value and of each mapping key."""

    data: Any
    values: dict[PathKey, Position]
    keys: dict[PathKey, Position]
    file: str

    def at(self, path: PathKey) -> Position:
        """Where the value at `path` starts (or its nearest known ancestor)."""
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path, Position(self.file, 1, 1))

    def key_at(self, path: PathKey) -> Position:
        """Where the mapping key that ends `path` is written."""
        return self.keys.get(path) or self.at(path)


def _pos(file: str, mark: Any) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


def load_located(text: str, file: str | Path) -> Located:
    """Parse one YAML document, keeping positions; raises YamlSyntaxError with its position."""
    name = str(file)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _pos(name, mark) if mark is not None else Position(name, 1, 1)
        raise YamlSyntaxError(where, str(exc.problem or exc.context or exc)) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(Position(name, 1, 1), str(exc)) from None
    values: dict[PathKey, Position] = {}
    keys: dict[PathKey, Position] = {}
    loader = yaml.SafeLoader("")

    def build(node: yaml.Node, path: PathKey) -> Any:
        values[path] = _pos(name, node.start_mark)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise YamlSyntaxError(_pos(name, key_node.start_mark), "keys must be scalars")
                skey = key if isinstance(key, str) else str(key)
                if skey in out:
                    raise YamlSyntaxError(
                        _pos(name, key_node.start_mark), f"duplicate key {skey!r}"
                    )
                keys[(*path, skey)] = _pos(name, key_node.start_mark)
                out[skey] = build(value_node, (*path, skey))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*path, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    data = None if root is None else build(root, ())
    return Located(data=data, values=values, keys=keys, file=name)
