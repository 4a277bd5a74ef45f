"""Helpers for policy tests: write rule files, build calls, run both engines."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mcpfw.model import Agent, ToolCall
from mcpfw.policy import RuleSet, load_ruleset

ENGINES = ["cel-expr", "cel-python"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on both CEL engines."""
    return str(request.param)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """write("name.yaml", text) -> the path, with the text dedented."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def ruleset(write: Callable[..., Path], engine: str) -> Callable[[str], RuleSet]:
    """ruleset(yaml_text) -> a RuleSet loaded from one file with the current engine."""

    def _load(text: str, **kwargs: Any) -> RuleSet:
        return load_ruleset([write("rules.yaml", text)], engine=engine, **kwargs)

    return _load


def call(
    tool: str = "read_file",
    args: dict[str, Any] | None = None,
    *,
    agent: str = "agent-1",
    roles: tuple[str, ...] = (),
    server: str = "",
    **kwargs: Any,
) -> ToolCall:
    """A ToolCall with sensible defaults."""
    return ToolCall(
        agent=Agent(id=agent, roles=roles),
        tool=tool,
        server=server,
        arguments=args or {},
        **kwargs,
    )
