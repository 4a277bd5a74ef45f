"""The default engine: cel-expr-python (cel-cpp), type-checked at compile time."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cel_expr_python import cel
from cel_expr_python.ext import ext_strings

from mcpfw.policy.engine import VARIABLES, CompileError, CompileIssue, EvalError
from mcpfw.policy.functions import FUNCTIONS, InvalidArgument, Signature
from mcpfw.policy.hoist import LOOP, PREFIX, Arg, Hoist, Plan, plan

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
_VARIABLE = re.compile(r"(?<![\w.])(" + "|".join(VARIABLES) + r")\b")
_ROOTED = re.compile(r"(?:^|[^\w)\]\"'\s])\s*\.\s*(" + "|".join(VARIABLES) + r")\b")
_FIELD = re.compile(r"\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")
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


_Reads = tuple[tuple[str, tuple[str, ...] | None], ...]


def _reads(text: str) -> tuple[_Reads, tuple[str, ...]]:
    """What CEL `text` reads: each variable with the top-level fields it selects (None: the
    whole value), and the hoisted variables. Names inside string literals count too, which
    only makes the answer bigger."""
    fields: dict[str, set[str] | None] = {}
    for m in _VARIABLE.finditer(text):
        name, rest = m.group(1), text[m.end() :]
        sel = _FIELD.match(rest)
        if fields.get(name, set()) is None:
            continue
        if sel is None:
            fields[name] = None
        else:
            fields.setdefault(name, set()).add(sel.group(1))  # type: ignore[union-attr]
    for m in _ROOTED.finditer(text):  # `.args` names the variable from the root scope
        fields[m.group(1)] = None
    reads = tuple((k, tuple(sorted(v)) if v is not None else None) for k, v in fields.items())
    return reads, tuple(dict.fromkeys(_HOIST_VAR.findall(text)))


class _Call:
    """One call: its variables (one activation for expressions without hoisted calls) and
    the hoisted values computed so far."""

    __slots__ = ("_base", "_programs", "hoists", "values", "variables")

    def __init__(
        self, hoists: _Hoisting, variables: dict[str, Any], programs: Sequence[object] = ()
    ) -> None:
        self.hoists = hoists
        self.variables = variables
        self.values: dict[str, Any] = {}  # hoisted variable -> value, _Failed or _Memo
        self._base: Any = None
        # The expressions that will run: their hoisted values go in the one base activation.
        self._programs = {p for p in programs if isinstance(p, _Program) and p._hoists}

    def base(self) -> Any:
        """The variables, and the hoisted values of the expressions announced up front."""
        if self._base is None:
            data = dict(self.variables)
            for program in self._programs:
                for h in program._hoists:
                    if h.var not in self.values:
                        self.values[h.var] = self.hoists.compute(h, self)
            for k, v in self.values.items():
                if not isinstance(v, _Failed):
                    data[k] = v.table if isinstance(v, _Memo) else v
            self._base = self.hoists.env.Activation(data)
        return self._base

    def prepared(self, program: _Program) -> bool:
        """True when the base activation holds `program`'s hoisted values."""
        return program in self._programs

    def activation(
        self, reads: _Reads, hoisted: tuple[str, ...], extra: dict[str, Any] | None = None
    ) -> Any:
        """An activation with only what an expression reads. cel-expr-python converts a
        variable's whole value on first use in each activation (~5 µs for nested arguments),
        so this binds just the selected fields of each variable."""
        data: dict[str, Any] = {}
        for name, fields in reads:
            if name in self.variables:
                value = self.variables[name]
                if fields is not None and isinstance(value, dict):
                    value = {f: value[f] for f in fields if f in value}
                data[name] = value
        for var in hoisted:
            v = self.values.get(var)
            if v is not None and not isinstance(v, _Failed):
                data[var] = v.table if isinstance(v, _Memo) else v
        return self.hoists.env.Activation({**data, **extra} if extra else data)


