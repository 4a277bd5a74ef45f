"""The README is the user's entry point: its commands exist, its links resolve, CI runs its
test command, and its config example is a valid config."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from mcpfw.cli import COMMANDS, main
from mcpfw.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_the_two_commands_are_the_quick_start_and_ci_runs_the_test_one() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make demo" in quick and "make test" in quick
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M)


def test_every_command_is_in_the_readme_and_answers_help() -> None:
    for name in COMMANDS:
        assert f"mcpfw {name}" in README, f"`mcpfw {name}` is not documented in README.md"
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


def test_every_relative_link_in_the_readme_resolves() -> None:
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [link for link in links if "://" not in link]
    assert local, "expected links to docs/"
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_no_placeholder_is_left_in_the_readme() -> None:
    assert not re.search(r"\b(BENCH_TABLE|RELIABILITY_SECTION|KNOWN_LIMITS|TODO)\b", README)


def test_the_config_reference_example_is_a_valid_config(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "config.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    example = example.replace('"<64 hex chars>"', "a" * 64).replace("rules: rules/", "rules: .")
    path = tmp_path / "mcpfw.yaml"
    path.write_text(example)
    config = load_config(path, environ={"API_TOKEN": "t"})
    assert config.agent == "claude-desktop" and set(config.upstreams) == {"fs", "api"}
    assert config.upstreams["api"].headers["Authorization"] == "Bearer t"
