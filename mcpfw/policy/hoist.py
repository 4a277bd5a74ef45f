"""Compile-time hoisting of custom-function calls out of cel-expr-python expressions.

cel-expr-python 0.1.x leaks the argument tuple, the arguments and the result of every call
into a Python-implemented function (~0.2-0.5 KB per call); built-in functions do not leak.
So the native engine rewrites each `when` expression before compiling it for evaluation:

- a custom call that uses no comprehension variable, `cleanPath(args.path)`, becomes a
  variable `__mcpfw_h0` that the engine computes in Python for each call and binds in the
  activation; inner calls are hoisted first, so `hostKind(urlHost(args.url))` becomes two;
- a call inside a comprehension whose only comprehension-dependent argument is the loop
  variable itself, `L.exists(p, isSecretPath(p))` with `L` free of comprehension variables,
  becomes a lookup `__mcpfw_h1[p]` in a map computed from the elements of `L`;
- in an expression that is rewritten anyway, CEL's built-in `matches` is hoisted the same way,
  not for the leak but for speed: cel-cpp compiles its pattern on every evaluation, Python's
  RE2 binding once (`functions.MATCHES`).

A hoisted computation that fails leaves its variable (or map key) unbound, so the expression
errors exactly where the call would have, and CEL's error absorption (`false && error`,
`true || error`) is unchanged. Any other call (its argument is `p.name`, say) keeps the
leaking callback; `Plan.residual` counts those. This module only plans: it parses with
cel-python's parser (a declared dependency) and knows nothing of cel-expr-python.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mcpfw.policy.functions import FUNCTIONS, MATCHES, Signature

__all__ = ["LOOP", "MAX_HOISTS", "PREFIX", "Arg", "Hoist", "Plan", "plan"]

PREFIX = "__mcpfw_h"
MAX_HOISTS = 64  # variables the native engine declares for hoisted values
# CEL's built-in `matches` is hoisted too, for speed (see functions.MATCHES); left in place it
# is no callback, so it never counts as residual.
_BY_NAME = {sig.name: sig for sig in (*FUNCTIONS, MATCHES)}
_MACROS = frozenset({"all", "exists", "exists_one", "filter", "map", "bind"})
LOOP = "__mcpfw_loop"  # the loop variable in a memoised call's argument (`LOOP.path`)
_PATH = re.compile(r"(agent|tool|args|session|request|__mcpfw_loop)((?:\.[A-Za-z_]\w*)+)")
_HOIST_VAR = re.compile(re.escape(PREFIX) + r"\d+")


@dataclass(frozen=True, slots=True)
class Arg:
    """How to get one argument's value: `text` is its CEL (hoisted calls replaced)."""

    text: str
    hoist: str | None = None  # the argument is exactly this hoisted variable
    path: tuple[str, ...] = ()  # the argument is a plain selection: variable, fields...
    const: bool = False  # the argument names no variable: its value is computed once


@dataclass(frozen=True, slots=True)
class Hoist:
    """One hoisted call; `loop` is set for a comprehension call (a map over `domain`).
    With no `sig` it is a comprehension's range: the value of its one argument."""

    var: str
    key: str  # the call's source text (with the loop's range): equal keys, equal values
    sig: Signature | None
    args: tuple[Arg | None, ...]  # None at the loop variable's position
    loop: int | None = None
    domain: Arg | None = None
    by: Arg | None = None  # the loop argument in terms of `LOOP`, if not just the variable


@dataclass(frozen=True, slots=True)
class Plan:
    """The rewritten expression, its hoisted calls in dependency order, and what is left."""

    text: str
    hoists: tuple[Hoist, ...]
    residual: int  # custom calls left as (leaking) callbacks


_Repl = list[tuple[int, int, str]]


class _NoPosition(Exception):
    """The parser gave a node no source position: do not rewrite this expression."""


# cel-python's parser gives `true`/`false` tokens no position; parse a same-length stand-in.
_BOOLS = re.compile(r"\b(true|false)\b")


def _stand_in(m: re.Match[str]) -> str:
    return "_Tt_" if m.group(1) == "true" else "_Ff__"


