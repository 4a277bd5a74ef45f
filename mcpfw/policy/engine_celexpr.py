"""The default engine: cel-expr-python (cel-cpp), type-checked at compile time."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from mcpfw.policy.engine import VARIABLES, CompileError, CompileIssue, EvalError
from mcpfw.policy.functions import FUNCTIONS, Signature
from mcpfw.policy.hoist import MAX_HOISTS, PREFIX, Arg, Hoist, Plan, plan

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
_HOIST_VAR = re.compile(re.escape(PREFIX) + r"\d+")
_CALLS = re.compile(r"\b(?:" + "|".join(sig.name for sig in FUNCTIONS) + r")\s*\(")
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


class _Call:
    """One call's variables, its base activation (built on first use) and hoisted values."""

    __slots__ = ("_base", "env", "values", "variables")

    def __init__(self, env: Any, variables: dict[str, Any]) -> None:
        self.env = env
        self.variables = variables
        self.values: dict[str, Any] = {}  # Hoist.key -> value, _Failed or _Memo
        self._base: Any = None

    def base(self) -> Any:
        if self._base is None:
            self._base = self.env.Activation(self.variables)
        return self._base

    def with_values(self, values: dict[str, Any]) -> Any:
        bound = {k: v.table if isinstance(v, _Memo) else v for k, v in values.items()
                 if not isinstance(v, _Failed)}  # fmt: skip
        return self.env.Activation({**self.variables, **bound}) if bound else self.base()


class _Failed:
    """A hoisted computation that errored: its variable stays unbound, so CEL errors there."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Memo:
    """A hoisted comprehension call: results by loop value; failing values are left out."""

    __slots__ = ("error", "table")

    def __init__(self, table: dict[str, Any], error: str | None) -> None:
        self.table = table
        self.error = error


_MISSING = object()
_CEL_TYPE = {str: "string", int: "int64", float: "double", bool: "bool", list: "list",
             dict: "map", type(None): "null_type"}  # fmt: skip
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "bool": (bool,),
    "list": (list,),
    "dyn": (str, int, float, bool, type(None), list, dict),
}


def _apply(sig: Signature, args: list[Any]) -> Any:
    """`sig`'s function on plain values, as cel-cpp would dispatch it; errors as `_Failed`."""
    for param, value in zip(sig.params, args, strict=True):
        if not isinstance(value, _ACCEPTS[param]) or (param == "int" and isinstance(value, bool)):
            types = ", ".join(_CEL_TYPE.get(type(v), type(v).__name__) for v in args)
            return _Failed(f"UNKNOWN: No matching overloads found : {sig.name}({types})")
    try:
        return sig.impl(*args)
    except ValueError as exc:
        return _Failed(f"OUT_OF_RANGE: {exc}")
    except Exception as exc:  # as cel-expr-python does for a callback: an error value
        return _Failed(f"UNKNOWN: {type(exc).__name__}: {exc}")


class _Program:
    __slots__ = ("_args", "_consts", "_expr", "_hoists", "callbacks", "result_type")

    def __init__(self, expr: Any, hoisted: Any = None, plan: Plan | None = None) -> None:
        self._expr = hoisted if hoisted is not None else expr
        self._hoists: tuple[Hoist, ...] = plan.hoists if plan and hoisted is not None else ()
        # Custom-function calls still made through (leaking) callbacks, for tests and bench.
        self.callbacks = plan.residual if plan and hoisted is not None else 0
        self._args: dict[str, Any] = {}  # CEL text of an argument -> its compiled program
        self._consts: dict[str, Any] = {}  # ... or its value, when it names no variable
        t = expr.return_type()
        if t == _BOOL:
            self.result_type: str | None = "bool"
        elif t == _T.DYN:
            self.result_type = None
        else:
            self.result_type = str(t.name()).lower()

    def run(self, call: _Call) -> bool:
        values: dict[str, Any] = {}
        try:
            if self._hoists:
                for h in self._hoists:
                    value = call.values.get(h.key, _MISSING)
                    if value is _MISSING:
                        value = call.values[h.key] = self._compute(h, call, values)
                    values[h.var] = value
                activation = call.with_values(values)
            else:
                activation = call.base()
            value = self._expr.eval(activation)
        except Exception as exc:  # the iteration budget raises RuntimeError
            raise EvalError(_short(str(exc))) from None
        kind = value.type()
        if kind == _BOOL:
            return bool(value.value())
        if kind == _ERROR:  # an ERROR value's .value() is truthy: never use it as a result
            raise EvalError(_short(_hoisted_error(str(value.value()), values)))
        raise EvalError(f"expression returned {str(kind.name()).lower()}, not bool")

    def _compute(self, h: Hoist, call: _Call, values: dict[str, Any]) -> Any:
        args: list[Any] = []
        for spec in h.args:
            value = None if spec is None else self._arg(spec, call, values)
            if isinstance(value, _Failed):
                return value  # an error argument makes the call an error, as in CEL
            args.append(value)
        if h.sig is None:  # a comprehension's range
            return args[0]
        if h.loop is None:
            return _apply(h.sig, args)
        assert h.domain is not None
        domain = self._arg(h.domain, call, values)
        table: dict[str, Any] = {}
        error: str | None = None
        # The range itself stays in the expression: when it errors or is not a list or map,
        # the comprehension errors there, and the (empty) table is never read.
        items = domain if isinstance(domain, list | dict) else ()
        for item in items:
            if isinstance(item, str) and item not in table:
                args[h.loop] = item
                result = _apply(h.sig, args)
                if isinstance(result, _Failed):
                    error = error or result.message
                else:
                    table[item] = result
        return _Memo(table, error)

    def _arg(self, spec: Arg, call: _Call, values: dict[str, Any]) -> Any:
        if spec.hoist is not None:
            return values[spec.hoist]
        if spec.const:
            return self._consts[spec.text]
        if spec.path:
            node: Any = call.variables
            for name in spec.path:
                if not isinstance(node, dict) or name not in node:
                    break
                node = node[name]
            else:
                return node
        program = self._args.get(spec.text)
        if program is None:
            raise EvalError(f"internal: no program for hoisted argument {spec.text!r}")
        activation = call.with_values(values) if PREFIX in spec.text else call.base()
        return _value(program.eval(activation))


