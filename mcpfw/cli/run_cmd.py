"""`mcpfw run`: the stdio firewall an agent starts instead of the MCP server itself.

    mcpfw run --rules rules/ --agent claude-desktop -- npx @modelcontextprotocol/server-filesystem /

Kept light on purpose: agents start one firewall per server, often ten at once, so nothing
heavy (rich, SQL reporting) is imported here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click

SQL_SCHEMES = ("sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg", "postgres")
LAUNCHERS = {"npx", "uvx", "node", "python", "python3", "deno", "bun", "pipx", "docker", "uv"}


def _fail(message: str) -> NoReturn:
    click.echo(f"mcpfw run: {message}", err=True)
    sys.exit(2)


def server_name(command: tuple[str, ...]) -> str:
    """A readable upstream name from its command (`npx -y @scope/server-x /w` -> `server-x`)."""
    if not command:
        return "upstream"
    name = os.path.basename(command[0])
    if name in LAUNCHERS:
        for arg in command[1:]:
            if not arg.startswith("-") and arg not in ("run", "exec", "-m"):
                name = arg
                break
    name = name.rsplit("/", 1)[-1].split("@", 1)[0] or name
    for suffix in (".py", ".js", ".mjs", ".ts"):
        name = name.removesuffix(suffix)
    return name or "upstream"


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--rules", multiple=True, help="Rule file or directory (repeatable).")
@click.option("--agent", "agent_id", help="Agent id the rules see as agent.id.")
@click.option("--role", "roles", multiple=True, help="Agent role (repeatable; adds to config).")
@click.option("--config", "config_file", help="An mcpfw.yaml; flags override it.")
@click.option("--audit", "audit_url", help="Audit log: a SQLite file path or a SQL URL.")
@click.option("--mode", type=click.Choice(["enforce", "monitor"]), help="monitor: enforce nothing.")
@click.option("--hide-denied/--show-denied", default=None, help="Hide never-allowed tools.")
@click.option("--upstream-url", help="A streamable-HTTP upstream instead of a command.")
@click.option("--upstream-header", multiple=True, help="'Name: value' for the HTTP upstream.")
@click.option("--server", "server", help="Upstream name (rules: tool.server; config upstreams).")
@click.option("--engine", type=click.Choice(["auto", "cel-expr", "cel-python"]), default=None)
@click.option("--ask-timeout", type=click.FloatRange(min=0.1), help="Seconds to wait for approval.")
@click.option("--call-timeout", type=click.FloatRange(min=0.1), help="Upstream per-call timeout.")
@click.option("--reload-interval", type=click.FloatRange(min=0.05), default=1.0, hidden=True)
@click.option("--record/--no-record", default=None,
              help="Record the session's messages (default: config `record`).")  # fmt: skip
@click.option("--pins", "pins", type=click.Choice(["off", "warn", "block"]), default=None,
              help="Tool-definition pinning: block denies calls to changed tools "
              "(default: config `pins`, else warn).")  # fmt: skip
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", help="stderr log level.")  # fmt: skip
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(**opts: Any) -> None:
    """Run an MCP server behind the firewall: mcpfw run [OPTIONS] -- COMMAND [ARGS]..."""
    # The upstream starts first (nothing but the standard library is loaded yet): it usually
    # takes longer to start than we take to import, check the flags and compile the rules.
    command = tuple(opts["command"])
    command = command[1:] if command[:1] == ("--",) else command
    process = None
    start_error = ""
    if command and not opts["upstream_url"]:
        from mcpfw.proxy.spawn import UpstreamStartError, spawn

        try:
            process = spawn(command)
        except UpstreamStartError as exc:
            start_error = str(exc)
    try:
        from mcpfw.proxy.runner import configure_logging

        configure_logging(opts["log_level"])
        options = resolve(opts)
        load_rules(options.rules)
    except BaseException:  # a usage error (SystemExit) or worse: the upstream must not linger
        _stop_early(process)
        raise
    import anyio

    from mcpfw.cli.loop import has_uvloop
    from mcpfw.proxy.runner import run_stdio

    run_options = replace(options, process=process, start_error=start_error)
    sys.exit(anyio.run(run_stdio, run_options, backend_options={"use_uvloop": has_uvloop()}))


def _stop_early(process: Any) -> None:
    if process is not None:
        with contextlib.suppress(OSError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def load_rules(holder: Any) -> None:
    """Compile the rules; on errors exit 2 listing every one as file:line:column."""
    from mcpfw.policy import RuleSetError

    try:
        holder.load()
    except RuleSetError as exc:
        _fail("rules have errors:\n" + "\n".join(f"  {e}" for e in exc.errors))


def resolve(opts: dict[str, Any]) -> Any:
    """Flags over config over defaults -> `RunOptions` (rules not yet compiled: `load_rules`).

    Exits 2 with a clear message when something is wrong."""
    from mcpfw.config import Config, ConfigError, load_config
    from mcpfw.model import Agent
    from mcpfw.proxy.guard import GuardSettings
    from mcpfw.proxy.reload import RuleHolder
    from mcpfw.proxy.runner import RunOptions, split_headers

    config = Config()
    if opts["config_file"]:
        try:
            config = load_config(opts["config_file"])
        except ConfigError as exc:
            _fail(f"config file has errors:\n{exc}")
    command: tuple[str, ...] = tuple(opts["command"])
    if command[:1] == ("--",):
        command = command[1:]
    url = opts["upstream_url"]
    name = opts["server"]
    env: dict[str, str] | None = None
    cwd: str | None = None
    headers: dict[str, str] = {}
    call_timeout = 300.0
    if name and name in config.upstreams and not command and not url:
        up = config.upstreams[name]
        if up.url:
            url, headers = up.url, dict(up.headers)
        else:
            command = (str(up.command), *up.args)
            env = {**os.environ, **up.env}
            cwd = up.cwd
        call_timeout = up.timeout_s
    if command and url:
        _fail("give either an upstream command (after --) or --upstream-url, not both")
    if not command and not url:
        known = ", ".join(sorted(config.upstreams)) or "none in the config"
        _fail(
            "no upstream: put the server command after `--` "
            f"(mcpfw run --rules R --agent A -- npx ...), use --upstream-url, or --server NAME "
            f"for a config upstream ({known})"
        )
    try:
        headers |= split_headers(opts["upstream_header"])
    except ValueError as exc:
        _fail(str(exc))
    agent_id = opts["agent_id"] or config.agent
    if not agent_id:
        _fail("no agent id: pass --agent ID (or set `agent:` in the config)")
    agent_conf = config.agent_config(agent_id)
    roles = tuple(dict.fromkeys((*agent_conf.roles, *opts["roles"])))
    agent = Agent(id=agent_id, roles=roles, claims=dict(agent_conf.claims), transport="stdio")
    rule_paths = [Path(p) for p in opts["rules"]] or list(config.rules)
    if not rule_paths:
        _fail("no rules: pass --rules PATH (file or directory) or set `rules:` in the config")
    for path in rule_paths:
        if not path.exists():
            _fail(f"rules path {str(path)!r} does not exist")
    audit_url = opts["audit_url"] or config.audit.url
    if audit_url and "://" in audit_url:
        scheme = audit_url.split("://", 1)[0].lower()
        if scheme not in SQL_SCHEMES:
            _fail(f"--audit {audit_url!r}: use a file path, sqlite:/// or postgresql:// URL")
    from mcpfw.policy import ArgLimits

    limits = ArgLimits(
        max_depth=config.limits.max_depth,
        max_bytes=config.limits.max_bytes,
        max_items=config.limits.max_items,
    )
    holder = RuleHolder(rule_paths, engine=opts["engine"] or config.engine, limits=limits)
    mode = opts["mode"] or config.mode
    hide = opts["hide_denied"] if opts["hide_denied"] is not None else config.hide_denied
    settings = GuardSettings(
        server=name or server_name(command) if not url else name or "upstream",
        monitor=mode == "monitor",
        audit_failure="allow" if config.audit.on_failure == "allow" else "deny",
        audit_timeout_s=config.audit.timeout_s,
        ask_timeout_s=opts["ask_timeout"] or config.ask_timeout_s,
        hide_denied=bool(hide),
        outcome_linger_s=0.02,  # an outcome shares the next decision's commit
    )
    return RunOptions(
        agent=agent,
        rules=holder,
        settings=settings,
        audit_url=audit_url,
        redact=tuple(config.audit.redact),
        detect_secrets=config.audit.detect_secrets,
        command=command,
        env=env,
        cwd=cwd,
        url=url,
        headers=headers,
        call_timeout_s=opts["call_timeout"] or call_timeout,
        reload_interval_s=opts["reload_interval"],
        record=opts["record"] if opts.get("record") is not None else config.records(agent_id),
        pins=opts.get("pins") or config.pins,
        sanitize_descriptions=config.sanitize_descriptions,
        pins_trust_on_first_use=config.pins_trust_on_first_use,
    )
