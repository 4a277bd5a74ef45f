"""Crash consistency, the long run: SIGKILL `mcpfw run` under load many times, then check the
audit log. For docs/reliability.md.

    .venv/bin/python bench/crash_consistency.py [--rounds 60] [--seed 8] [--in-flight 8]
                                                [--audit postgresql+asyncpg://...?schema=x]

Each round starts a fresh `mcpfw run` (its own audit chain) in front of a stdlib-only upstream
that fsyncs every tools/call id it receives, drives it with `--in-flight` concurrent calls
(every fifth one denied by the rules), and kills it with SIGKILL at a random moment: one round
in five during startup (while the audit store is still opening), the rest under load. Then:
every call the upstream received must have a committed allow decision, every denial the client
saw must be in the log, and `mcpfw audit verify` must pass. Prints a markdown table; exit 1 on
any lost event. The same harness runs 20 rounds in tests/reliability/test_crash_consistency.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.reliability.crash_harness import CrashReport, crash_rounds  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--load-s", type=float, default=0.4, help="max load time before a kill")
    parser.add_argument(
        "--audit",
        default=None,
        help="audit URL (default: a fresh SQLite file); e.g. "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test?schema=crash",
    )
    args = parser.parse_args()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mcpfw-crash-") as work:

        async def run() -> CrashReport:
            return await crash_rounds(
                Path(work),
                rounds=args.rounds,
                seed=args.seed,
                in_flight=args.in_flight,
                load_s=args.load_s,
                audit=args.audit,
            )

        report = anyio.run(run)
    elapsed = time.monotonic() - started
    r = report
    rows = [
        ("SIGKILL rounds", r.rounds),
        ("  of which during startup", r.killed_during_startup),
        ("tools/call sent", r.calls_sent),
        ("answers received before the kill", r.answers),
        ("calls the upstream received", len(r.received)),
        ("decision events committed", len(r.decision_ids)),
        ("denials shown to the client", len(r.denials)),
        ("audit chains (one per process)", r.chains),
        ("audit events", r.events),
        ("**received without a committed decision (lost)**", len(r.lost)),
        ("**denials missing from the log (lost)**", len(r.lost_denials)),
        ("`mcpfw audit verify`", "OK" if r.verify_ok else "FAILED"),
        ("wall time", f"{elapsed:.1f} s"),
    ]
    store = "PostgreSQL" if args.audit and "postgres" in args.audit else "SQLite"
    print(f"Crash consistency: seed {args.seed}, {args.in_flight} calls in flight, {store}\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if not r.verify_ok:
        print("\n" + r.verify_output)
    return 0 if r.verify_ok and not r.lost and not r.lost_denials else 1


if __name__ == "__main__":
    raise SystemExit(main())