def _value(result: Any) -> Any:
    """A plain Python value, or `_Failed` for an ERROR value."""
    if result.type() == _ERROR:
        return _Failed(str(result.value()))
    return result.plain_value()


def _hoisted_error(message: str, values: dict[str, Any]) -> str:
    """The error a hoisted call recorded, in place of cel-cpp's "no value" or "no key" one."""
    for var in _HOIST_VAR.findall(message):
        value = values.get(var)
        if isinstance(value, _Failed):
            return value.message
        if isinstance(value, _Memo) and value.error:
            return value.error
    if "Key not found in map" in message:
        for value in values.values():
            if isinstance(value, _Memo) and value.error and value.error not in message:
                return value.error
    return message


def _short(message: str) -> str:
    return message.replace(" [INTERNAL]", "").replace(" [INVALID_ARGUMENT]", "").strip()


class CelExprEngine:
    """cel-expr-python with the mcpfw variables, functions and the strings extension."""

    name = "cel-expr"

    def __init__(self, *, hoist: bool = True) -> None:
        variables = {name: _T.Map(_T.STRING, _T.DYN) for name in VARIABLES}
        functions = [_declare(sig) for sig in FUNCTIONS]
        self._env = cel.NewEnv(
            variables=variables, extensions=[ext_strings.ExtStrings()], functions=functions
        )
        # Rewritten expressions also see the hoisted values; rules cannot name them.
        self._hoist = hoist
        self._hoist_env = cel.NewEnv(
            variables={**variables, **{f"{PREFIX}{i}": _T.DYN for i in range(MAX_HOISTS)}},
            extensions=[ext_strings.ExtStrings()],
            functions=functions,
        )

    def compile(self, text: str) -> _Program:
        try:
            expr = self._env.compile(text)
        except RuntimeError as exc:
            raise CompileError(_issues(str(exc))) from None
        found = plan(text) if self._hoist else None
        if found is None or not found.hoists:
            return _counted(_Program(expr), text)
        # The checked original gives the errors and the result type; the rewritten one runs.
        try:
            program = _Program(expr, self._hoist_env.compile(found.text), found)
            args = {a.text: a for h in found.hoists for a in (*h.args, h.domain) if a is not None}
            for text, arg in args.items():
                if arg.const:
                    program._consts[text] = _value(self._hoist_env.compile(text).eval(self._empty))
                elif arg.hoist is None:
                    program._args[text] = self._hoist_env.compile(text)
        except RuntimeError:  # the rewrite does not compile here: keep the callbacks
            return _counted(_Program(expr), text)
        return program

    @property
    def _empty(self) -> Any:
        return self._hoist_env.Activation({})

    def activation(self, variables: Mapping[str, Any]) -> Any:
        return _Call(self._hoist_env, dict(variables))


def _counted(program: _Program, text: str) -> _Program:
    program.callbacks = len(_CALLS.findall(text))  # an estimate: names in strings count too
    return program


def _issues(message: str) -> list[CompileIssue]:
    found = [
        CompileIssue(max(int(m.group(1)), 1), max(int(m.group(2)), 1), _tidy(_short(m.group(3))))
        for m in _ISSUE.finditer(message)
    ]
    return list(dict.fromkeys(found)) or [CompileIssue(1, 1, _short(message))]


def _tidy(message: str) -> str:
    return message.replace(" (in container '')", "").strip()
