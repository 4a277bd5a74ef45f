"""The default engine: cel-expr-python (cel-cpp), type-checked at compile time."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from mcpfw.policy.engine import VARIABLES, CompileError, CompileIssue, EvalError
from mcpfw.policy.functions import FUNCTIONS, Signature

__all__ = ["CelExprEngine"]

_T = cel.Type
_BOOL = _T.BOOL
_ERROR = _T.ERROR
_TYPES: dict[str, Any] = {
    "string": _T.STRING,
    "bool": _T.BOOL,
    "int": _T.INT,
    "list": _T.List(_T.DYN),
    "dyn": _T.DYN,
}
_ISSUE = re.compile(r"ERROR: <input>:(-?\d+):(-?\d+): (.*?)(?=\n \||\nERROR: |$)", re.S)


def _declare(sig: Signature) -> Any:
    result = _TYPES[sig.result]
    impl = _guarded(sig.impl)
    overloads = []
    # cel-cpp dispatches on runtime types, and a DYN parameter matches none: a "dyn"
    # parameter gets one overload per concrete JSON type instead.
    for params in _expand([_CONCRETE if p == "dyn" else [(p, _TYPES[p])] for p in sig.params]):
        base = f"mcpfw_{sig.name}_" + "_".join(name for name, _ in params)
        types = [t for _, t in params]
        overloads.append(cel.Overload(base, result, types, is_member=False, impl=impl))
        overloads.append(cel.Overload(base + "_member", result, types, is_member=True, impl=impl))
    return cel.FunctionDecl(sig.name, overloads)


_CONCRETE: list[tuple[str, Any]] = [
    ("string", _T.STRING),
    ("int", _T.INT),
    ("double", _T.DOUBLE),
    ("bool", _T.BOOL),
    ("null", _T.NULL),
    ("list", _T.List(_T.DYN)),
    ("map", _T.Map(_T.STRING, _T.DYN)),
]


def _expand(choices: list[list[tuple[str, Any]]]) -> list[list[tuple[str, Any]]]:
    combos: list[list[tuple[str, Any]]] = [[]]
    for options in choices:
        combos = [[*c, o] for c in combos for o in options]
    return combos


def _guarded(impl: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        # Any Python exception becomes an ERROR value in cel-cpp; keep ours short and clear.
        return impl(*args)

    return call


class _Program:
    __slots__ = ("_expr", "result_type")

    def __init__(self, expr: Any) -> None:
        self._expr = expr
        t = expr.return_type()
        if t == _BOOL:
            self.result_type: str | None = "bool"
        elif t == _T.DYN:
            self.result_type = None
        else:
            self.result_type = str(t.name()).lower()

    def run(self, activation: Any) -> bool:
        try:
            value = self._expr.eval(activation)
        except Exception as exc:  # the iteration budget raises RuntimeError
            raise EvalError(_short(str(exc))) from None
        kind = value.type()
        if kind == _BOOL:
            return bool(value.value())
        if kind == _ERROR:  # an ERROR value's .value() is truthy: never use it as a result
            raise EvalError(_short(str(value.value())))
        raise EvalError(f"expression returned {str(kind.name()).lower()}, not bool")


def _short(message: str) -> str:
    return message.replace(" [INTERNAL]", "").replace(" [INVALID_ARGUMENT]", "").strip()


class CelExprEngine:
    """cel-expr-python with the mcpfw variables, functions and the strings extension."""

    name = "cel-expr"

    def __init__(self) -> None:
        variables = {name: _T.Map(_T.STRING, _T.DYN) for name in VARIABLES}
        self._env = cel.NewEnv(
            variables=variables,
            extensions=[ext_strings.ExtStrings()],
            functions=[_declare(sig) for sig in FUNCTIONS],
        )

    def compile(self, text: str) -> _Program:
        try:
            return _Program(self._env.compile(text))
        except RuntimeError as exc:
            raise CompileError(_issues(str(exc))) from None

    def activation(self, variables: Mapping[str, Any]) -> Any:
        return self._env.Activation(dict(variables))


def _issues(message: str) -> list[CompileIssue]:
    found = [
        CompileIssue(max(int(m.group(1)), 1), max(int(m.group(2)), 1), _tidy(_short(m.group(3))))
        for m in _ISSUE.finditer(message)
    ]
    return list(dict.fromkeys(found)) or [CompileIssue(1, 1, _short(message))]


def _tidy(message: str) -> str:
    return message.replace(" (in container '')", "").strip()
