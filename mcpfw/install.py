"""Rewrite an agent client's MCP config so each stdio server runs behind `mcpfw run`.

Wrapping turns `{"command": "npx", "args": ["server-filesystem", "/work"]}` into
`{"command": "/path/to/mcpfw", "args": ["run", "--agent", "claude-desktop", "--server", "fs",
"--", "npx", "server-filesystem", "/work"]}`; everything after `--` is the original command, so
unwrapping needs no side file. HTTP servers (`url`) are left alone: they go behind `mcpfw serve`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CLIENTS", "InstallError", "Rewrite", "default_config_path", "rewrite"]

# client -> the key that holds its servers
CLIENTS: dict[str, str] = {
    "claude-desktop": "mcpServers",
    "claude-code": "mcpServers",
    "cursor": "mcpServers",
    "vscode": "servers",
}


class InstallError(Exception):
    """The client config cannot be rewritten; the message says where and why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Rewrite:
    """The result of wrapping or unwrapping one config document."""

    document: dict[str, Any]
    changed: tuple[str, ...]  # server names rewritten
    skipped: tuple[tuple[str, str], ...]  # (server name, why it was left alone)


def default_config_path(client: str, *, home: Path | None = None, cwd: Path | None = None) -> Path:
    """Where the client keeps its MCP config on this platform (user scope; VS Code: workspace)."""
    home = home or Path.home()
    cwd = cwd or Path.cwd()
    if client == "claude-desktop":
        if sys.platform == "darwin":
            return home / "Library/Application Support/Claude/claude_desktop_config.json"
        if sys.platform == "win32":
            appdata = Path(os.environ.get("APPDATA", home / "AppData/Roaming"))
            return appdata / "Claude/claude_desktop_config.json"
        return home / ".config/Claude/claude_desktop_config.json"
    if client == "claude-code":
        return cwd / ".mcp.json"  # project scope, shared with the team; user scope: ~/.claude.json
    if client == "cursor":
        return home / ".cursor/mcp.json"
    if client == "vscode":
        return cwd / ".vscode/mcp.json"
    raise InstallError(f"unknown client {client!r}; choose one of {', '.join(CLIENTS)}")


def parse_jsonc(text: str, where: str) -> dict[str, Any]:
    """Parse JSON, allowing the // and /* */ comments and trailing commas VS Code permits."""
    try:
        data = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        try:
            data = json.loads(_strip_jsonc(text))
        except json.JSONDecodeError as exc:
            raise InstallError(
                f"{where}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg}); fix the file or "
                "pass another with --file"
            ) from None
    if not isinstance(data, dict):
        raise InstallError(f"{where}: expected a JSON object at the top level")
    return data


_JSONC_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/|,(?=\s*[}\]])', re.S)


def _strip_jsonc(text: str) -> str:
    def keep(match: re.Match[str]) -> str:
        token = match.group(0)
        if token.startswith('"'):
            return token
        return "\n" * token.count("\n")  # keep line numbers for error messages

    return _JSONC_TOKEN.sub(keep, text)


def _servers(document: dict[str, Any], client: str, where: str) -> dict[str, Any]:
    key = CLIENTS[client]
    servers = document.get(key)
    if servers is None and client == "vscode" and isinstance(document.get("mcp"), dict):
        servers = document["mcp"].get("servers")  # user settings.json: {"mcp": {"servers": …}}
    if servers is None:
        return {}
    if not isinstance(servers, dict):
        raise InstallError(f"{where}: '{key}' must be an object of servers")
    return servers


def _is_wrapped(entry: dict[str, Any]) -> bool:
    args = entry.get("args")
    return (
        isinstance(args, list)
        and len(args) >= 2
        and args[0] == "run"
        and "--" in args
        and Path(str(entry.get("command", ""))).name.startswith("mcpfw")
    )


def rewrite(
    document: dict[str, Any],
    client: str,
    *,
    mcpfw: str,
    extra_args: Sequence[str] = (),
    agent: str | None = None,
    uninstall: bool = False,
    where: str = "config",
) -> Rewrite:
    """Wrap (or unwrap) every stdio server of one client config; returns the new document."""
    if client not in CLIENTS:
        raise InstallError(f"unknown client {client!r}; choose one of {', '.join(CLIENTS)}")
    new = json.loads(json.dumps(document))  # deep copy, JSON types only
    changed: list[str] = []
    skipped: list[tuple[str, str]] = []
    for name, entry in _servers(new, client, where).items():
        if not isinstance(entry, dict):
            skipped.append((name, "not an object"))
            continue
        if uninstall:
            if _is_wrapped(entry):
                args = entry["args"]
                original = args[args.index("--") + 1 :]
                if not original:
                    skipped.append((name, "wrapped entry has no original command after '--'"))
                    continue
                entry["command"], entry["args"] = original[0], original[1:]
                changed.append(name)
            continue
        if "command" not in entry:
            skipped.append((name, "not a stdio server (put HTTP servers behind `mcpfw serve`)"))
            continue
        if _is_wrapped(entry):
            skipped.append((name, "already behind mcpfw"))
            continue
        args = entry.get("args", [])
        if not isinstance(entry["command"], str) or not isinstance(args, list):
            skipped.append((name, "command/args are not a string and a list"))
            continue
        head = ["run", "--agent", agent or client, "--server", name, *extra_args, "--"]
        entry["args"] = [*head, entry["command"], *args]
        entry["command"] = mcpfw
        changed.append(name)
    return Rewrite(document=new, changed=tuple(changed), skipped=tuple(skipped))