class _Planner:
    def __init__(self, text: str, name: Callable[[str], str] | None) -> None:
        self.text = text
        self.name = name
        self.hoists: list[Hoist] = []
        self.by_key: dict[str, str] = {}
        self.residual = 0
        self.count = 0  # variables named so far
        self.ranges_used: set[str] = set()

    def source(self, node: Any) -> str:
        return self.render(node, [])

    def render(self, node: Any, repl: _Repl) -> str:
        start, end = getattr(node.meta, "start_pos", None), getattr(node.meta, "end_pos", None)
        if start is None or end is None:
            raise _NoPosition
        return self.span(start, end, repl)

    def span(self, start: int, end: int, repl: _Repl) -> str:
        out, pos = [], start
        for s, e, new in sorted(repl):
            out += [self.text[pos:s], new]
            pos = e
        out.append(self.text[pos:end])
        return "".join(out)

    def arg(self, node: Any, bound: dict[str, tuple[Arg, str] | None]) -> Arg:
        text = self.render(node, self.visit(node, bound))
        if PREFIX not in text and not _names_any(node):
            return Arg(text, const=True)
        return self.arg_of(text)

    def visit(self, node: Any, bound: dict[str, tuple[Arg, str] | None]) -> _Repl:
        if not hasattr(node, "data"):
            return []
        if node.data in ("ident_arg", "dot_ident_arg", "member_dot_arg"):
            kids = node.children
            member = node.data == "member_dot_arg"
            name = str(kids[1] if member else kids[0])
            rest = kids[2:] if member else kids[1:]
            args = list(rest[0].children) if rest else []
            if member and name in _MACROS and args and _bare_ident(args[0]):
                return self.macro(kids[0], args, bound)
            if name in _BY_NAME:
                found = self.call(node, _BY_NAME[name], [kids[0], *args] if member else args, bound)
                if found is not None:
                    return [found]
                if name != MATCHES.name:
                    self.residual += 1
        out: _Repl = []
        for child in node.children:
            out += self.visit(child, bound)
        return out

    def macro(self, recv: Any, args: list[Any], bound: dict[str, tuple[Arg, str] | None]) -> _Repl:
        out = self.visit(recv, bound)
        names = [n for n in (_bare_ident(a) for a in args[:-1]) if n]
        inner = dict(bound)
        for n in names:
            inner[n] = None  # bound, range unknown: calls using it stay callbacks
        made: Hoist | None = None
        var: str | None = None
        if len(names) == 1 and not out and not _names_any(recv):  # a constant range stays
            inner[names[0]] = (Arg(self.render(recv, out), const=True), self.source(recv))
        elif len(names) == 1 and not _refs(recv, bound) and self.count < MAX_HOISTS:
            # The range is hoisted too, when a call in the body is, so it is evaluated once.
            source = self.source(recv)
            key = f"\x00range\x00{source}"
            var = self.by_key.get(key)
            if var is None:
                var = self.new_var(key)
                made = Hoist(var, key, None, (self.arg_of(self.render(recv, out)),))
                self.hoists.append(made)
                self.by_key[key] = var
            inner[names[0]] = (Arg(var, hoist=var), source)
        body: _Repl = []
        for a in args[1:]:
            body += self.visit(a, inner)
        if var is not None and var in self.ranges_used:
            return [(recv.meta.start_pos, recv.meta.end_pos, var), *body]
        if made is not None:
            self.hoists.remove(made)
            del self.by_key[made.key]
        return out + body

    def new_var(self, key: str) -> str:
        self.count += 1
        return self.name(key) if self.name else f"{PREFIX}{self.count - 1}"

    def arg_of(self, text: str) -> Arg:
        if _HOIST_VAR.fullmatch(text):
            return Arg(text, hoist=text)
        m = _PATH.fullmatch(text)
        return Arg(text, path=(m.group(1), *m.group(2)[1:].split("."))) if m else Arg(text)

    def call(
        self, node: Any, sig: Signature, args: list[Any], bound: dict[str, tuple[Arg, str] | None]
    ) -> tuple[int, int, str] | None:
        if len(args) != len(sig.params) or self.count >= MAX_HOISTS:
            return None
        uses = [_refs(a, bound) for a in args]
        loop: int | None = None
        by: Arg | None = None  # the loop argument, when it is more than the loop variable
        if any(uses):
            loops = [i for i, u in enumerate(uses) if u]
            if len(loops) != 1 or sig.params[loops[0]] != "string":
                return None
            loop = loops[0]
            var = _bare_ident(args[loop])
            if var is None:  # `f.path`: one loop variable, no call or comprehension inside
                names = {
                    str(t.children[0]) for t in _idents(args[loop]) if str(t.children[0]) in bound
                }
                if len(names) != 1 or _calls_or_loops(args[loop]):
                    return None
                var = names.pop()
                by = self.arg_of(self.loop_text(args[loop], var))
            info = bound.get(var)
            if info is None:
                return None
        key = self.source(node)
        if loop is not None:
            key += f"\x00{var}\x00{info[1] if info else ''}"
        var_name = self.by_key.get(key)
        if var_name is None:
            specs = tuple(None if i == loop else self.arg(a, bound) for i, a in enumerate(args))
            var_name = self.new_var(key)
            domain = info[0] if loop is not None and info else None
            self.hoists.append(Hoist(var_name, key, sig, specs, loop, domain, by))
            self.by_key[key] = var_name
        if loop is not None and info and info[0].hoist:
            self.ranges_used.add(info[0].hoist)
        start, end = node.meta.start_pos, node.meta.end_pos
        if start is None or end is None:
            raise _NoPosition
        if loop is None:
            return (start, end, var_name)
        return (start, end, f"{var_name}[{self.source(args[loop])}]")

    def loop_text(self, node: Any, var: str) -> str:
        """`node`'s text with the loop variable `var` renamed to `LOOP`."""
        spans = [
            (t.meta.start_pos, t.meta.end_pos, LOOP)
            for t in _idents(node)
            if str(t.children[0]) == var
        ]
        if any(s is None or e is None for s, e, _ in spans):
            raise _NoPosition
        return self.render(node, spans)


