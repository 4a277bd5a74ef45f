"""`mcpfw check`, `mcpfw test`, `mcpfw eval`, called in-process."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpfw.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


@pytest.fixture
def bad_rules(tmp_path: Path) -> Path:
    return write(
        tmp_path / "bad.yaml",
        """
        rules:
          - id: a
            effect: alow
            when: args.x +
          - id: a
            effect: deny
        """,
    )


def test_check_prints_a_summary_for_good_rules() -> None:
    code, out = run("check", str(ROOT / "rules"))
    assert code == 0
    assert out.startswith("OK 25 rules (0 shadow) in 5 files; default deny; engine cel-expr")
    assert "\x1b[" not in out  # plain text when not a terminal


def test_check_prints_every_error_with_position_and_exits_1(bad_rules: Path) -> None:
    code, out = run("check", str(bad_rules))
    assert code == 1
    lines = out.splitlines()
    assert (
        lines[0]
        == f'{bad_rules}:3:13: [a] effect must be one of allow, deny, ask (did you mean "allow"?)'
    )
    assert lines[1] == "    | alow"
    assert lines[2].startswith(f"{bad_rules}:4:19: [a] CEL: ")
    assert any(line.startswith(f"{bad_rules}:5:9: [a] duplicate rule id") for line in lines)
    assert lines[-1] == "3 errors"
    assert "Traceback" not in out


def test_check_json_lists_errors_as_objects(bad_rules: Path) -> None:
    code, out = run("check", "--format", "json", str(bad_rules))
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert [(e["line"], e["column"], e["rule_id"]) for e in data["errors"]] == [
        (3, 13, "a"),
        (4, 19, "a"),
        (5, 9, "a"),
    ]


def test_check_json_on_success_names_revision_and_engine(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.yaml", "rules: [{id: a, effect: allow}]")
    code, out = run("check", "--format", "json", "--engine", "cel-python", str(rules))
    data = json.loads(out)
    assert code == 0 and data["ok"] and data["rules"] == 1 and data["engine"] == "cel-python"
    assert len(data["revision"]) == 64


def test_check_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    code, out = run("check", str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such file or directory" in out


def test_check_without_paths_is_a_usage_error() -> None:
    code, out = run("check")
    assert code == 2 and "give rule files or directories, or --config FILE" in out


def test_check_config_validates_the_config_and_its_rules(tmp_path: Path) -> None:
    write(tmp_path / "rules" / "r.yaml", "rules: [{id: a, effect: deny, when: 'nope'}]")
    config = write(tmp_path / "mcpfw.yaml", "rules: rules/\n")
    code, out = run("check", "--config", str(config))
    assert code == 1 and "undeclared reference to 'nope'" in out


def test_check_config_reports_config_errors(tmp_path: Path) -> None:
    config = write(tmp_path / "mcpfw.yaml", "rules: missing/\nmode: sideways\n")
    code, out = run("check", "--config", str(config))
    assert code == 1 and "mcpfw.yaml" in out and "Traceback" not in out


def test_test_passes_on_the_shipped_packs_with_coverage() -> None:
    code, out = run("test", str(ROOT / "rules"), "--coverage")
    assert code == 0
    assert "PASS fs reads a file inside the workspace" in out
    assert "coverage: 25/25 rules matched by at least one case" in out
    assert out.splitlines()[-1].endswith("0 failed (engine cel-expr)")


def test_test_passes_on_the_fallback_engine_too() -> None:
    code, out = run("test", str(ROOT / "rules"), "--coverage", "--engine", "cel-python")
    assert code == 0 and out.splitlines()[-1].endswith("0 failed (engine cel-python)")


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    write(
        tmp_path / "s" / "r.yaml",
        """
        rules:
          - id: reads
            effect: allow
            tools: [read_file]
          - id: unused
            effect: deny
            tools: [rm]
        """,
    )
    write(
        tmp_path / "s" / "r_test.yaml",
        """
        cases:
          - note: reads pass
            tool: read_file
            want: allow
          - note: writes wrongly expected allowed
            tool: write_file
            want: allow
        """,
    )
    return tmp_path / "s"


def test_test_shows_the_actual_decision_of_a_failure_and_exits_1(suite: Path) -> None:
    code, out = run("test", str(suite))
    assert code == 1
    assert "PASS reads pass" in out and "FAIL writes wrongly expected allowed" in out
    assert "want allow, got deny" in out and "got deny by default" in out
    assert "1 passed, 1 failed" in out.splitlines()[-1]


def test_test_run_selects_cases(suite: Path) -> None:
    code, out = run("test", str(suite), "--run", "^reads")
    assert code == 0 and "1 skipped by --run" in out and "FAIL" not in out


def test_test_coverage_fails_when_a_rule_is_not_covered(suite: Path) -> None:
    code, out = run("test", str(suite), "--run", "^reads", "--coverage")
    assert code == 1 and "not covered: unused" in out


def test_test_verbose_shows_details_of_passing_cases(suite: Path) -> None:
    _, out = run("test", str(suite), "--run", "^reads", "-v")
    assert "got allow by reads; matched: reads" in out


def test_test_json(suite: Path) -> None:
    code, out = run("test", str(suite), "--format", "json", "--coverage")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and (data["passed"], data["failed"]) == (1, 1)
    assert [c["status"] for c in data["cases"]] == ["pass", "fail"]
    assert data["cases"][1]["decision"]["rule"] == "default"
    assert data["coverage"]["uncovered"] == ["unused"]


def test_test_with_no_cases_exits_1(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.yaml", "rules: [{id: a, effect: allow}]")
    code, out = run("test", str(rules))
    assert code == 1 and "no test cases found" in out


def test_test_with_broken_rules_prints_the_load_errors(bad_rules: Path) -> None:
    code, out = run("test", str(bad_rules))
    assert code == 1 and "did you mean" in out and "Traceback" not in out


def test_test_bad_run_regex_is_a_usage_error(suite: Path) -> None:
    code, out = run("test", str(suite), "--run", "(")
    assert code == 2 and "not a regular expression" in out


def test_eval_explains_a_decision() -> None:
    code, out = run(
        "eval", "--rules", str(ROOT / "rules"), "--agent", "claude", "--tool", "read_file",
        "--args", '{"path": "/workspace/.env"}',
    )  # fmt: skip
    assert code == 0
    assert "effect    deny" in out and "rule      fs-no-secret-files" in out
    assert "secret files" in out and "matched   fs-read-workspace, fs-no-secret-files" in out


def test_eval_json_with_roles_claims_and_shadow(tmp_path: Path) -> None:
    rules = write(
        tmp_path / "r.yaml",
        """
        rules:
          - id: infra-admins
            effect: allow
            when: '"admin" in agent.roles && agent.claims.team == "infra"'
          - id: tighter
            effect: deny
            mode: shadow
            when: args.x > 1
        """,
    )
    code, out = run(
        "eval", "--rules", str(rules), "--agent", "a", "--role", "admin",
        "--claims", '{"team": "infra"}', "--tool", "t", "--args", '{"x": 2}', "--format", "json",
    )  # fmt: skip
    d = json.loads(out)["decision"]
    assert code == 0 and (d["effect"], d["rule"]) == ("allow", "infra-admins")
    assert (d["shadow_effect"], d["shadow_rule"]) == ("deny", "tighter")


def test_eval_bad_json_is_a_usage_error(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.yaml", "rules: []")
    code, out = run("eval", "--rules", str(rules), "--agent", "a", "--tool", "t", "--args", "{")
    assert code == 2 and "not valid JSON" in out
    code, out = run("eval", "--rules", str(rules), "--agent", "a", "--tool", "t", "--args", "[]")
    assert code == 2 and "must be a JSON object" in out


def test_eval_broken_rules_exit_1(bad_rules: Path) -> None:
    code, out = run("eval", "--rules", str(bad_rules), "--agent", "a", "--tool", "t")
    assert code == 1 and "3 errors" in out
