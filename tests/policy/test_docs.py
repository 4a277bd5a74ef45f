"""docs/policy.md documents every custom function, variable, rule field and CLI option."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from mcpfw.cli import policy_cmds
from mcpfw.policy.engine import VARIABLES
from mcpfw.policy.functions import FUNCTIONS
from mcpfw.policy.loader import RULE_FIELDS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "policy.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [s.name for s in FUNCTIONS])
def test_every_custom_function_is_documented_with_an_example(name: str) -> None:
    assert f"| `{name}(" in DOC
    assert DOC.count(f"{name}(") >= 2  # the signature and at least one example


def test_every_variable_and_field_is_documented() -> None:
    for var, fields in VARIABLES.items():
        assert f"| `{var}` |" in DOC
        for field in sorted(fields or ()):
            assert f"`{field}`" in DOC, f"{var}.{field}"
    for field in RULE_FIELDS:
        assert f"| `{field}` |" in DOC


@pytest.mark.parametrize("command", [policy_cmds.check, policy_cmds.test, policy_cmds.eval_])
def test_every_option_of_the_policy_commands_is_documented(command: click.Command) -> None:
    assert f"### `mcpfw {command.name}" in DOC
    for param in command.params:
        if isinstance(param, click.Option):
            assert any(opt in DOC for opt in param.opts), (command.name, param.opts)
