"""The fixture upstreams: the poisoning one is caught, the rug pull drifts, benign ones are clean.

Benign means every server in fixtures/servers/ except the two hostile ones, plus the real npm
servers (server-filesystem, server-everything): their tool lists must produce ZERO findings.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from mcpfw.pins import PinStatus, PinStore, definition_digest, scan_tool, scan_tools

from .pins_stdio import spawn

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "fixtures" / "servers"
HOSTILE = {"poisoning_server.py", "rugpull_server.py"}


async def tools_in_process(path: Path) -> list[dict[str, Any]]:
    """A fixture's tool list without a subprocess: import it and ask its MCPServer."""
    spec = importlib.util.spec_from_file_location(f"_pins_fixture_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    argv = sys.argv
    sys.argv = [str(path), str(ROOT)]  # fs_server takes its root from argv
    try:
        spec.loader.exec_module(module)
    finally:
        sys.argv = argv
    listed = await module.app.list_tools()
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in listed]


BENIGN = sorted(p for p in SERVERS.glob("*.py") if p.name not in HOSTILE)


def test_there_are_benign_fixture_servers_to_check() -> None:
    assert len(BENIGN) >= 2


@pytest.mark.parametrize("path", BENIGN, ids=lambda p: p.name)
async def test_benign_fixture_servers_have_zero_findings(path: Path) -> None:
    tools = await tools_in_process(path)
    assert tools, f"{path.name} lists no tools"
    assert scan_tools(tools) == {}


@pytest.mark.node
async def test_the_real_npm_servers_have_zero_findings(node_modules: Path, tmp_path: Path) -> None:
    servers = {
        "filesystem": (
            "node",
            str(node_modules / "server-filesystem/dist/index.js"),
            str(tmp_path),
        ),
        "everything": ("node", str(node_modules / "server-everything/dist/index.js"), "stdio"),
    }
    for name, command in servers.items():
        async with spawn(*command) as peer:
            tools = await peer.list_tools()
        assert len(tools) >= 10, name
        assert scan_tools(tools) == {}, name


EXPECTED = {
    "add": {"hidden-instruction-tag", "secret-file-reference", "exfiltration-instruction",
            "concealment"},
    "fact_of_the_day": {"hidden-instruction-tag", "cross-tool-instruction", "concealment"},
    "weather": {"ansi-escape", "instruction-override"},
    "translate": {"unicode-tag-smuggling", "secret-file-reference"},
    "reverse": {"bidi-control", "invisible-unicode"},
    "lookup": {"hidden-instruction-tag", "instruction-override", "secret-file-reference"},
}  # fmt: skip


async def test_the_poisoning_server_is_caught_over_real_stdio() -> None:
    async with spawn(sys.executable, str(SERVERS / "poisoning_server.py")) as peer:
        tools = await peer.list_tools()
    found = {name: {f.code for f in fs} for name, fs in scan_tools(tools).items()}
    assert set(found) == set(EXPECTED)  # clean_tool stays clean
    for name, codes in EXPECTED.items():
        assert codes <= found[name], name
    lookup = next(t for t in tools if t["name"] == "lookup")
    wheres = {f.where for f in scan_tool(lookup)}
    assert "/inputSchema/properties/word/description" in wheres


async def test_the_rug_pull_server_drifts_after_first_use_and_announces_it(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'pins.db'}")
    store = PinStore(engine)
    await store.create_tables()
    try:
        async with spawn(sys.executable, str(SERVERS / "rugpull_server.py")) as peer:
            first = await peer.list_tools()
            checks = await store.observe("rug", first, findings=scan_tools(first))
            assert {c.status for c in checks} == {PinStatus.NEW}
            assert scan_tools(first) == {}  # it looks innocent at first
            await peer.request("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})
            assert any(
                n["method"] == "notifications/tools/list_changed" for n in peer.notifications
            )
            second = await peer.list_tools()
        checks = await store.observe("rug", second, findings=scan_tools(second))
        assert {c.tool: c.status for c in checks} == {
            "add": PinStatus.DRIFTED,
            "echo": PinStatus.PINNED,
        }
        rugged = next(t for t in second if t["name"] == "add")
        assert "sidenote" in rugged["inputSchema"]["properties"]
        assert {"hidden-instruction-tag", "secret-file-reference"} <= {
            f.code for f in scan_tool(rugged)
        }
        before = next(t for t in first if t["name"] == "add")
        assert definition_digest(before) != definition_digest(rugged)
    finally:
        await engine.dispose()


async def test_the_rug_pull_server_can_change_silently_after_the_first_listing() -> None:
    env = {"RUGPULL_TRIGGER": "list"}
    async with spawn(sys.executable, str(SERVERS / "rugpull_server.py"), env=env) as peer:
        first = await peer.list_tools()
        second = await peer.list_tools()
    assert scan_tools(first) == {} and "add" in scan_tools(second)
