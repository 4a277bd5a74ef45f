"""`tools/call` over HTTP: 50 concurrent agents through one `mcpfw serve` vs direct.

Three processes on this machine: a streamable-HTTP tool server (the upstream), `mcpfw serve`
in front of it (audit on SQLite, a policy of 100 rules, every agent with its own JWT and its
own session), and this script as the load generator (50 agents, one keep-alive connection
each, a minimal HTTP/1.1 client on uvloop so the generator is not the bottleneck; its own
CPU per call is printed). Both paths are
measured in the same run against the same upstream process:

    .venv/bin/python bench/bench_http.py [--agents 50] [--seconds 5]

Targets (issue 5): through-mcpfw throughput >= 60% of direct and >= 1000 calls/s, added
median latency <= 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt

ROOT = Path(__file__).resolve().parent.parent
# how to start the firewall (override to profile it): "|"-separated argv after python
ENTRY = os.environ.get("BENCH_FW_ENTRY", "-c|from mcpfw.cli import main; main()")
SECRET = "bench-secret-bench-secret-bench-secret"
AUDIENCE = "mcpfw-bench"
ISSUER = "https://idp.bench"


# --- the upstream: a minimal stateless-JSON streamable-HTTP tool server --------------------


def upstream_app() -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                kind = event["type"].rsplit(".", 1)[1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        more = True
        while more:
            event = await receive()
            body += event.get("body", b"")
            more = event.get("more_body", False)
        message = json.loads(body) if body else {}
        method = message.get("method")
        if "id" not in message:
            status, out = 202, b""
        else:
            if method == "initialize":
                result: dict[str, Any] = {
                    "protocolVersion": message["params"]["protocolVersion"],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "bench-upstream", "version": "1"},
                }
            elif method == "tools/list":
                result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
            else:
                args = message.get("params", {}).get("arguments", {})
                result = {"content": [{"type": "text", "text": json.dumps(args)}]}
            status = 200
            out = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(out)).encode()),
            (b"mcp-session-id", b"bench"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    return app


# --- load generator: one keep-alive HTTP/1.1 connection per agent --------------------------


class Conn:
    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]) -> None:
        self.host, self.port, self.path, self.headers = host, port, path, dict(headers)

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        data = json.dumps(body).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            "Accept: application/json, text/event-stream",
            f"Content-Length: {len(data)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        self.writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        status_line = await self.reader.readline()
        if b" 200 " not in status_line and b" 202 " not in status_line:
            raise RuntimeError(f"unexpected answer: {status_line!r}")
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            key, _, value = line.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        return headers, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


async def run_load(
    url: str,
    agents: int,
    seconds: float,
    *,
    session: bool,
    tokens: list[str] | None,
    on_start: Any = None,
) -> tuple[int, list[float], float, float]:
    """(calls, latencies, wall seconds, load generator CPU seconds) over the measured window."""
    match = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert match
    host, port, path = match.group(1), int(match.group(2)), match.group(3)
    conns = []
    for i in range(agents):
        headers = {"Authorization": f"Bearer {tokens[i]}"} if tokens else {}
        conn = Conn(host, port, path, headers)
        await conn.open()
        if session:
            init = {
                "jsonrpc": "2.0",
                "id": 0,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": f"agent-{i}", "version": "1"},
                },
            }
            got, _ = await conn.post(init)
            conn.headers["Mcp-Session-Id"] = got["mcp-session-id"]
            await conn.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
            await conn.post({"jsonrpc": "2.0", "id": 0, "method": "tools/list"})  # as agents do
        conns.append(conn)
    latencies: list[float] = []
    stop_at = 0.0
    measuring = False

    async def agent(conn: Conn, n: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            i += 1
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"path": f"/workspace/{n}/{i}.txt"}},
            }
            started = time.perf_counter()
            _, raw = await conn.post(body)
            elapsed = time.perf_counter() - started
            if b'"result"' not in raw or b'"isError":true' in raw:
                raise RuntimeError(f"call failed: {raw[:300]!r}")
            if measuring:
                latencies.append(elapsed)

    stop_at = time.perf_counter() + 1.0  # warm-up
    await asyncio.gather(*(agent(c, n) for n, c in enumerate(conns)))
    measuring = True
    if on_start is not None:
        on_start()
    started, cpu_started = time.perf_counter(), time.process_time()
    stop_at = started + seconds
    await asyncio.gather(*(agent(c, n) for n, c in enumerate(conns)))
    wall, gen_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    for conn in conns:
        conn.close()
    return len(latencies), latencies, wall, gen_cpu


def drive(load: Any) -> tuple[int, list[float], float, float]:
    """Run one load on uvloop when installed (the same lean client for both paths)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(load)  # type: ignore[no-any-return]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(load)  # type: ignore[no-any-return]


