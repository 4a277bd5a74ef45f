"""Idle and slow HTTP clients against a real `mcpfw serve` process. For docs/reliability.md.

    .venv/bin/python bench/slow_clients.py [--idle 1000] [--slowloris 200] [--slow-bodies 100]
                                           [--server-nofile 1024]

Starts `mcpfw serve` (read_timeout_s 2) in front of the HTTP test fixture upstream, measures a
real agent's tools/call latency alone, then again while `--idle` connections that never send a
byte, `--slowloris` connections dribbling their headers a byte every 0.2 s, and `--slow-bodies`
requests whose body never completes are all open. Then counts how many of those the firewall
closed by itself, and reports the server's resident memory and open file descriptors before,
during and after. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio.abc import SocketStream

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.proxy.http_harness import Rpc, token, write_config  # noqa: E402

READ_TIMEOUT = 2.0


def _status(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    return 0


def _nofile(limit: int) -> Any:
    """A preexec_fn giving the server a soft open-files limit (like a default `ulimit -n`)."""

    def apply() -> None:
        if limit:
            import resource

            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return apply if limit else None


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _latencies(url: str, bearer: str, n: int) -> list[float]:
    async with httpx.AsyncClient(timeout=30) as http:
        rpc = Rpc(http, url, bearer)
        await rpc.initialize()
        out = []
        for i in range(n):
            t = time.perf_counter()
            answer = await rpc.request("tools/call", {"name": "echo", "arguments": {"i": i}})
            out.append((time.perf_counter() - t) * 1000)
            assert answer["result"].get("isError") is not True, answer
        return out


async def _held_until_closed(stream: SocketStream, dribble: bytes, closed: list[float]) -> None:
    start = time.monotonic()
    async with anyio.create_task_group() as tg:

        async def read() -> None:
            try:
                while await stream.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            closed.append(time.monotonic() - start)
            tg.cancel_scope.cancel()

        tg.start_soon(read)
        for byte in dribble:
            try:
                await stream.send(bytes([byte]))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                break
            await anyio.sleep(0.2)
        await anyio.sleep_forever()


def _row(name: str, values: list[float]) -> str:
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return f"| {name} | {statistics.median(values):.2f} ms | {p99:.2f} ms |"


async def main_async(args: argparse.Namespace, work: Path) -> int:
    config = write_config(work, extra=f"  read_timeout_s: {READ_TIMEOUT}\n")
    bearer = token("ci-bench", ("ci",))
    server = subprocess.Popen(
        [sys.executable, "-c", "from mcpfw.cli import main; main()", "serve", "--config",
         str(config), "--port", "0", "--log-level", "error"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, preexec_fn=_nofile(args.server_nofile),
    )  # fmt: skip
    try:
        assert server.stderr is not None
        port = 0
        deadline = time.monotonic() + 30
        while not port and time.monotonic() < deadline:
            found = re.search(r"listening on http://[\d.]+:(\d+)", server.stderr.readline())
            port = int(found.group(1)) if found else 0
        assert port, "mcpfw serve did not start"
        url = f"http://127.0.0.1:{port}/mcp/fs"
        pid = server.pid
        alone = await _latencies(url, bearer, args.calls)
        rss0, fds0 = _status(pid, "VmRSS"), _fds(pid)
        closed: list[float] = []
        head = (
            f"POST /mcp/fs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {bearer}"
            "\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        total = args.idle + args.slowloris + args.slow_bodies
        async with anyio.create_task_group() as tg:
            for kind, count in (("idle", args.idle), ("slowloris", args.slowloris),
                                ("body", args.slow_bodies)):  # fmt: skip
                for _ in range(count):
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    if kind == "body":
                        await stream.send(head + b'{"jsonrpc":')
                    dribble = (
                        b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200 if kind == "slowloris" else b""
                    )
                    tg.start_soon(_held_until_closed, stream, dribble, closed)
            opened = time.monotonic()
            during = await _latencies(url, bearer, args.calls)
            rss1, fds1 = _status(pid, "VmRSS"), _fds(pid)
            with anyio.move_on_after(READ_TIMEOUT * 3):
                while len(closed) < total:
                    await anyio.sleep(0.05)
            all_closed = time.monotonic() - opened
            tg.cancel_scope.cancel()
        after = await _latencies(url, bearer, args.calls)
        rss2, fds2, hwm = _status(pid, "VmRSS"), _fds(pid), _status(pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(10)
    print(f"Slow and idle clients: {args.idle} idle, {args.slowloris} slowloris, "
          f"{args.slow_bodies} slow bodies; read_timeout_s {READ_TIMEOUT:g}; server started "
          f"with soft fd limit {args.server_nofile or 'inherited'}\n")  # fmt: skip
    print("| a real agent's tools/call | median | p99 |\n|---|---|---|")
    print(_row("alone", alone))
    print(_row(f"with {total} idle/slow connections open", during))
    print(_row("after they were dropped", after))
    print()
    print("| measure | value |\n|---|---|")
    print(f"| idle/slow connections closed by the firewall | {len(closed)} of {total} "
          f"(all within {all_closed:.1f} s) |")  # fmt: skip
    print(f"| server RSS: before / with them open / after / peak | {rss0 // 1024} / "
          f"{rss1 // 1024} / {rss2 // 1024} / {hwm // 1024} MiB |")  # fmt: skip
    print(f"| server open fds: before / with them open / after | {fds0} / {fds1} / {fds2} |")
    return 0 if len(closed) == total else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--slow-bodies", type=int, default=100)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--server-nofile", type=int, default=0, help="soft fd limit for the server (0: inherit)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        return anyio.run(main_async, args, Path(work))


if __name__ == "__main__":
    raise SystemExit(main())
