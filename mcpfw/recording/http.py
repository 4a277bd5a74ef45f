"""Recording for `mcpfw serve` (HTTP): one recorded session per agent session and endpoint.

- A handshake-era session (`Mcp-Session-Id`) is one recording, named by its session id. The
  HTTP front answers `initialize` itself before the session exists, so the recording opens
  with that exchange rebuilt from the session (protocol version, client capabilities) and the
  endpoint's own answer, marked `"source": "firewall"`.
- 2026-07-28 requests stand alone, so their recording is kept per agent identity and endpoint
  (like their guard session) until the firewall stops.
- The aggregate endpoint `/mcp` is recorded with server `"*"`: its tool names carry their
  server (`<server>__<tool>`), and replay splits them again.

Every request the endpoint answers is recorded with its response; a `tools/call` carries the
id and snapshot of the decision the guard took. Like stdio recording, nothing here blocks a
request: messages are queued and written by one background task per recording.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from sqlalchemy.ext.asyncio import AsyncEngine

from mcpfw.model import Agent, Decision, new_id, utcnow
from mcpfw.recording.format import SessionHeader
from mcpfw.recording.writer import Redactor, SessionRecorder

__all__ = ["AGGREGATE_SERVER", "HttpRecordings"]

log = logging.getLogger("mcpfw.recording")

AGGREGATE_SERVER = "*"


def _identity(agent: Agent) -> str:
    claims = json.dumps(dict(agent.claims), sort_keys=True, default=str)
    return f"{agent.id}\0{','.join(agent.roles)}\0{claims}"


class HttpRecordings:
    """The recorders of one `mcpfw serve` process."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        redact: Redactor,
        records: Callable[[str], bool],
        instance: str = "",
    ) -> None:
        self.engine = engine
        self._redact = redact
        self._records = records
        self._instance = instance
        self._by_key: dict[tuple[str, str, str], SessionRecorder] = {}
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the recorders' background writers until cancelled (then close them all)."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            with anyio.CancelScope(shield=True):
                await self.aclose()

    def request(self, ctx: Any, endpoint: Any, message: Any) -> tuple[SessionRecorder, int] | None:
        """Record one request an endpoint is about to answer; returns the handle for its
        response (None when this agent is not recorded)."""
        if self._tg is None or not self._records(ctx.agent.id):
            return None
        server = endpoint.server or AGGREGATE_SERVER
        session = ctx.session
        key = ("s", session.id, server) if session is not None else (
            "a", _identity(ctx.agent), server
        )  # fmt: skip
        recorder = self._by_key.get(key)
        if recorder is None:
            recorder = self._open(key, ctx, endpoint, server)
        return recorder, recorder.record("c2s", message)

    def response(
        self, handle: tuple[SessionRecorder, int] | None, message: Any, decision: Decision | None
    ) -> None:
        """Record the response to a request recorded by `request`."""
        if handle is None:
            return
        recorder, seq = handle
        if decision is not None:
            recorder.attach(seq, decision)
        recorder.record("s2c", message, decision=decision)

    def _open(
        self, key: tuple[str, str, str], ctx: Any, endpoint: Any, server: str
    ) -> SessionRecorder:
        session = ctx.session
        recorder = SessionRecorder()
        self._by_key[key] = recorder
        if session is not None:
            init_id = "mcpfw-initialize"
            recorder.record(
                "c2s",
                {
                    "jsonrpc": "2.0",
                    "id": init_id,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": session.protocol_version,
                        "capabilities": session.client_capabilities,
                    },
                },
                source="firewall",
            )
            recorder.record(
                "s2c",
                {
                    "jsonrpc": "2.0",
                    "id": init_id,
                    "result": endpoint.initialize_result(session.protocol_version),
                },
                source="firewall",
            )
        header = SessionHeader(
            session_id=session.id if session is not None else new_id(),
            agent=ctx.agent,
            server=server,
            started=utcnow(),
            instance=self._instance,
            note="http" if session is not None else "http, 2026-07-28 requests of one agent",
        )
        assert self._tg is not None
        recorder.will_start()
        self._tg.start_soon(self._serve, recorder, header)
        return recorder

    async def _serve(self, recorder: SessionRecorder, header: SessionHeader) -> None:
        try:
            await recorder.start(self.engine, header, redact=self._redact)
        except Exception as exc:  # boundary: recording never stops serving
            log.error("recording: cannot start recording session %s: %s", header.session_id, exc)
            return
        await recorder.run()

    async def session_closed(self, session_id: str, reason: str) -> None:
        """A handshake-era session ended: finish its recordings."""
        for key in [k for k in self._by_key if k[0] == "s" and k[1] == session_id]:
            await self._by_key.pop(key).aclose(reason=reason)

    async def aclose(self) -> None:
        """Finish every recording (firewall shutdown)."""
        recorders, self._by_key = list(self._by_key.values()), {}
        for recorder in recorders:
            await recorder.aclose(reason="firewall shutting down")