# --- setup ---------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rules(path: Path) -> None:
    rules = ["default: deny", "rules:"]
    for i in range(98):  # 98 rules for other agents/tools: indexed away by their prefilters
        rules += [
            f"  - id: other-{i}",
            "    effect: allow",
            f'    agents: ["team-{i}-*"]',
            f"    tools: [tool_{i}]",
            '    when: args.path.startsWith("/srv/")',
        ]
    rules += [
        "  - id: agents-workspace",
        "    effect: allow",
        '    agents: ["agent-*"]',
        "    tools: [echo]",
        '    when: args.path.startsWith("/workspace/") && !args.path.contains("..")',
        "  - id: no-secrets",
        "    effect: deny",
        '    when: has(args.path) && args.path.matches("(?i)\\\\.(env|pem|key)$")',
    ]
    path.write_text("\n".join(rules) + "\n")


def wait_for(process: subprocess.Popen[str], pattern: str, timeout_s: float = 30) -> str:
    assert process.stderr is not None
    deadline = time.monotonic() + timeout_s
    for line in process.stderr:
        found = re.search(pattern, line)
        if found:
            return found.group(1)
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"process did not report {pattern!r}")


def wait_ready(url: str, timeout_s: float = 30) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(latencies: list[float]) -> tuple[float, float]:
    ordered = sorted(latencies)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99)] * 1000


def sdk_app() -> Any:
    """The same echo tool as an MCP SDK server (MCPServer, streamable HTTP, JSON answers)."""
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("bench-sdk")

    @server.tool()
    def echo(path: str) -> str:
        """Return the path."""
        return json.dumps({"path": path})

    return server.streamable_http_app(json_response=True)


