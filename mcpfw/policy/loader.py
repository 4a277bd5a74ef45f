"""Rule files → a compiled, indexed `RuleSet`; every load error of the set found at once."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcpfw.model import Effect
from mcpfw.policy.engine import (
    VARIABLES,
    CompileError,
    Engine,
    EngineUnavailable,
    Program,
    get_engine,
)
from mcpfw.policy.errors import LoadError, RuleSetError
from mcpfw.policy.index import RuleIndex
from mcpfw.policy.limits import ArgLimits
from mcpfw.policy.yamlsrc import Problem, at, did_you_mean, mapping_items, parse, plain

__all__ = ["RESERVED_IDS", "Rule", "RuleSet", "load_ruleset", "rule_files"]

TOP_FIELDS = ("default", "rules", "description")
RULE_FIELDS = (
    "id",
    "effect",
    "agents",
    "tools",
    "servers",
    "when",
    "message",
    "mode",
    "description",
)
MODES = ("enforce", "shadow")
EFFECTS = tuple(e.value for e in Effect)
RESERVED_IDS = frozenset({"default", "limits", "error"})
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'')
_FIELD_USE = re.compile(r"(?<![\w.])(agent|tool|session|request)\s*\.\s*([A-Za-z_]\w*)")
_BINDS = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")


@dataclass(frozen=True, kw_only=True, slots=True)
class Rule:
    """One compiled rule."""

    id: str
    effect: Effect
    when: str | None = None  # None: always matches (once the prefilters do)
    message: str = ""
    mode: str = "enforce"  # "enforce" | "shadow"
    description: str = ""
    agents: tuple[str, ...] = ()  # glob prefilters; empty means any
    tools: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    file: str = ""
    line: int = 0
    program: Program | None = field(default=None, compare=False, repr=False)

    @property
    def shadow(self) -> bool:
        """True for a rule that is evaluated and reported but never enforced."""
        return self.mode == "shadow"


@dataclass(frozen=True, kw_only=True, slots=True)
class RuleSet:
    """A loaded, compiled rule set; `revision` is the sha256 of its sources."""

    revision: str
    default: Effect
    rules: tuple[Rule, ...]
    sources: tuple[Path, ...]
    engine: str
    limits: ArgLimits
    index: RuleIndex = field(compare=False, repr=False)
    compiled_by: Engine = field(compare=False, repr=False)


def rule_files(path: Path) -> list[Path]:
    """The rule files a path stands for: itself, or a directory's `*.yaml`/`*.yml` files
    (not `*_test.yaml`, not hidden files, not sub-directories)."""
    if not path.is_dir():
        return [path]
    return sorted(
        p
        for p in path.iterdir()
        if p.suffix in (".yaml", ".yml")
        and not p.stem.endswith("_test")
        and not p.name.startswith(".")
        and p.is_file()
    )


def load_ruleset(
    paths: Sequence[str | os.PathLike[str]],
    *,
    engine: str = "auto",
    limits: ArgLimits | None = None,
) -> RuleSet:
    """Load, check and compile rule files and directories; raise `RuleSetError` on any error."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]  # a lone path, not a sequence of characters
    errors: list[LoadError] = []
    try:
        cel = get_engine(engine)
    except EngineUnavailable as exc:
        raise RuleSetError(
            [
                LoadError(
                    file="<engine>", line=1, column=1, rule_id=None, message=str(exc), text=engine
                )
            ]
        ) from None
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            errors.append(_err(str(p), 1, 1, None, "no such file or directory", str(p)))
            continue
        found = rule_files(p)
        if not found:
            errors.append(
                _err(str(p), 1, 1, None, "no rule files (*.yaml) in this directory", str(p))
            )
        files.extend(f for f in found if f not in files)
    if not files and not errors:
        errors.append(_err("<rules>", 1, 1, None, "no rule files given", ""))

    digest = hashlib.sha256()
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    defaults: list[tuple[Effect, str, int, int]] = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            errors.append(_err(str(path), 1, 1, None, f"cannot read: {exc.strerror or exc}", ""))
            continue
        digest.update(path.name.encode() + b"\0" + data + b"\0")
        text = data.decode("utf-8", "replace")
        mark = len(errors)
        try:
            _FileLoader(path, text, cel, errors, rules, seen, defaults).load()
        except RecursionError:  # PyYAML composes and constructs nested nodes recursively
            errors.append(_err(str(path), 1, 1, None, "YAML nested too deeply to load", ""))
        errors[mark:] = sorted(errors[mark:], key=lambda e: (e.line, e.column))

    for effect, file, line, column in defaults[1:]:
        first = defaults[0]
        if effect != first[0]:
            errors.append(
                _err(
                    file,
                    line,
                    column,
                    None,
                    f"default: {effect.value} conflicts with default: {first[0].value} in "
                    f"{first[1]}:{first[2]}:{first[3]}; "
                    "files of one rule set must agree on the default",
                    f"default: {effect.value}",
                )
            )
    if errors:
        raise RuleSetError(errors)
    return RuleSet(
        revision=digest.hexdigest(),
        default=defaults[0][0] if defaults else Effect.DENY,
        rules=tuple(rules),
        sources=tuple(files),
        engine=cel.name,
        limits=limits or ArgLimits(),
        index=RuleIndex(tuple(rules)),
        compiled_by=cel,
    )


