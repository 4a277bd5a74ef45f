"""SIGKILL `mcpfw run` under load, again and again: nothing the upstream received is missing
from the audit log, no denial the client saw is missing, and every chain verifies."""

from __future__ import annotations

from pathlib import Path

import pytest

from .crash_harness import crash_rounds

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_killing_the_firewall_under_load_never_loses_a_decision(tmp_path: Path) -> None:
    report = await crash_rounds(tmp_path, rounds=20, seed=8)
    assert report.rounds == 20
    assert len(report.received) > 20, "the load never reached the upstream: nothing was tested"
    assert report.lost == [], f"calls forwarded without a committed decision: {report.lost}"
    assert report.lost_denials == []
    assert report.verify_ok, report.verify_output
    assert report.chains >= 20 - report.killed_during_startup - 2
