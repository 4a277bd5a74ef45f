"""`mcpfw run` end to end: SDK client -> mcpfw subprocess -> fixture server subprocess.

Few and bounded: each test starts real processes (both eras, ask over elicitation and over
InputRequiredResult, the audit trail, an upstream crash, hot reload, a missing upstream).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult

from .e2e import audit_events, calls_with_outcomes, fixture, mcpfw_run, params

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LIMIT = 40  # seconds for a whole end-to-end session

FS_RULES = """\
default: deny
rules:
  - id: workspace-read
    effect: allow
    tools: [read_file, list_directory]
  - id: no-secrets
    effect: deny
    tools: [read_file]
    when: 'args.path.contains("secret")'
    message: secrets are never read by agents
  - id: confirm-deletes
    effect: ask
    tools: [delete_file]
"""


def _workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "w"
    root.mkdir()
    (root / "notes.txt").write_text("hello")
    (root / "secret.env").write_text("KEY=1")
    for name in ("a.tmp", "b.tmp"):
        (root / name).write_text("x")
    rules = tmp_path / "rules.yaml"
    rules.write_text(FS_RULES)
    return root, rules, tmp_path / "audit.db"


def _answers(*actions: str) -> Any:
    queue = list(actions)

    async def elicit(ctx: Any, request: Any) -> ElicitResult:
        assert "delete_file" in request.message  # the human sees what is asked
        return ElicitResult(action=queue.pop(0))

    return elicit


def _mcp_error(exc: BaseException) -> MCPError:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, MCPError), exc
    return exc


def _text(result: Any) -> str:
    return str(result.content[0].text)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_allow_deny_and_ask_work_in_both_eras_and_every_call_is_audited(
    tmp_path: Path, mode: str
) -> None:
    root, rules, audit = _workspace(tmp_path)
    argv = mcpfw_run(rules, audit, upstream=fixture("fs_server", str(root)))
    with anyio.fail_after(LIMIT):
        async with Client(
            params(argv), mode=mode, elicitation_callback=_answers("accept", "decline")
        ) as client:
            modern = client.protocol_version >= "2026-07-28"
            assert modern == (mode == "auto")
            assert _text(await client.call_tool("read_file", {"path": "notes.txt"})) == "hello"
            denied = await client.call_tool("read_file", {"path": "secret.env"})
            assert denied.is_error and "no-secrets" in _text(denied)
            assert denied.result_type == "complete"
            await client.call_tool("delete_file", {"path": "a.tmp"})
            declined = await client.call_tool("delete_file", {"path": "b.tmp"})
            assert declined.is_error and "declined" in _text(declined)
            other = await client.call_tool("move_file", {"source": "b.tmp", "destination": "c"})
            assert other.is_error and "'default'" in _text(other)
    assert not (root / "a.tmp").exists() and (root / "b.tmp").exists()
    events = await audit_events(audit)
    assert events[0].kind == "session_start" and events[-1].kind == "session_end"
    got = calls_with_outcomes(events)
    # In 2026 an ask is two requests (input_required, then the retry with the answer): one decision.
    assert got == [
        ("read_file", "allow", "forwarded"),
        ("read_file", "deny", "denied"),
        ("delete_file", "ask", "approved"),
        ("delete_file", "ask", "declined"),
        ("move_file", "deny", "denied"),
    ]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_ask_is_denied_for_a_client_that_cannot_elicit(tmp_path: Path, mode: str) -> None:
    root, rules, audit = _workspace(tmp_path)
    argv = mcpfw_run(rules, audit, upstream=fixture("fs_server", str(root)))
    with anyio.fail_after(LIMIT):
        async with Client(params(argv), mode=mode) as client:
            result = await client.call_tool("delete_file", {"path": "a.tmp"})
    assert result.is_error and "cannot ask" in _text(result)
    assert (root / "a.tmp").exists()


async def test_upstream_crash_mid_call_is_an_error_not_a_hang(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("default: allow\nrules: []\n")
    argv = mcpfw_run(rules, tmp_path / "a.db", upstream=fixture("slow_server"))
    with anyio.fail_after(LIMIT):
        async with Client(params(argv), mode="legacy") as client:
            with pytest.raises(MCPError) as crashed:
                await client.call_tool("crash", {"code": 3})
            assert "exited with code 3" in crashed.value.error.message
            with pytest.raises(MCPError) as later:
                await client.call_tool("echo", {"text": "still there?"})
            assert "exited with code 3" in later.value.error.message
    got = calls_with_outcomes(await audit_events(tmp_path / "a.db"))
    assert got == [("crash", "allow", "upstream_error"), ("echo", "allow", "upstream_error")]


async def test_missing_upstream_command_gets_a_clear_error(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("default: deny\nrules: []\n")
    argv = mcpfw_run(rules, tmp_path / "a.db", upstream=["/nonexistent/mcp-server"])
    with anyio.fail_after(LIMIT):
        with pytest.raises(BaseException) as failed:  # the SDK wraps it in an ExceptionGroup
            async with Client(params(argv), mode="legacy"):
                pass
    error = _mcp_error(failed.value)
    assert "'fixture' could not be started: /nonexistent/mcp-server" in error.error.message


async def test_rules_edited_while_running_take_effect_without_a_restart(tmp_path: Path) -> None:
    root, rules, audit = _workspace(tmp_path)
    argv = mcpfw_run(
        rules, audit, "--reload-interval", "0.1", upstream=fixture("fs_server", str(root))
    )
    with anyio.fail_after(LIMIT):
        async with Client(params(argv), mode="legacy") as client:
            assert not (await client.call_tool("list_directory", {"path": "."})).is_error
            rules.write_text(FS_RULES.replace("[read_file, list_directory]", "[read_file]"))
            while True:  # bounded by fail_after: the watcher polls every 0.1 s
                result = await client.call_tool("list_directory", {"path": "."})
                if result.is_error:
                    break
            assert "'default'" in _text(result)
            rules.write_text("rules: [ {id: broken, effect: nope} ]\n")  # a broken edit...
            for _ in range(5):  # ...keeps the last good rules in force
                assert not (await client.call_tool("read_file", {"path": "notes.txt"})).is_error


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_monitor_mode_and_shadow_rules_record_what_they_would_do_and_block_nothing(
    tmp_path: Path, mode: str
) -> None:
    root, rules, audit = _workspace(tmp_path)
    shadow = "  - id: shadow-no-notes\n    effect: deny\n    mode: shadow\n    tools: [read_file]\n"
    rules.write_text(FS_RULES + shadow)
    argv = mcpfw_run(rules, audit, "--mode", "monitor", upstream=fixture("fs_server", str(root)))
    with anyio.fail_after(LIMIT):
        async with Client(params(argv), mode=mode) as client:
            assert _text(await client.call_tool("read_file", {"path": "secret.env"})) == "KEY=1"
            await client.call_tool("delete_file", {"path": "a.tmp"})  # ask: nobody is asked
    assert not (root / "a.tmp").exists()
    decisions = [e for e in await audit_events(audit) if e.kind == "decision"]
    assert [(e.effect, e.enforced, e.shadow_effect) for e in decisions] == [
        ("deny", False, "deny"),
        ("ask", False, None),
    ]
    got = calls_with_outcomes(await audit_events(audit))
    assert [o for _, _, o in got] == ["forwarded", "forwarded"]
