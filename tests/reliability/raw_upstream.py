"""A tiny raw JSON-RPC MCP server over stdio for the reliability tests (starts fast: stdlib only).

    python raw_upstream.py [RECEIVED_FILE]

Every `tools/call` it receives has its id appended to RECEIVED_FILE (one per line, fsync'd)
before it is answered, so a test can compare what the upstream really got with the audit log.
Tools: echo(text), sleep(seconds) (answers later, on a thread), crash(code) (exits mid-call),
freeze() (answers, then never reads its stdin again: a hung server whose pipe fills up).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

RECEIVED = sys.argv[1] if len(sys.argv) > 1 else ""
_lock = threading.Lock()
TOOLS = [
    {"name": n, "description": n, "inputSchema": {"type": "object"}}
    for n in ("echo", "sleep", "crash", "read_file", "freeze")
]


def send(message: dict[str, Any]) -> None:
    data = (json.dumps(message) + "\n").encode()
    with _lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


def received(rid: Any) -> None:
    if not RECEIVED:
        return
    fd = os.open(RECEIVED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rid) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def text(rid: Any, value: str) -> None:
    send({"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": value}]}})


def later(rid: Any, seconds: float) -> None:
    time.sleep(seconds)
    text(rid, f"slept {seconds}")


def handle(message: dict[str, Any]) -> None:
    method, rid = message.get("method"), message.get("id")
    params = message.get("params") or {}
    if method is None or rid is None:
        return  # notifications and responses
    if method == "initialize":
        send(
            {
                "jsonrpc": "2.0",
                "id": rid,
                "result": {
                    "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "raw-upstream", "version": "1"},
                },
            }
        )
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": rid, "result": {"tools": TOOLS}})
    elif method == "tools/call":
        received(rid)
        name, args = params.get("name"), params.get("arguments") or {}
        if name == "crash":
            os._exit(int(args.get("code", 3)))
        if name == "freeze":
            text(rid, "frozen")
            time.sleep(3600)
        if name == "sleep":
            threading.Thread(target=later, args=(rid, float(args["seconds"])), daemon=True).start()
        else:
            text(rid, str(args.get("text", "")))
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": rid, "result": {}})
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}})


def main() -> None:
    pidfile = os.environ.get("RAW_UPSTREAM_PIDFILE")
    if pidfile:  # lets a crash test wait for this process after killing its parent
        with open(pidfile, "w") as f:
            f.write(str(os.getpid()))
    for line in sys.stdin.buffer:
        if line.strip():
            handle(json.loads(line))


if __name__ == "__main__":
    main()
