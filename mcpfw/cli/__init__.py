"""The `mcpfw` command line. Each command lives in its own module and is imported lazily,
so `mcpfw run` (started by agents, often ten at once) does not pay for `rich` tables or
SQL reporting code it never uses."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

__all__ = ["main"]

# command name -> "module:attribute". A command whose module is missing is not listed.
COMMANDS: dict[str, str] = {
    "check": "mcpfw.cli.policy_cmds:check",
    "test": "mcpfw.cli.policy_cmds:test",
    "eval": "mcpfw.cli.policy_cmds:eval_",
    "audit": "mcpfw.cli.audit_cmds:audit",
    "run": "mcpfw.cli.run_cmd:run",
    "install": "mcpfw.cli.install_cmd:install",
    "serve": "mcpfw.cli.serve_cmd:serve",
    "sessions": "mcpfw.cli.replay_cmds:sessions",
    "replay": "mcpfw.cli.replay_cmds:replay",
    "serve-recording": "mcpfw.cli.replay_cmds:serve_recording",
    "pins": "mcpfw.cli.pins_cmds:pins",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = []
        for name, target in COMMANDS.items():
            module = target.partition(":")[0]
            if importlib.util.find_spec(module) is not None:
                names.append(name)
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        command: Any = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mcpfw")
def main() -> None:
    """mcpfw: a firewall for AI agents' MCP tool calls."""
