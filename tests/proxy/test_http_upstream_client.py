"""The lean HTTP client of `mcpfw serve`'s shared upstream sessions, against a real socket."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mcpfw.proxy.http_upstream_client import http_session

from .test_http_upstreams import http_upstream

pytestmark = pytest.mark.anyio

WAIT = 30
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


async def test_a_json_answer_goes_straight_to_the_caller_that_takes_it() -> None:
    taken: list[dict[str, Any]] = []
    with anyio.fail_after(WAIT):
        async with http_upstream() as url, http_session(url) as (read, write):
            await write.send(INIT)  # nobody takes it yet: it comes through the read stream
            assert (await read.receive())["id"] == 1
            write.take_response = lambda message: taken.append(message) or True
            call = {"name": "echo", "arguments": {"n": 1}}
            await write.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
            assert [m["id"] for m in taken] == [2]  # handed over during the send itself
            assert "result" in taken[0]
            with pytest.raises(anyio.WouldBlock):
                read.receive_nowait()  # and not also through the read stream


async def test_an_answer_nobody_takes_still_comes_through_the_read_stream() -> None:
    offered: list[Any] = []
    with anyio.fail_after(WAIT):
        async with http_upstream() as url, http_session(url) as (read, write):
            write.take_response = lambda message: offered.append(message["id"]) and False
            await write.send(INIT)
            await write.send({"jsonrpc": "2.0", "id": 7, "method": "tools/list"})
            got = [(await read.receive())["id"], (await read.receive())["id"]]
            assert got == [1, 7] and offered == [1, 7]