def _idents(node: Any) -> list[Any]:
    return [t for t in node.iter_subtrees() if t.data == "ident"]


def _calls_or_loops(node: Any) -> bool:
    """True when `node` calls a custom function or binds a comprehension variable."""
    for t in node.iter_subtrees():
        if t.data in ("ident_arg", "dot_ident_arg", "member_dot_arg"):
            name = str(t.children[1] if t.data == "member_dot_arg" else t.children[0])
            if name in _BY_NAME or name in _MACROS:
                return True
    return False


def _bare_ident(node: Any) -> str | None:
    while hasattr(node, "data") and node.data != "ident" and len(node.children) == 1:
        node = node.children[0]
    if hasattr(node, "data") and node.data == "ident":
        return str(node.children[0])
    return None


def _names_any(node: Any) -> bool:
    """True when `node` mentions any variable (a stand-in for true/false is none)."""
    return any(
        t.data == "dot_ident" or (t.data == "ident" and str(t.children[0]) not in ("_Tt_", "_Ff__"))
        for t in node.iter_subtrees()
    )


def _refs(node: Any, bound: dict[str, tuple[Arg, str] | None]) -> bool:
    """True when `node` mentions a comprehension variable in scope."""
    if not bound or not hasattr(node, "iter_subtrees"):
        return False
    return any(t.data == "ident" and str(t.children[0]) in bound for t in node.iter_subtrees())


def plan(text: str, name: Callable[[str], str] | None = None) -> Plan | None:
    """The hoisting plan for `text`; None when it calls no custom function or does not parse.
    `name(key)` names the variable of a hoisted computation (default: `__mcpfw_h0`, ... in
    order); an engine that shares values between expressions gives equal keys one name, and
    raises `NameError` when it has no name left (the expression then keeps its callbacks)."""
    if not any(sig.name in text for sig in FUNCTIONS):
        # Nothing leaks: leave it to cel-cpp, `matches` included, and do not load cel-python's
        # parser (about 10 MB and 0.2 s at start) only to speed up a `matches`.
        return None
    try:
        from celpy.celparser import CELParser

        tree = CELParser().parse(_BOOLS.sub(_stand_in, text))
    except Exception:  # cel-python missing, or its parser disagrees: keep the callbacks
        return None
    planner = _Planner(text, name)
    try:
        repl = planner.visit(tree, {})
    except (_NoPosition, NameError):
        return None
    return Plan(planner.span(0, len(text), repl), tuple(planner.hoists), planner.residual)