def run_upstream(kind: str, port: int) -> None:
    import uvicorn

    app = sdk_app() if kind == "sdk" else upstream_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def measure(kind: str, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Direct vs through mcpfw against one upstream process of `kind`."""
    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--role", f"upstream-{kind}", "--port", str(up_port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    config = tmp / f"mcpfw-{kind}.yaml"
    config.write_text(
        "rules: rules.yaml\n"
        f"audit: {{url: {tmp / f'audit-{kind}.db'}}}\n"
        f"upstreams:\n  bench: {{url: 'http://127.0.0.1:{up_port}/mcp', "
        f"sessions: {opts.sessions}}}\n"
        "server:\n  auth:\n"
        f"    jwt: {{secret: {SECRET}, issuer: '{ISSUER}', audience: {AUDIENCE}}}\n"
    )
    firewall = subprocess.Popen(
        [sys.executable, *ENTRY.split("|"), "serve", "--config", str(config),
         "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        base = wait_for(firewall, r"listening on (http://\S+) ")
        wait_ready(base + "/readyz")
        tokens = [
            jwt.encode(
                {"sub": f"agent-{i}", "aud": AUDIENCE, "iss": ISSUER, "exp": time.time() + 3600},
                SECRET,
            )
            for i in range(opts.agents)
        ]
        up_at_start: list[float] = []
        direct = drive(
            run_load(f"http://127.0.0.1:{up_port}/mcp", opts.agents, opts.seconds,
                     session=kind == "sdk", tokens=None,
                     on_start=lambda: up_at_start.append(cpu_seconds(upstream.pid)))
        )  # fmt: skip
        up_direct = cpu_seconds(upstream.pid) - up_at_start[0]
        cpu_at_start: list[float] = []

        def through_started() -> None:
            cpu_at_start.append(cpu_seconds(firewall.pid))
            up_at_start.append(cpu_seconds(upstream.pid))

        through = drive(
            run_load(
                base + "/mcp/bench", opts.agents, opts.seconds, session=True, tokens=tokens,
                on_start=through_started,
            )
        )  # fmt: skip
        fw_cpu = cpu_seconds(firewall.pid) - cpu_at_start[0]  # the measured calls only
        up_through = cpu_seconds(upstream.pid) - up_at_start[1]
        # One agent at a time: what the firewall adds to a call when nothing queues.
        direct_one = drive(
            run_load(f"http://127.0.0.1:{up_port}/mcp", 1, opts.seconds / 2,
                     session=kind == "sdk", tokens=None)
        )  # fmt: skip
        through_one = drive(
            run_load(base + "/mcp/bench", 1, opts.seconds / 2, session=True, tokens=tokens[:1])
        )
    finally:
        for process in (firewall, upstream):
            process.send_signal(2)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return {
        "direct": direct,
        "through": through,
        "fw_cpu": fw_cpu,
        "up_cpu": (up_direct, up_through),
        "direct_one": direct_one,
        "through_one": through_one,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--upstreams", default="sdk,raw", help="sdk (MCP SDK server), raw, or both")
    parser.add_argument("--sessions", type=int, default=4, help="upstream sessions (default 4)")
    parser.add_argument("--role", default="bench")
    parser.add_argument("--port", type=int, default=0)
    opts = parser.parse_args()
    if opts.role.startswith("upstream-"):
        run_upstream(opts.role.removeprefix("upstream-"), opts.port)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="mcpfw-bench-http-"))
    write_rules(tmp / "rules.yaml")
    names = {"sdk": "MCP SDK server (MCPServer)", "raw": "minimal raw-JSON server"}
    results = {kind: measure(kind, opts, tmp) for kind in opts.upstreams.split(",")}
    print(f"{opts.agents} concurrent agents (own JWT and session each), {opts.seconds:g} s per")
    print("path, tools/call over HTTP; mcpfw: audit on SQLite, 100-rule policy,")
    print(f"{opts.sessions} upstream sessions. Both paths in the same run, same upstream process.")
    load = os.getloadavg()
    print(
        f"Machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} (1/5 min).\n"
    )
    print(
        "| upstream | path | calls/s | median ms | p99 ms | mcpfw CPU/call ms "
        "| upstream CPU/call ms | load generator CPU/call ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for kind, r in results.items():
        (dn, dl, dw, dg), (tn, tl, tw, tg) = r["direct"], r["through"]
        d_med, d_p99 = stats(dl)
        t_med, t_p99 = stats(tl)
        r["summary"] = (tn / tw, tn / tw / (dn / dw), t_med - d_med)
        up_d, up_t = (c * 1000 / n for c, n in zip(r["up_cpu"], (dn, tn), strict=True))
        print(
            f"| {names[kind]} | direct | {dn / dw:,.0f} | {d_med:.2f} | {d_p99:.2f} | "
            f"| {up_d:.3f} | {dg * 1000 / dn:.3f} |"
        )
        cpu = r["fw_cpu"] * 1000 / tn
        print(
            f"| {names[kind]} | through mcpfw | {tn / tw:,.0f} | {t_med:.2f} | {t_p99:.2f} "
            f"| {cpu:.2f} | {up_t:.3f} | {tg * 1000 / tn:.3f} |"
        )
    for kind, r in results.items():
        (dn, dl, dw, _), (tn, tl, tw, _) = r["direct_one"], r["through_one"]
        print(
            f"| {names[kind]} | direct, 1 agent | {dn / dw:,.0f} | {stats(dl)[0]:.2f} "
            f"| {stats(dl)[1]:.2f} | | | |"
        )
        print(
            f"| {names[kind]} | through mcpfw, 1 agent | {tn / tw:,.0f} | {stats(tl)[0]:.2f} "
            f"| {stats(tl)[1]:.2f} | | | |"
        )
        r["added_one"] = stats(tl)[0] - stats(dl)[0]
    print()
    for kind, r in results.items():
        rate, ratio, added = r["summary"]
        print(
            f"- {names[kind]}: throughput {ratio:.0%} of direct (target >= 60%), "
            f"{rate:,.0f} calls/s (target >= 1000), added median {added:.2f} ms with 50 agents"
            f" (queueing included), {r['added_one']:.2f} ms for one agent (target <= 2 ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
