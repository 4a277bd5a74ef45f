"""A raw newline-JSON client for a real `mcpfw run` subprocess: exactly the bytes on the wire."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from mcpfw.proxy.stdio import LineSplitter

ROOT = Path(__file__).resolve().parents[2]
MCPFW = [sys.executable, "-c", "from mcpfw.cli import main; main()"]
WAIT = 15


class RawClient:
    def __init__(self, process: Process) -> None:
        self.process = process
        self.splitter = LineSplitter()
        self.buffered: list[Any] = []
        self.ids = 0

    async def send(self, message: dict[str, Any] | bytes) -> None:
        assert self.process.stdin is not None
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        with anyio.fail_after(WAIT):
            await self.process.stdin.send(data)

    async def receive(self) -> Any:
        assert self.process.stdout is not None
        with anyio.fail_after(WAIT):
            while not self.buffered:
                self.buffered.extend(self.splitter.feed(await self.process.stdout.receive()))
        return self.buffered.pop(0)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.ids += 1
        rid = self.ids
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        while True:
            got = await self.receive()
            if isinstance(got, dict) and got.get("id") == rid and "method" not in got:
                return got

    async def initialize(self) -> Any:
        init = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return init


@contextlib.asynccontextmanager
async def mcpfw_run(*args: str) -> AsyncIterator[RawClient]:
    """`mcpfw run ARGS` as a subprocess (stderr inherited); EOF on stdin when done."""
    process = await anyio.open_process(
        [*MCPFW, "run", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=None,
        env=dict(os.environ),
        cwd=ROOT,
    )
    try:
        yield RawClient(process)
    finally:
        with contextlib.suppress(Exception):
            assert process.stdin is not None
            await process.stdin.aclose()
        with anyio.move_on_after(WAIT, shield=True):
            await process.wait()
        if process.returncode is None:
            process.kill()
            with anyio.CancelScope(shield=True):
                await process.wait()
