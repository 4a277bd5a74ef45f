"""Pinning end to end: client -> `mcpfw run` subprocess -> the rug-pull / poisoning upstreams.

The drifted tool is denied under `pins: block` until a human approves it with `mcpfw pins
approve`; under `pins: warn` it is allowed but flagged, and rules can act on `tool.findings`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from click.testing import CliRunner

from mcpfw.audit import EventFilter, open_store
from mcpfw.cli import main
from mcpfw.pins import PinStatus
from mcpfw.pins.open import open_pin_store

from .pins_stdio import StdioPeer, spawn

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "fixtures" / "servers"
MCPFW = (sys.executable, "-c", "from mcpfw.cli import main; main()")
LIMIT = 60


def mcpfw_run(tmp_path: Path, rules: str, *flags: str, upstream: str) -> tuple[str, ...]:
    (tmp_path / "rules.yaml").write_text(rules)
    return (
        *MCPFW,
        "run",
        "--rules",
        str(tmp_path / "rules.yaml"),
        "--agent",
        "pins-e2e",
        "--audit",
        str(tmp_path / "audit.db"),
        "--server",
        "fixture",
        *flags,
        "--",
        sys.executable,
        str(SERVERS / upstream),
    )


def text(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


async def call(peer: StdioPeer, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await peer.request("tools/call", {"name": tool, "arguments": arguments})
    assert isinstance(result, dict)
    return result


async def decisions(audit: Path) -> list[tuple[str, str, str, tuple[str, ...]]]:
    async with open_store(str(audit), create=False) as store:
        events = [e async for e in store.iter_events(EventFilter())]
    return [
        (e.tool, str(e.effect), str(e.rule), tuple(e.data.get("findings") or ()))
        for e in events
        if e.kind == "decision"
    ]


async def approve(audit: Path, *args: str) -> str:
    def invoke() -> str:
        result = CliRunner().invoke(main, ["pins", "approve", *args, "--audit", str(audit)])
        assert result.exit_code == 0, result.output
        return result.output

    return await anyio.to_thread.run_sync(invoke)


async def test_a_rug_pull_is_blocked_until_a_human_approves_it(tmp_path: Path) -> None:
    argv = mcpfw_run(tmp_path, "default: allow\nrules: []\n", "--pins", "block",
                     upstream="rugpull_server.py")  # fmt: skip
    audit = tmp_path / "audit.db"
    with anyio.fail_after(LIMIT):
        async with spawn(*argv) as peer:
            listed = await peer.list_tools()
            assert sorted(t["name"] for t in listed) == ["add", "echo"]
            assert text(await call(peer, "add", {"a": 1, "b": 2})) == "3"
            # the upstream swapped `add` and said so; the client has not re-listed yet:
            assert any(
                n["method"] == "notifications/tools/list_changed" for n in peer.notifications
            )
            denied = await call(peer, "add", {"a": 1, "b": 2})
            assert denied["isError"] is True
            assert "rule 'pins'" in text(denied) and "mcpfw pins approve fixture add" in text(
                denied
            )
            # a re-listing hides the changed tool, so its new text never reaches the model
            assert [t["name"] for t in await peer.list_tools()] == ["echo"]
            assert text(await call(peer, "echo", {"message": "hi"})) == "hi"

            output = await approve(audit, "fixture", "add")
            assert "approved fixture/add" in output
            # effective at once: the firewall re-checks a blocked tool before denying it again
            assert text(await call(peer, "add", {"a": 2, "b": 2})) == "4"
            relisted = {t["name"]: t for t in await peer.list_tools()}
            assert "sidenote" in relisted["add"]["inputSchema"]["properties"]
    got = await decisions(audit)
    assert [(tool, effect, rule) for tool, effect, rule, _ in got] == [
        ("add", "allow", "default"),
        ("add", "deny", "pins"),
        ("echo", "allow", "default"),
        ("add", "allow", "default"),
    ]
    assert "pin-drift" in got[1][3] and "hidden-instruction-tag" in got[1][3]
    assert got[3][3] == ("coercion", "concealment", "exfiltration-instruction",
                         "hidden-instruction-tag", "secret-file-reference")  # fmt: skip
    async with open_pin_store(str(audit)) as store:
        pin = await store.pin("fixture", "add")
    assert pin is not None and pin.status is PinStatus.PINNED and pin.approved_by.startswith("cli")


async def test_warn_mode_allows_a_drifted_tool_and_rules_can_block_it(tmp_path: Path) -> None:
    rules = """\
