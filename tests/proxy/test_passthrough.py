"""What arrives directly arrives identically through the firewall: raw JSON-RPC transcripts of
the same session, once straight to the features fixture and once through `mcpfw run`, compared
message by message (both eras; progress, logging, list_changed, sampling, elicitation, roots,
resources, prompts, completion, ping, `_meta` and an unknown method)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from .e2e import fixture, mcpfw_run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Message = dict[str, Any]
Step = Message | Callable[[Message], Message]

CLIENT_ANSWERS = {
    "sampling/createMessage": {
        "role": "assistant",
        "content": {"type": "text", "text": "hi"},
        "model": "test-model",
    },
    "elicitation/create": {"action": "accept", "content": {"answer": "yes"}},
    "roots/list": {"roots": [{"uri": "file:///tmp/root", "name": "root"}]},
    "ping": {},
}


def req(rid: int, method: str, params: Message | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    return message


def tool(rid: int, name: str, args: Message, meta: Message | None = None) -> Message:
    params: Message = {"name": name, "arguments": args}
    if meta is not None:
        params["_meta"] = meta
    return req(rid, "tools/call", params)


HANDSHAKE: list[Step] = [
    req(
        1,
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}},
            "clientInfo": {"name": "raw-client", "version": "1"},
        },
    ),
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    req(2, "tools/list"),
    req(3, "logging/setLevel", {"level": "debug"}),
    tool(4, "progress", {"steps": 2}, {"progressToken": "tok-1", "vendor/extra": [1, 2.5]}),
    tool(5, "sample", {"prompt": "say hi"}),
    tool(6, "ask_user", {"question": "ok?"}),
    tool(7, "roots", {}),
    tool(8, "change_tools", {}),
    req(9, "resources/list"),
    req(10, "resources/read", {"uri": "fixture://greeting"}),
    req(11, "prompts/list"),
    req(12, "prompts/get", {"name": "greet", "arguments": {"name": "bob"}}),
    req(
        13,
        "completion/complete",
        {
            "ref": {"type": "ref/prompt", "name": "greet"},
            "argument": {"name": "name", "value": "a"},
        },
    ),
    req(14, "ping"),
    req(15, "x-vendor/unknown", {"_meta": {"a": 1}}),
]

META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"sampling": {}, "elicitation": {}},
    "io.modelcontextprotocol/clientInfo": {"name": "raw-client", "version": "1"},
    "io.modelcontextprotocol/logLevel": "debug",
}


def _retry(rid: int, name: str, args: Message, key: str, answer: Message) -> Step:
    def step(previous: Message) -> Message:
        params = {
            "name": name,
            "arguments": args,
            "_meta": META,
            "inputResponses": {key: answer},
            "requestState": previous["result"]["requestState"],
        }
        return req(rid, "tools/call", params)

    return step


MODERN: list[Step] = [
    req(1, "server/discover", {"_meta": META}),
    req(2, "tools/list", {"_meta": META}),
    tool(3, "progress", {"steps": 2}, {**META, "progressToken": "tok-1"}),
    tool(4, "sample", {"prompt": "say hi"}, META),
    _retry(5, "sample", {"prompt": "say hi"}, "s", CLIENT_ANSWERS["sampling/createMessage"]),
    tool(6, "ask_user", {"question": "ok?"}, META),
    _retry(7, "ask_user", {"question": "ok?"}, "q", CLIENT_ANSWERS["elicitation/create"]),
    req(8, "resources/read", {"uri": "fixture://greeting", "_meta": META}),
    req(9, "prompts/get", {"name": "greet", "arguments": {"name": "bob"}, "_meta": META}),
    req(10, "x-vendor/unknown", {"_meta": META}),
]


async def _transcript(argv: list[str], steps: list[Step]) -> list[Message]:
    """Run the steps against a server process; every message it sends, in order."""
    received: list[Message] = []
    process: Process = await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None
    )
    async with process:
        assert process.stdin is not None and process.stdout is not None
        buffer = b""
        last: Message = {}

        async def send(message: Message) -> None:
            assert process.stdin is not None
            await process.stdin.send(json.dumps(message).encode() + b"\n")

        async def receive() -> Message:
            nonlocal buffer
            assert process.stdout is not None
            while b"\n" not in buffer:
                buffer += await process.stdout.receive()
            line, _, buffer = buffer.partition(b"\n")
            message: Message = json.loads(line)
            received.append(message)
            return message

        for step in steps:
            message = step(last) if callable(step) else step
            await send(message)
            if "id" not in message:
                continue
            while True:
                got = await receive()
                if got.get("id") == message["id"] and "method" not in got:
                    last = got
                    break
                if "method" in got and "id" in got:  # a server-to-client request
                    answer = CLIENT_ANSWERS[got["method"]]
                    await send({"jsonrpc": "2.0", "id": got["id"], "result": answer})
        await process.stdin.aclose()
        with anyio.move_on_after(10):
            await process.wait()
        if process.returncode is None:
            process.kill()
    return received


def _opaque(messages: list[Message]) -> list[Message]:
    """Sealed request states differ per server run; everything else must not."""
    text = json.dumps(messages)
    for message in messages:
        state = message.get("result", {}).get("requestState")
        if isinstance(state, str):
            text = text.replace(json.dumps(state)[1:-1], "<state>")
    out: list[Message] = json.loads(text)
    return out


@pytest.mark.parametrize("era", ["handshake", "modern"])
async def test_every_message_arrives_identically_through_the_firewall(
    tmp_path: Path, era: str
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("default: allow\nrules: []\n")
    steps = HANDSHAKE if era == "handshake" else MODERN
    server = fixture("features_server")
    with anyio.fail_after(60):
        direct = await _transcript(server, steps)
        proxied = await _transcript(mcpfw_run(rules, tmp_path / "a.db", upstream=server), steps)
    kinds = {m.get("method") for m in direct}
    if era == "handshake":
        assert {"notifications/progress", "notifications/message"} <= kinds
        assert {"sampling/createMessage", "elicitation/create", "roots/list"} <= kinds
        assert "notifications/tools/list_changed" in kinds
    else:
        assert "notifications/progress" in kinds
    assert len(direct) > len(steps)
    assert _opaque(proxied) == _opaque(direct)
