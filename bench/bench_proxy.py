"""`mcpfw run` overhead: tools/call round trips, time to first answer, resident memory.

Same run, same upstream, two paths: a raw JSON-RPC client talking straight to the upstream, and
the same client talking through `mcpfw run` with a 100-rule policy and the SQLite audit log (every
call: policy evaluation, a write-ahead decision commit, an outcome commit). The upstream is a
stdlib-only stub server (answers at once, starts in milliseconds), so what is measured is what
the firewall adds, not the upstream's own cost. Prints a markdown table; runs in well under a
minute.

    python bench/bench_proxy.py [--calls N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STUB = r"""
import json, sys
out = sys.stdout
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    method = msg["method"]
    if method == "initialize":
        result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                  "serverInfo": {"name": "stub", "version": "1"}}
    elif method == "server/discover":
        result = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
                  "cacheScope": "public", "ttlMs": 0, "resultType": "complete"}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "description": "Echo the arguments back.",
                             "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        text = json.dumps(msg["params"].get("arguments", {}))
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        result = {}
    out.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}) + "\n")
    out.flush()
"""


def policy(n: int = 100) -> str:
    """A realistic 100-rule policy: prefiltered rules over many tools, CEL on the hot one."""
    lines = ["default: deny", "rules:"]
    for i in range(n - 4):
        lines += [
            f"  - id: tool-{i}",
            f"    effect: {'allow' if i % 3 else 'deny'}",
            f"    tools: [tool_{i}, other_{i}]",
            f"    when: 'args.path.startsWith(\"/workspace/{i}/\")'",
        ]
    lines += [
        "  - id: echo-workspace",
        "    effect: allow",
        "    tools: [echo]",
        '    when: \'args.path.startsWith("/workspace/") && !args.path.contains("..")\'',
        "  - id: echo-no-secrets",
        "    effect: deny",
        "    tools: [echo]",
        "    when: 'args.path.matches(\"(?i)\\\\.(env|pem|key)$\")'",
        "  - id: ci-agents",
        "    effect: allow",
        '    agents: ["ci-*"]',
        "  - id: shadow-echo",
        "    effect: deny",
        "    mode: shadow",
        "    tools: [echo]",
        "    when: 'size(args.tags) > 5'",
    ]
    return "\n".join(lines) + "\n"


class Peer:
    """A line-oriented JSON-RPC client over a child process's pipes."""

    def __init__(self, argv: list[str]) -> None:
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        self.next_id = 0

    def request(self, method: str, params: dict[str, object]) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        line = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            answer: dict[str, object] = json.loads(self.proc.stdout.readline())
            if answer.get("id") == self.next_id:
                return answer

    def rss_mb(self) -> tuple[float, float]:
        """Current and peak resident memory of the child, in MB."""
        fields = {}
        for row in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = row.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


INIT = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "b"}}
ARGS = {"path": "/workspace/src/main.py", "tags": ["a", "b"], "opts": {"n": 1, "deep": [1, 2]}}


def round_trips(argv: list[str], calls: int) -> tuple[list[float], Peer]:
    peer = Peer(argv)
    peer.request("initialize", INIT)
    for _ in range(50):  # warm up (imports, the audit store opening, caches)
        peer.request("tools/call", {"name": "echo", "arguments": ARGS})
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        answer = peer.request("tools/call", {"name": "echo", "arguments": ARGS})
        times.append((time.perf_counter() - t0) * 1000)
        assert "result" in answer and not answer["result"].get("isError"), answer  # type: ignore[union-attr]
    return times, peer