default: allow
rules:
  - id: no-drifted-writes
    effect: deny
    tools: [add]
    when: '"pin-drift" in tool.findings'
    message: this tool changed since it was approved
"""
    argv = mcpfw_run(tmp_path, rules, "--pins", "warn", upstream="rugpull_server.py")
    with anyio.fail_after(LIMIT):
        async with spawn(*argv, env={"RUGPULL_TRIGGER": "list"}) as peer:
            await peer.list_tools()  # pins the honest version; the server swaps right after
            listed = {t["name"]: t for t in await peer.list_tools()}
            assert "sidenote" in listed["add"]["inputSchema"]["properties"]  # warn: shown
            denied = await call(peer, "add", {"a": 1, "b": 2})
            assert denied["isError"] and "no-drifted-writes" in text(denied)
            assert text(await call(peer, "echo", {"message": "ok"})) == "ok"
    got = await decisions(tmp_path / "audit.db")
    assert [(t, e, r) for t, e, r, _ in got] == [
        ("add", "deny", "no-drifted-writes"),
        ("echo", "allow", "default"),
    ]


async def test_rules_see_scanner_findings_and_descriptions_are_sanitised(tmp_path: Path) -> None:
    rules = """\
default: allow
rules:
  - id: no-poisoned-tools
    effect: deny
    when: tool.findings.size() > 0
    message: the description of this tool looks poisoned
"""
    argv = mcpfw_run(tmp_path, rules, upstream="poisoning_server.py")
    with anyio.fail_after(LIMIT):
        async with spawn(*argv) as peer:
            tools = {t["name"]: t for t in await peer.list_tools()}
            assert "\x1b" not in tools["weather"]["description"]
            assert "\u202e" not in tools["reverse"]["description"]
            assert not any(0xE0000 <= ord(c) <= 0xE007F for c in tools["translate"]["description"])
            assert "<IMPORTANT>" in tools["add"]["description"]  # text is flagged, not rewritten
            denied = await call(peer, "add", {"a": 1, "b": 2})
            assert denied["isError"] and "no-poisoned-tools" in text(denied)
            assert text(await call(peer, "clean_tool", {"text": "abc"})) == "3"


async def test_a_silent_rug_pull_is_caught_in_the_2026_era_too(tmp_path: Path) -> None:
    import os

    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    argv = mcpfw_run(tmp_path, "default: allow\nrules: []\n", "--pins", "block",
                     upstream="rugpull_server.py")  # fmt: skip
    server = StdioServerParameters(
        command=argv[0], args=list(argv[1:]), env={**os.environ, "RUGPULL_TRIGGER": "list"}
    )
    with anyio.fail_after(LIMIT):
        async with Client(server, mode="auto", cache=None) as client:
            assert client.protocol_version >= "2026-07-28"
            first = [t.name for t in (await client.list_tools()).tools]
            assert sorted(first) == ["add", "echo"]
            second = [t.name for t in (await client.list_tools()).tools]
            assert second == ["echo"]  # the swapped `add` is hidden
            denied = await client.call_tool("add", {"a": 1, "b": 2})
            assert denied.is_error and "rule 'pins'" in denied.content[0].text  # type: ignore[union-attr]
            assert denied.result_type == "complete"


async def test_without_trust_on_first_use_no_tool_is_offered_until_approved(
    tmp_path: Path,
) -> None:
    config = tmp_path / "mcpfw.yaml"
    config.write_text("pins: block\npins_trust_on_first_use: false\n")
    argv = mcpfw_run(tmp_path, "default: allow\nrules: []\n", "--config", str(config),
                     upstream="rugpull_server.py")  # fmt: skip
    audit = tmp_path / "audit.db"
    with anyio.fail_after(LIMIT):
        async with spawn(*argv) as peer:
            assert await peer.list_tools() == []  # seen, recorded, not approved: not offered
            denied = await call(peer, "echo", {"message": "hi"})
            assert denied["isError"] is True and "rule 'pins'" in text(denied)
            assert "has not been approved" in text(denied)
            await approve(audit, "fixture", "echo")
            assert [t["name"] for t in await peer.list_tools()] == ["echo"]
            assert text(await call(peer, "echo", {"message": "hi"})) == "hi"
    async with open_pin_store(str(audit)) as store:
        pins = {p.tool: p for p in await store.pins("fixture")}
    assert pins["echo"].status is PinStatus.PINNED and pins["echo"].approved_by.startswith("cli")
    assert pins["add"].status is PinStatus.UNAPPROVED and pins["add"].approved_by == ""
