"""Rule tests beside the rules, like `opa test`: `x_test.yaml` holds cases for `x.yaml`.

    cases:
      - note: CI may read inside the workspace
        agent: {id: ci-bot, roles: [ci], claims: {team: infra}}   # or just: agent: ci-bot
        tool: read_file
        server: fs                 # optional
        args: {path: /workspace/a.txt}
        want: allow                # allow | deny | ask
        want_rule: workspace-read  # optional: the deciding rule (or default, limits, error)
        todo: not written yet      # optional: run, but a failure does not fail the suite

`run_tests(paths)` loads the rules the paths stand for, runs every case through `evaluate`,
and reports results and which rules no case matched (coverage).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcpfw.model import Agent, Decision, Effect, ToolCall
from mcpfw.policy.errors import LoadError
from mcpfw.policy.evaluate import evaluate
from mcpfw.policy.limits import ArgLimits
from mcpfw.policy.loader import RuleSet, load_ruleset, rule_files
from mcpfw.policy.yamlsrc import Problem, at, did_you_mean, mapping_items, parse, plain

__all__ = ["CaseResult", "TestCase", "TestReport", "discover", "load_cases", "run_tests"]

CASE_FIELDS = (
    "note", "agent", "tool", "server", "args", "want", "want_rule", "todo",
    "annotations", "findings", "session_calls", "transport",
)  # fmt: skip
AGENT_FIELDS = ("id", "roles", "claims", "transport")
EFFECTS = tuple(e.value for e in Effect)


@dataclass(frozen=True, kw_only=True, slots=True)
class TestCase:
    """One rule test case."""

    __test__ = False  # not a pytest class

    file: str
    line: int
    note: str
    call: ToolCall
    want: Effect
    want_rule: str | None = None
    todo: str | None = None  # a reason: the case runs but cannot fail the suite

    @property
    def name(self) -> str:
        """How the case is shown: its note, or where it is."""
        return self.note or f"{Path(self.file).name}:{self.line}"


@dataclass(frozen=True, kw_only=True, slots=True)
class CaseResult:
    """The outcome of one case."""

    case: TestCase
    decision: Decision
    passed: bool
    problem: str = ""  # why it failed


@dataclass(frozen=True, kw_only=True, slots=True)
class TestReport:
    """Everything `mcpfw test` prints."""

    __test__ = False

    ruleset: RuleSet
    test_files: tuple[Path, ...]
    results: tuple[CaseResult, ...]
    errors: tuple[LoadError, ...] = ()  # problems in test files
    uncovered: tuple[str, ...] = ()  # rule ids no case matched
    skipped: int = 0  # cases filtered out by --run
    covered: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        """Failed cases that are not marked todo."""
        return tuple(r for r in self.results if not r.passed and r.case.todo is None)

    @property
    def passed(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if r.passed and r.case.todo is None)

    @property
    def todo(self) -> tuple[CaseResult, ...]:
        return tuple(r for r in self.results if r.case.todo is not None)

    @property
    def ok(self) -> bool:
        """True when cases ran, none failed, and the test files had no errors."""
        return bool(self.results) and not self.failed and not self.errors


def discover(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """(rule paths, test files) for the given files and directories."""
    rules: list[Path] = []
    tests: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            rules.append(p)
            tests.extend(
                sorted(
                    f
                    for f in p.iterdir()
                    if f.suffix in (".yaml", ".yml") and f.stem.endswith("_test") and f.is_file()
                )
            )
        elif p.stem.endswith("_test"):
            tests.append(p)
            base = p.stem[: -len("_test")]
            siblings = [p.with_name(base + s) for s in (".yaml", ".yml")]
            existing = [s for s in siblings if s.exists()]
            rules.extend(existing or siblings[:1])
        else:
            rules.append(p)
            tests.extend(
                t
                for t in (p.with_name(p.stem + "_test" + s) for s in (".yaml", ".yml"))
                if t.exists()
            )
    return list(dict.fromkeys(rules)), list(dict.fromkeys(tests))


def load_cases(path: Path) -> tuple[list[TestCase], list[LoadError]]:
    """The cases of one test file and every problem in it."""
    file = str(path)
    errors: list[LoadError] = []

    def err(line: int, column: int, message: str, text: str = "") -> None:
        errors.append(
            LoadError(file=file, line=line, column=column, rule_id=None, message=message, text=text)
        )

    try:
        root = parse(path.read_text(encoding="utf-8", errors="replace"))
    except OSError as exc:
        err(1, 1, f"cannot read: {exc.strerror or exc}")
        return [], errors
    if isinstance(root, Problem):
        err(root.line, root.column, root.message)
        return [], errors
    problems: list[Problem] = []
    items: list[yaml.Node] = []
    if isinstance(root, yaml.MappingNode):
        top = mapping_items(root, problems)
        for key, (key_node, _) in top.items():
            if key != "cases":
                pos = at(key_node)
                err(
                    pos.line,
                    pos.column,
                    f"unknown field {key!r}{did_you_mean(key, ['cases'])}",
                    key,
                )
        cases_node = top.get("cases", (None, None))[1]
        if isinstance(cases_node, yaml.SequenceNode):
            items = list(cases_node.value)
        elif cases_node is not None:
            pos = at(cases_node)
            err(pos.line, pos.column, "`cases` must be a list of test cases")
    elif root is not None:
        pos = at(root)
        err(pos.line, pos.column, "a test file must be a mapping with `cases:`")
    try:
        cases = [c for c in (_case(file, node, problems) for node in items) if c is not None]
    except RecursionError:  # constructing a deeply nested value
        cases = []
        problems.append(Problem(1, 1, "YAML nested too deeply to load"))
    errors.extend(
        LoadError(
            file=file, line=p.line, column=p.column, rule_id=None, message=p.message, text=p.text
        )
        for p in problems
    )
    return cases, sorted(errors, key=lambda e: (e.line, e.column))


def _case(file: str, node: yaml.Node, problems: list[Problem]) -> TestCase | None:
    start = at(node)
    if not isinstance(node, yaml.MappingNode):
        problems.append(Problem(start.line, start.column, "each case must be a mapping"))
        return None
    fields = mapping_items(node, problems)
    values: dict[str, Any] = {}
    before = len(problems)
    for key, (key_node, value_node) in fields.items():
        if key not in CASE_FIELDS:
            pos = at(key_node)
            problems.append(
                Problem(
                    pos.line,
                    pos.column,
                    f"unknown field {key!r}{did_you_mean(key, CASE_FIELDS)}",
                    key,
                )
            )
            continue
        values[key] = (plain(value_node), at(value_node))

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        if key not in values:
            return default
        value, pos = values[key]
        if not isinstance(value, kind):
            problems.append(
                Problem(pos.line, pos.column, f"`{key}` has the wrong type", str(value))
            )
            return default
        return value

    want = get("want", str, None)
    if want is None and "want" not in values:
        problems.append(
            Problem(start.line, start.column, "case has no `want` (allow, deny or ask)")
        )
    elif want is not None and want not in EFFECTS:
        pos = values["want"][1]
        problems.append(
            Problem(
                pos.line,
                pos.column,
                f"want must be one of {', '.join(EFFECTS)}{did_you_mean(want, EFFECTS)}",
                want,
            )
        )
    tool = get("tool", str, None)
    if tool is None and "tool" not in values:
        problems.append(Problem(start.line, start.column, "case has no `tool`"))
    agent = _agent(get("agent", (str, dict), "test-agent"), values.get("agent"), problems)
    todo = get("todo", (str, bool), None)
    args = get("args", dict, {})
    if len(problems) > before or agent is None or want not in EFFECTS or tool is None:
        return None
    call = ToolCall(
        agent=agent,
        tool=tool,
        server=str(get("server", str, "")),
        arguments=args,
        annotations=get("annotations", dict, {}),
        findings=tuple(str(f) for f in get("findings", list, [])),
        session_calls=int(get("session_calls", int, 0)),
    )
    return TestCase(
        file=file,
        line=start.line,
        note=str(get("note", str, "")),
        call=call,
        want=Effect(want),
        want_rule=get("want_rule", str, None),
        todo=None if todo in (None, False) else ("todo" if todo is True else str(todo)),
    )


def _agent(value: Any, where: Any, problems: list[Problem]) -> Agent | None:
    if isinstance(value, str):
        return Agent(id=value)
    pos = where[1]
    unknown = [k for k in value if k not in AGENT_FIELDS]
    for k in unknown:
        problems.append(
            Problem(
                pos.line,
                pos.column,
                f"unknown agent field {k!r}{did_you_mean(str(k), AGENT_FIELDS)}",
                str(k),
            )
        )
    agent_id, roles, claims = value.get("id"), value.get("roles", []), value.get("claims", {})
    transport = value.get("transport", "stdio")
    if (
        not isinstance(agent_id, str)
        or not isinstance(roles, list)
        or not isinstance(claims, Mapping)
        or not isinstance(transport, str)
    ):
        problems.append(
            Problem(
                pos.line,
                pos.column,
                "agent needs `id` (string), optional `roles` (list), "
                "`claims` (mapping), `transport` (string)",
            )
        )
        return None
    if unknown:
        return None
    roles_t = tuple(str(r) for r in roles)
    return Agent(id=agent_id, roles=roles_t, claims=dict(claims), transport=transport)


def run_case(ruleset: RuleSet, case: TestCase) -> CaseResult:
    """Evaluate one case and compare with what it wants."""
    decision = evaluate(ruleset, case.call)
    problems = []
    if decision.effect is not case.want:
        problems.append(f"want {case.want.value}, got {decision.effect.value}")
    if case.want_rule is not None and decision.rule != case.want_rule:
        problems.append(f"want rule {case.want_rule}, got {decision.rule}")
    return CaseResult(
        case=case, decision=decision, passed=not problems, problem="; ".join(problems)
    )


def run_tests(
    paths: Sequence[str | os.PathLike[str]],
    *,
    engine: str = "auto",
    run: str | None = None,
    limits: ArgLimits | None = None,
) -> TestReport:
    """Load the rules, run every case (matching `run`, a regex on the case name);
    raises `RuleSetError` when the rules do not load."""
    rule_paths, test_files = discover(paths)
    ruleset = load_ruleset(rule_paths, engine=engine, limits=limits)
    pattern = re.compile(run) if run else None
    results: list[CaseResult] = []
    errors: list[LoadError] = []
    skipped = 0
    for tf in test_files:
        cases, problems = load_cases(tf)
        errors.extend(problems)
        for case in cases:
            if pattern is not None and not pattern.search(case.name):
                skipped += 1
                continue
            results.append(run_case(ruleset, case))
    hit: set[str] = set()
    for r in results:
        hit.update(r.decision.matched)
        hit.update(r.decision.shadow_matched)
    ids = [rule.id for rule in ruleset.rules]
    return TestReport(
        ruleset=ruleset,
        test_files=tuple(test_files),
        results=tuple(results),
        errors=tuple(errors),
        uncovered=tuple(i for i in ids if i not in hit),
        covered=tuple(i for i in ids if i in hit),
        skipped=skipped,
    )


def ruleset_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Every rule file the paths stand for (for display)."""
    out: list[Path] = []
    for p in discover(paths)[0]:
        out.extend(rule_files(p))
    return out
