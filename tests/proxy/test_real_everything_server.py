"""Against a real third-party server that exercises the protocol: @modelcontextprotocol/
server-everything from npm (pinned), behind `mcpfw run`. Progress, sampling and the server's own
elicitation pass through the firewall to a real SDK client; the firewall's rules still decide
(allow, deny, ask) and every call lands in the audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, types

from .e2e import audit_events, calls_with_outcomes, mcpfw_run, params

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.node]

RULES = """\
default: deny
rules:
  - id: everything-demo
    effect: allow
    tools: [echo, get-sum, trigger-long-running-operation, trigger-sampling-request,
            trigger-elicitation-request]
  - id: no-env-dumps
    effect: deny
    tools: [get-env]
    message: environment dumps leak secrets
  - id: big-sums-ask
    effect: ask
    tools: [get-sum]
    when: args.a > 100
"""


async def test_everything_server_features_pass_through_and_rules_still_decide(
    tmp_path: Path, node_modules: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    server = ["node", str(node_modules / "server-everything" / "dist" / "index.js"), "stdio"]
    argv = mcpfw_run(rules, tmp_path / "a.db", upstream=server)
    elicited: list[str] = []
    sampled: list[str] = []
    progress: list[float] = []

    async def sample(ctx: Any, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        sampled.append(str(p.messages[0].content))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text="sampled-through-mcpfw"),
            model="test-model",
        )

    async def elicit(ctx: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        elicited.append(p.message)
        # the firewall's own question about get-sum is accepted; the server's is declined
        return types.ElicitResult(action="accept" if p.message.startswith("mcpfw") else "decline")

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    with anyio.fail_after(60):
        async with Client(
            params(argv), mode="legacy", sampling_callback=sample, elicitation_callback=elicit
        ) as client:
            echo = await client.call_tool("echo", {"message": "hi"})
            assert not echo.is_error and "hi" in echo.content[0].text
            env = await client.call_tool("get-env", {})
            assert env.is_error and "no-env-dumps" in env.content[0].text
            assert "environment dumps leak secrets" in env.content[0].text
            slow = await client.call_tool(
                "trigger-long-running-operation",
                {"duration": 0.3, "steps": 3},
                progress_callback=on_progress,
            )
            assert not slow.is_error and progress == [1, 2, 3]
            sampling = await client.call_tool("trigger-sampling-request", {"prompt": "hello"})
            assert not sampling.is_error and "sampled-through-mcpfw" in sampling.content[0].text
            assert sampled and "hello" in sampled[0]
            declined = await client.call_tool("trigger-elicitation-request", {})
            assert not declined.is_error and "declined" in declined.content[0].text
            big = await client.call_tool("get-sum", {"a": 1000, "b": 1})
            assert not big.is_error and "1001" in big.content[0].text
    assert len(elicited) == 2 and elicited[1].startswith("mcpfw")
    assert "get-sum" in elicited[1] and "big-sums-ask" in elicited[1]
    assert calls_with_outcomes(await audit_events(tmp_path / "a.db")) == [
        ("echo", "allow", "forwarded"),
        ("get-env", "deny", "denied"),
        ("trigger-long-running-operation", "allow", "forwarded"),
        ("trigger-sampling-request", "allow", "forwarded"),
        ("trigger-elicitation-request", "allow", "forwarded"),
        ("get-sum", "ask", "approved"),
    ]