class _Failed:
    """A hoisted computation that errored: its variable stays unbound, so CEL errors there."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class _Memo:
    """A hoisted comprehension call: results by loop value; failing values are left out."""

    __slots__ = ("errors", "table")

    def __init__(self, table: dict[str, Any], errors: dict[str, str]) -> None:
        self.table = table
        self.errors = errors  # loop value -> the call's error for it


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
        if param == "string" and type(value) is str:  # the usual case
            continue
        if not isinstance(value, _ACCEPTS[param]) or (param == "int" and isinstance(value, bool)):
            types = ", ".join(
                v.type_name if isinstance(v, _Opaque) else _CEL_TYPE.get(type(v), type(v).__name__)
                for v in args
            )
            return _Failed(f"UNKNOWN: No matching overloads found : {sig.name}({types})")
    try:
        return sig.impl(*args)
    except InvalidArgument as exc:
        return _Failed(f"INVALID_ARGUMENT: {exc}")
    except ValueError as exc:
        return _Failed(f"OUT_OF_RANGE: {exc}")
    except Exception as exc:  # as cel-expr-python does for a callback: an error value
        return _Failed(f"UNKNOWN: {type(exc).__name__}: {exc}")


class _Hoisting:
    """An engine's hoisted computations: one variable per distinct call (by source text),
    shared by every expression, and the compiled arguments they need."""

    POOL = 1024  # variables declared for hoisted values

    def __init__(self, env: Any) -> None:
        self.env = env
        self.names: dict[str, str] = {}  # Hoist.key -> variable
        self.by_var: dict[str, Hoist] = {}
        self.args: dict[str, Any] = {}  # CEL text of an argument -> its compiled program
        self.consts: dict[str, Any] = {}  # ... or its value, when it names no variable

    def name(self, key: str) -> str:
        if key not in self.names:
            if len(self.names) >= self.POOL:
                raise NameError("no hoisting variable left")
            self.names[key] = f"{PREFIX}{len(self.names)}"
        return self.names[key]

    def add(self, found: Plan) -> None:
        """Compile what `found`'s hoisted computations read; raises RuntimeError."""
        for h in found.hoists:
            for arg in (*h.args, h.domain, h.by):
                if arg is None or arg.hoist is not None or arg.text in self.args:
                    continue
                if arg.const and arg.text not in self.consts:
                    self.consts[arg.text] = _value(
                        self.env.compile(arg.text).eval(self.env.Activation({}))
                    )
                elif not arg.const:
                    self.args[arg.text] = (self.env.compile(arg.text), *_reads(arg.text))
        for h in found.hoists:
            self.by_var.setdefault(h.var, h)

    def ensure(self, h: Hoist, call: _Call) -> Any:
        value = call.values.get(h.var, _MISSING)
        if value is _MISSING:
            value = call.values[h.var] = self.compute(h, call)
        return value

    def compute(self, h: Hoist, call: _Call) -> Any:
        args: list[Any] = []
        for spec in h.args:
            value = None if spec is None else self.arg(spec, call)
            if isinstance(value, _Failed):
                return value  # an error argument makes the call an error, as in CEL
            args.append(value)
        if h.sig is None:  # a comprehension's range (not a list or map: CEL errors on it)
            return _Failed("not a list or map") if isinstance(args[0], _Opaque) else args[0]
        if h.loop is None:
            return _apply(h.sig, args)
        assert h.domain is not None
        domain = self.arg(h.domain, call)
        table: dict[str, Any] = {}
        errors: dict[str, str] = {}
        # The range itself stays in the expression: when it errors or is not a list or map,
        # the comprehension errors there, and the (empty) table is never read.
        items = domain if isinstance(domain, list | dict) else ()
        for item in items:
            if h.by is not None:  # the argument is an expression of the loop variable
                item = self.loop_arg(h.by, item, call)
            # Anything but a string cannot be looked up: CEL errors there, as the call would.
            if isinstance(item, str) and item not in table and item not in errors:
                args[h.loop] = item
                result = _apply(h.sig, args)
                if isinstance(result, _Failed):
                    errors[item] = result.message
                else:
                    table[item] = result
        return _Memo(table, errors)

    def loop_arg(self, spec: Arg, item: Any, call: _Call) -> Any:
        """`spec` (an expression of `LOOP`) for one element of a comprehension's range."""
        if spec.path:
            node = item
            for name in spec.path[1:]:
                if not isinstance(node, dict) or name not in node:
                    return None  # an error in CEL too
                node = node[name]
            return node
        program, reads, hoisted = self.args[spec.text]
        activation = call.activation(reads, hoisted, {LOOP: item})
        return _value(program.eval(activation))

    def arg(self, spec: Arg, call: _Call) -> Any:
        if spec.hoist is not None:
            return self.ensure(self.by_var[spec.hoist], call)
        if spec.const:
            return self.consts[spec.text]
        if spec.path:
            node: Any = call.variables
            for depth, name in enumerate(spec.path):
                if not isinstance(node, dict):
                    break
                if name not in node:
                    if depth == 0:
                        break  # an unbound variable: let CEL say so
                    return _Failed(f'NOT_FOUND: Key not found in map : "{name}"')
                node = node[name]
            else:
                return node
        program, reads, hoisted = self.args[spec.text]
        for var in hoisted:
            self.ensure(self.by_var[var], call)
        return _value(program.eval(call.activation(reads, hoisted)))


