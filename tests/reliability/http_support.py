"""`mcpfw serve` on loopback for the reliability tests, with its uvicorn timeouts in force."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from mcpfw.config import load_config
from mcpfw.proxy.http_serve import bind_socket, open_http_firewall, uvicorn_server

from ..proxy.http_harness import Served


@asynccontextmanager
async def serving(config_path: Path, *, read_timeout_s: float = 30.0) -> AsyncIterator[Served]:
    """Like the proxy tests' `serving`, but with `mcpfw serve`'s uvicorn read timeouts."""
    config = load_config(config_path)
    async with open_http_firewall(config, reload_interval_s=0.2) as firewall:
        sock = bind_socket("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = uvicorn_server(firewall.app(), read_timeout_s=read_timeout_s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                with anyio.fail_after(10):
                    while not server.started:
                        await anyio.sleep(0.01)
                yield Served(url=f"http://127.0.0.1:{port}", firewall=firewall)
            finally:
                server.should_exit = True
