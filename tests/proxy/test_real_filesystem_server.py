"""Against a real third-party server: @modelcontextprotocol/server-filesystem from npm (pinned in
package-lock.json), behind `mcpfw run`, with rules that confine reads to one directory."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from mcp import Client

from .e2e import audit_events, calls_with_outcomes, mcpfw_run, params

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.node]


async def test_real_filesystem_server_is_guarded_and_hides_what_the_agent_can_never_call(
    tmp_path: Path, node_modules: Path
) -> None:
    root = tmp_path / "work"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "readme.md").write_text("# hello")
    (root / ".env").write_text("TOKEN=x")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        f"""\
default: deny
rules:
  - id: read-docs
    effect: allow
    tools: [read_text_file, list_directory]
    when: 'args.path.startsWith("{root}/docs")'
  - id: no-dotfiles
    effect: deny
    tools: [read_text_file]
    when: 'args.path.contains("/.")'
"""
    )
    server = ["node", str(node_modules / "server-filesystem" / "dist" / "index.js"), str(root)]
    argv = mcpfw_run(rules, tmp_path / "a.db", "--hide-denied", upstream=server)
    with anyio.fail_after(40):
        async with Client(params(argv), mode="legacy") as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == {"read_text_file", "list_directory"}
            ok = await client.call_tool("read_text_file", {"path": f"{root}/docs/readme.md"})
            assert not ok.is_error and "# hello" in ok.content[0].text
            secret = await client.call_tool("read_text_file", {"path": f"{root}/.env"})
            assert secret.is_error and "no-dotfiles" in secret.content[0].text
            hidden = await client.call_tool("write_file", {"path": f"{root}/x", "content": "y"})
            assert hidden.is_error and "'default'" in hidden.content[0].text
    assert not (root / "x").exists()
    assert calls_with_outcomes(await audit_events(tmp_path / "a.db")) == [
        ("read_text_file", "allow", "forwarded"),
        ("read_text_file", "deny", "denied"),
        ("write_file", "deny", "denied"),
    ]
