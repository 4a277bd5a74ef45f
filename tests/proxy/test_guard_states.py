"""Spent 2026-era approval states: single use while valid, forgotten once expired."""

from __future__ import annotations

import pytest

from mcpfw.proxy.guard import Guard, GuardSettings


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_000_000.0]
    monkeypatch.setattr("mcpfw.proxy.guard.time.time", lambda: now[0])
    return now


def guard() -> Guard:
    return Guard(rules=None, store=None, settings=GuardSettings(server="fs"))  # type: ignore[arg-type]


def test_a_state_can_be_spent_only_once_while_it_is_valid(clock: list[float]) -> None:
    g = guard()
    assert g._spend_state("n1", clock[0] + 600)
    clock[0] += 599
    assert not g._spend_state("n1", clock[0] + 1)


def test_spent_states_are_forgotten_once_expired_and_unexpired_ones_kept(
    clock: list[float],
) -> None:
    g = guard()
    for i in range(10):
        assert g._spend_state(f"old{i}", clock[0] + 60)
    assert g._spend_state("young", clock[0] + 600)
    clock[0] += 61  # the ten old states have expired; "young" has not
    assert g._spend_state("next", clock[0] + 600)
    assert set(g._used_states) == {"young", "next"}
    assert not g._spend_state("young", clock[0] + 600)  # still single use
    clock[0] += 601
    assert g._spend_state("last", clock[0] + 600)
    assert set(g._used_states) == {"last"} and len(g._used_expiries) == 1
