"""`mcpfw serve`: clear errors in-process, and one real run as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from mcpfw.cli import main
from tests.proxy.http_harness import token, write_config

SERVE_WAIT_S = 30


def _serve(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


def test_help_lists_the_options() -> None:
    code, out = _serve("--help")
    assert code == 0
    for option in ("--config", "--host", "--port", "--audit", "--instance"):
        assert option in out


def test_a_bad_config_is_reported_with_its_location(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra="  prot: 1\n")
    code, out = _serve("--config", str(path))
    assert code == 1
    assert re.search(r"mcpfw\.yaml:\d+:\d+: unknown field 'prot'.*did you mean .port.", out)
    assert "Traceback" not in out


def test_serving_without_any_credentials_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, auth="    api_keys: []\n")
    code, out = _serve("--config", str(path), "--port", "0")
    assert code == 1
    assert "never serves anonymous agents" in out


def test_rules_that_do_not_compile_are_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, rules="rules:\n  - id: x\n    effect: allow\n    when: 'args.('\n"
    )
    code, out = _serve("--config", str(path), "--port", "0")
    assert code == 1
    assert "the rules do not load" in out and "rules.yaml:" in out


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out = _serve("--config", str(path), "--port", str(port))
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out


@pytest.mark.slow
def test_serve_answers_agents_and_stops_on_sigint(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from mcpfw.cli import main; main()",
            "serve",
            "--config",
            str(path),
            "--port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stderr is not None
        url = ""
        for line in process.stderr:  # bounded by the subprocess timeout below
            found = re.search(r"listening on (http://\S+)", line)
            if found:
                url = found.group(1)
                break
        assert url, "mcpfw serve did not report its address"
        headers = {"authorization": f"Bearer {token('ci-bot')}"}
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {}}
        health = httpx.get(f"{url}/healthz", timeout=SERVE_WAIT_S)
        anonymous = httpx.post(f"{url}/mcp/fs", json=ping, timeout=SERVE_WAIT_S)
        discover = httpx.post(
            f"{url}/mcp/fs",
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "server/discover",
                "params": {
                    "_meta": {
                        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                        "io.modelcontextprotocol/clientCapabilities": {},
                    }
                },
            },
            headers={
                **headers,
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "server/discover",
            },
            timeout=SERVE_WAIT_S,
        )
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=SERVE_WAIT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert health.json() == {"status": "ok"}
    assert anonymous.status_code == 401
    assert discover.json()["result"]["supportedVersions"] == ["2026-07-28"]