def _err(file: str, line: int, column: int, rule: str | None, message: str, text: str) -> LoadError:
    return LoadError(file=file, line=line, column=column, rule_id=rule, message=message, text=text)


class _FileLoader:
    """Checks and compiles one rule file, appending to the set's shared lists."""

    def __init__(
        self,
        path: Path,
        text: str,
        cel: Engine,
        errors: list[LoadError],
        rules: list[Rule],
        seen: dict[str, Rule],
        defaults: list[tuple[Effect, str, int, int]],
    ) -> None:
        self.file = str(path)
        self.lines = text.splitlines()
        self.text = text
        self.cel = cel
        self.errors = errors
        self.rules = rules
        self.seen = seen
        self.defaults = defaults
        self.duplicate = False

    def error(self, node: yaml.Node | None, rule: str | None, message: str, text: str = "") -> None:
        pos = at(node) if node is not None else None
        line, column = (pos.line, pos.column) if pos else (1, 1)
        self.errors.append(_err(self.file, line, column, rule, message, text))

    def problems(self, problems: list[Problem], rule: str | None = None) -> None:
        for p in problems:
            self.errors.append(_err(self.file, p.line, p.column, rule, p.message, p.text))

    def load(self) -> None:
        root = parse(self.text)
        if isinstance(root, Problem):
            self.problems([root])
            return
        if root is None:
            self.error(None, None, "empty rule file: expected a mapping with `rules:`")
            return
        if not isinstance(root, yaml.MappingNode):
            self.error(root, None, "a rule file must be a mapping with `default:` and `rules:`")
            return
        problems: list[Problem] = []
        top = mapping_items(root, problems)
        self.problems(problems)
        for key, (key_node, _) in top.items():
            if key not in TOP_FIELDS:
                self.error(
                    key_node, None, f"unknown field {key!r}{did_you_mean(key, TOP_FIELDS)}", key
                )
        if "default" in top:
            self.default(top["default"][1])
        if "rules" in top:
            node = top["rules"][1]
            if isinstance(node, yaml.SequenceNode):
                for item in node.value:
                    self.rule(item)
            elif not (isinstance(node, yaml.ScalarNode) and plain(node) is None):
                self.error(node, None, "`rules` must be a list of rules")

    def default(self, node: yaml.Node) -> None:
        value = plain(node) if isinstance(node, yaml.ScalarNode) else None
        if value not in EFFECTS:
            self.error(
                node,
                None,
                f"default must be one of {', '.join(EFFECTS)}{did_you_mean(str(value), EFFECTS)}",
                str(value),
            )
            return
        pos = at(node)
        self.defaults.append((Effect(value), self.file, pos.line, pos.column))

    def rule(self, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, None, "each rule must be a mapping with at least `id` and `effect`")
            return
        problems: list[Problem] = []
        fields = mapping_items(node, problems)
        self.duplicate = False
        rid = self.rule_id(node, fields)
        self.problems(problems, rid)
        for key, (key_node, _) in fields.items():
            if key not in RULE_FIELDS:
                self.error(
                    key_node, rid, f"unknown field {key!r}{did_you_mean(key, RULE_FIELDS)}", key
                )
        effect = self.choice(fields, "effect", EFFECTS, None, rid)
        mode = self.choice(fields, "mode", MODES, "enforce", rid)
        globs = {k: self.globs(fields, k, rid) for k in ("agents", "tools", "servers")}
        message = self.string(fields, "message", rid)
        description = self.string(fields, "description", rid)
        when, program = self.when(fields, rid)
        if (
            rid is None
            or self.duplicate
            or effect is None
            or mode is None
            or any(g is None for g in globs.values())
        ):
            return
        if when is not None and program is None:
            return
        rule = Rule(
            id=rid,
            effect=Effect(effect),
            when=when,
            message=message,
            mode=mode,
            description=description,
            agents=globs["agents"] or (),
            tools=globs["tools"] or (),
            servers=globs["servers"] or (),
            file=self.file,
            line=at(node).line,
            program=program,
        )
        self.rules.append(rule)

    def rule_id(
        self, node: yaml.Node, fields: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> str | None:
        if "id" not in fields:
            self.error(node, None, "rule has no `id`; every rule needs a unique id")
            return None
        id_node = fields["id"][1]
        rid = _scalar_text(id_node)
        if not isinstance(rid, str) or not _ID.fullmatch(rid):
            self.error(
                id_node,
                None,
                "rule id must be letters, digits and _ . : / - (starting with a letter or digit)",
                str(rid),
            )
            return None
        if rid in RESERVED_IDS:
            self.error(id_node, rid, f"rule id {rid!r} is reserved for built-in decisions", rid)
            return None
        if rid in self.seen:
            first = self.seen[rid]
            self.error(
                id_node, rid, f"duplicate rule id (first defined at {first.file}:{first.line})", rid
            )
            self.duplicate = True
            return rid
        # Reserve the id now so later duplicates are reported even if this rule has errors.
        self.seen[rid] = Rule(id=rid, effect=Effect.DENY, file=self.file, line=at(node).line)
        return rid

    def choice(
        self,
        fields: dict[str, tuple[yaml.Node, yaml.Node]],
        key: str,
        allowed: tuple[str, ...],
        default: str | None,
        rid: str | None,
    ) -> str | None:
        if key not in fields:
            if default is None:
                self.error(
                    None if not fields else fields[next(iter(fields))][0],
                    rid,
                    f"rule has no `{key}`; use one of {', '.join(allowed)}",
                )
            return default
        node = fields[key][1]
        value = plain(node) if isinstance(node, yaml.ScalarNode) else None
        if value not in allowed:
            self.error(
                node,
                rid,
                f"{key} must be one of {', '.join(allowed)}{did_you_mean(str(value), allowed)}",
                str(value),
            )
            return None
        return str(value)

    def globs(
        self, fields: dict[str, tuple[yaml.Node, yaml.Node]], key: str, rid: str | None
    ) -> tuple[str, ...] | None:
        if key not in fields:
            return ()
        node = fields[key][1]
        value = plain(node)
        items = [value] if isinstance(value, str) else value
        if (
            not isinstance(items, list)
            or not items
            or not all(isinstance(i, str) and i for i in items)
        ):
            self.error(
                node, rid, f"{key} must be a non-empty list of glob patterns (strings)", str(value)
            )
            return None
        return tuple(items)

    def string(
        self, fields: dict[str, tuple[yaml.Node, yaml.Node]], key: str, rid: str | None
    ) -> str:
        if key not in fields:
            return ""
        node = fields[key][1]
        value = _scalar_text(node)
        if value is None:
            self.error(node, rid, f"{key} must be a string", str(plain(node)))
            return ""
        return value

    def when(
        self, fields: dict[str, tuple[yaml.Node, yaml.Node]], rid: str | None
    ) -> tuple[str | None, Program | None]:
        if "when" not in fields:
            return None, None
        node = fields["when"][1]
        value = plain(node)
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str) or not value.strip():
            self.error(node, rid, "`when` must be a CEL expression (a string)", str(value))
            return "", None
        bad_field = self.field_uses(node, value, rid)
        try:
            program = self.cel.compile(value)
        except CompileError as exc:
            for issue in exc.issues:
                line, column = self.expr_position(node, value, issue.line, issue.column)
                self.errors.append(
                    _err(
                        self.file,
                        line,
                        column,
                        rid,
                        f"CEL: {issue.message}",
                        _line_of(value, issue.line),
                    )
                )
            return value, None
        if program.result_type not in (None, "bool"):
            self.error(
                node,
                rid,
                f"`when` must be a boolean expression, but it returns {program.result_type}",
                value.strip(),
            )
            return value, None
        return value, None if bad_field else program

    def field_uses(self, node: yaml.Node, expr: str, rid: str | None) -> bool:
        """Report `agent.idd`-style typos: these variables have fixed fields."""
        masked = _STRING.sub(lambda m: " " * len(m.group(0)), expr)
        bound = set(_BINDS.findall(masked))
        bad = False
        for m in _FIELD_USE.finditer(masked):
            var, name = m.group(1), m.group(2)
            known = VARIABLES[var]
            if var in bound or known is None or name in known:
                continue
            before = masked[: m.start(2)]
            line = before.count("\n") + 1
            column = m.start(2) - (before.rfind("\n") + 1) + 1
            fline, fcol = self.expr_position(node, expr, line, column)
            self.errors.append(
                _err(
                    self.file,
                    fline,
                    fcol,
                    rid,
                    f"CEL: {var} has no field {name!r}{did_you_mean(name, sorted(known))}; "
                    f"its fields are {', '.join(sorted(known))}",
                    _line_of(expr, line),
                )
            )
            bad = True
        return bad

    def expr_position(self, node: yaml.Node, expr: str, line: int, column: int) -> tuple[int, int]:
        """Map a 1-based position inside the expression to one in the file."""
        start = node.start_mark
        style = getattr(node, "style", None)
        if style in ("|", ">"):
            first = start.line + 1  # the content starts on the line after the indicator
            indent = _indent_at(self.lines, first)
            if style == "|":
                return first + line, indent + column
            return first + 1, indent + 1
        if start.line == node.end_mark.line or line == 1:
            offset = 1 if style in ('"', "'") else 0
            return start.line + 1, start.column + 1 + offset + column - 1
        return start.line + line, column


def _scalar_text(node: yaml.Node) -> str | None:
    """A scalar's text as written (`message: no` is "no", not False); None otherwise."""
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        return None
    return str(node.value)


def _indent_at(lines: list[str], index: int) -> int:
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index >= len(lines):
        return 0
    line = lines[index]
    return len(line) - len(line.lstrip(" "))


def _line_of(expr: str, line: int) -> str:
    lines = expr.splitlines() or [expr]
    return lines[min(max(line, 1), len(lines)) - 1].strip()


def rule_summary(rule: Rule) -> dict[str, Any]:
    """A JSON-friendly description of a rule (used by the CLI)."""
    return {
        "id": rule.id,
        "effect": rule.effect.value,
        "mode": rule.mode,
        "when": rule.when,
        "agents": list(rule.agents),
        "tools": list(rule.tools),
        "servers": list(rule.servers),
        "file": rule.file,
        "line": rule.line,
    }
