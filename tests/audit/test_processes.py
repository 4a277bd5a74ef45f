"""Several firewall processes writing one database: each keeps its own verifiable chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import anyio
import pytest

from mcpfw.audit import open_store

pytestmark = pytest.mark.anyio

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from mcpfw.audit import open_store
    from mcpfw.model import Agent, Decision, Effect, Outcome, ToolCall

    async def main(url: str, n: int) -> None:
        async with open_store(url) as store:  # default chain id: host:pid
            async def one(i: int) -> None:
                call = ToolCall(agent=Agent(id="a"), tool="t", arguments={"i": i})
                decision = Decision(effect=Effect.ALLOW, rule="r")
                await store.record_decision(call, decision)
                await store.record_outcome(decision.id, Outcome.FORWARDED)
            await asyncio.gather(*(one(i) for i in range(n)))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


async def test_three_processes_writing_at_once_each_keep_a_chain(audit_url: str) -> None:
    with anyio.fail_after(60):
        async with open_store(audit_url, instance="creator"):
            pass  # create the schema once, as the first firewall would
        procs = [
            subprocess.Popen([sys.executable, "-c", WRITER, audit_url, "150"]) for _ in range(3)
        ]
        try:
            codes = []
            for proc in procs:
                codes.append(await anyio.to_thread.run_sync(proc.wait))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
        async with open_store(audit_url, instance="checker", create=False) as store:
            report = await store.verify()
    assert codes == [0, 0, 0]
    assert report.ok
    assert sorted(c.events for c in report.chains) == [300, 300, 300]
    assert len({c.instance for c in report.chains}) == 3
