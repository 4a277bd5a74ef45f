"""Hostile input on the stdio firewall: hand-written breakages, then messages generated from
the MCP JSON schemas (and broken). No crash, no hang, the right JSON-RPC error codes, and no
`tools/call` reaches the upstream without an allow decision on record."""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfw.proxy.messages import classify, valid_id
from mcpfw.proxy.stdio import LineSplitter

from ..proxy.helpers import MemoryStore, running
from .memory_front import raw_upstream_argv
from .schema_strategies import VERSIONS, client_messages, mutated, tool_calls
from .support import call, echo_roundtrip

FUZZ_RULES = """\
default: allow
rules:
  - id: no-x
    effect: deny
    when: 'has(args.x) || tool.name.startsWith("d")'
  - id: typed
    effect: deny
    when: 'has(args.n) && args.n > 3'
"""

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602

# (what the client sends on one line, the error code it must get back)
HOSTILE_LINES: list[tuple[str, bytes, int]] = [
    ("truncated JSON", b'{"jsonrpc":"2.0","id":1,"method":', PARSE_ERROR),
    ("invalid UTF-8", b'{"jsonrpc":"2.0","id":1,"method":"ping\xff\xfe"}', PARSE_ERROR),
    ("lone surrogate escape", b'{"jsonrpc":"2.0","id":1,"method":"\\udc80"}', -32601),
    ("nested 100 000 deep", b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR),
    (
        "a batch",
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"rm"}}]',
        INVALID_REQUEST,
    ),
    ("an empty batch", b"[]", INVALID_REQUEST),
    ("a number", b"42", INVALID_REQUEST),
    ("null", b"null", INVALID_REQUEST),
    ("neither request nor response", b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
    ("method not a string", b'{"jsonrpc":"2.0","id":1,"method":["tools/call"]}', INVALID_REQUEST),
    (
        "object id",
        b'{"jsonrpc":"2.0","id":{"a":1},"method":"tools/call","params":{"name":"e"}}',
        INVALID_REQUEST,
    ),
    ("array id", b'{"jsonrpc":"2.0","id":[1],"method":"ping"}', INVALID_REQUEST),
    ("boolean id", b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST),
    (
        "tools/call without params",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}',
        INVALID_PARAMS,
    ),
    (
        "tools/call without a name",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{}}}',
        INVALID_PARAMS,
    ),
    (
        "tools/call with a numeric name",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}',
        INVALID_PARAMS,
    ),
    (
        "tools/call with list arguments",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":[1]}}',
        INVALID_PARAMS,
    ),
    (
        "tools/call with list params",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["echo"]}',
        INVALID_PARAMS,
    ),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("line", "code"), [c[1:] for c in HOSTILE_LINES],
                         ids=[c[0] for c in HOSTILE_LINES])  # fmt: skip
