"""`mcpfw install` wraps each client's stdio servers with `mcpfw run`, and undoes it exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcpfw.cli import main

DESKTOP = {
    "mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "server-filesystem", "/work"], "env": {"A": "1"}},
        "remote": {"url": "https://mcp.example.com/mcp"},
    },
    "globalShortcut": "Ctrl+Space",
}

VSCODE_JSONC = """{
  // workspace MCP servers
  "servers": {
    "git": {"type": "stdio", "command": "uvx", "args": ["mcp-server-git"],},
  },
  "inputs": []
}
"""


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("client", ["claude-desktop", "claude-code", "cursor"])
def test_each_stdio_server_is_wrapped_and_the_rest_kept(tmp_path: Path, client: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DESKTOP))
    code, out = invoke("install", "--client", client, "--file", str(path), "--mcpfw", "/bin/mcpfw")
    assert code == 0, out
    after = json.loads(path.read_text())
    assert after["mcpServers"]["fs"] == {
        "command": "/bin/mcpfw",
        "args": ["run", "--agent", client, "--server", "fs", "--",
                 "npx", "-y", "server-filesystem", "/work"],
        "env": {"A": "1"},
    }  # fmt: skip
    assert after["mcpServers"]["remote"] == DESKTOP["mcpServers"]["remote"]
    assert after["globalShortcut"] == "Ctrl+Space"
    assert "skipped remote: not a stdio server" in out
    assert '+  "command": "/bin/mcpfw"' in out.replace("      ", "  ")  # the diff is printed
    backups = list(tmp_path.glob("config.json.mcpfw-backup-*"))
    assert len(backups) == 1 and json.loads(backups[0].read_text()) == DESKTOP


def test_uninstall_restores_the_original_entries(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DESKTOP))
    assert invoke("install", "--client", "cursor", "--file", str(path), "--rules", "r/")[0] == 0
    code, out = invoke("install", "--client", "cursor", "--file", str(path), "--uninstall")
    assert code == 0, out
    assert json.loads(path.read_text()) == DESKTOP


def test_installing_twice_does_not_wrap_twice(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DESKTOP))
    invoke("install", "--client", "cursor", "--file", str(path))
    once = path.read_text()
    code, out = invoke("install", "--client", "cursor", "--file", str(path))
    assert code == 0 and "already behind mcpfw" in out and path.read_text() == once


def test_vscode_servers_with_comments_are_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(VSCODE_JSONC)
    code, out = invoke("install", "--client", "vscode", "--file", str(path), "--mcpfw", "mcpfw",
                       "--rules", str(tmp_path / "rules"))  # fmt: skip
    assert code == 0, out
    entry = json.loads(path.read_text())["servers"]["git"]
    assert entry["type"] == "stdio" and entry["command"] == "mcpfw"
    rules = str(tmp_path / "rules")
    assert entry["args"] == ["run", "--agent", "vscode", "--server", "git",
                             "--rules", rules, "--", "uvx", "mcp-server-git"]  # fmt: skip
    assert "comments in the original were not kept" in out


def test_dry_run_prints_the_diff_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(DESKTOP))
    code, out = invoke("install", "--client", "claude-desktop", "--file", str(path), "--dry-run")
    assert code == 0 and "would have wrapped fs" in out and "+" in out
    assert json.loads(path.read_text()) == DESKTOP
    assert not list(tmp_path.glob("*.mcpfw-backup-*"))


def test_broken_json_is_a_clear_error_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"mcpServers": {"fs": {"command": }}}')
    code, out = invoke("install", "--client", "cursor", "--file", str(path))
    assert code == 1 and f"{path}:1:" in out and "not valid JSON" in out
    assert "Traceback" not in out


def test_a_missing_config_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    code, out = invoke("install", "--client", "cursor", "--file", str(tmp_path / "none.json"))
    assert code == 1 and "pass the client's config with --file" in out
