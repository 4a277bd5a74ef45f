"""cel-expr: custom-function calls are hoisted out of CEL, so they stop leaking, unchanged."""

from __future__ import annotations

import gc
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfw.model import Agent, ToolCall
from mcpfw.policy import evaluate, load_ruleset
from mcpfw.policy.engine import CompileError, EvalError, get_engine
from mcpfw.policy.engine_celexpr import CelExprEngine
from mcpfw.policy.functions import regex_matches
from mcpfw.policy.hoist import plan
from mcpfw.policy.limits import ArgLimits, LimitExceeded, bound_json

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2000


def _live_lists() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is list)


def _growth(cel: CelExprEngine, text: str, args: dict[str, Any]) -> int:
    program = cel.compile(text)
    activation = cel.activation({"args": args})
    assert program.run(activation) is True
    before = _live_lists()
    for _ in range(ROUNDS):
        program.run(cel.activation({"args": args}))
    return _live_lists() - before


LEAKY: list[str] = [
    # a list result, a list argument, calls in a comprehension over a computed range, calls on
    # an expression of the loop variable (counting lists: leaked strings are not tracked)
    "shellSplit(args.cmd).size() == 3 && asList(args.paths).size() == 2",
    "asList(args.paths).exists(p, isSecretPath(p)) && !args.paths.all(p, urlDecode(p) != p)",
    'args.files.all(f, shellSplit(f.dir + " x").size() == 2 && !isSecretPath(f.path))',
]
ARGS = {
    "cmd": "git log 'a b'",
    "paths": ["/w/a.txt", "/w/.env"],
    "files": [{"path": "/w/a", "dir": "/w"}, {"path": "/w/b.txt", "dir": "/v"}],
}


@pytest.mark.parametrize("text", LEAKY)
def test_evaluating_custom_functions_keeps_no_objects_alive(text: str) -> None:
    cel = get_engine("cel-expr")
    assert isinstance(cel, CelExprEngine)
    assert _growth(cel, text, ARGS) < ROUNDS // 10


