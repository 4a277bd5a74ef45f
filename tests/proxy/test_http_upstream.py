"""`mcpfw run --upstream-url`: the stdio firewall in front of a streamable-HTTP upstream."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client

from .e2e import audit_events, calls_with_outcomes, fixture, mcpfw_run, params

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _until_listening(port: int) -> None:
    while True:  # bounded by the caller's fail_after: the server is starting
        try:
            stream = await anyio.connect_tcp("127.0.0.1", port)
        except OSError:
            await anyio.sleep(0.05)
            continue
        await stream.aclose()
        return


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_http_upstream_is_guarded_like_a_stdio_one(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "w"
    root.mkdir()
    (root / "a.txt").write_text("from http")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "default: deny\nrules:\n  - id: reads\n    effect: allow\n    tools: [read_file]\n"
    )
    port = _free_port()
    server = subprocess.Popen(fixture("fs_server", str(root), "--http", str(port)))
    try:
        argv = mcpfw_run(rules, tmp_path / "a.db", upstream=[])
        cut = argv.index("--")
        argv = [*argv[:cut], "--upstream-url", f"http://127.0.0.1:{port}/mcp",
                "--upstream-header", "X-Upstream-Key: k1"]  # fmt: skip
        with anyio.fail_after(40):
            await _until_listening(port)
            async with Client(params(argv), mode=mode) as client:
                ok = await client.call_tool("read_file", {"path": "a.txt"})
                assert not ok.is_error and ok.content[0].text == "from http"
                denied = await client.call_tool("delete_file", {"path": "a.txt"})
                assert denied.is_error and "'default'" in denied.content[0].text
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert (root / "a.txt").exists()
    assert calls_with_outcomes(await audit_events(tmp_path / "a.db")) == [
        ("read_file", "allow", "forwarded"),
        ("delete_file", "deny", "denied"),
    ]
