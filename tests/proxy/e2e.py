"""Helpers for the end-to-end tests: real `mcpfw run` subprocesses between an SDK client and
the fixture servers."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from mcp.client.stdio import StdioServerParameters

from mcpfw.audit import AuditEvent, EventFilter, open_store

ROOT = Path(__file__).resolve().parents[2]
SERVERS = ROOT / "fixtures" / "servers"
MCPFW = [sys.executable, "-c", "from mcpfw.cli import main; main()"]


def mcpfw_run(rules: Path, audit: Path, *flags: str, upstream: list[str]) -> list[str]:
    """The argv of `mcpfw run` wrapping `upstream`."""
    return [
        *MCPFW,
        "run",
        "--rules",
        str(rules),
        "--agent",
        "e2e-agent",
        "--audit",
        str(audit),
        "--server",
        "fixture",
        *flags,
        "--",
        *upstream,
    ]


def fixture(name: str, *args: str) -> list[str]:
    """The argv of a fixture server."""
    return [sys.executable, str(SERVERS / f"{name}.py"), *args]


def params(argv: list[str]) -> StdioServerParameters:
    """Stdio parameters for the SDK client, with the full environment."""
    return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))


async def audit_events(audit: Path, **filters: Any) -> list[AuditEvent]:
    """Every event in the audit database, oldest first."""
    async with open_store(str(audit), create=False) as store:
        return [e async for e in store.iter_events(EventFilter(**filters))]


def calls_with_outcomes(events: list[AuditEvent]) -> list[tuple[str, str, str | None]]:
    """(tool, effect, outcome) for every decision, in order; outcome None if missing."""
    outcomes = {e.decision_id: e.outcome for e in events if e.kind == "outcome"}
    return [(e.tool, str(e.effect), outcomes.get(e.id)) for e in events if e.kind == "decision"]
