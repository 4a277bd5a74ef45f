"""A small raw JSON-RPC MCP tool server used as the upstream in `mcpfw serve` tests and bench.

Handshake era only (like most servers in the field). It records everything it sees so tests
can prove that no agent token ever reaches it:

- stdio: `python http_upstream_fixture.py` (tool `seen` returns its environment and every
  message it received);
- HTTP: `app()` is an ASGI app answering JSON on POST; `SEEN_HEADERS` collects every request's
  headers.

Tools: `echo` (returns its arguments), `read_file`, `delete_file` (echo-like, for rules),
`progress` (sends two progress notifications first), `confirm` (asks the client through
elicitation and returns the answer), `seen`, `slow` (answers after `seconds`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio

Raw = dict[str, Any]

TOOLS = [
    {"name": n, "description": d, "inputSchema": {"type": "object"}, "annotations": a}
    for n, d, a in [
        ("echo", "Return the arguments", {"readOnlyHint": True}),
        ("read_file", "Read a file", {"readOnlyHint": True}),
        ("delete_file", "Delete a file", {"destructiveHint": True}),
        ("progress", "Report progress, then answer", {}),
        ("confirm", "Ask the user through elicitation", {}),
        ("seen", "What this server has seen", {}),
        ("slow", "Answer after `seconds`", {}),
        ("crash", "Exit the process at once", {}),
    ]
]

SEEN_MESSAGES: list[Raw] = []
SEEN_HEADERS: list[dict[str, str]] = []
# HTTP: (the Mcp-Session-Id a message came with, or the one its initialize was given; message)
SEEN_SESSIONS: list[tuple[str, Raw]] = []


def text_result(value: Any) -> Raw:
    return {"content": [{"type": "text", "text": json.dumps(value, sort_keys=True)}]}


class Server:
    """Transport-independent request handling; `send` writes a message to the client."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.ids = 0
        self.waiting: dict[Any, tuple[anyio.Event, list[Raw]]] = {}

    async def ask_client(self, method: str, params: Raw) -> Raw:
        self.ids += 1
        request_id = f"srv-{self.ids}"
        done, slot = anyio.Event(), list[Raw]()
        self.waiting[request_id] = (done, slot)
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        await done.wait()
        return slot[0]

    async def handle(self, message: Raw) -> Raw | None:
        SEEN_MESSAGES.append(message)
        if "method" not in message:
            waiting = self.waiting.pop(message.get("id"), None)
            if waiting is not None:
                waiting[1].append(message)
                waiting[0].set()
            return None
        if "id" not in message:
            return None
        method, params, rid = message["method"], message.get("params") or {}, message["id"]
        if method == "initialize":
            result: Raw = {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {"listChanged": True}, "resources": {}},
                "serverInfo": {"name": "fixture-upstream", "version": "1.0"},
                "instructions": "a test upstream",
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": TOOLS}
        elif method == "resources/list":
            result = {"resources": [{"uri": "mem://one", "name": "one"}]}
        elif method == "tools/call":
            result = await self.call(params)
        else:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": method}}
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def call(self, params: Raw) -> Raw:
        name, args = params.get("name"), params.get("arguments") or {}
        if name in ("echo", "read_file", "delete_file"):
            return text_result({"tool": name, "arguments": args})
        if name == "progress":
            token = (params.get("_meta") or {}).get("progressToken")
            for step in (1, 2):
                await self.send(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": step, "total": 2},
                    }
                )
            return text_result({"tool": name, "token": token})
        if name == "confirm":
            reply = await self.ask_client(
                "elicitation/create",
                {"message": "really?", "requestedSchema": {"type": "object", "properties": {}}},
            )
            return text_result({"tool": name, "reply": reply.get("result") or reply.get("error")})
        if name == "seen":
            return text_result({"env": dict(os.environ), "messages": SEEN_MESSAGES})
        if name == "crash":
            os._exit(3)
        if name == "slow":
            await anyio.sleep(float(args.get("seconds", 1)))
            return text_result({"tool": name})
        return {"content": [{"type": "text", "text": f"unknown tool {name}"}], "isError": True}


async def serve_stdio() -> None:
    stdout = anyio.wrap_file(sys.stdout)
    lock = anyio.Lock()

    async def send(message: Raw) -> None:
        async with lock:
            await stdout.write(json.dumps(message) + "\n")
            await stdout.flush()

    server = Server(send)

    async def one(message: Raw) -> None:
        response = await server.handle(message)
        if response is not None:
            await send(response)

    async with anyio.create_task_group() as tg:
        async for line in anyio.wrap_file(sys.stdin):
            if line.strip():
                tg.start_soon(one, json.loads(line))
        tg.cancel_scope.cancel()


def app() -> Any:
    """An ASGI streamable-HTTP upstream: JSON responses, a session id per `initialize`
    (`up-1`, `up-2`, …), headers recorded."""
    server = Server(send=None)
    sessions = iter(range(1, 1_000_000))

    async def asgi(scope: Raw, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        SEEN_HEADERS.append(headers)
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        session = headers.get("mcp-session-id", "")
        if scope["method"] != "POST":
            status, out = 405, b""
        else:
            message = json.loads(body) if body else None
            if isinstance(message, dict):
                if message.get("method") == "initialize":
                    session = f"up-{next(sessions)}"
                SEEN_SESSIONS.append((session, message))
            response = await server.handle(message) if message is not None else None
            status = 200 if response is not None else 202
            out = json.dumps(response).encode() if response is not None else b""
        out_headers = [
            (b"content-type", b"application/json"),
            (b"mcp-session-id", session.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": out})

    return asgi


if __name__ == "__main__":
    anyio.run(serve_stdio)
