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


async def test_sigterm_under_load_stops_cleanly_with_every_decision_recorded(
    tmp_path: Path,
) -> None:
    import signal

    # under load only: a signal before Python installs its handlers is not a graceful stop
    report = await crash_rounds(tmp_path, rounds=4, seed=3, sig=signal.SIGTERM, startup_share=0)
    assert report.rounds == 4 and report.exit_codes == [0, 0, 0, 0]
    assert report.lost == [] and report.lost_denials == []
    assert report.verify_ok, report.verify_output
    # a graceful stop also closes every decided call with an outcome, and every session
    assert report.decision_ids and report.decision_ids <= report.outcome_ids
    assert report.session_ends == 4


@pytest.mark.postgres
async def test_killing_the_firewall_never_loses_a_decision_on_postgresql(
    tmp_path: Path, postgres_url: str
) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    schema = f"crash_{tmp_path.name.lower().replace('-', '_')}"[:60]
    url = f"{postgres_url}?schema={schema}"
    try:
        report = await crash_rounds(tmp_path, rounds=6, seed=5, audit=url)
        assert len(report.received) > 6, "the load never reached the upstream"
        assert report.lost == [] and report.lost_denials == []
        assert report.verify_ok, report.verify_output
    finally:
        engine = create_async_engine(postgres_url)
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await engine.dispose()
