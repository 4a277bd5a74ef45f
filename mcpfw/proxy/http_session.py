"""Agent-side state of `mcpfw serve`: handshake-era sessions and single HTTP exchanges.

An `AgentSession` is opened by `initialize` (handshake era) and bound to the identity that
opened it; presenting its `Mcp-Session-Id` with another identity is refused. It owns the GET
stream's queue (notifications and server→client requests not tied to a POST), the
server→client requests awaiting the agent's answer, and its resource subscriptions.

An `Exchange` is one POSTed request: upstream traffic related to it (progress, elicitation)
goes onto that POST's own SSE stream while it is open, else onto the session's GET stream.
2026-07-28 requests have no session: their exchange has no back-channel at all.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mcpfw.model import Agent
from mcpfw.proxy.shared_upstream import Raw, error_message

__all__ = ["AgentSession", "Exchange", "SessionTable"]

log = logging.getLogger("mcpfw.serve")

_QUEUE = 256  # messages buffered per stream before further ones are dropped
_CLIENT_REQUEST_TIMEOUT_S = 300.0
NO_BACK_CHANNEL = -32601


@dataclass(eq=False, kw_only=True)
class AgentSession:
    """One handshake-era MCP session of one authenticated agent on one endpoint."""

    id: str
    agent: Agent
    endpoint: str  # the server name, or "" for the aggregate endpoint
    protocol_version: str
    client_capabilities: Raw
    calls: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    subscriptions: set[tuple[str, str]] = field(default_factory=set)
    closed: bool = False

    def __post_init__(self) -> None:
        self._out_send, self.out_recv = anyio.create_memory_object_stream[Raw](_QUEUE)
        self.get_stream_open = False
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[anyio.Event, list[Raw]]] = {}
        self.inflight: dict[object, anyio.CancelScope] = {}  # client request id -> its handler

    @property
    def route_key(self) -> object:
        return self

    def push(self, message: Raw) -> None:
        """Queue a message for the GET stream (dropped when nobody drains it and it is full)."""
        try:
            self._out_send.send_nowait(message)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            log.debug(
                "session %s: dropped %s (GET stream full or closed)", self.id, message.get("method")
            )

    # Subscriber protocol for SharedUpstream broadcasts (`route_key` picks its upstream session).
    def broadcast(self, server: str, message: Raw) -> None:
        if self.endpoint and self.endpoint != server:
            return
        self.push(message)

    def subscribed(self, server: str, uri: str) -> bool:
        return (server, uri) in self.subscriptions

    def supports(self, capability: str) -> bool:
        return isinstance(self.client_capabilities.get(capability), dict)

    async def client_request(self, method: str, params: Raw | None, via: Exchange | None) -> Raw:
        """Send a request to the agent (on `via`'s POST stream if open) and await its answer."""
        request_id = f"mcpfw-{next(self._ids)}"
        message: Raw = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        done, slot = anyio.Event(), list[Raw]()
        self._waiting[request_id] = (done, slot)
        try:
            if via is None or not via.send(message):
                self.push(message)
            with anyio.move_on_after(_CLIENT_REQUEST_TIMEOUT_S):
                await done.wait()
            if not slot:
                return error_message(request_id, -32001, f"the agent did not answer {method}")
            return slot[0]
        finally:
            self._waiting.pop(request_id, None)

    def resolve(self, response: Raw) -> bool:
        """Deliver the agent's response to a request we sent; False if nobody waits for it."""
        waiting = self._waiting.get(str(response.get("id")))
        if waiting is None:
            return False
        waiting[1].append(response)
        waiting[0].set()
        return True

    def close(self) -> None:
        self.closed = True
        self._out_send.close()
        for done, _ in self._waiting.values():
            done.set()


class SessionTable:
    """Live sessions by id, with idle expiry."""

    def __init__(
        self,
        *,
        idle_timeout_s: float = 3600.0,
        max_sessions: int = 10_000,
        max_per_agent: int = 100,
    ) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.max_sessions = max_sessions
        self.max_per_agent = max_per_agent
        self._sessions: dict[str, AgentSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def open(
        self, agent: Agent, endpoint: str, protocol_version: str, capabilities: Raw
    ) -> tuple[AgentSession, list[AgentSession]]:
        """A new session, and the sessions closed to make room (the caller records them)."""
        closed = self.expire()
        # Bounded per agent first, so one agent opening sessions in a loop only evicts its own.
        own = [s for s in self._sessions.values() if s.agent.id == agent.id]
        victim: AgentSession | None = None
        if len(own) >= self.max_per_agent:
            victim = min(own, key=lambda s: s.last_seen)
        elif len(self._sessions) >= self.max_sessions:
            victim = min(self._sessions.values(), key=lambda s: s.last_seen)
        if victim is not None:
            self.close(victim.id)
            closed.append(victim)
        session = AgentSession(
            id=secrets.token_urlsafe(24),
            agent=agent,
            endpoint=endpoint,
            protocol_version=protocol_version,
            client_capabilities=capabilities,
        )
        self._sessions[session.id] = session
        return session, closed

    def get(self, session_id: str) -> AgentSession | None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.last_seen = time.monotonic()
        return session

    def close(self, session_id: str) -> AgentSession | None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()
        return session

    def expire(self) -> list[AgentSession]:
        cutoff = time.monotonic() - self.idle_timeout_s
        stale = [s for s in self._sessions.values() if s.last_seen < cutoff]
        for session in stale:
            self.close(session.id)
        return stale

    def all(self) -> list[AgentSession]:
        return list(self._sessions.values())


class Exchange:
    """One POSTed JSON-RPC request: the `Downstream` its upstream traffic is routed to."""

    def __init__(self, session: AgentSession | None, *, streaming: bool = True) -> None:
        self.session = session
        self.streaming = streaming  # False: the client takes JSON only, nothing is streamed
        self._send: MemoryObjectSendStream[Raw] | None = None
        self.events: MemoryObjectReceiveStream[Raw] | None = None  # made on the first message
        self._finished = False
        self.on_first: Callable[[], None] | None = None  # the front starts its SSE pump here

    @property
    def route_key(self) -> object:
        return self.session if self.session is not None else self

    def send(self, message: Raw) -> bool:
        """Put a message on this POST's stream; False if the stream is no longer open."""
        if self._finished or not self.streaming:
            return False
        if self._send is None:
            self._send, self.events = anyio.create_memory_object_stream[Raw](_QUEUE)
            if self.on_first is not None:
                self.on_first()
        try:
            self._send.send_nowait(message)
            return True
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False

    def finish(self) -> None:
        """The response is about to be written: later traffic goes to the session stream."""
        self._finished = True
        if self._send is not None:
            self._send.close()

    def notify(self, message: Raw) -> None:
        if not self.send(message) and self.session is not None:
            self.session.push(message)

    async def client_request(self, method: str, params: Raw | None) -> Raw:
        if self.session is None:
            return error_message(
                None,
                NO_BACK_CHANNEL,
                f"{method} cannot reach a 2026-07-28 client through mcpfw (no back-channel)",
            )
        if method == "elicitation/create" and not self.session.supports("elicitation"):
            return error_message(None, NO_BACK_CHANNEL, "the agent does not support elicitation")
        if method == "sampling/createMessage" and not self.session.supports("sampling"):
            return error_message(None, NO_BACK_CHANNEL, "the agent does not support sampling")
        return await self.session.client_request(method, params, self)
