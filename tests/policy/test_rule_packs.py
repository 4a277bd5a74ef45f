"""The shipped rule packs load, pass their tests and are fully covered, on both engines."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcpfw.policy import load_ruleset
from mcpfw.policy.testing import run_tests

RULES = Path(__file__).resolve().parents[2] / "rules"
PACKS = ["filesystem", "shell", "git", "fetch", "messaging"]


def test_every_pack_has_a_test_file_beside_it() -> None:
    for pack in PACKS:
        assert (RULES / f"{pack}.yaml").is_file() and (RULES / f"{pack}_test.yaml").is_file()


@pytest.mark.parametrize("pack", PACKS)
def test_each_pack_passes_its_tests_with_every_rule_covered(engine: str, pack: str) -> None:
    report = run_tests([RULES / f"{pack}.yaml"], engine=engine)
    assert [f"{r.case.name}: {r.problem}" for r in report.failed] == []
    assert report.ok and report.todo == ()
    assert report.uncovered == ()


def test_all_packs_together_pass_and_agree_on_deny_by_default(engine: str) -> None:
    report = run_tests([RULES], engine=engine)
    assert report.ok and report.uncovered == ()
    assert report.ruleset.default.value == "deny"
    assert len(report.results) >= 100


def test_the_packs_have_no_shadow_rules_or_missing_messages_on_denies() -> None:
    for rule in load_ruleset([RULES]).rules:
        assert not rule.shadow
        if rule.effect.value == "deny":
            assert rule.message, rule.id
