"""Loading rule files: every error class at file:line:column, all at once; sets of files."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mcpfw.model import Effect
from mcpfw.policy import ArgLimits, LoadError, RuleSetError, load_ruleset
from mcpfw.policy import engine as engine_mod


def errors_of(paths: list[Path], engine: str = "auto") -> tuple[LoadError, ...]:
    with pytest.raises(RuleSetError) as info:
        load_ruleset(paths, engine=engine)
    return info.value.errors


def test_a_valid_file_loads_with_its_default_rules_and_revision(
    write: Callable[..., Path], engine: str
) -> None:
    path = write(
        "fs.yaml",
        """
        default: allow
        rules:
          - id: r1
            effect: deny
            tools: [read_file]
            when: args.path.startsWith("/etc")
            message: no
          - id: r2
            effect: ask
            mode: shadow
        """,
    )
    rs = load_ruleset([path], engine=engine)
    assert rs.default is Effect.ALLOW
    assert [r.id for r in rs.rules] == ["r1", "r2"]
    assert rs.rules[0].tools == ("read_file",) and rs.rules[0].message == "no"
    assert rs.rules[1].shadow and rs.rules[1].when is None
    assert rs.sources == (path,)
    assert rs.engine == engine
    assert len(rs.revision) == 64
    assert rs.limits == ArgLimits()


def test_a_single_path_is_accepted_as_well_as_a_list(write: Callable[..., Path]) -> None:
    path = write("a.yaml", "rules: [{id: a, effect: allow}]")
    assert load_ruleset(str(path)).rules[0].id == "a"  # type: ignore[arg-type]
    assert load_ruleset(path).rules[0].id == "a"  # type: ignore[arg-type]


def test_the_default_is_deny_when_no_file_sets_it(write: Callable[..., Path]) -> None:
    rs = load_ruleset([write("a.yaml", "rules: []")])
    assert rs.default is Effect.DENY and rs.rules == ()


def test_revision_changes_with_the_sources(write: Callable[..., Path]) -> None:
    path = write("a.yaml", "rules: [{id: a, effect: allow}]")
    first = load_ruleset([path]).revision
    assert load_ruleset([path]).revision == first
    path.write_text("rules: [{id: a, effect: deny}]")
    assert load_ruleset([path]).revision != first


def test_a_yaml_syntax_error_has_its_position(write: Callable[..., Path]) -> None:
    path = write("bad.yaml", "rules:\n  - id: a\n    effect: [allow\n")
    (err,) = errors_of([path])
    assert err.file == str(path) and err.line >= 3 and "YAML syntax error" in err.message


def test_absurdly_nested_yaml_is_an_error_not_a_crash(write: Callable[..., Path]) -> None:
    path = write("deep.yaml", "rules: " + "[" * 5000 + "]" * 5000)
    (err,) = errors_of([path])
    assert err.message == "YAML nested too deeply to load"


def test_unknown_fields_are_reported_with_did_you_mean(write: Callable[..., Path]) -> None:
    path = write(
        "r.yaml",
        """
        defualt: deny
        rules:
          - id: a
            effect: allow
            tols: [x]
        """,
    )
    errs = errors_of([path])
    assert [(e.line, e.column, e.rule_id) for e in errs] == [(1, 1, None), (5, 5, "a")]
    assert "unknown field 'defualt' (did you mean \"default\"?)" in errs[0].message
    assert '(did you mean "tools"?)' in errs[1].message and errs[1].text == "tols"


def test_missing_and_duplicate_ids_are_errors_even_across_files(
    write: Callable[..., Path],
) -> None:
    a = write("a.yaml", "rules:\n  - id: same\n    effect: allow\n  - effect: deny\n")
    b = write("b.yaml", "rules:\n  - id: same\n    effect: deny\n")
    errs = errors_of([a, b])
    assert "rule has no `id`" in errs[0].message and (errs[0].line, errs[0].column) == (4, 5)
    assert errs[1].file == str(b) and errs[1].rule_id == "same"
    assert f"duplicate rule id (first defined at {a}:2)" in errs[1].message


def test_bad_effect_mode_and_reserved_id_are_errors(write: Callable[..., Path]) -> None:
    path = write(
        "r.yaml",
        """
        rules:
          - id: a
            effect: alow
          - id: b
            effect: deny
            mode: shadw
          - id: default
            effect: deny
          - id: c
        """,
    )
    messages = [e.message for e in errors_of([path])]
    assert 'effect must be one of allow, deny, ask (did you mean "allow"?)' in messages[0]
    assert 'mode must be one of enforce, shadow (did you mean "shadow"?)' in messages[1]
    assert "reserved" in messages[2]
    assert "rule has no `effect`" in messages[3]


def test_bad_prefilters_and_strings_are_errors(write: Callable[..., Path]) -> None:
    path = write(
        "r.yaml",
        """
        rules:
          - id: a
            effect: deny
            tools: []
            agents: [1]
            message: [x]
        """,
    )
    messages = [e.message for e in errors_of([path])]
    assert messages[0].startswith("tools must be a non-empty list")
    assert messages[1].startswith("agents must be a non-empty list")
    assert messages[2] == "message must be a string"


def test_cel_errors_point_into_the_expression(write: Callable[..., Path], engine: str) -> None:
    path = write(
        "r.yaml",
        """
        rules:
          - id: syntax
            effect: deny
            when: args.x +
          - id: undeclared
            effect: deny
            when: nosuchvar == 1
          - id: function
            effect: deny
            when: args.x.nosuchfn()
          - id: quoted
            effect: deny
            when: 'true && nope'
        """,
    )
    errs = errors_of([path], engine)
    assert [e.rule_id for e in errs] == ["syntax", "undeclared", "function", "quoted"]
    assert all(e.message.startswith("CEL: ") for e in errs)
    assert errs[0].line == 4 and errs[0].text == "args.x +"
    assert (errs[1].line, errs[1].column) == (7, 11)  # where "nosuchvar" starts
    assert "undeclared reference to 'nosuchvar'" in errs[1].message
    assert "nosuchfn" in errs[2].message and errs[2].line == 10
    assert (errs[3].line, errs[3].column) == (13, 20)  # inside the quotes


def test_cel_errors_in_block_scalars_have_the_right_line(
    write: Callable[..., Path], engine: str
) -> None:
    path = write(
        "r.yaml",
        """
        rules:
          - id: block
            effect: deny
            when: |
              args.x == 1 &&
                nosuch > 2
        """,
    )
    (err,) = errors_of([path], engine)
    assert err.line == 6 and err.column >= 7 and err.text == "nosuch > 2"


def test_a_misspelt_field_of_a_fixed_variable_is_an_error(write: Callable[..., Path]) -> None:
    path = write(
        "r.yaml",
        """
        rules:
          - id: a
            effect: deny
            when: agent.idd == "x" && "agent.nope" != tool.name && args.l.all(tool, tool.x)
        """,
    )
    (err,) = errors_of([path])
    assert "agent has no field 'idd' (did you mean \"id\"?)" in err.message
    assert (err.line, err.column) == (4, 17)


def test_a_when_that_is_not_boolean_is_an_error_where_the_type_is_known(
    write: Callable[..., Path], engine: str
) -> None:
    path = write("r.yaml", "rules:\n  - id: a\n    effect: deny\n    when: 1 + 2\n")
    (err,) = errors_of([path], engine)
    assert err.message == "`when` must be a boolean expression, but it returns int"
    assert err.text == "1 + 2"


def test_a_when_that_is_not_a_string_is_an_error(write: Callable[..., Path]) -> None:
    path = write("r.yaml", "rules:\n  - id: a\n    effect: deny\n    when: {x: 1}\n")
    (err,) = errors_of([path])
    assert "`when` must be a CEL expression" in err.message


def test_every_error_of_the_set_is_reported_at_once(write: Callable[..., Path]) -> None:
    a = write("a.yaml", "rules:\n  - id: x\n    effect: nope\n")
    b = write("b.yaml", "rules: [1]\nextra: true\n")
    errs = errors_of([a, b])
    assert {e.file for e in errs} == {str(a), str(b)}
    assert len(errs) == 3


def test_files_must_agree_on_the_default(write: Callable[..., Path]) -> None:
    a = write("a.yaml", "default: deny\nrules: []\n")
    b = write("b.yaml", "rules: []\n")
    c = write("c.yaml", "default: allow\nrules: []\n")
    assert load_ruleset([a, b]).default is Effect.DENY
    (err,) = errors_of([a, b, c])
    assert err.file == str(c) and (err.line, err.column) == (1, 10)
    assert f"conflicts with default: deny in {a}:1:10" in err.message


def test_a_bad_default_is_an_error(write: Callable[..., Path]) -> None:
    (err,) = errors_of([write("a.yaml", "default: permit\n")])
    assert err.message.startswith("default must be one of allow, deny, ask")


def test_a_directory_loads_its_rule_files_but_not_tests(write: Callable[..., Path]) -> None:
    a = write("d/a.yaml", "rules: [{id: a, effect: allow}]")
    b = write("d/b.yml", "rules: [{id: b, effect: allow}]")
    write("d/a_test.yaml", "cases: []")
    write("d/.hidden.yaml", "not: valid: yaml:")
    write("d/notes.txt", "x")
    rs = load_ruleset([a.parent])
    assert rs.sources == (a, b)
    assert [r.id for r in rs.rules] == ["a", "b"]


def test_missing_paths_and_empty_directories_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    errs = errors_of([tmp_path / "nope.yaml", tmp_path / "empty"])
    assert "no such file or directory" in errs[0].message
    assert "no rule files" in errs[1].message


def test_empty_files_and_non_mapping_files_are_errors(write: Callable[..., Path]) -> None:
    errs = errors_of([write("a.yaml", ""), write("b.yaml", "- 1\n")])
    assert "empty rule file" in errs[0].message
    assert "must be a mapping" in errs[1].message


def test_load_error_str_is_file_line_column_rule_message() -> None:
    err = LoadError(file="r.yaml", line=3, column=7, rule_id="a", message="bad", text="x")
    assert str(err) == "r.yaml:3:7: [a] bad"
    without_rule = LoadError(file="r.yaml", line=1, column=1, rule_id=None, message="m")
    assert str(without_rule) == "r.yaml:1:1: m"
    assert "r.yaml:3:7: [a] bad" in str(RuleSetError([err]))


def test_an_unknown_engine_is_a_load_error(write: Callable[..., Path]) -> None:
    (err,) = errors_of([write("a.yaml", "rules: []")], engine="v8")
    assert "unknown CEL engine" in err.message


def test_auto_falls_back_to_cel_python_when_the_native_engine_cannot_be_imported(
    write: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "_CACHE", {})
    monkeypatch.setitem(sys.modules, "cel_expr_python", None)  # import now raises ImportError
    monkeypatch.delitem(sys.modules, "mcpfw.policy.engine_celexpr", raising=False)
    path = write("a.yaml", "rules: [{id: a, effect: allow, when: 'args.x == 1'}]")
    assert load_ruleset([path]).engine == "cel-python"
    (err,) = errors_of([path], engine="cel-expr")
    assert "cel-expr-python is not importable" in err.message
