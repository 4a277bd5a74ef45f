"""`mcpfw check`, `mcpfw test`, `mcpfw eval`: compile, test and explain rule sets.

Rich output on a terminal, plain text when piped, `--format json` for scripts. A user error
(bad rule, bad JSON, missing file) is a message and exit code 1 (2 for bad options), never
a traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from mcpfw.model import Agent, Decision, Effect, ToolCall
from mcpfw.policy import ArgLimits, LoadError, RuleSet, RuleSetError, evaluate, load_ruleset
from mcpfw.policy.testing import TestReport, run_tests

__all__ = ["check", "eval_", "test"]

ENGINE_CHOICE = click.Choice(["auto", "cel-expr", "cel-python"])
FORMAT_CHOICE = click.Choice(["text", "json"])
EFFECT_STYLE = {Effect.ALLOW: "green", Effect.DENY: "red", Effect.ASK: "yellow"}


def _console() -> Console:
    # soft_wrap: never re-wrap file:line:column lines; highlight off: no guessing at colours.
    return Console(soft_wrap=True, highlight=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _error_dict(e: LoadError) -> dict[str, Any]:
    return {
        "file": e.file,
        "line": e.line,
        "column": e.column,
        "rule_id": e.rule_id,
        "message": e.message,
        "text": e.text,
    }


def _print_errors(console: Console, errors: Sequence[LoadError]) -> None:
    for e in errors:
        line = Text()
        line.append(f"{e.file}:{e.line}:{e.column}: ", style="bold")
        if e.rule_id:
            line.append(f"[{e.rule_id}] ", style="cyan")
        line.append(e.message, style="red")
        console.print(line)
        if e.text:
            console.print(Text(f"    | {e.text}", style="dim"))
    n = len(errors)
    console.print(Text(f"{n} error{'s' if n != 1 else ''}", style="bold red"))


def _limits_from(config: Any) -> ArgLimits | None:
    lim = getattr(config, "limits", None)
    if lim is None:
        return None
    return ArgLimits(max_depth=lim.max_depth, max_bytes=lim.max_bytes, max_items=lim.max_items)


# --- check -------------------------------------------------------------------------------


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Validate an mcpfw.yaml config and the rules it names.")  # fmt: skip
@click.option("--engine", type=ENGINE_CHOICE, default=None, help="CEL engine (default: auto).")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
def check(paths: tuple[Path, ...], config_path: Path | None, engine: str | None, fmt: str) -> None:
    """Compile rule files and report every error with file:line:column."""
    console = _console()
    config_errors: list[str] = []
    rule_paths: list[Path] = list(paths)
    limits: ArgLimits | None = None
    if config_path is not None:
        config, config_errors = _load_config(config_path)
        if config is not None:
            rule_paths.extend(Path(p) for p in getattr(config, "rules", ()))
            engine = engine or getattr(config, "engine", None)
            limits = _limits_from(config)
    if not rule_paths and not config_errors:
        raise click.UsageError("give rule files or directories, or --config FILE")
    ruleset: RuleSet | None = None
    errors: tuple[LoadError, ...] = ()
    if rule_paths:
        try:
            ruleset = load_ruleset(rule_paths, engine=engine or "auto", limits=limits)
        except RuleSetError as exc:
            errors = exc.errors
    ok = not errors and not config_errors
    if fmt == "json":
        _emit_json(
            {
                "ok": ok,
                "config_errors": config_errors,
                "errors": [_error_dict(e) for e in errors],
                "rules": len(ruleset.rules) if ruleset else 0,
                "files": [str(s) for s in ruleset.sources] if ruleset else [],
                "revision": ruleset.revision if ruleset else None,
                "engine": ruleset.engine if ruleset else None,
                "default": ruleset.default.value if ruleset else None,
            }
        )
    else:
        for message in config_errors:
            console.print(Text(message, style="red"))
        if errors:
            _print_errors(console, errors)
        elif config_errors:
            n = len(config_errors)
            console.print(Text(f"{n} config error{'s' if n != 1 else ''}", style="bold red"))
        if ruleset is not None:
            shadow = sum(1 for r in ruleset.rules if r.shadow)
            n_files = len(ruleset.sources)
            summary = Text("OK ", style="bold green")
            summary.append(
                f"{len(ruleset.rules)} rules ({shadow} shadow) in {n_files} "
                f"file{'s' if n_files != 1 else ''}; default {ruleset.default.value}; "
                f"engine {ruleset.engine}; revision {ruleset.revision[:12]}"
            )
            console.print(summary)
        elif ok and config_path is not None:
            console.print(Text("OK ", style="bold green") + Text(f"config {config_path}"))
    if not ok:
        raise SystemExit(1)


def _load_config(path: Path) -> tuple[Any, list[str]]:
    try:
        from mcpfw.config import ConfigError, load_config
    except ImportError:
        return None, [f"{path}: config files are not supported by this build (no mcpfw.config)"]
    try:
        return load_config(path), []
    except ConfigError as exc:
        issues = getattr(exc, "issues", None)
        return None, [str(i) for i in issues] if issues else [str(exc)]


# --- test --------------------------------------------------------------------------------


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-v", "--verbose", is_flag=True, help="Show details of passing cases too.")
@click.option("--run", "run_regex", default=None, help="Only cases whose note matches REGEX.")
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
@click.option("--coverage", is_flag=True, help="List rules that no case matched (fails if any).")
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True)
def test(
    paths: tuple[Path, ...],
    verbose: bool,
    run_regex: str | None,
    fmt: str,
    coverage: bool,
    engine: str,
) -> None:
    """Run the *_test.yaml cases beside the rules; exit 1 on any failure or no cases."""
    console = _console()
    if run_regex is not None:
        try:
            re.compile(run_regex)
        except re.error as exc:
            raise click.BadParameter(
                f"not a regular expression: {exc}", param_hint="--run"
            ) from None
    try:
        report = run_tests(paths, engine=engine, run=run_regex)
    except RuleSetError as exc:
        if fmt == "json":
            _emit_json({"ok": False, "errors": [_error_dict(e) for e in exc.errors], "cases": []})
        else:
            _print_errors(console, exc.errors)
        raise SystemExit(1) from None
    ok = report.ok and not (coverage and report.uncovered)
    if fmt == "json":
        _emit_json(_report_json(report, ok, coverage))
    else:
        _print_report(console, report, verbose, coverage)
    if not ok:
        raise SystemExit(1)


def _decision_json(d: Decision) -> dict[str, Any]:
    return {
        "id": d.id,
        "effect": d.effect.value,
        "rule": d.rule,
        "enforced": d.enforced,
        "matched": list(d.matched),
        "message": d.message,
        "reason": d.reason,
        "shadow_effect": d.shadow_effect.value if d.shadow_effect else None,
        "shadow_rule": d.shadow_rule,
        "shadow_matched": list(d.shadow_matched),
        "errors": [{"rule": e.rule, "message": e.message} for e in d.errors],
        "revision": d.revision,
        "eval_us": round(d.eval_us, 1),
    }


def _report_json(report: TestReport, ok: bool, coverage: bool) -> dict[str, Any]:
    cases = []
    for r in report.results:
        status = "todo" if r.case.todo is not None else ("pass" if r.passed else "fail")
        cases.append(
            {
                "name": r.case.name,
                "file": r.case.file,
                "line": r.case.line,
                "status": status,
                "passed": r.passed,
                "want": r.case.want.value,
                "want_rule": r.case.want_rule,
                "problem": r.problem,
                "todo": r.case.todo,
                "decision": _decision_json(r.decision),
            }
        )
    out: dict[str, Any] = {
        "ok": ok,
        "engine": report.ruleset.engine,
        "revision": report.ruleset.revision,
        "passed": len(report.passed),
        "failed": len(report.failed),
        "todo": len(report.todo),
        "skipped": report.skipped,
        "errors": [_error_dict(e) for e in report.errors],
        "cases": cases,
    }
    if coverage:
        out["coverage"] = {"covered": list(report.covered), "uncovered": list(report.uncovered)}
    return out


def _print_report(console: Console, report: TestReport, verbose: bool, coverage: bool) -> None:
    if report.errors:
        _print_errors(console, report.errors)
    for r in report.results:
        d = r.decision
        if r.case.todo is not None:
            tag, style = ("TODO", "yellow")
        else:
            tag, style = ("PASS", "green") if r.passed else ("FAIL", "bold red")
        line = Text(f"{tag} ", style=style)
        line.append(r.case.name)
        console.print(line)
        if not r.passed or verbose:
            where = f"{r.case.file}:{r.case.line}"
            if not r.passed:
                console.print(Text(f"     {where}: {r.problem}", style="red"))
            console.print(
                Text(
                    f"     got {d.effect.value} by {d.rule}; matched: "
                    f"{', '.join(d.matched) or '-'}; {d.reason}",
                    style="dim",
                )
            )
            for e in d.errors:
                console.print(Text(f"     error in {e.rule}: {e.message}", style="dim"))
    if not report.results and not report.errors:
        console.print(Text("no test cases found (*_test.yaml beside the rules)", style="bold red"))
    if coverage:
        total = len(report.ruleset.rules)
        console.print(
            Text(f"coverage: {len(report.covered)}/{total} rules matched by at least one case")
        )
        for rid in report.uncovered:
            rule = next(x for x in report.ruleset.rules if x.id == rid)
            console.print(Text(f"  not covered: {rid} ({rule.file}:{rule.line})", style="yellow"))
    summary = Text(
        f"{len(report.passed)} passed, {len(report.failed)} failed"
        + (f", {len(report.todo)} todo" if report.todo else "")
        + (f", {report.skipped} skipped by --run" if report.skipped else "")
        + f" (engine {report.ruleset.engine})",
        style="bold green" if report.ok else "bold red",
    )
    console.print(summary)


# --- eval --------------------------------------------------------------------------------


def _json_option(value: str | None, name: str) -> Any:
    if value is None:
        return {}
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=name) from None
    if not isinstance(data, dict):
        raise click.BadParameter("must be a JSON object", param_hint=name)
    return data


@click.command("eval")
@click.option("--rules", "rules", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Rule file or directory (repeatable).")  # fmt: skip
@click.option("--agent", "agent_id", required=True, help="The calling agent's id.")
@click.option("--role", "roles", multiple=True, help="An agent role (repeatable).")
@click.option("--claims", default=None, help="The agent's claims as a JSON object.")
@click.option("--transport", default="stdio", show_default=True)
@click.option("--tool", required=True, help="The tool name.")
@click.option("--server", default="", help="The upstream server name.")
@click.option("--args", "args_json", default="{}", help="The call's arguments as a JSON object.")
@click.option("--engine", type=ENGINE_CHOICE, default="auto", show_default=True)
@click.option("--format", "fmt", type=FORMAT_CHOICE, default="text", show_default=True)
def eval_(
    rules: tuple[Path, ...],
    agent_id: str,
    roles: tuple[str, ...],
    claims: str | None,
    transport: str,
    tool: str,
    server: str,
    args_json: str,
    engine: str,
    fmt: str,
) -> None:
    """Explain the decision for one call: effect, deciding rule, matches, shadow, errors."""
    console = _console()
    claims_data = _json_option(claims, "--claims")
    args_data = _json_option(args_json, "--args")
    try:
        ruleset = load_ruleset(rules, engine=engine)
    except RuleSetError as exc:
        if fmt == "json":
            _emit_json({"ok": False, "errors": [_error_dict(e) for e in exc.errors]})
        else:
            _print_errors(console, exc.errors)
        raise SystemExit(1) from None
    agent = Agent(id=agent_id, roles=roles, claims=claims_data, transport=transport)
    call = ToolCall(agent=agent, tool=tool, server=server, arguments=args_data)
    decision = evaluate(ruleset, call)
    if fmt == "json":
        _emit_json({"ok": True, "engine": ruleset.engine, "decision": _decision_json(decision)})
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("effect", Text(decision.effect.value, style=EFFECT_STYLE[decision.effect]))
    table.add_row("rule", Text(decision.rule))
    if decision.message:
        table.add_row("message", Text(decision.message))
    table.add_row("reason", Text(decision.reason))
    table.add_row("matched", Text(", ".join(decision.matched) or "-"))
    if decision.shadow_effect is not None:
        table.add_row(
            "shadow",
            Text(
                f"would {decision.shadow_effect.value} by {decision.shadow_rule} "
                f"(shadow rules matched: {', '.join(decision.shadow_matched)})"
            ),
        )
    for e in decision.errors:
        table.add_row("error", Text(f"{e.rule}: {e.message}", style="red"))
    table.add_row("revision", Text(ruleset.revision[:12]))
    table.add_row("engine", Text(ruleset.engine))
    table.add_row("time", Text(f"{decision.eval_us:.1f} µs"))
    console.print(table)