class _Program:
    __slots__ = ("_expr", "_hoists", "_reads", "callbacks", "result_type")

    def __init__(self, expr: Any, hoisted: Any = None, plan: Plan | None = None) -> None:
        self._expr = hoisted if hoisted is not None else expr
        self._hoists: tuple[Hoist, ...] = plan.hoists if plan and hoisted is not None else ()
        self._reads = _reads(plan.text) if plan and hoisted is not None else ((), ())
        # Custom-function calls still made through (leaking) callbacks, for tests and bench.
        self.callbacks = plan.residual if plan and hoisted is not None else 0
        t = expr.return_type()
        if t == _BOOL:
            self.result_type: str | None = "bool"
        elif t == _T.DYN:
            self.result_type = None
        else:
            self.result_type = str(t.name()).lower()

    def run(self, call: _Call) -> bool:
        try:
            if self._hoists and not call.prepared(self):
                values = call.values
                for h in self._hoists:
                    if h.var not in values:
                        values[h.var] = call.hoists.compute(h, call)
                activation = call.activation(*self._reads)
            else:
                activation = call.base()
            value = self._expr.eval(activation)
        except Exception as exc:  # the iteration budget raises RuntimeError
            raise EvalError(_short(str(exc))) from None
        kind = value.type()
        if kind == _BOOL:
            return bool(value.value())
        if kind == _ERROR:  # an ERROR value's .value() is truthy: never use it as a result
            mine = {h.var: call.values.get(h.var) for h in self._hoists}
            raise EvalError(_short(_hoisted_error(str(value.value()), mine)))
        raise EvalError(f"expression returned {str(kind.name()).lower()}, not bool")


_NOT_JSON = (_T.UINT, _T.BYTES, _T.TIMESTAMP, _T.DURATION, _T.TYPE, _T.UNKNOWN)


class _Opaque:
    """A value of a type no custom function takes (uint, bytes, ...): calls with it fail."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _value(result: Any) -> Any:
    """A plain Python value, `_Failed` for an ERROR value, `_Opaque` for a non-JSON type."""
    kind = result.type()
    if kind == _ERROR:
        return _Failed(str(result.value()))
    if any(kind == t for t in _NOT_JSON):
        name = str(kind.name()).lower()
        return _Opaque("uint64" if name == "uint" else name)
    return result.plain_value()


def _hoisted_error(message: str, values: dict[str, Any]) -> str:
    """The error a hoisted call recorded, in place of cel-cpp's "no value" or "no key" one."""
    for var in _HOIST_VAR.findall(message):
        value = values.get(var)
        if isinstance(value, _Failed):
            return value.message
    if "Key not found in map" in message:  # a loop value whose call failed
        for value in values.values():
            if isinstance(value, _Memo):
                for item, error in value.errors.items():
                    if message.endswith(f'"{item}"') or f'"{item}" ' in message:
                        return error
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
            variables={
                **variables,
                **{f"{PREFIX}{i}": _T.DYN for i in range(_Hoisting.POOL)},
                LOOP: _T.DYN,
            },
            extensions=[ext_strings.ExtStrings()],
            functions=functions,
        )
        self._hoisting = _Hoisting(self._hoist_env)

    def compile(self, text: str) -> _Program:
        try:
            expr = self._env.compile(text)
        except RuntimeError as exc:
            raise CompileError(_issues(str(exc))) from None
        found = plan(text, self._hoisting.name) if self._hoist else None
        if found is None or not found.hoists:
            return _counted(_Program(expr), text)
        # The checked original gives the errors and the result type; the rewritten one runs.
        try:
            hoisted = self._hoist_env.compile(found.text)
            self._hoisting.add(found)
        except RuntimeError:  # the rewrite does not compile here: keep the callbacks
            return _counted(_Program(expr), text)
        return _Program(expr, hoisted, found)

    def activation(self, variables: Mapping[str, Any], programs: Sequence[object] = ()) -> Any:
        return _Call(self._hoisting, dict(variables), programs)


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
