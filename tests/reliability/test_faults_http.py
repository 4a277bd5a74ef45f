"""Fault injection on `mcpfw serve`: the shared upstream crashing or hanging mid-call, and an
agent that disconnects mid-call. Each call gets a clear error (or none, if nobody is left to
hear it), every decision and its outcome are in the audit log, and the next call succeeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcpfw.audit import EventFilter

from ..proxy.http_harness import FIXTURE, Rpc, token, write_config
from .http_support import serving

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _calls(served: Any, tool: str) -> list[tuple[str, str | None]]:
    """(effect, outcome) of each decision on `tool`, oldest first."""
    store = served.firewall.audit_store
    events = [e async for e in store.iter_events(EventFilter())]
    outcomes = {e.decision_id: e.outcome for e in events if e.kind == "outcome"}
    return [
        (str(e.effect), outcomes.get(e.id))
        for e in events
        if e.kind == "decision" and e.tool == tool
    ]


async def _until(served: Any, tool: str, want: list[tuple[str, str | None]]) -> None:
    """Poll (bounded by the caller's fail_after) until the audit log shows `want` for `tool`."""
    while await _calls(served, tool) != want:
        await anyio.sleep(0.02)


async def _echo_works(rpc: Rpc) -> None:
    answer = await rpc.request("tools/call", {"name": "echo", "arguments": {"ok": True}})
    assert answer["result"].get("isError") is not True, answer


def _upstream(timeout_s: float | None = None) -> str:
    spec: dict[str, Any] = {"command": sys.executable, "args": [str(FIXTURE)]}
    if timeout_s is not None:
        spec["timeout_s"] = timeout_s
    return json.dumps(spec)


async def test_an_upstream_crash_mid_call_is_an_error_and_the_upstream_comes_back(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, upstreams={"fs": _upstream()})
    with anyio.fail_after(30):
        async with serving(config) as served, httpx.AsyncClient(timeout=20) as http:
            rpc = Rpc(http, served.mcp("fs"), token("boss", ("admin",)))
            await rpc.initialize()
            crashed = await rpc.request("tools/call", {"name": "crash", "arguments": {}})
            assert crashed["error"]["message"].startswith("upstream 'fs' went away"), crashed
            await _until(served, "crash", [("allow", "upstream_error")])
            while True:  # reconnected on a backoff (bounded by fail_after)
                answer = await rpc.request("tools/call", {"name": "echo", "arguments": {}})
                if "result" in answer:
                    break
                assert "error" in answer and answer["error"]["message"], answer
                await anyio.sleep(0.1)
            assert (await http.get(f"{served.url}/healthz")).status_code == 200


async def test_a_hanging_upstream_times_out_per_call_and_the_next_call_succeeds(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, upstreams={"fs": _upstream(timeout_s=0.5)})
    with anyio.fail_after(30):
        async with serving(config) as served, httpx.AsyncClient(timeout=20) as http:
            rpc = Rpc(http, served.mcp("fs"), token("ci-hang", ("ci",)))
            await rpc.initialize()
            hung = await rpc.request("tools/call", {"name": "slow", "arguments": {"seconds": 600}})
            assert hung["error"]["code"] == -32001 and "0.5" in hung["error"]["message"], hung
            await _echo_works(rpc)
            await _until(served, "slow", [("allow", "timeout")])


async def test_an_agent_that_disconnects_mid_call_leaves_a_cancelled_outcome(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30):
        async with serving(write_config(tmp_path)) as served:
            bearer = token("ci-gone", ("ci",))
            async with httpx.AsyncClient(timeout=20) as http:
                rpc = Rpc(http, served.mcp("fs"), bearer)
                await rpc.initialize()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        rpc.request, "tools/call", {"name": "slow", "arguments": {"seconds": 600}}
                    )
                    await _until(served, "slow", [("allow", None)])  # decided, forwarded
                    tg.cancel_scope.cancel()  # the agent hangs up with the call in flight
            await _until(served, "slow", [("allow", "cancelled")])
            async with httpx.AsyncClient(timeout=20) as http:
                rpc = Rpc(http, served.mcp("fs"), bearer)
                await rpc.initialize()
                await _echo_works(rpc)


async def test_an_upstream_that_stops_reading_its_input_times_calls_out_instead_of_hanging(
    tmp_path: Path,
) -> None:
    from .memory_front import raw_upstream_argv

    command, *args = raw_upstream_argv()
    spec = json.dumps({"command": command, "args": args, "timeout_s": 0.5})
    config = write_config(tmp_path, upstreams={"raw": spec})
    big = {"name": "echo", "arguments": {"text": "x" * 200_000}}
    with anyio.fail_after(30):
        async with serving(config) as served, httpx.AsyncClient(timeout=25) as http:
            rpc = Rpc(http, served.mcp("raw"), token("boss", ("admin",)))
            await rpc.initialize()
            frozen = await rpc.request("tools/call", {"name": "freeze", "arguments": {}})
            assert frozen["result"]["content"][0]["text"] == "frozen"
            answers: list[dict[str, Any]] = []

            async def call() -> None:
                answers.append(await rpc.request("tools/call", big))

            async with anyio.create_task_group() as tg:  # enough to fill every buffer
                for _ in range(80):
                    tg.start_soon(call)
            assert len(answers) == 80
            assert {a["error"]["code"] for a in answers} == {-32001}
            assert (await http.get(f"{served.url}/healthz")).status_code == 200
