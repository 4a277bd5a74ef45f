"""Fuzzing, the long run: hostile and schema-generated input against the stdio and HTTP fronts.
For docs/reliability.md.

    .venv/bin/python bench/fuzz_report.py [--batches 100] [--lines 10000] [--seed 8]

1. stdio relay, in process: `--batches` batches of 10-30 client messages per protocol revision,
   generated from the MCP JSON schemas (tests/reliability/schema_strategies.py) and broken in
   eleven ways, through the relay with the rules and an answering upstream. Every request must
   get exactly one answer with the right error code; nothing undecided may reach the upstream.
2. `mcpfw run` as a subprocess: `--lines` byte-mutated lines (truncated, bit-flipped, invalid
   UTF-8, NUL, deep nesting, one 65 MiB line) on its stdin, a liveness ping every 50 lines, a
   real call at the end; resident memory before and after.
3. `mcpfw serve` on loopback: the same generated batches posted to /mcp/fs (handshake era) and
   as stateless 2026-07-28 requests; no 5xx, no -32603 from the request boundary, right ids.

Counts crashes (an exception or a dead process), hangs (no answer within 10 s) and wrong answers
(an oracle violation). Prints markdown tables; exit 1 if any was found.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.reliability import test_fuzz_http as http_fuzz  # noqa: E402
from tests.reliability import test_fuzz_stdio as stdio_fuzz  # noqa: E402
from tests.reliability.memory_front import raw_upstream_argv  # noqa: E402
from tests.reliability.raw_client import mcpfw_run  # noqa: E402
from tests.reliability.schema_strategies import (  # noqa: E402
    VERSIONS,
    client_messages,
    mutated,
    tool_calls,
)

WAIT = 10.0


class Tally:
    def __init__(self) -> None:
        self.batches = self.messages = self.crashes = self.hangs = self.wrong = 0
        self.examples: list[str] = []

    def failed(self, kind: str, exc: BaseException) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {''.join(traceback.format_exception_only(exc)).strip()}")


def _batches(version: str, count: int, seed: int) -> list[list[dict[str, Any]]]:
    strategy = st.lists(
        client_messages(version) | tool_calls(version) | mutated(client_messages(version)),
        min_size=10,
        max_size=30,
    )
    drawn: list[list[dict[str, Any]]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(batch: list[dict[str, Any]]) -> None:
        drawn.append(batch)

    draw()
    return drawn


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


# -- 1. the stdio relay, in process ---------------------------------------------------------


def stdio_relay(batches: dict[str, list[list[dict[str, Any]]]]) -> Tally:
    tally = Tally()
    for version_batches in batches.values():
        for batch in version_batches:
            tally.batches += 1
            tally.messages += len(batch)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    anyio.run(stdio_fuzz._fuzz_once, Path(tmp), batch)
                except BaseException as exc:  # tallied: this is what the report counts
                    exc = _unwrap(exc)
                    kind = {AssertionError: "wrong", TimeoutError: "hangs"}.get(
                        type(exc), "crashes"
                    )
                    tally.failed(kind, exc)
    return tally


# -- 2. raw bytes into a real `mcpfw run` ---------------------------------------------------


def _mutate(line: bytes, rng: random.Random) -> bytes:
    how = rng.randrange(8)
    if how == 0 and line:
        return line[: rng.randrange(len(line))]
    if how == 1 and line:
        i = rng.randrange(len(line))
        return line[:i] + bytes([line[i] ^ (1 << rng.randrange(8))]) + line[i + 1 :]
    if how == 2:
        i = rng.randrange(len(line) + 1)
        return line[:i] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x00"]) + line[i:]
    if how == 3:
        depth = rng.choice([100, 1000, 50_000])
        return (
            b'{"jsonrpc":"2.0","id":1,"method":"x","params":' + b"[" * depth + b"]" * depth + b"}"
        )
    if how == 4:
        return line.replace(b'"', b"", 1)
    if how == 5:
        return b"[" + line + b"," + line + b"]"
    if how == 6:
        return line.replace(b'"id":', b'"id":{"x":', 1).replace(b",", b"},", 1)
    return line


def _rss_kb(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


async def stdio_process(lines: int, seed: int, work: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    (work / "rules.yaml").write_text(
        "default: allow\nrules:\n  - {id: no-crash, effect: deny, tools: [crash, sleep]}\n"
    )
    samples = _batches("2025-11-25", 40, seed)
    valid = [json.dumps(m).encode() for batch in samples for m in batch]
    out: dict[str, Any] = {"lines": 0, "answers": 0, "pings": 0, "hangs": 0, "crashes": 0}
    args = ["--rules", str(work / "rules.yaml"), "--agent", "fuzz", "--audit",
            str(work / "audit.db"), "--log-level", "error", "--", *raw_upstream_argv()]  # fmt: skip
    async with mcpfw_run(*args) as client:
        await client.initialize()
        pid = client.process.pid
        out["rss_start_kb"] = _rss_kb(pid)
        codes: Counter[int] = Counter()

        async def drain_until(rid: str) -> bool:
            try:
                with anyio.fail_after(WAIT):
                    while True:
                        got = await client.receive()
                        if not isinstance(got, dict):
                            continue
                        out["answers"] += 1
                        if isinstance(got.get("error"), dict):
                            codes[got["error"].get("code")] += 1
                        if got.get("id") == rid:
                            return True
            except TimeoutError:
                out["hangs"] += 1
                return False

        for n in range(lines):
            line = _mutate(rng.choice(valid), rng)
            if n == lines // 2:
                line = b'"' + b"x" * (65 << 20) + b'"'  # one message over the 64 MiB limit
            await client.send(line.replace(b"\n", b"") + b"\n")
            out["lines"] += 1
            if n % 50 == 49:
                rid = f"ping-{n}"
                await client.send({"jsonrpc": "2.0", "id": rid, "method": "ping"})
                out["pings"] += await drain_until(rid)
        await client.send({"jsonrpc": "2.0", "id": "final", "method": "tools/call",
                           "params": {"name": "echo", "arguments": {"text": "alive"}}})  # fmt: skip
        out["final_call_ok"] = await drain_until("final")
        out["rss_end_kb"] = _rss_kb(pid)
        out["codes"] = dict(codes.most_common())
    out["exit_code"] = client.process.returncode
    if client.process.returncode not in (0, None):
        out["crashes"] += 1
    return out


# -- 3. `mcpfw serve` over HTTP ---------------------------------------------------------------


async def http_front(batches: dict[str, list[list[dict[str, Any]]]], work: Path) -> Tally:
    from tests.proxy.http_harness import write_config
    from tests.reliability.http_support import serving

    tally = Tally()
    async with serving(write_config(work)) as served:
        for version, version_batches in batches.items():
            for batch in version_batches:
                tally.batches += 1
                tally.messages += len(batch)
                try:
                    with anyio.fail_after(WAIT * 3):
                        await http_fuzz._post_all(served.mcp("fs"), batch, modern=version >= "2026")
                except BaseException as exc:  # tallied
                    exc = _unwrap(exc)
                    kind = {AssertionError: "wrong", TimeoutError: "hangs"}.get(
                        type(exc), "crashes"
                    )
                    tally.failed(kind, exc)
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=100, help="per protocol revision")
    parser.add_argument("--lines", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=8)
    args = parser.parse_args()
    import logging

    logging.disable(logging.CRITICAL)  # the firewall logs every refusal; the tables say enough
    started = time.monotonic()
    batches = {v: _batches(v, args.batches, args.seed + i) for i, v in enumerate(VERSIONS)}
    t0 = time.monotonic()
    relay = stdio_relay(batches)
    t1 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        proc = anyio.run(stdio_process, args.lines, args.seed, Path(tmp))
    t2 = time.monotonic()
    import tracemalloc

    tracemalloc.start()
    with tempfile.TemporaryDirectory() as tmp:
        http = anyio.run(http_front, batches, Path(tmp))
    http_peak_mb = tracemalloc.get_traced_memory()[1] / (1 << 20)
    tracemalloc.stop()
    t3 = time.monotonic()

    print(f"Fuzzing: seed {args.seed}, {args.batches} batches per protocol revision\n")
    print("| target | cases | crashes | hangs | wrong answers | time |")
    print("|---|---|---|---|---|---|")
    print(f"| stdio relay (schema-generated, in process) | {relay.messages} messages in "
          f"{relay.batches} batches | {relay.crashes} | {relay.hangs} | {relay.wrong} | "
          f"{t1 - t0:.1f} s |")  # fmt: skip
    print(f"| `mcpfw run` (mutated bytes on stdin) | {proc['lines']} lines, {proc['pings']} "
          f"liveness pings answered | {proc['crashes']} | {proc['hangs']} | "
          f"{0 if proc['final_call_ok'] else 1} | {t2 - t1:.1f} s |")  # fmt: skip
    print(f"| `mcpfw serve` (schema-generated, HTTP) | {http.messages} messages in "
          f"{http.batches} batches | {http.crashes} | {http.hangs} | {http.wrong} | "
          f"{t3 - t2:.1f} s |")  # fmt: skip
    print()
    print(f"- `mcpfw run` resident memory: {proc['rss_start_kb'] // 1024} MiB after start, "
          f"{proc['rss_end_kb'] // 1024} MiB after {proc['lines']} hostile lines "
          "(one of them 65 MiB, refused)")  # fmt: skip
    print(f"- `mcpfw serve` (in this process): peak Python heap {http_peak_mb:.1f} MiB over the "
          "whole HTTP run (tracemalloc)")  # fmt: skip
    print(f"- error codes `mcpfw run` answered: {proc['codes']}")
    print(f"- total wall time {time.monotonic() - started:.1f} s")
    for example in relay.examples + http.examples:
        print(f"- {example}")
    bad = relay.crashes + relay.hangs + relay.wrong + http.crashes + http.hangs + http.wrong
    bad += proc["crashes"] + proc["hangs"] + (0 if proc["final_call_ok"] else 1)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
