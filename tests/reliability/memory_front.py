"""A memory stand-in for the stdio front of `run_stdio`: the test plays the agent."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

from mcpfw.proxy.messages import InvalidMessage, Message
from mcpfw.proxy.stdio import Channel

RAW_UPSTREAM = Path(__file__).with_name("raw_upstream.py")
WAIT = 10


def raw_upstream_argv(received: Path | None = None) -> list[str]:
    """The argv of the stdlib-only fixture upstream (optionally logging received call ids)."""
    return [sys.executable, str(RAW_UPSTREAM), *([str(received)] if received else [])]


class MemoryFront:
    """Both ends of the client channel; `context()` is what `run_stdio(front=...)` enters."""

    def __init__(self) -> None:
        self.to_fw, self._fw_in = anyio.create_memory_object_stream[Message | InvalidMessage](64)
        self._fw_out, self.from_fw = anyio.create_memory_object_stream[Message](64)
        self.ids = 0

    @contextlib.asynccontextmanager
    async def context(self) -> AsyncIterator[Channel]:
        yield Channel(read=self._fw_in, write=self._fw_out, name="client")

    async def send(self, message: Message | InvalidMessage) -> None:
        with anyio.fail_after(WAIT):
            await self.to_fw.send(message)

    async def receive(self) -> Message:
        with anyio.fail_after(WAIT):
            return await self.from_fw.receive()

    async def request(self, method: str, params: dict[str, Any], rid: Any = None) -> Message:
        """Send a request and wait for the response with its id (skipping anything else)."""
        if rid is None:
            self.ids += 1
            rid = f"r{self.ids}"
        await self.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        while True:
            message = await self.receive()
            if message.get("id") == rid and "method" not in message:
                return message

    async def close(self) -> None:
        await self.to_fw.aclose()  # EOF: the agent went away


@contextlib.asynccontextmanager
async def memory_front() -> AsyncIterator[MemoryFront]:
    front = MemoryFront()
    try:
        yield front
    finally:
        await front.to_fw.aclose()
