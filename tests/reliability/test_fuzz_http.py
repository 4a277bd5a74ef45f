"""Hostile input on `mcpfw serve`: hand-written breakages, then messages generated from the MCP
JSON schemas (and broken) posted to a live firewall. No crash (no 5xx, no -32603 from the
request boundary), no hang, the right status and JSON-RPC error codes, and a real call still
works afterwards."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcpfw.proxy.messages import classify, valid_id

from ..proxy.http_harness import MODERN, Rpc, last_message, token, write_config
from .http_support import serving
from .schema_strategies import client_messages, mutated, tool_calls

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BEARER = token("ci-fuzz", ("ci",))
LEGIT = {"name": "echo", "arguments": {"still": "serving"}}

# (name, body bytes, needs a session, expected HTTP status, expected JSON-RPC error code)
HOSTILE: list[tuple[str, bytes, bool, int, int | None]] = [
    ("truncated JSON", b'{"jsonrpc":"2.0","id":1,"method":', False, 400, -32700),
    ("invalid UTF-8", b'{"jsonrpc":"2.0","id":1,"method":"ping\xff"}', False, 400, -32700),
    ("nested 100 000 deep", b"[" * 100_000 + b"]" * 100_000, False, 400, -32600),
    ("a batch", b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', False, 400, -32600),
    ("an empty batch", b"[]", False, 400, -32600),
    ("a string", b'"tools/call"', False, 400, -32600),
    ("object id", b'{"jsonrpc":"2.0","id":{"a":1},"method":"initialize"}', False, 400, -32600),
    ("over the body limit", b'{"x":"' + b"a" * 1_100_000 + b'"}', False, 413, -32600),
    ("tools/call without a name", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
     b'"params":{"arguments":{}}}', True, 200, -32602),
    ("tools/call with list params", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
     b'"params":["echo"]}', True, 200, -32602),
    ("tools/call with a numeric name", b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
     b'"params":{"name":5}}', True, 200, -32602),
]  # fmt: skip


async def _session(http: httpx.AsyncClient, url: str) -> Rpc:
    rpc = Rpc(http, url, BEARER)
    await rpc.initialize()
    return rpc


async def _legit_call_works(rpc: Rpc) -> None:
    answer = await rpc.request("tools/call", LEGIT)
    assert answer["result"].get("isError") is not True, answer
    assert json.loads(answer["result"]["content"][0]["text"])["arguments"] == LEGIT["arguments"]


async def test_hostile_bodies_get_their_status_and_error_code_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(40):
        async with serving(write_config(tmp_path)) as served, httpx.AsyncClient(timeout=10) as http:
            rpc = await _session(http, served.mcp("fs"))
            for name, body, in_session, status, code in HOSTILE:
                headers = {**rpc.headers, "content-type": "application/json"}
                if not in_session:
                    headers.pop("mcp-session-id")
                response = await http.post(served.mcp("fs"), content=body, headers=headers)
                assert response.status_code == status, (name, response.text[:200])
                assert last_message(response)["error"]["code"] == code, name
            wrong_type = await http.post(
                served.mcp("fs"),
                content=b"{}",
                headers={**rpc.headers, "content-type": "text/plain"},
            )
            assert wrong_type.status_code == 415
            aggregate = await _session(http, served.mcp())
            unknown = await aggregate.request("prompts/list")
            assert unknown["error"]["code"] == -32601
            # a lone surrogate escape echoed back in the error text: escaped, not a 500
            odd = b'{"jsonrpc":"2.0","id":9,"method":"x\\ud800"}'
            echoed = await http.post(
                served.mcp(),
                content=odd,
                headers={**aggregate.headers, "content-type": "application/json"},
            )
            assert echoed.status_code == 200 and echoed.json()["error"]["code"] == -32601
            assert "\ud800" in echoed.json()["error"]["message"]
            # arguments past the policy's bounds: denied by rule 'limits', never forwarded
            huge = await rpc.request(
                "tools/call", {"name": "echo", "arguments": {"s": "a" * 300_000}}
            )
            deep: Any = "x"
            for _ in range(40):
                deep = [deep]
            nested = await rpc.request("tools/call", {"name": "echo", "arguments": {"d": deep}})
            for denied in (huge, nested):
                assert denied["result"]["isError"] and "rule 'limits'" in str(denied)
            # a tools/call sent as a notification is never relayed
            notice = await rpc.post({"jsonrpc": "2.0", "method": "tools/call", "params": LEGIT})
            assert notice.status_code == 202
            await _legit_call_works(rpc)
            seen = await rpc.request("tools/call", {"name": "seen", "arguments": {}})
            upstream_got = json.loads(seen["result"]["content"][0]["text"])["messages"]
            assert not [
                m for m in upstream_got if m.get("method") == "tools/call" and "id" not in m
            ]


ALLOWED_CODES = {-32700, -32600, -32601, -32602, -32001, -32003, -32020, -32800, -32042}


def _check_answer(message: dict[str, Any], response: httpx.Response) -> None:
    assert response.status_code < 500, (message, response.status_code, response.text[:300])
    kind = classify(message)
    if response.status_code == 202:
        assert kind in ("notification", "response"), (message, response.status_code)
        return
    answer = last_message(response)
    error = answer.get("error")
    if error is not None:
        assert error["code"] != -32603, (message, answer)  # the request boundary caught a crash
        assert error["code"] in ALLOWED_CODES or error["code"] >= -32000, (message, answer)
    if kind == "request":
        assert answer.get("id") in (message["id"], None), (message, answer)
    if kind == "invalid":
        assert error is not None and valid_id(answer.get("id")), (message, answer)


async def _post_all(url: str, messages: list[dict[str, Any]], modern: bool) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        rpc = Rpc(http, url, BEARER)
        if not modern:
            await rpc.initialize()
        for message in messages:
            headers: dict[str, str] = {}
            if modern:
                headers = {"mcp-protocol-version": MODERN}
                if isinstance(message.get("method"), str):
                    headers["mcp-method"] = message["method"]
            # ASCII escapes on the wire: lone surrogates have no UTF-8 form
            body = json.dumps(message).encode()
            headers = {**rpc.headers, "content-type": "application/json", **headers}
            response = await http.post(url, content=body, headers=headers)
            _check_answer(message, response)
        if not modern:
            await _legit_call_works(rpc)


FUZZ = settings(
    max_examples=6,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.mark.parametrize("version", ["2025-06-18", "2025-11-25", "2026-07-28"])
async def test_schema_generated_and_broken_messages_never_crash_the_http_front(
    tmp_path: Path, version: str, caplog: pytest.LogCaptureFixture
) -> None:
    messages = st.lists(
        client_messages(version) | tool_calls(version) | mutated(client_messages(version)),
        min_size=5,
        max_size=20,
    )
    batches: list[list[dict[str, Any]]] = []

    @FUZZ
    @given(messages)
    def collect(batch: list[dict[str, Any]]) -> None:
        batches.append(batch)

    collect()  # drawn up front: hypothesis drives sync code, the posting is async
    with anyio.fail_after(60):
        async with serving(write_config(tmp_path)) as served:
            for batch in batches:
                await _post_all(served.mcp("fs"), batch, modern=version >= MODERN)
    crashes = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert crashes == [], [r.getMessage() for r in crashes]
