"""evaluate(): decision order, shadow rules, fail-closed errors, limits, prefilters."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from mcpfw.model import Agent, Effect, ToolCall
from mcpfw.policy import ArgLimits, RuleSet, evaluate, may_allow

from .conftest import call

Load = Callable[..., RuleSet]

ORDER_RULES = """
default: {default}
rules:
  - id: allow-it
    effect: allow
    when: args.allow == true
  - id: ask-it
    effect: ask
    when: args.ask == true
    message: please confirm
  - id: deny-it
    effect: deny
    when: args.deny == true
    message: never
"""


@pytest.mark.parametrize(
    ("flags", "effect", "rule"),
    [
        ({"allow": True, "ask": True, "deny": True}, Effect.DENY, "deny-it"),
        ({"allow": True, "ask": True, "deny": False}, Effect.ASK, "ask-it"),
        ({"allow": True, "ask": False, "deny": False}, Effect.ALLOW, "allow-it"),
        ({"allow": False, "ask": False, "deny": False}, Effect.DENY, "default"),
    ],
)
def test_deny_wins_then_ask_then_allow_then_the_default(
    ruleset: Load, flags: dict[str, bool], effect: Effect, rule: str
) -> None:
    rs = ruleset(ORDER_RULES.format(default="deny"))
    d = evaluate(rs, call(args=flags))
    assert (d.effect, d.rule) == (effect, rule)
    assert d.matched == tuple(k + "-it" for k in ("allow", "ask", "deny") if flags[k])
    assert d.enforced and d.errors == ()
    assert d.revision == rs.revision and d.eval_us > 0


def test_the_deciding_rule_gives_message_and_reason(ruleset: Load) -> None:
    rs = ruleset(ORDER_RULES.format(default="deny"))
    d = evaluate(rs, call(args={"allow": True, "ask": True, "deny": True}))
    assert d.message == "never" and d.reason == "denied by rule deny-it"
    d = evaluate(rs, call(args={"allow": False, "ask": True, "deny": False}))
    assert d.message == "please confirm" and d.reason == "needs approval by rule ask-it"


@pytest.mark.parametrize("default", ["allow", "ask", "deny"])
def test_no_match_falls_to_the_files_default(ruleset: Load, default: str) -> None:
    rs = ruleset(ORDER_RULES.format(default=default))
    d = evaluate(rs, call(args={"allow": False, "ask": False, "deny": False}))
    assert d.effect is Effect(default) and d.rule == "default" and d.matched == ()
    assert d.reason == f"no rule matched; the default is {default}"


def test_a_rule_without_when_matches_whenever_its_prefilters_do(ruleset: Load) -> None:
    rs = ruleset("rules: [{id: all-reads, effect: allow, tools: [read_file]}]")
    assert evaluate(rs, call("read_file")).effect is Effect.ALLOW
    assert evaluate(rs, call("write_file")).rule == "default"


SHADOW_RULES = """
rules:
  - id: reads
    effect: allow
    tools: [read_file]
  - id: would-deny-etc
    effect: deny
    mode: shadow
    when: args.path.startsWith("/etc")
  - id: would-allow-writes
    effect: allow
    mode: shadow
    tools: [write_file]
"""


def test_a_shadow_deny_is_reported_but_never_enforced(ruleset: Load) -> None:
    d = evaluate(ruleset(SHADOW_RULES), call("read_file", {"path": "/etc/passwd"}))
    assert (d.effect, d.rule, d.matched) == (Effect.ALLOW, "reads", ("reads",))
    assert d.shadow_effect is Effect.DENY and d.shadow_rule == "would-deny-etc"
    assert d.shadow_matched == ("would-deny-etc",)


def test_a_shadow_allow_shows_what_would_be_allowed(ruleset: Load) -> None:
    d = evaluate(ruleset(SHADOW_RULES), call("write_file", {"path": "/w/a"}))
    assert (d.effect, d.rule) == (Effect.DENY, "default")
    assert (d.shadow_effect, d.shadow_rule) == (Effect.ALLOW, "would-allow-writes")


def test_no_shadow_result_when_no_shadow_rule_matches(ruleset: Load) -> None:
    d = evaluate(ruleset(SHADOW_RULES), call("read_file", {"path": "/w/a"}))
    assert d.shadow_effect is None and d.shadow_rule is None and d.shadow_matched == ()


FAILING = """
default: {default}
rules:
  - id: broken
    effect: {effect}
    when: args.path.startsWith("/w")
