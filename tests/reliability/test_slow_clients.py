"""Idle and slow HTTP clients on `mcpfw serve`: 200 of them on loopback neither starve a real
agent's calls nor stay connected past the read timeout, and memory stays bounded."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketStream

from ..proxy.http_harness import Rpc, token, write_config
from .http_support import serving

pytestmark = [pytest.mark.slow]

IDLE, SLOW_HEADERS, SLOW_BODIES = 120, 60, 20
READ_TIMEOUT = 1.0


async def _closed_by_server(stream: SocketStream) -> bytes:
    """Everything the server sent until it closed the connection."""
    got = b""
    try:
        while True:
            got += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return got


async def _dribble(stream: SocketStream, data: bytes) -> None:
    """Send `data` one byte every 0.1 s until the server hangs up (a slowloris)."""
    for byte in data:
        try:
            await stream.send(bytes([byte]))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        await anyio.sleep(0.1)


@pytest.mark.anyio
async def test_idle_and_slow_connections_are_dropped_and_real_calls_still_work(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path, extra=f"  read_timeout_s: {READ_TIMEOUT}\n")
    bearer = token("ci-reliability", ("ci",))
    tracemalloc.start()
    try:
        with anyio.fail_after(30):
            async with serving(config, read_timeout_s=READ_TIMEOUT) as served:
                port = int(served.url.rsplit(":", 1)[1])
                start, _ = tracemalloc.get_traced_memory()
                streams = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(IDLE)]
                slow = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(SLOW_HEADERS)]
                bodies = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(SLOW_BODIES)]
                head = (
                    f"POST /mcp/fs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Authorization: Bearer {bearer}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 4000\r\n\r\n"
                ).encode()
                for stream in bodies:
                    await stream.send(head + b'{"jsonrpc":')  # ...and the rest never comes
                answers: dict[str, bytes] = {}
                async with anyio.create_task_group() as tg:
                    for stream in slow:
                        tg.start_soon(_dribble, stream, b"GET /healthz HTTP/1.1\r\nX-Slow: " * 4)

                    async def closed(name: str, stream: SocketStream) -> None:
                        answers[name] = await _closed_by_server(stream)

                    for i, stream in enumerate([*streams, *slow, *bodies]):
                        tg.start_soon(closed, str(i), stream)
                    # with all of them connected, a real agent is served at once
                    async with httpx.AsyncClient(timeout=5) as http:
                        rpc = Rpc(http, served.mcp("fs"), bearer)
                        await rpc.initialize()
                        for n in range(5):
                            result = await rpc.request(
                                "tools/call", {"name": "echo", "arguments": {"n": n}}
                            )
                            assert result["result"].get("isError") is not True, result
                    _, peak = tracemalloc.get_traced_memory()
                # every idle and slow connection was closed by the server (bounded above)
                assert len(answers) == IDLE + SLOW_HEADERS + SLOW_BODIES
                for i in range(IDLE + SLOW_HEADERS):
                    assert answers[str(i)] == b""  # dropped without a word: no request came
                for i in range(IDLE + SLOW_HEADERS, IDLE + SLOW_HEADERS + SLOW_BODIES):
                    assert answers[str(i)].startswith(b"HTTP/1.1 408"), answers[str(i)][:80]
    finally:
        tracemalloc.stop()
    assert peak - start < 40 << 20, f"{(peak - start) >> 20} MiB for 200 idle/slow connections"


def test_mcpfw_serve_raises_a_low_open_files_limit_to_the_hard_limit() -> None:
    import resource

    from mcpfw.proxy.http_limits import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.fail(f"the hard open-files limit ({hard}) is too low to test this")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # a stingy `ulimit -n`
    try:
        raised = raise_open_files_limit()
        assert raised == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised > low and (hard == resource.RLIM_INFINITY or raised == hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
