"""Crash consistency: SIGKILL `mcpfw run` at random moments under load, many times over, then
check that every call the upstream received has a committed decision event and that every
audit chain verifies. Used by tests/reliability/test_crash_consistency.py (a short run) and
bench/crash_consistency.py (a long one, for the report).

One round: start `mcpfw run` (a new process, so a new audit chain) in front of the stdlib-only
fixture upstream, which appends every tools/call id it receives to a file with fsync before
answering; keep `in_flight` calls going (allowed ones, and some the rules deny); SIGKILL the
firewall after a random delay (some rounds during startup, most under load); wait for the
orphaned upstream to see EOF and exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from mcpfw.proxy.stdio import LineSplitter

from .memory_front import raw_upstream_argv
from .raw_client import MCPFW, ROOT

RULES = """\
default: deny
rules:
  - id: echo-ok
    effect: allow
    tools: [echo]
  - id: no-etc
    effect: deny
    tools: [read_file]
    when: 'args.path.startsWith("/etc")'
"""

_DECISION = re.compile(r"decision (\w+)\)")


@dataclass
class CrashReport:
    rounds: int = 0
    killed_during_startup: int = 0
    calls_sent: int = 0
    answers: int = 0
    denials: list[str] = field(default_factory=list)  # decision ids the client was shown
    received: list[str] = field(default_factory=list)  # call ids the upstream got
    decisions: dict[str, str] = field(default_factory=dict)  # request id -> effect
    decision_ids: set[str] = field(default_factory=set)
    chains: int = 0
    events: int = 0
    verify_ok: bool = False
    verify_output: str = ""
    seconds: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    outcome_ids: set[str] = field(default_factory=set)  # decision ids that have an outcome
    session_ends: int = 0

    @property
    def lost(self) -> list[str]:
        """Calls the upstream received without an allow decision on record."""
        return [rid for rid in self.received if self.decisions.get(rid) != "allow"]

    @property
    def lost_denials(self) -> list[str]:
        """Denials the client saw whose decision event is not in the log."""
        return [d for d in self.denials if d not in self.decision_ids]


def _pid_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


async def _round(
    work: Path,
    index: int,
    rng: random.Random,
    report: CrashReport,
    in_flight: int,
    load_s: float,
    sig: signal.Signals,
    startup_share: float,
    audit: str,
) -> None:
    pidfile = work / f"upstream-{index}.pid"
    argv = [
        *MCPFW, "run", "--rules", str(work / "rules.yaml"), "--agent", "crash-test",
        "--audit", audit, "--log-level", "error",
        "--", *raw_upstream_argv(work / "received.txt"),
    ]  # fmt: skip
    env = {**os.environ, "RAW_UPSTREAM_PIDFILE": str(pidfile)}
    started = time.monotonic()
    process = await anyio.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
        cwd=ROOT,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    stdin, stdout = process.stdin, process.stdout
    during_startup = rng.random() < startup_share
    kill_after = rng.uniform(0.0, 1.0) if during_startup else None
    slots = anyio.Semaphore(in_flight)
    ready = anyio.Event()
    serving = anyio.Event()  # the first call was answered: the audit store is open

    async def send(message: dict[str, Any]) -> None:
        await stdin.send(json.dumps(message).encode() + b"\n")

    async def reader() -> None:
        splitter = LineSplitter()
        try:
            async for chunk in stdout:
                for message in splitter.feed(chunk):
                    if not isinstance(message, dict):
                        continue
                    if message.get("id") == "init":
                        ready.set()
                        continue
                    report.answers += 1
                    serving.set()
                    result = message.get("result")
                    if isinstance(result, dict) and result.get("isError"):
                        text = str(result["content"][0]["text"])
                        found = _DECISION.search(text)
                        if found and "rule 'audit'" not in text:
                            report.denials.append(found.group(1))
                    slots.release()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass

    async def writer() -> None:
        await send({"jsonrpc": "2.0", "id": "init", "method": "initialize",
                    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                               "clientInfo": {"name": "crash", "version": "1"}}})  # fmt: skip
        await ready.wait()
        await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        n = 0
        while True:
            await slots.acquire()
            n += 1
            rid = f"r{index}-{n}"
            if n % 5 == 0:
                params = {"name": "read_file", "arguments": {"path": "/etc/shadow"}}
            else:
                params = {"name": "echo", "arguments": {"text": rid}}
            await send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params})
            report.calls_sent += 1

    async def killer(tg_scope: anyio.CancelScope) -> None:
        if kill_after is not None:
            await anyio.sleep(kill_after)
            report.killed_during_startup += 1
        else:
            await serving.wait()
            await anyio.sleep(rng.uniform(0.0, load_s))
        process.send_signal(sig)
        report.exit_codes.append(await process.wait())
        tg_scope.cancel()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(_guarded, writer)
            tg.start_soon(killer, tg.cancel_scope)
        # the orphaned upstream sees EOF on its stdin and exits; wait for it (bounded)
        pid = int(pidfile.read_text()) if pidfile.exists() else None
        while pid is not None and not _pid_gone(pid):
            await anyio.sleep(0.01)
    report.rounds += 1
    report.seconds += time.monotonic() - started


async def _guarded(fn: Any) -> None:
    # the firewall is killed under the writer: its pipe breaks
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await fn()


async def _collect(audit: str, report: CrashReport) -> None:
    from mcpfw.audit import EventFilter, open_store

    async with open_store(audit, create=False) as store:
        async for event in store.iter_events(EventFilter()):
            report.events += 1
            if event.kind == "outcome" and event.decision_id:
                report.outcome_ids.add(event.decision_id)
            if event.kind == "session_end":
                report.session_ends += 1
            if event.kind == "decision":
                report.decision_ids.add(event.id)
                rid = event.data.get("request_id")
                if isinstance(rid, str):
                    report.decisions[rid] = str(event.effect)
        report.chains = len(await store.chain_heads())


def _verify(audit: str, report: CrashReport) -> None:
    done = subprocess.run(
        [*MCPFW, "audit", "verify", "--audit", audit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    report.verify_ok = done.returncode == 0
    report.verify_output = (done.stdout + done.stderr).strip()


async def crash_rounds(
    work: Path,
    *,
    rounds: int,
    seed: int = 8,
    in_flight: int = 8,
    load_s: float = 0.4,
    sig: signal.Signals = signal.SIGKILL,
    startup_share: float = 0.2,
    audit: str | None = None,
) -> CrashReport:
    """Run `rounds` kill rounds in `work` (signal `sig`) and check the audit log afterwards
    (a SQLite file in `work`, or the `audit` URL)."""
    audit = audit or str(work / "audit.db")
    (work / "rules.yaml").write_text(RULES)
    rng = random.Random(seed)
    report = CrashReport()
    for index in range(rounds):
        await _round(work, index, rng, report, in_flight, load_s, sig, startup_share, audit)
    received = work / "received.txt"
    if received.exists():
        report.received = [json.loads(line) for line in received.read_text().splitlines()]
    if "://" in audit or Path(audit).exists():
        await _collect(audit, report)
        _verify(audit, report)
    return report