async def test_a_hostile_line_gets_its_json_rpc_error_and_the_relay_keeps_serving(
    tmp_path: Path, line: bytes, code: int
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        (item,) = LineSplitter().feed(line + b"\n")
        await h.send(item)
        if code == -32601:  # valid JSON-RPC the firewall relays: the upstream answers it
            forwarded = await h.upstream_gets()
            await h.reply({"jsonrpc": "2.0", "id": forwarded["id"],
                           "error": {"code": -32601, "message": "Method not found"}})  # fmt: skip
        answer = await h.client_gets()
        assert answer["error"]["code"] == code, answer
        assert h.store.decisions == []  # nothing malformed is decided or forwarded
        await echo_roundtrip(h, 99)


@pytest.mark.anyio
async def test_a_tools_call_without_an_id_is_never_relayed_unchecked(tmp_path: Path) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send({"jsonrpc": "2.0", "method": "tools/call",
                      "params": {"name": "delete_file", "arguments": {"path": "/"}}})  # fmt: skip
        await h.send({"jsonrpc": "2.0", "method": "notifications/progress", "params": {}})
        # the next thing the upstream sees is the notification that followed, not the call
        assert (await h.upstream_gets())["method"] == "notifications/progress"
        await echo_roundtrip(h, 1)


@pytest.mark.anyio
async def test_a_second_request_reusing_an_id_in_flight_is_refused_and_the_first_completes(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send(call(7, "echo", {"text": "first"}))
        forwarded = await h.upstream_gets()
        await h.send(call(7, "echo", {"text": "second"}))
        refused = await h.client_gets()
        assert refused["id"] == 7 and refused["error"]["code"] == INVALID_REQUEST
        assert "already in use" in refused["error"]["message"]
        await h.reply({"jsonrpc": "2.0", "id": 7, "result": {"content": [], "n": 1}})
        assert (await h.client_gets())["result"]["n"] == 1
        await echo_roundtrip(h, 7)  # the id is free again once answered
        assert len(h.store.decisions) == 2  # the refused duplicate was never decided
        assert forwarded["params"]["arguments"] == {"text": "first"}


@pytest.mark.anyio
async def test_cancelling_with_an_object_request_id_does_not_break_the_relay(
    tmp_path: Path,
) -> None:
    async with running(tmp_path) as h:
        await h.initialize()
        await h.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": {"not": "an id"}}})  # fmt: skip
        assert (await h.upstream_gets())["method"] == "notifications/cancelled"
        await echo_roundtrip(h, 1)


def test_an_endless_line_is_refused_in_bounded_memory() -> None:
    splitter = LineSplitter(max_bytes=1 << 20)
    chunk = b"x" * 65536
    refused = 0
    tracemalloc.start()
    try:
        for _ in range(320):  # 20 MiB without a newline
            refused += len(splitter.feed(chunk))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused == 1  # one error for the whole oversized message
    assert peak < 4 << 20, f"peak {peak} bytes while reading 20 MiB"
    assert splitter.feed(b'\n{"id":1,"result":{}}\n') == [{"id": 1, "result": {}}]


# --- generated from the MCP schemas ------------------------------------------------------------


def _expected_error(message: dict[str, Any]) -> int | None:
    """The error code the firewall itself must answer with, None when it relays the message."""
    kind = classify(message)
    if kind == "invalid":
        return INVALID_REQUEST
    if kind == "request" and message["method"] == "tools/call":
        params = message.get("params")
        if (
            not isinstance(params, dict)
            or not isinstance(params.get("name"), str)
            or not isinstance(params.get("arguments", {}), dict | None)
        ):
            return INVALID_PARAMS
    return None


async def _fuzz_once(tmp_path: Path, messages: list[dict[str, Any]]) -> None:
    store = MemoryStore()
    answers: dict[Any, list[dict[str, Any]]] = {}
    anonymous: list[dict[str, Any]] = []
    forwarded_calls: list[dict[str, Any]] = []
    expected: dict[Any, int | None] = {}  # request id -> firewall's own error code
    invalid = 0
    async with running(tmp_path, FUZZ_RULES, store=store) as h:
        await h.initialize()

        async def upstream() -> None:
            async for message in h.upstream_in:
                if message.get("method") == "tools/call":
                    forwarded_calls.append(message)
                if "method" in message and "id" in message:
                    await h.upstream_out.send(
                        {"jsonrpc": "2.0", "id": message["id"], "result": {"upstream": True}}
                    )

        async def client() -> None:
            async for message in h.from_relay:
                rid = message.get("id")
                assert rid is None or isinstance(rid, str | int), message  # a valid id, always
                if rid in expected:
                    answers.setdefault(rid, []).append(message)
                else:
                    anonymous.append(message)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(upstream)
                tg.start_soon(client)
                for i, message in enumerate(messages):
                    kind = classify(message)
                    if kind == "request":
                        message = {**message, "id": i if i % 2 else f"fz-{i}"}  # unique ids
                        expected[message["id"]] = _expected_error(message)
                    elif kind == "invalid":
                        invalid += 1
                        if valid_id(message.get("id")):
                            message = {**message, "id": f"inv-{i}"}  # never collides
                    await h.send(message)
                while len(answers) < len(expected) or len(anonymous) < invalid:
                    await anyio.sleep(0.005)  # bounded by fail_after above
                tg.cancel_scope.cancel()
    for rid, code in expected.items():
        (answer,) = answers[rid]  # exactly one answer per request
        if code is not None:
            assert answer["error"]["code"] == code, (answer, code)
        else:
            assert "result" in answer, answer
    assert all(m["error"]["code"] == INVALID_REQUEST for m in anonymous[:invalid])
    allowed = {c.request_id for c, d in store.decisions if str(d.effect) == "allow"}
    assert all(m["id"] in allowed for m in forwarded_calls)  # nothing forwarded undecided


FUZZ = settings(
    max_examples=8,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_schema_generated_and_broken_messages_are_answered_correctly(
    tmp_path: Path, version: str
) -> None:
    messages = st.lists(
        client_messages(version) | tool_calls(version) | mutated(client_messages(version)),
        min_size=10,
        max_size=30,
    )

    @FUZZ
    @given(messages)
    def check(batch: list[dict[str, Any]]) -> None:
        anyio.run(_fuzz_once, tmp_path, batch)

    check()


@pytest.mark.slow
def test_mcpfw_run_survives_raw_garbage_on_stdin(tmp_path: Path) -> None:
    from ..proxy.e2e import MCPFW

    (tmp_path / "rules.yaml").write_text("default: allow\nrules: []\n")
    argv = [*MCPFW, "run", "--rules", str(tmp_path / "rules.yaml"), "--agent", "fuzz",
            "--audit", str(tmp_path / "a.db"), "--", *raw_upstream_argv()]  # fmt: skip
    garbage = [
        b"\xff\xfe\xfd\n",
        b"{" * 50_000 + b"\n",
        b"[" * 200_000 + b"\n",
        b'{"jsonrpc":"2.0","id":{},"method":"ping"}\n',
        b"\x00\x00\x00\n",
        b'"' + b"a" * 2_000_000 + b'"\n',
        b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"}}\n',
    ]
    surrogate = (
        b'{"jsonrpc":"2.0","id":"s","method":"tools/call",'
        b'"params":{"name":"echo","arguments":{"text":"\\ud800"}}}\n'
    )  # a lone surrogate escape
    call_line = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "alive"}},
    }
    stdin = b"".join(garbage) + surrogate + json.dumps(call_line).encode() + b"\n"
    done = subprocess.run(argv, input=stdin, capture_output=True, timeout=30)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    codes = [a["error"]["code"] for a in answers if "error" in a]
    assert codes == [-32700, -32700, -32700, -32600, -32700, -32600], answers
    # relayed both ways, kept escaped on the wire (it has no UTF-8 form), never a crash
    assert answers[-2]["id"] == "s" and answers[-2]["result"]["content"][0]["text"] == "\ud800"
    assert answers[-1]["id"] == 1 and answers[-1]["result"]["content"][0]["text"] == "alive"
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"Traceback" not in done.stderr
