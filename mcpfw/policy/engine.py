"""The CEL engine interface, and how an engine is chosen.

An `Engine` compiles a `when` expression once, at load, into a `Program`, and turns one call's
variables into an activation that every candidate rule's program evaluates. Two engines:

- `cel-expr` (default): cel-expr-python, Google's cel-cpp; type-checked at compile time.
- `cel-python`: the pure-Python `celpy`, used when the native engine cannot be imported.

Both expose the same variables and the custom functions of `mcpfw.policy.functions`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "ENGINES",
    "VARIABLES",
    "CompileError",
    "CompileIssue",
    "Engine",
    "EngineUnavailable",
    "EvalError",
    "Program",
    "get_engine",
]

# The CEL variables every rule sees, and the fields of the ones whose shape we fix.
VARIABLES: dict[str, frozenset[str] | None] = {
    "agent": frozenset({"id", "roles", "claims", "transport"}),
    "tool": frozenset({"name", "server", "annotations", "findings"}),
    "args": None,  # whatever the call sent
    "session": frozenset({"id", "calls"}),
    "request": frozenset({"method", "time"}),
}

ENGINES = ("cel-expr", "cel-python")


@dataclass(frozen=True, slots=True)
class CompileIssue:
    """One compile problem at a 1-based line and column within the expression."""

    line: int
    column: int
    message: str


class CompileError(Exception):
    """An expression did not compile; `issues` says where and why."""

    def __init__(self, issues: list[CompileIssue]) -> None:
        self.issues = issues
        super().__init__("; ".join(i.message for i in issues))


class EvalError(Exception):
    """An expression failed for one call (missing field, wrong type, budget exceeded...)."""


class EngineUnavailable(Exception):
    """The requested engine is not installed."""


class Program(Protocol):
    """A compiled `when` expression."""

    # "bool" when the checker proved a boolean, None when unknown (dyn), else the type name.
    result_type: str | None

    def run(self, activation: Any) -> bool:
        """The expression's value for one call; raises `EvalError`."""
        ...


class Engine(Protocol):
    """Compiles expressions and builds activations."""

    name: str

    def compile(self, text: str) -> Program:
        """Compile `text`; raises `CompileError`."""
        ...

    def activation(self, variables: Mapping[str, Any], programs: Sequence[Program] = ()) -> Any:
        """The per-call activation for plain JSON-shaped `variables`; `programs` are the
        compiled expressions that will run on it (cel-expr prepares their hoisted calls)."""
        ...


def native_available() -> bool:
    """True when cel-expr-python can be imported here."""
    try:
        return importlib.util.find_spec("cel_expr_python") is not None
    except (ImportError, ValueError):
        return False


_CACHE: dict[str, Engine] = {}


def get_engine(name: str = "auto") -> Engine:
    """The engine called `name` ("auto" prefers cel-expr and falls back to cel-python)."""
    if name not in ("auto", *ENGINES):
        raise EngineUnavailable(
            f"unknown CEL engine {name!r}; choose one of auto, {', '.join(ENGINES)}"
        )
    if name in _CACHE:
        return _CACHE[name]
    engine: Engine
    if name in ("auto", "cel-expr"):
        try:
            from mcpfw.policy.engine_celexpr import CelExprEngine

            engine = CelExprEngine()
        except ImportError as exc:
            if name == "cel-expr":
                raise EngineUnavailable(f"cel-expr-python is not importable: {exc}") from None
            engine = _celpy()
    else:
        engine = _celpy()
    _CACHE[name] = engine
    return engine


def _celpy() -> Engine:
    try:
        from mcpfw.policy.engine_celpy import CelPythonEngine
    except ImportError as exc:
        raise EngineUnavailable(f"no CEL engine is importable (cel-python: {exc})") from None
    return CelPythonEngine()