"""


def test_a_deny_rule_that_errors_counts_as_matched(ruleset: Load) -> None:
    rs = ruleset(FAILING.format(default="allow", effect="deny"))
    d = evaluate(rs, call(args={"path": 42}))
    assert (d.effect, d.rule, d.matched) == (Effect.DENY, "broken", ("broken",))
    assert [e.rule for e in d.errors] == ["broken"] and d.errors[0].message
    assert "failed to evaluate; failing closed" in d.reason


def test_an_ask_rule_that_errors_counts_as_matched(ruleset: Load) -> None:
    rs = ruleset(FAILING.format(default="allow", effect="ask"))
    d = evaluate(rs, call(args={}))
    assert (d.effect, d.rule) == (Effect.ASK, "broken")
    assert [e.rule for e in d.errors] == ["broken"]


def test_an_allow_rule_that_errors_does_not_match(ruleset: Load) -> None:
    # cel-expr-python returns an ERROR value whose .value() is truthy: it must not allow.
    rs = ruleset(FAILING.format(default="deny", effect="allow"))
    d = evaluate(rs, call(args={"path": 42}))
    assert (d.effect, d.rule, d.matched) == (Effect.DENY, "default", ())
    assert [e.rule for e in d.errors] == ["broken"]


def test_a_when_that_returns_a_non_boolean_at_runtime_is_an_error(ruleset: Load) -> None:
    rs = ruleset("rules: [{id: dyn, effect: allow, when: args.flag}]")
    d = evaluate(rs, call(args={"flag": "yes"}))
    assert d.rule == "default" and "not bool" in d.errors[0].message
    assert evaluate(rs, call(args={"flag": True})).rule == "dyn"


def test_the_native_iteration_budget_fails_closed(write: Callable[..., Any]) -> None:
    from mcpfw.policy import load_ruleset

    path = write(
        "r.yaml",
        """
        rules:
          - id: quadratic
            effect: deny
            when: args.l.exists(x, args.l.exists(y, x + y < 0))
        """,
    )
    rs = load_ruleset([path], engine="cel-expr")
    d = evaluate(rs, call(args={"l": list(range(500))}))
    assert (d.effect, d.rule) == (Effect.DENY, "quadratic")
    assert "budget" in d.errors[0].message.lower()


def deep(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    for _ in range(n):
        cur["a"] = {}
        cur = cur["a"]
    return out


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (deep(5000), "nested deeper than the limit of 32"),
        ({"s": "x" * 300_000}, "larger than the limit of 262144 bytes"),
        ({"l": list(range(20_000))}, "more than the limit of 10000 values"),
        ({"p": "/w/a.txt\x00.png"}, "NUL character"),
    ],
)
def test_arguments_over_the_limits_are_denied_without_evaluation(
    ruleset: Load, args: dict[str, Any], why: str
) -> None:
    rs = ruleset("default: allow\nrules: [{id: everything, effect: allow}]")
    d = evaluate(rs, call(args=args))
    assert (d.effect, d.rule, d.matched) == (Effect.DENY, "limits", ())
    assert why in d.reason


def test_arguments_that_are_not_an_object_are_denied(ruleset: Load) -> None:
    rs = ruleset("default: allow\nrules: []")
    bad: Any = ["not", "an", "object"]
    d = evaluate(rs, ToolCall(agent=Agent(id="a"), tool="t", arguments=bad))
    assert (d.effect, d.rule) == (Effect.DENY, "limits") and "JSON object" in d.reason


def test_limits_are_configurable_and_cover_claims(write: Callable[..., Any]) -> None:
    from mcpfw.policy import load_ruleset

    path = write("r.yaml", "default: allow\nrules: []")
    rs = load_ruleset([path], limits=ArgLimits(max_depth=2, max_bytes=100, max_items=5))
    assert evaluate(rs, call(args={"a": {"b": 1}})).effect is Effect.ALLOW
    assert evaluate(rs, call(args={"a": {"b": {"c": 1}}})).rule == "limits"
    assert evaluate(rs, call(args={"l": [1, 2, 3, 4, 5, 6]})).rule == "limits"
    agent = Agent(id="a", claims={"blob": "x" * 200})
    assert evaluate(rs, ToolCall(agent=agent, tool="t")).rule == "limits"
    many_roles = Agent(id="a", roles=tuple(f"r{i}" for i in range(50)))
    assert evaluate(rs, ToolCall(agent=many_roles, tool="t")).rule == "limits"
    nul_in_id = Agent(id="a\x00b")
    assert evaluate(rs, ToolCall(agent=nul_in_id, tool="t")).rule == "limits"


def test_monitor_mode_gives_the_same_decision_unenforced(ruleset: Load) -> None:
    rs = ruleset(ORDER_RULES.format(default="allow"))
    d = evaluate(rs, call(args={"allow": False, "ask": False, "deny": True}), monitor=True)
    assert (d.effect, d.rule, d.enforced) == (Effect.DENY, "deny-it", False)


def test_an_internal_failure_is_a_deny_never_an_exception(
    ruleset: Load, monkeypatch: pytest.MonkeyPatch
) -> None:
    rs = ruleset("default: allow\nrules: [{id: a, effect: allow, when: 'true'}]")

    def explode(variables: Any, programs: Any = ()) -> Any:
        raise MemoryError("boom")

    monkeypatch.setattr(rs.compiled_by, "activation", explode)
    d = evaluate(rs, call())
    assert (d.effect, d.rule) == (Effect.DENY, "error")
    assert "MemoryError" in d.errors[0].message and "failing closed" in d.reason


PREFILTERS = """
rules:
  - id: ci-reads
    effect: allow
    agents: ["ci-*"]
    servers: [fs, "fs-*"]
    tools: [read_file, "list_*"]
  - id: other-tool-broken
    effect: deny
    tools: [write_file]
    when: args.nope.nope
