"""A minimal line-delimited JSON-RPC peer over a subprocess's stdio, for the pins tests.

No SDK in between: the tests decide exactly when tools are listed and see every notification.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream


class StdioPeer:
    """A minimal line-delimited JSON-RPC client for a subprocess (no SDK in between)."""

    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.reader = BufferedByteReceiveStream(process.stdout)
        self.notifications: list[dict[str, Any]] = []
        self.next_id = 0

    async def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(json.dumps({"jsonrpc": "2.0", **message}).encode() + b"\n")

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.next_id += 1
        await self.send({"id": self.next_id, "method": method, "params": params or {}})
        while True:
            line = await self.reader.receive_until(b"\n", 16 * 1024 * 1024)
            message = json.loads(line)
            if message.get("id") == self.next_id and "method" not in message:
                assert "error" not in message, message
                return message["result"]
            if "method" in message and "id" not in message:
                self.notifications.append(message)

    async def initialize(self) -> None:
        await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "pins-test", "version": "1"},
            },
        )
        await self.send({"method": "notifications/initialized"})

    async def list_tools(self) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor = None
        while True:
            result = await self.request("tools/list", {"cursor": cursor} if cursor else {})
            tools.extend(result["tools"])
            cursor = result.get("nextCursor")
            if not cursor:
                return tools


@asynccontextmanager
async def spawn(*command: str, env: dict[str, str] | None = None) -> AsyncIterator[StdioPeer]:
    """Start `command`, initialize it (2025-06-18); afterwards close its stdin and reap it."""
    async with await anyio.open_process(
        list(command), env={**os.environ, **(env or {})}, stderr=None
    ) as process:
        peer = StdioPeer(process)
        try:
            with anyio.fail_after(30):
                await peer.initialize()
                yield peer
        finally:
            with anyio.CancelScope(shield=True):
                assert process.stdin is not None
                await process.stdin.aclose()  # EOF: a clean shutdown, as a real client does
                with anyio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
