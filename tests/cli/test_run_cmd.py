"""`mcpfw run` flags and config: every mistake exits 2 with a message, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpfw.cli import main
from mcpfw.cli.run_cmd import load_rules, resolve, server_name

RULES = "default: deny\nrules:\n  - id: r\n    effect: allow\n    tools: [echo]\n"


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_missing_agent_is_a_usage_error(rules: Path) -> None:
    code, out = _run("--rules", str(rules), "--", "server")
    assert code == 2 and "--agent" in out


def test_missing_upstream_is_a_usage_error(rules: Path) -> None:
    code, out = _run("--rules", str(rules), "--agent", "a")
    assert code == 2 and "no upstream" in out


def test_missing_rules_are_a_usage_error(tmp_path: Path) -> None:
    code, out = _run("--agent", "a", "--", "server")
    assert code == 2 and "--rules" in out
    code, out = _run("--rules", str(tmp_path / "nope.yaml"), "--agent", "a", "--", "server")
    assert code == 2 and "does not exist" in out


def test_broken_rules_are_reported_with_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - id: x\n    effect: allow\n    when: 'args.a ==='\n")
    code, out = _run("--rules", str(bad), "--agent", "a", "--", "server")
    assert code == 2 and f"{bad}:4:" in out


def test_broken_config_is_reported_with_file_and_line(tmp_path: Path, rules: Path) -> None:
    config = tmp_path / "mcpfw.yaml"
    config.write_text("rules: rules.yaml\nmoed: monitor\n")
    code, out = _run("--config", str(config), "--agent", "a", "--", "server")
    assert code == 2 and f"{config}:2:" in out


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--audit", "mysql://x/y"], "postgresql://"),
        (["--upstream-header", "no-colon"], "Name: value"),
        (["--mode", "loud"], "loud"),
        (["--upstream-url", "http://x/mcp"], "not both"),
    ],
)
def test_bad_flags_exit_2_with_a_message(rules: Path, flags: list[str], expected: str) -> None:
    code, out = _run("--rules", str(rules), "--agent", "a", *flags, "--", "server")
    assert code == 2 and expected in out


def test_config_supplies_rules_agent_roles_and_a_named_upstream(
    tmp_path: Path, rules: Path
) -> None:
    config = tmp_path / "mcpfw.yaml"
    config.write_text(
        "rules: rules.yaml\nagent: bot\nmode: monitor\nhide_denied: true\n"
        "agents:\n  bot: {roles: [ci], claims: {team: infra}}\n"
        "upstreams:\n  fs: {command: node, args: [server.js, /w], env: {X: '1'}}\n"
    )
    opts = {
        "config_file": str(config), "command": (), "upstream_url": None, "server": "fs",
        "upstream_header": (), "agent_id": None, "roles": ("dev",), "rules": (),
        "audit_url": None, "engine": None, "mode": None, "hide_denied": None,
        "ask_timeout": None, "call_timeout": None, "reload_interval": 1.0,
    }  # fmt: skip
    options = resolve(opts)
    load_rules(options.rules)
    assert options.agent.id == "bot" and options.agent.roles == ("ci", "dev")
    assert dict(options.agent.claims) == {"team": "infra"}
    assert options.command == ("node", "server.js", "/w") and options.env["X"] == "1"
    assert options.settings.server == "fs" and options.settings.monitor is True
    assert options.settings.hide_denied is True
    assert [r.id for r in options.rules.current.rules] == ["r"]


@pytest.mark.parametrize(
    ("command", "name"),
    [
        (("npx", "-y", "@modelcontextprotocol/server-filesystem", "/w"), "server-filesystem"),
        (("python", "fixtures/servers/fs_server.py", "/w"), "fs_server"),
        (("/usr/local/bin/git-mcp",), "git-mcp"),
        (("uvx", "mcp-server-fetch@1.2"), "mcp-server-fetch"),
    ],
)
def test_upstream_name_is_derived_from_the_command(command: tuple[str, ...], name: str) -> None:
    assert server_name(command) == name
