"""`mcpfw run` on the default SQLite audit log stays light: SQLAlchemy is never imported.

SQLAlchemy is about 20 MB of a firewall process's memory, and users run one firewall per tool
server. The firewall writes its decisions, outcomes and tool pins through plain `sqlite3`; the
full store (and SQLAlchemy) is loaded only for PostgreSQL, migrations and `--record`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from .e2e import audit_events, calls_with_outcomes, fixture, mcpfw_run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

RULES = """\
default: deny
rules:
  - id: reads
    effect: allow
    tools: [read_file, list_directory]
"""

# `mcpfw run` that writes the names of its loaded modules to $MCPFW_TEST_MODULES as it exits
PROBE = (
    "import atexit, os, sys\n"
    "atexit.register(lambda: open(os.environ['MCPFW_TEST_MODULES'], 'w')"
    ".write('\\n'.join(sorted(sys.modules))))\n"
    "from mcpfw.cli import main\n"
    "main()\n"
)


async def _session(tmp_path: Path, *flags: str) -> set[str]:
    root = tmp_path / "w"
    root.mkdir(exist_ok=True)
    (root / "notes.txt").write_text("hello")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    audit = tmp_path / "audit.db"
    modules = tmp_path / "modules.txt"
    argv = mcpfw_run(rules, audit, *flags, upstream=fixture("fs_server", str(root)))
    argv = [sys.executable, "-c", PROBE, *argv[3:]]  # the same command, through the probe
    env = {**os.environ, "MCPFW_TEST_MODULES": str(modules)}
    with anyio.fail_after(40):
        async with Client(
            StdioServerParameters(command=argv[0], args=argv[1:], env=env), mode="legacy"
        ) as client:
            tools = await client.list_tools()  # observed and pinned
            assert "read_file" in {t.name for t in tools.tools}
            ok = await client.call_tool("read_file", {"path": "notes.txt"})
            assert not ok.is_error
            denied = await client.call_tool("write_file", {"path": "x", "content": "y"})
            assert denied.is_error
    assert calls_with_outcomes(await audit_events(audit))[-2:] == [
        ("read_file", "allow", "forwarded"),
        ("write_file", "deny", "denied"),
    ]
    return set(modules.read_text().split())


async def test_run_on_sqlite_never_imports_sqlalchemy(tmp_path: Path) -> None:
    for _ in range(2):  # a new log (created without SQLAlchemy), then an existing one
        loaded = await _session(tmp_path)
        assert "mcpfw.audit.writer" in loaded and "mcpfw.pins.store" in loaded
        assert not {m for m in loaded if m.split(".")[0] in ("sqlalchemy", "aiosqlite")}


async def test_recording_loads_the_full_store(tmp_path: Path) -> None:
    # the probe can see SQLAlchemy arrive: the test above is not vacuous
    loaded = await _session(tmp_path, "--record")
    assert "sqlalchemy" in loaded and "mcpfw.audit.store" in loaded
