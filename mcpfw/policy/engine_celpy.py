"""The fallback engine: cel-python (`celpy`), pure Python.

celpy only parses at compile time, so undeclared variables and functions are found here by
walking the parse tree. It has no iteration budget: arguments are bounded before evaluation
(`ArgLimits`), but a rule with nested comprehensions over large lists is slow on this engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import celpy
import lark
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, base_functions

from mcpfw.policy.engine import VARIABLES, CompileError, CompileIssue, EvalError
from mcpfw.policy.functions import FUNCTIONS, STRING_SHIMS

__all__ = ["CelPythonEngine"]

_MACROS = frozenset({"has", "all", "exists", "exists_one", "map", "filter", "dyn"})
_BINDING_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


def _to_cel(value: Any) -> Any:
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, celtypes.ListType):
        return value
    if isinstance(value, list):
        return celtypes.ListType([_to_cel(v) for v in value])
    return value


def _accepts(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "list":
        return isinstance(value, list)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "dyn":
        return True
    return isinstance(value, bool)


def _wrap(name: str, params: tuple[str, ...] | None, impl: Callable[..., Any]) -> Any:
    def call(*args: Any) -> Any:
        for a in args:
            if isinstance(a, CELEvalError):
                return a
        if params is not None and (
            len(args) != len(params)
            or not all(_accepts(p, a) for p, a in zip(params, args, strict=True))
        ):
            kinds = ", ".join(type(a).__name__ for a in args)
            return CELEvalError(f"no matching overload for {name}({kinds})", TypeError, ())
        try:
            plain = [str(a) if isinstance(a, str) else a for a in args]
            if params == ("dyn",) and isinstance(args[0], list):
                return args[0]
            return _to_cel(impl(*plain))
        except (ValueError, TypeError) as exc:
            return CELEvalError(str(exc), type(exc), exc.args)

    return call


def _functions() -> dict[str, Any]:
    funcs: dict[str, Any] = {}
    for sig in FUNCTIONS:
        funcs[sig.name] = _wrap(sig.name, sig.params, sig.impl)
    for name, impl in STRING_SHIMS.items():
        funcs[name] = _wrap(name, None, impl)
    return funcs


class _Program:
    __slots__ = ("_runner", "result_type")

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.result_type: str | None = None  # celpy has no type checker

    def run(self, activation: Any) -> bool:
        try:
            value = self._runner.evaluate(activation)
        except CELEvalError as exc:
            raise EvalError(_message(exc)) from None
        except Exception as exc:  # celpy raises assorted Python errors on odd input
            raise EvalError(f"{type(exc).__name__}: {exc}") from None
        if isinstance(value, CELEvalError):
            raise EvalError(_message(value))
        if isinstance(value, celtypes.BoolType | bool):
            return bool(value)
        raise EvalError(f"expression returned {type(value).__name__}, not bool")


def _message(exc: CELEvalError) -> str:
    first = exc.args[0] if exc.args else str(exc)
    text = str(first)
    # celpy appends a dump of the whole activation to undeclared references: cut it.
    return text.split(" (in activation", 1)[0]


class CelPythonEngine:
    """cel-python with the mcpfw variables and functions."""

    name = "cel-python"

    def __init__(self) -> None:
        self._env = celpy.Environment()
        self._functions = _functions()
        self._known = frozenset(self._functions) | frozenset(base_functions) | _MACROS

    def compile(self, text: str) -> _Program:
        try:
            return self._compile(text)
        except RecursionError:  # lark and the tree walks recurse once per nesting level
            raise CompileError([CompileIssue(1, 1, "expression nested too deeply")]) from None

    def _compile(self, text: str) -> _Program:
        try:
            ast = self._env.compile(text)
        except CELParseError as exc:
            line, column = exc.line or 1, exc.column or 1
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
            raise CompileError([CompileIssue(line, column, f"syntax error: {first}")]) from None
        used: set[str] = set()
        issues = _check_names(ast, self._known, used)
        if issues:
            raise CompileError(issues)
        program = _Program(self._env.program(ast, functions=self._functions))
        if not used & set(VARIABLES):
            # No variables: the value is a constant, so its type can be known now.
            try:
                value = program._runner.evaluate({})
            except Exception:  # an error here shows up per call, as for any rule
                value = None
            if value is not None and not isinstance(value, CELEvalError | celtypes.BoolType):
                program.result_type = _TYPE_NAMES.get(type(value).__name__, "non-bool")
        return program

    def activation(self, variables: Mapping[str, Any], programs: Sequence[object] = ()) -> Any:
        return {name: json_to_cel(value) for name, value in variables.items()}


_TYPE_NAMES = {"IntType": "int", "UintType": "uint", "DoubleType": "double", "StringType": "string",
               "ListType": "list", "MapType": "map", "BytesType": "bytes"}  # fmt: skip


def _check_names(
    ast: lark.Tree[Any], known_functions: frozenset[str], used: set[str]
) -> list[CompileIssue]:
    """Undeclared variables and functions, like cel-cpp's checker reports them."""
    issues: list[CompileIssue] = []

    def visit(node: Any, bound: frozenset[str]) -> None:
        if not isinstance(node, lark.Tree):
            return
        data = node.data
        if data == "ident":
            name = str(node.children[0])
            used.add(name)
            if name not in VARIABLES and name not in bound:
                issues.append(_issue(node, f"undeclared reference to '{name}'"))
        elif data in ("ident_arg", "member_dot_arg"):
            token = node.children[0] if data == "ident_arg" else node.children[1]
            name = str(token)
            if name not in known_functions:
                issues.append(_issue(node, f"undeclared reference to '{name}'", token))
            if data == "member_dot_arg" and name in _BINDING_MACROS:
                visit(node.children[0], bound)
                exprs = node.children[2]
                args = exprs.children if isinstance(exprs, lark.Tree) else []
                var = _ident_name(args[0]) if args else None
                inner = bound | {var} if var else bound
                for child in args[1:]:
                    visit(child, inner)
                return
        for child in node.children:
            visit(child, bound)

    visit(ast, frozenset())
    return issues


def _ident_name(expr: Any) -> str | None:
    node = expr
    while isinstance(node, lark.Tree) and len(node.children) == 1:
        if node.data == "ident":
            return str(node.children[0])
        node = node.children[0]
    return None


def _issue(node: lark.Tree[Any], message: str, token: Any = None) -> CompileIssue:
    line = getattr(token, "line", None) or getattr(node.meta, "line", 1) or 1
    column = getattr(token, "column", None) or getattr(node.meta, "column", 1) or 1
    return CompileIssue(int(line), int(column), message)
