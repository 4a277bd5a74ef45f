"""The rule-test runner behind `mcpfw test`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mcpfw.model import Effect
from mcpfw.policy import RuleSetError
from mcpfw.policy.testing import discover, load_cases, run_tests

RULES = """
rules:
  - id: reads
    effect: allow
    tools: [read_file]
  - id: admin-writes
    effect: allow
    tools: [write_file]
    when: '"admin" in agent.roles && agent.claims.team == "infra"'
  - id: never-covered
    effect: deny
    tools: [rm]
"""


@pytest.fixture
def project(write: Callable[..., Path]) -> Path:
    write("p/fs.yaml", RULES)
    write(
        "p/fs_test.yaml",
        """
        cases:
          - note: reads are allowed
            tool: read_file
            want: allow
            want_rule: reads
          - note: admins write
            agent: {id: a, roles: [admin], claims: {team: infra}}
            tool: write_file
            args: {path: /x}
            want: allow
          - note: non-admins do not write
            agent: bob
            tool: write_file
            want: deny
            want_rule: default
        """,
    )
    return Path(write("p/.keep", "")).parent


def test_a_passing_suite_reports_every_case_and_coverage(project: Path, engine: str) -> None:
    report = run_tests([project], engine=engine)
    assert report.ok and len(report.passed) == 3 and report.failed == ()
    assert report.covered == ("reads", "admin-writes")
    assert report.uncovered == ("never-covered",)
    assert report.ruleset.engine == engine


def test_a_wrong_effect_or_rule_fails_with_the_actual_decision(
    project: Path, write: Callable[..., Path]
) -> None:
    write(
        "p/more_test.yaml",
        """
        cases:
          - note: wrong effect
            tool: read_file
            want: deny
          - note: wrong rule
            tool: read_file
            want: allow
            want_rule: admin-writes
        """,
    )
    report = run_tests([project])
    assert not report.ok
    problems = {r.case.note: r.problem for r in report.failed}
    assert problems == {
        "wrong effect": "want deny, got allow",
        "wrong rule": "want rule admin-writes, got reads",
    }


def test_todo_cases_run_but_do_not_fail_the_suite(
    project: Path, write: Callable[..., Path]
) -> None:
    write(
        "p/todo_test.yaml", "cases:\n  - {note: later, tool: read_file, want: deny, todo: true}\n"
    )
    report = run_tests([project])
    assert report.ok and len(report.todo) == 1 and not report.todo[0].passed


def test_run_filters_cases_by_note(project: Path) -> None:
    report = run_tests([project], run="^admins")
    assert [r.case.note for r in report.results] == ["admins write"] and report.skipped == 2


def test_no_cases_is_not_ok(write: Callable[..., Path]) -> None:
    rules = write("q/fs.yaml", RULES)
    report = run_tests([rules])
    assert report.results == () and not report.ok


def test_discover_pairs_rule_files_with_their_tests(project: Path) -> None:
    assert discover([project / "fs.yaml"]) == ([project / "fs.yaml"], [project / "fs_test.yaml"])
    assert discover([project / "fs_test.yaml"]) == (
        [project / "fs.yaml"],
        [project / "fs_test.yaml"],
    )
    assert discover([project]) == ([project], [project / "fs_test.yaml"])


def test_case_file_errors_have_positions_and_did_you_mean(write: Callable[..., Path]) -> None:
    path = write(
        "t_test.yaml",
        """
        cases:
          - note: typo
            tool: read_file
            wnat: allow
          - tool: read_file
            want: permit
          - want: deny
          - tool: x
            want: deny
            agent: {id: a, role: [x]}
        """,
    )
    cases, errors = load_cases(path)
    assert cases == []
    assert [(e.line, e.message.split(" (")[0]) for e in errors] == [
        (2, "case has no `want`"),
        (4, "unknown field 'wnat'"),
        (6, "want must be one of allow, deny, ask"),
        (7, "case has no `tool`"),
        (10, "unknown agent field 'role'"),
    ]
    assert '(did you mean "want"?)' in errors[1].message


def test_cases_carry_agent_server_and_args(write: Callable[..., Path]) -> None:
    path = write(
        "t_test.yaml",
        """
        cases:
          - agent: {id: a, roles: [r], claims: {k: v}, transport: http}
            tool: t
            server: s
            args: {x: 1}
            want: ask
            session_calls: 4
            findings: [f]
        """,
    )
    (case,), errors = load_cases(path)
    assert errors == []
    c = case.call
    assert (c.agent.id, c.agent.roles, dict(c.agent.claims), c.agent.transport) == (
        "a",
        ("r",),
        {"k": "v"},
        "http",
    )
    assert (c.tool, c.server, dict(c.arguments), c.session_calls, c.findings) == (
        "t",
        "s",
        {"x": 1},
        4,
        ("f",),
    )
    assert case.want is Effect.ASK and case.name == "t_test.yaml:2"


def test_absurdly_nested_test_files_are_an_error(write: Callable[..., Path]) -> None:
    path = write(
        "deep_test.yaml", "cases: [{tool: t, want: deny, args: " + "[" * 3000 + "]" * 3000 + "}]"
    )
    cases, errors = load_cases(path)
    assert cases == [] and errors[0].message == "YAML nested too deeply to load"


def test_test_file_errors_make_the_report_not_ok(project: Path, write: Callable[..., Path]) -> None:
    write("p/bad_test.yaml", "cases: {}\n")
    report = run_tests([project])
    assert not report.ok and "must be a list" in report.errors[0].message


def test_broken_rules_raise(write: Callable[..., Path]) -> None:
    rules = write("r/x.yaml", "rules: [{id: a}]")
    with pytest.raises(RuleSetError):
        run_tests([rules])
