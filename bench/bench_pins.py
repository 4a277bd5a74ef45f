"""What tool pinning costs: per `tools/list` result and per `tools/call`.

    .venv/bin/python bench/bench_pins.py

A listing of 40 realistic tools (descriptions of a few hundred characters, 3-6 parameters
each, like server-filesystem's) goes through `PinChecker.on_tools_list` with a SQLite pin store
(warm: every tool already pinned, so the listing is only read), beside the baseline the relay
pays anyway: decoding and encoding the same JSON-RPC message. Per call, `PinChecker.check_call`
(an in-memory lookup) is measured beside the JSON round trip of one `tools/call` request.
The scanner and the digest are also measured on their own. All in one run, one process.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcpfw.pins import definition_digest, scan_tools  # noqa: E402
from mcpfw.pins.checker import PinChecker, PinOptions  # noqa: E402
from mcpfw.pins.drift import PinMode  # noqa: E402
from mcpfw.pins.open import open_pin_store  # noqa: E402

TOOLS = 40


def listing() -> dict[str, Any]:
    tools = []
    for i in range(TOOLS):
        props = {
            f"param_{j}": {
                "type": "string" if j % 2 else "integer",
                "description": f"The {j}th parameter of tool {i}: a path, a count or a pattern.",
            }
            for j in range(3 + i % 4)
        }
        tools.append(
            {
                "name": f"tool_{i}",
                "title": f"Tool number {i}",
                "description": (
                    f"Tool {i} reads the complete contents of a file from the file system as "
                    "text. Handles various text encodings and provides detailed error messages "
                    "if the file cannot be read. Use this tool when you need to examine the "
                    "contents of a single file. Only works within allowed directories. "
                )
                * (1 + i % 2),
                "inputSchema": {"type": "object", "properties": props, "required": ["param_0"]},
                "annotations": {"readOnlyHint": bool(i % 2), "idempotentHint": False},
            }
        )
    return {"tools": tools}


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def atimed(fn: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def main() -> None:
    result = listing()
    message = {"jsonrpc": "2.0", "id": 7, "result": result}
    wire = json.dumps(message)
    call = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 8,
            "method": "tools/call",
            "params": {"name": "tool_3", "arguments": {"param_0": 1, "param_1": "/w/a.txt"}},
        }
    )
    rows: list[tuple[str, list[float], list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with open_pin_store(str(Path(tmp) / "audit.db"), create=True) as store:
            checker = PinChecker("bench", store=store, options=PinOptions(mode=PinMode.BLOCK))
            await checker.on_tools_list(result)  # first use: pins everything
            baseline_list = timed(lambda: json.dumps(json.loads(wire)), 300)
            rows.append(
                ("tools/list: on_tools_list (scan, digest, SQLite read, sanitise)",
                 await atimed(lambda: checker.on_tools_list(result), 300), baseline_list)
            )  # fmt: skip
            rows.append(
                ("tools/list: scan_tools only", timed(lambda: scan_tools(result["tools"]), 300),
                 baseline_list)
            )  # fmt: skip
            rows.append(
                ("tools/list: definition_digest x40",
                 timed(lambda: [definition_digest(t) for t in result["tools"]], 300),
                 baseline_list)
            )  # fmt: skip
            baseline_call = timed(lambda: json.dumps(json.loads(call)), 20000)
            rows.append(
                ("tools/call: check_call (in memory)",
                 await atimed(lambda: checker.check_call("tool_3"), 20000), baseline_call)
            )  # fmt: skip
    print(f"Tool pinning cost ({TOOLS}-tool listing, {len(wire)} bytes; SQLite pin store)\n")
    print("| path | median µs | p99 µs | baseline median µs | ratio to baseline |")
    print("|---|---:|---:|---:|---:|")
    for name, samples, base in rows:
        med, p99 = stats(samples)
        bmed, _ = stats(base)
        print(f"| {name} | {med:.1f} | {p99:.1f} | {bmed:.1f} | {med / bmed:.1f}x |")
    print(
        "\nbaseline: JSON decode + encode of the same message (what the relay does anyway); "
        "tools/list rows compare with the listing message, the tools/call row with one call."
    )


if __name__ == "__main__":
    anyio.run(main)