def test_evaluating_the_shipped_rules_keeps_no_objects_alive() -> None:
    ruleset = load_ruleset([ROOT / "rules"], engine="cel-expr")
    cases: list[tuple[str, dict[str, Any]]] = [
        ("read_multiple_files", {"paths": ["/workspace/a", "/workspace/.env"]}),
        ("fetch", {"url": "https://docs.python.org/3/"}),
        ("git_push", {"branch": "+HEAD:refs/heads/main", "force": "yes"}),
        ("run_command", {"command": "git log 'a b'"}),
    ]
    calls = [
        ToolCall(agent=Agent(id="a", roles=("editor",)), tool=t, arguments=a) for t, a in cases
    ]
    for c in calls:  # warm up: caches, interned strings
        evaluate(ruleset, c)
    before = _live_lists()
    for _ in range(ROUNDS // len(calls)):
        for c in calls:
            evaluate(ruleset, c)
    assert _live_lists() - before < ROUNDS // 10


def test_the_binding_still_leaks_through_callbacks_which_is_why_calls_are_hoisted() -> None:
    # A canary: when cel-expr-python stops leaking, this fails and hoisting can go.
    assert _growth(CelExprEngine(hoist=False), LEAKY[0], ARGS) >= ROUNDS


def test_the_shipped_rules_make_no_callbacks() -> None:
    ruleset = load_ruleset([ROOT / "rules"], engine="cel-expr")
    leaking = {r.id: getattr(r.program, "callbacks", 0) for r in ruleset.rules if r.program}
    assert leaking and {k: v for k, v in leaking.items() if v} == {}


BAD = {
    "url": "http://[oops",
    "n": 7,
    "paths": ["/w/a.txt", "/w/%2e%2e/.ssh/id_rsa", 3, "http://[x"],
    "hosts": ["example.com", "[bad"],
    "nested": [["/w/.env"], ["/w/ok"]],
    "cmd": "echo 'unterminated",
    "flag": "maybe",
    "m": {"/w/.env": 1, "/w/b": 2},
    "objs": [{"path": "/w/.env"}, {"nopath": 1}, {"path": 3}, {"path": "http://[x"}],
}
SAME = [
    'urlHost(args.url) == "x"',
    'false && urlHost(args.url) == "x"',
    'urlHost(args.url) == "x" || true',
    'has(args.missing) && cleanPath(args.missing) == "/"',
    'cleanPath(args.missing) == "/" || true',
    'cleanPath(args.n) == "/"',
    "args.paths.exists(p, isSecretPath(p))",
    "args.paths.all(p, isSecretPath(p))",
    "args.paths.exists_one(p, isSecretPath(p))",
    "args.paths.filter(p, isSecretPath(p)).size() == 1",
    "args.paths.map(p, cleanPath(p)).size() == 4",
    '["/a/.env", "/b"].exists(p, isSecretPath(p))',
    '["example.com", "*.com"].all(d, globMatch(urlHost("https://a.example.com"), d))',
    'args.hosts.exists(h, hostKind(h) == "name")',
    "args.nested.exists(l, l.exists(p, isSecretPath(p)))",
    "args.m.exists(k, isSecretPath(k))",
    "shellSplit(args.cmd).size() > 0",
    "asBool(args.flag) || asBool(true)",
    "!asBool(false) && asList(args.paths).size() == 4",
    'hostKind(urlHost(args.url)) == "public"',
    "isSecretPath(args.paths[1]) && urlDecode(args.paths[1]) != args.paths[1]",
    '[cleanPath("/a/../b")].exists(p, p == "/b")',
    "asBool(dyn(1u)) || asBool(dyn(b'x')) || cleanPath(dyn(b'x')) == ''",
    "asBool(dyn(1u)) || true",
    "asList(dyn(1u)).size() == 1 || args.cmd.hasShellMeta()",
    "dyn(1u).exists(p, isSecretPath(p)) || true",
    # calls on an expression of the loop variable
    "args.objs.exists(o, isSecretPath(o.path))",
    'args.objs.all(o, pathWithin(o.path + "/x", "/w"))',
    'args.objs.exists(o, has(o.path) && urlDecode(string(o.path)) != "")',
    "args.nested.exists(l, isSecretPath(l[0]))",
    # root-scoped names and calls
    'cleanPath(.args.paths[0]) == "/w/a.txt" && .cleanPath(args.url) == "http:/[oops"',
    ".args.paths.exists(p, isSecretPath(p)) && .args.n == 7",
    # CEL's own `matches`, computed in Python when hoisted (in an expression that is planned
    # anyway: one with a custom call)
    'asBool(true) && args.url.matches("^http")',
    'asBool(true) && matches(args.url, "(?i)OOPS")',
    'asBool(true) && args.n.matches("7")',
    'args.n.matches("7") || asBool(true)',
    'asBool(true) && args.cmd.matches("[")',
    'args.cmd.matches("[") || asBool(true)',
    "asBool(true) && args.cmd.matches(args.flag)",
    'asBool(true) && args.paths.exists(p, p.matches("(?i)\\\\.ENV$"))',
    'asBool(true) && args.paths.all(p, p.matches("w"))',
    'asBool(true) && args.objs.exists(o, o.path.matches("env"))',
    'asBool(true) && args.missing.matches("x")',
    'cleanPath(args.paths[0]).matches("^/w/") && !urlDecode(args.paths[1]).matches("\\\\.\\\\.")',
]


def _outcome(cel: CelExprEngine, text: str) -> tuple[str, object]:
    try:
        return ("ok", cel.compile(text).run(cel.activation({"args": BAD})))
    except EvalError as exc:
        return ("error", str(exc))


@pytest.mark.parametrize("text", SAME)
def test_hoisting_changes_neither_results_nor_errors(text: str) -> None:
    hoisted, plain = _outcome(CelExprEngine(), text), _outcome(CelExprEngine(hoist=False), text)
    assert hoisted[0] == plain[0], (hoisted, plain)
    if hoisted[0] == "ok":
        assert hoisted == plain


def test_a_failed_hoisted_call_reports_the_functions_own_error() -> None:
    _, message = _outcome(CelExprEngine(), 'urlHost(args.url) == "x"')
    assert "not a valid URL" in str(message)


def test_calls_on_a_loop_variable_range_over_a_computed_list_once() -> None:
    found = plan("(args.a + asList(args.b)).exists(p, isSecretPath(p) || urlDecode(p) != p)")
    assert found is not None and found.residual == 0
    assert found.text == "__mcpfw_h1.exists(p, __mcpfw_h2[p] || __mcpfw_h3[p] != p)"
    assert [h.sig.name if h.sig else "range" for h in found.hoists] == [
        "asList", "range", "isSecretPath", "urlDecode",
    ]  # fmt: skip


def test_a_call_on_a_field_of_the_loop_variable_is_looked_up_by_that_field() -> None:
    found = plan('args.l.exists(p, cleanPath(p.name) == "/" && pathWithin(args.x, "/w"))')
    assert found is not None and found.residual == 0
    assert found.text == '__mcpfw_h0.exists(p, __mcpfw_h1[p.name] == "/" && __mcpfw_h2)'


def test_a_call_on_a_call_of_the_loop_variable_stays_a_callback() -> None:
    found = plan("args.l.exists(p, isSecretPath(cleanPath(p.name)))")
    assert found is not None and found.residual == 1
    assert found.text == "__mcpfw_h0.exists(p, isSecretPath(__mcpfw_h1[p.name]))"


def test_literal_true_and_false_arguments_are_rewritten_in_place() -> None:
    found = plan("asBool(true) && !asBool(false) && true")
    assert found is not None and found.text == "__mcpfw_h0 && !__mcpfw_h1 && true"


def test_rules_cannot_name_the_hoisted_variables() -> None:
    with pytest.raises(CompileError):
        CelExprEngine().compile('__mcpfw_h0 == "x"')


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_values = st.recursive(
    _scalars | st.sampled_from(["/workspace/a", "/w/.env", "%2e%2e/x", "https://127.1/", "+main",
                                "http://[x", "a@b.c", "ls -la; rm", "refs/heads/main"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip
_arguments = st.dictionaries(
    st.sampled_from(["path", "paths", "source", "destination", "command", "url", "branch",
                     "force", "force_with_lease", "to", "cc", "channel"]),
    _values,
    max_size=6,
)  # fmt: skip


@cache
def _both() -> list[tuple[str, tuple[Any, Any], tuple[Any, Any]]]:
    hoisting, plain = get_engine("cel-expr"), CelExprEngine(hoist=False)
    rules = [r for r in load_ruleset([ROOT / "rules"], engine="cel-expr").rules if r.when]
    return [
        (r.id, (hoisting, hoisting.compile(str(r.when))), (plain, plain.compile(str(r.when))))
        for r in rules
    ]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_arguments)
def test_every_shipped_rule_decides_the_same_hoisted_or_not(args: dict[str, Any]) -> None:
    try:  # as evaluate() does: no NUL, no lone surrogates, bounded
        args = bound_json(args, ArgLimits())
    except LimitExceeded:
        return
    variables = {"args": args, "agent": {"id": "a", "roles": ["editor"]}, "tool": {"name": "t"}}
    for rule, *pairs in _both():
        outcomes: list[object] = []
        # hoisted (computed per expression, and prepared up front as evaluate() does), plain
        for cel, program, prepare in (*[(*p, False) for p in pairs], (*pairs[0], True)):
            try:
                activation = cel.activation(variables, [program] if prepare else [])
                outcomes.append(program.run(activation))
            except EvalError:
                outcomes.append("error")
        assert outcomes[0] == outcomes[1] == outcomes[2], rule


_TEXTS = st.text(alphabet=st.sampled_from("aAbB.-_/é\nZz09 \t"), max_size=12)
_PATTERNS = [
    "^a", "b$", "(?i)AB", "a.b", "\\.", "[a-c]+z", "é", "^$", "(a|b)*Z", "\\d\\s", "(?s)a.b",
    "(?m)^b", "[[:alpha:]]{2}", "\\bAB\\b", "x*", "\\pL+",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_TEXTS, st.sampled_from(_PATTERNS))
def test_matches_computed_in_python_agrees_with_cel_cpp(text: str, pattern: str) -> None:
    plain = CelExprEngine(hoist=False)
    program = plain.compile("args.s.matches(args.p)")
    native = program.run(plain.activation({"args": {"s": text, "p": pattern}}))
    assert regex_matches(text, pattern) is native


def test_matches_is_hoisted_with_custom_calls_and_never_counted_as_a_callback() -> None:
    text = 'isSecretPath(args.path) || args.paths.exists(p, p.matches("x"))'
    found = plan(text + ' || args.path.matches("(?i)\\\\.env$")')
    assert found is not None and found.residual == 0
    names = sorted(h.sig.name for h in found.hoists if h.sig)
    assert names == ["isSecretPath", "matches", "matches"]
    kept = plan("asBool(true) && args.objs.exists(o, o.a.matches(o.b))")  # two loop arguments
    assert kept is not None and kept.residual == 0
    assert [h.sig.name for h in kept.hoists if h.sig] == ["asBool"]
    # alone, `matches` is left to cel-cpp: loading cel-python's parser costs more at start
    assert plan('args.path.matches("(?i)\\\\.env$")') is None


def test_a_bad_pattern_fails_as_cel_says_it() -> None:
    cel = get_engine("cel-expr")
    with pytest.raises(EvalError, match="INVALID_ARGUMENT: invalid regular expression"):
        program = cel.compile('asBool(true) && args.s.matches("[")')
        program.run(cel.activation({"args": {"s": "x"}}))


def test_a_failed_call_in_a_comprehension_reports_the_same_error_as_a_callback() -> None:
    text = 'args.hosts.map(h, "https://" + h).all(u, urlHost(u) != "")'
    assert CelExprEngine().compile(text).callbacks == 0
    hoisted, plain = _outcome(CelExprEngine(), text), _outcome(CelExprEngine(hoist=False), text)
    assert hoisted == plain and "not a valid" in str(hoisted[1])