def first_answer(argv: list[str], method: str, params: dict[str, object]) -> float:
    peer = Peer(argv)
    peer.request(method, params)
    elapsed = time.perf_counter() - peer.started
    peer.close()
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def row(name: str, direct: float, through: float, target: str, unit: str = "ms") -> str:
    return (
        f"| {name} | {direct:.3f} {unit} | {through:.3f} {unit} | {through - direct:.3f} {unit} "
        f"| {through / direct:.1f}x | {target} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--starts", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub.py"
        stub.write_text(STUB)
        rules = Path(tmp) / "rules.yaml"
        rules.write_text(policy())
        upstream = [sys.executable, str(stub)]

        head = [sys.executable, "-c", "from mcpfw.cli import main; main()", "run"]

        def fw(audit: str, *flags: str) -> list[str]:
            tail = ["--agent", "bench", "--audit", audit, *flags, "--", *upstream]
            return [*head, "--rules", str(rules), *tail]

        # For the breakdown only: no audit store at all (it cannot be opened, and the config
        # says on_failure: allow), so the relay and the policy are all that is left.
        config = Path(tmp) / "mcpfw.yaml"
        config.write_text("audit: {on_failure: allow}\n")
        no_store = fw("/proc/mcpfw-bench/none.db", "--config", str(config), "--log-level", "error")
        on_disk = fw(str(Path(tmp) / "audit.db"))
        direct, peer = round_trips(upstream, args.calls)
        peer.close()
        proxied, peer = round_trips(on_disk, args.calls)
        rss, peak = peer.rss_mb()
        peer.close()
        in_memory, peer = round_trips(fw(":memory:"), args.calls)
        peer.close()
        unaudited, peer = round_trips(no_store, args.calls)
        peer.close()
        meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
        discover = {"_meta": {**meta, "io.modelcontextprotocol/clientCapabilities": {}}}
        starts: dict[str, list[float]] = {"direct": [], "mcpfw": [], "discover": []}
        for _ in range(args.starts):
            starts["direct"].append(first_answer(upstream, "initialize", INIT) * 1000)
            starts["mcpfw"].append(first_answer(on_disk, "initialize", INIT) * 1000)
            starts["discover"].append(first_answer(on_disk, "server/discover", discover) * 1000)
        # The same with a realistic upstream (the SDK filesystem fixture, ~1 s to start itself):
        # mcpfw spawns it first and gets ready while it starts.
        sdk = [sys.executable, str(Path(__file__).resolve().parents[1] / "fixtures" / "servers"
                                   / "fs_server.py"), tmp]  # fmt: skip
        head_sdk = [*head, "--rules", str(rules), "--agent", "bench"]
        fw_sdk = [*head_sdk, "--audit", str(Path(tmp) / "audit.db"), "--", *sdk]
        for _ in range(max(3, args.starts // 2)):
            starts.setdefault("sdk_direct", []).append(first_answer(sdk, "initialize", INIT) * 1000)
            starts.setdefault("sdk_fw", []).append(first_answer(fw_sdk, "initialize", INIT) * 1000)
    med = statistics.median
    s_direct = med(starts["direct"])
    print(f"{args.calls} sequential tools/call round trips per path; 100-rule policy; every call")
    print("through mcpfw commits its decision before forwarding and its outcome after.\n")
    print("| metric | direct | through mcpfw | added | ratio | target |")
    print("|---|---|---|---|---|---|")
    print(row("median round trip (SQLite file audit)", med(direct), med(proxied), "added <= 1 ms"))
    print(row("p99 round trip (SQLite file audit)", pct(direct, 0.99), pct(proxied, 0.99),
              "added <= 3 ms"))  # fmt: skip
    print(row("median round trip (in-memory SQLite audit)", med(direct), med(in_memory), ""))
    print(row("p99 round trip (in-memory SQLite audit)", pct(direct, 0.99), pct(in_memory, 0.99),
              ""))  # fmt: skip
    print(row("median round trip (breakdown: no audit store)", med(direct), med(unaudited), ""))
    print(row("time to first answer: initialize", s_direct, med(starts["mcpfw"]),
              "added <= 300 ms"))  # fmt: skip
    print(row("time to first answer: server/discover", s_direct, med(starts["discover"]),
              "added <= 300 ms"))  # fmt: skip
    print(row("time to first answer, SDK upstream: initialize", med(starts["sdk_direct"]),
              med(starts["sdk_fw"]), "added <= 300 ms"))  # fmt: skip
    print(f"| mcpfw resident memory after the run (peak) | | {rss:.1f} MB ({peak:.1f} MB) | | "
          "| <= 60 MB |")  # fmt: skip
    version = sys.version.split()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nmachine: {os.cpu_count()} cores, load average {load} at the end, Python {version};")
    print("upstream: a stdlib stub that answers at once (its own start is the 'direct' start).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