"""


@pytest.mark.parametrize(
    ("agent", "server", "tool", "effect"),
    [
        ("ci-1", "fs", "read_file", Effect.ALLOW),
        ("ci-2", "fs-prod", "list_directory", Effect.ALLOW),
        ("dev-1", "fs", "read_file", Effect.DENY),
        ("ci-1", "git", "read_file", Effect.DENY),
        ("ci-1", "fs", "read_file_x", Effect.DENY),
    ],
)
def test_prefilters_select_candidate_rules(
    ruleset: Load, agent: str, server: str, tool: str, effect: Effect
) -> None:
    rs = ruleset(PREFILTERS)
    for _ in range(2):  # the second call is served from the index cache
        d = evaluate(rs, call(tool, agent=agent, server=server))
        assert d.effect is effect
        assert d.errors == ()  # the broken write_file rule was never evaluated


def test_only_rules_whose_prefilters_match_are_evaluated(ruleset: Load) -> None:
    rs = ruleset(PREFILTERS)
    d = evaluate(rs, call("write_file", agent="ci-1", server="fs"))
    assert [e.rule for e in d.errors] == ["other-tool-broken"]
    assert rs.index.candidates("ci-1", "fs", "read_file") == (rs.rules[0],)


def test_every_cel_variable_is_available(ruleset: Load) -> None:
    rs = ruleset(
        """
        rules:
          - id: all-vars
            effect: allow
            when: >-
              agent.id == "a1" && "admin" in agent.roles && agent.claims.team == "infra"
              && agent.transport == "http" && tool.name == "t" && tool.server == "s"
              && tool.annotations.readOnlyHint == true && "hidden-instructions" in tool.findings
              && session.id == "s1" && session.calls == 3 && request.method == "tools/call"
              && timestamp(request.time) > timestamp("2020-01-01T00:00:00Z")
        """
    )
    c = ToolCall(
        agent=Agent(id="a1", roles=("admin",), claims={"team": "infra"}, transport="http"),
        tool="t",
        server="s",
        annotations={"readOnlyHint": True},
        findings=("hidden-instructions",),
        session_id="s1",
        session_calls=3,
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )
    d = evaluate(rs, c)
    assert (d.effect, d.errors) == (Effect.ALLOW, ())


def test_odd_python_values_in_arguments_do_not_break_evaluation(ruleset: Load) -> None:
    rs = ruleset("rules: [{id: a, effect: allow, when: 'args.big > 0 && args.t.size() == 2'}]")
    args: dict[Any, Any] = {"big": 2**80, "t": ("x", "y"), 5: "int key", "s": "\ud800", "b": b"x"}
    d = evaluate(rs, call(args=args))
    assert (d.effect, d.errors) == (Effect.ALLOW, ())


def test_may_allow(ruleset: Load) -> None:
    rs = ruleset(
        """
        rules:
          - id: reads
            effect: allow
            agents: ["ci-*"]
            tools: [read_file]
          - id: never-delete
            effect: deny
            tools: [delete_file]
          - id: maybe-deny-write
            effect: deny
            tools: [write_file]
            when: args.path == "/etc"
          - id: ask-write
            effect: ask
            tools: [write_file]
          - id: shadow-move
            effect: allow
            mode: shadow
            tools: [move_file]
        """
    )
    ci, dev = Agent(id="ci-1"), Agent(id="dev")
    assert may_allow(rs, ci, "fs", "read_file")
    assert not may_allow(rs, dev, "fs", "read_file")
    assert not may_allow(rs, ci, "fs", "delete_file")
    assert may_allow(rs, dev, "fs", "write_file")
    assert not may_allow(rs, ci, "fs", "move_file")


def test_may_allow_with_an_allow_default(ruleset: Load) -> None:
    rs = ruleset("default: allow\nrules: [{id: no-rm, effect: deny, tools: [rm]}]")
    assert may_allow(rs, Agent(id="x"), "", "ls")
    assert not may_allow(rs, Agent(id="x"), "", "rm")
