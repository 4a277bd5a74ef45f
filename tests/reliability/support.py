"""Shared pieces of the reliability tests: a relay on a real SQLite audit store, audit checks."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from mcpfw.audit import AuditEvent, AuditStore, EventFilter, open_store
from mcpfw.proxy.guard import GuardSettings

from ..proxy.helpers import Harness, call, result_text, running

__all__ = [
    "Harness",
    "audited_calls",
    "call",
    "echo_roundtrip",
    "events_of",
    "outcomes_settled",
    "result_text",
    "sqlite_relay",
]

RULES = """\
default: deny
rules:
  - id: reads
    effect: allow
    tools: [read_file, echo, sleep]
  - id: no-etc
    effect: deny
    tools: [read_file]
    when: 'args.path.startsWith("/etc")'
    message: system files are off limits
  - id: numbers-only
    effect: allow
    tools: [count]
    when: 'args.n > 3'
"""


@contextlib.asynccontextmanager
async def sqlite_relay(
    tmp_path: Path,
    *,
    rules: str = RULES,
    settings: GuardSettings | None = None,
    call_timeout_s: float = 30.0,
) -> AsyncIterator[tuple[Harness, AuditStore]]:
    """The in-process relay (memory channels) writing to a real SQLite audit store."""
    async with (
        open_store(str(tmp_path / "audit.db"), instance="reliability") as store,
        running(
            tmp_path,
            rules,
            store=store,  # type: ignore[arg-type]
            settings=settings or GuardSettings(server="fs"),
            call_timeout_s=call_timeout_s,
        ) as harness,
    ):
        await harness.initialize()
        yield harness, store


async def echo_roundtrip(h: Harness, rid: Any, text: str = "still serving") -> dict[str, Any]:
    """An allowed call goes through to the upstream and its answer comes back."""
    await h.send(call(rid, "echo", {"text": text}))
    forwarded = await h.upstream_gets()
    assert forwarded["params"]["arguments"] == {"text": text}
    await h.reply(
        {
            "jsonrpc": "2.0",
            "id": forwarded["id"],
            "result": {"content": [{"type": "text", "text": text}]},
        }
    )
    answer = await h.client_gets()
    assert answer["id"] == rid and result_text(answer) == text
    return answer


async def events_of(store: AuditStore) -> list[AuditEvent]:
    return [e async for e in store.iter_events(EventFilter())]


async def audited_calls(store: AuditStore) -> list[tuple[str, str, str, str | None]]:
    """(tool, effect, rule, outcome) of every decision event in order; outcome None if none."""
    events = await events_of(store)
    outcomes = {e.decision_id: e.outcome for e in events if e.kind == "outcome"}
    return [
        (str(e.tool), str(e.effect), str(e.rule), outcomes.get(e.id))
        for e in events
        if e.kind == "decision"
    ]


async def outcomes_settled(store: AuditStore, count: int, timeout: float = 5.0) -> None:
    """Wait (bounded) until `count` outcome events are committed: a call's answer reaches the
    client just before its outcome is written."""
    with anyio.fail_after(timeout):
        while sum(1 for e in await events_of(store) if e.kind == "outcome") < count:
            await anyio.sleep(0.01)
