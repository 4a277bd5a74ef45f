"""In-process harness for the relay: memory channels on both sides and a memory audit store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from mcpfw.model import Agent, Decision, Outcome, ToolCall
from mcpfw.proxy.guard import Guard, GuardSession, GuardSettings
from mcpfw.proxy.messages import InvalidMessage, Message
from mcpfw.proxy.relay import Relay
from mcpfw.proxy.reload import RuleHolder
from mcpfw.proxy.stdio import Channel

WAIT = 5  # seconds any single step may take before a test fails

RULES = """\
default: deny
rules:
  - id: reads
    effect: allow
    tools: [read_file, list_directory, echo]
  - id: no-secrets
    effect: deny
    tools: [read_file]
    when: 'args.path.contains("secret")'
    message: secrets are never read by agents
  - id: confirm-deletes
    effect: ask
    tools: [delete_file]
    message: deleting needs a human
  - id: would-block-echo-loud
    effect: deny
    mode: shadow
    tools: [echo]
    when: 'has(args.text) && args.text == "LOUD"'
"""


@dataclass
class MemoryStore:
    """The AuditStore contract, in memory, with failure injection."""

    fail_decisions: bool = False
    sessions: list[tuple[str, str]] = field(default_factory=list)
    decisions: list[tuple[ToolCall, Decision]] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    async def record_session_start(
        self, *, session_id: str, agent: Agent, server: str, detail: Any = None
    ) -> None:
        self.sessions.append(("start", session_id))

    async def record_decision(self, call: ToolCall, decision: Decision) -> None:
        if self.fail_decisions:
            raise OSError("database or disk is full")
        self.decisions.append((call, decision))

    async def record_outcome(
        self,
        decision_id: str,
        outcome: Outcome,
        *,
        latency_ms: float | None = None,
        is_error: bool | None = None,
        result: Any = None,
        detail: str = "",
    ) -> None:
        self.outcomes.append(
            {
                "decision_id": decision_id,
                "outcome": outcome,
                "latency_ms": latency_ms,
                "is_error": is_error,
                "detail": detail,
            }
        )

    async def record_session_end(self, session_id: str, *, reason: str = "") -> None:
        self.sessions.append(("end", session_id))

    def outcome_of(self, decision: Decision) -> Outcome:
        found = [o["outcome"] for o in self.outcomes if o["decision_id"] == decision.id]
        assert len(found) == 1, f"expected one outcome for {decision.id}, got {found}"
        return found[0]


@dataclass
class Harness:
    """Both ends of a running relay: the test plays the client and the upstream."""

    to_relay: ObjectSendStream[Message | InvalidMessage]  # as the client
    from_relay: ObjectReceiveStream[Message]  # what the client receives
    upstream_in: ObjectReceiveStream[Message]  # what the upstream receives
    upstream_out: ObjectSendStream[Message | InvalidMessage]  # as the upstream
    relay: Relay
    session: GuardSession
    store: MemoryStore
    holder: RuleHolder
    upstream: Channel

    async def client_gets(self) -> Message:
        with anyio.fail_after(WAIT):
            return await self.from_relay.receive()

    async def upstream_gets(self) -> Message:
        with anyio.fail_after(WAIT):
            return await self.upstream_in.receive()

    async def send(self, message: Message | InvalidMessage) -> None:
        with anyio.fail_after(WAIT):
            await self.to_relay.send(message)

    async def reply(self, message: Message) -> None:
        with anyio.fail_after(WAIT):
            await self.upstream_out.send(message)

    async def initialize(self, *, elicitation: bool = True) -> None:
        caps: dict[str, Any] = {"elicitation": {}} if elicitation else {}
        await self.send(
            request(0, "initialize", {"protocolVersion": "2025-11-25", "capabilities": caps})
        )
        got = await self.upstream_gets()
        await self.reply(
            {"jsonrpc": "2.0", "id": got["id"], "result": {"protocolVersion": "2025-11-25"}}
        )
        await self.client_gets()


def request(rid: Any, method: str, params: dict[str, Any] | None = None) -> Message:
    message: Message = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        message["params"] = params
    return message


def call(rid: Any, tool: str, args: dict[str, Any], **extra: Any) -> Message:
    return request(rid, "tools/call", {"name": tool, "arguments": args, **extra})


MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
}


def result_text(message: Message) -> str:
    return str(message["result"]["content"][0]["text"])


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    rules: str = RULES,
    *,
    store: MemoryStore | None = None,
    settings: GuardSettings | None = None,
    call_timeout_s: float = 30.0,
) -> AsyncIterator[Harness]:
    """A relay between memory channels, with the rules written to tmp_path."""
    rule_file = tmp_path / "rules.yaml"
    rule_file.write_text(rules)
    holder = RuleHolder([rule_file])
    holder.load()
    store = store or MemoryStore()
    guard = Guard(rules=holder, store=store, settings=settings or GuardSettings(server="fs"))  # type: ignore[arg-type]
    session = await guard.open_session(agent=Agent(id="agent-1", roles=("dev",)))
    c_send, c_recv = anyio.create_memory_object_stream[Message | InvalidMessage](16)
    cw_send, cw_recv = anyio.create_memory_object_stream[Message](16)
    u_send, u_recv = anyio.create_memory_object_stream[Message | InvalidMessage](16)
    uw_send, uw_recv = anyio.create_memory_object_stream[Message](16)
    client = Channel(read=c_recv, write=cw_send, name="client")
    upstream = Channel(read=u_recv, write=uw_send, name="fs")

    async def source() -> GuardSession:
        return session

    relay = Relay(
        client=client,
        upstream=upstream,
        session=source,
        call_timeout_s=call_timeout_s,
        shutdown_grace_s=1.0,
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.run)
        yield Harness(c_send, cw_recv, uw_recv, u_send, relay, session, store, holder, upstream)
        tg.cancel_scope.cancel()
