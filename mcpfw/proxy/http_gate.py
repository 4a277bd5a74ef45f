"""The Guard, per authenticated agent, for the HTTP front (the `ToolGate` of an endpoint).

There is one `Guard` per upstream (rules see `tool.server`), all sharing one rule holder and
one audit store. Each agent gets its own `GuardSession` per upstream it uses:

- a handshake-era session (`Mcp-Session-Id`) has its own guard sessions, recorded as
  `<session id>` on a per-server endpoint and `<session id>/<server>` on the aggregate one;
- 2026-07-28 requests stand alone, so their guard session is kept per agent identity and
  upstream ("one stateless agent"), not opened and closed on every POST.

`ask` decisions reach the human through `elicitation/create` on the tools/call's own POST
stream (handshake era), or through the Guard's `InputRequiredResult` (2026-07-28).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping
from typing import Any

import anyio
from anyio.abc import TaskGroup

from mcpfw.model import Agent, Decision, Outcome, ToolCall
from mcpfw.proxy.guard import AskAnswer, Guard, GuardSession, client_can_elicit_modern
from mcpfw.proxy.guard import _elicit_params as elicit_params
from mcpfw.proxy.http_endpoint import CallContext, Forward
from mcpfw.proxy.http_session import AgentSession
from mcpfw.proxy.relay import PinHook
from mcpfw.proxy.shared_upstream import TIMEOUT_ERROR, Raw

__all__ = ["HttpGate"]

log = logging.getLogger("mcpfw.serve")

_MAX_STATELESS = 10_000  # guard sessions kept for stateless agents (oldest dropped)


def _identity(agent: Agent) -> str:
    claims = json.dumps(dict(agent.claims), sort_keys=True, default=str)
    return f"{agent.id}\0{','.join(agent.roles)}\0{claims}"


class HttpGate:
    """Runs every HTTP tools/call through the Guard of its upstream."""

    def __init__(
        self, guards: Mapping[str, Guard], pins: Mapping[str, PinHook] | None = None
    ) -> None:
        self.guards = dict(guards)
        self.pins = dict(pins or {})  # tool pinning per upstream: sees tools/list results first
        self._by_session: dict[tuple[int, str], GuardSession] = {}
        self._stateless: dict[tuple[str, str], GuardSession] = {}
        self.recordings: Any = None  # mcpfw.recording.http.HttpRecordings, when recording
        # Outcomes are recorded after the answer is sent (the decision was committed before
        # forwarding); the firewall's lifespan provides the task group and waits for it.
        self.background: TaskGroup | None = None
        self._writing = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._settled = anyio.Event()
        self._settled.set()

    def _later(self, finishing: Coroutine[Any, Any, None]) -> Coroutine[Any, Any, None] | None:
        """Run an outcome write in the background when possible; else return it to await.

        The write is a plain asyncio task (an anyio `start_soon` costs several times more,
        on every call); the firewall's lifespan waits for `settled()` before the audit store
        closes, so no outcome is lost at shutdown.
        """
        if self.background is None:
            return finishing

        async def run() -> None:
            try:
                await finishing
            except Exception:  # boundary of a background write: log it, keep serving
                log.exception("recording a call's outcome failed")
            finally:
                self._writing -= 1
                if not self._writing:
                    self._settled.set()

        if not self._writing:
            self._settled = anyio.Event()
        self._writing += 1
        task = asyncio.ensure_future(run())
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)
        return None

    async def settled(self) -> None:
        """Wait until every outcome handed to the background is written (tests, shutdown)."""
        await self._settled.wait()

    async def _guard_session(self, ctx: CallContext, server: str) -> GuardSession:
        guard = self.guards[server]
        if ctx.session is not None:
            key = (id(ctx.session), server)
            found = self._by_session.get(key)
            if found is None:
                sid = ctx.session.id if ctx.session.endpoint else f"{ctx.session.id}/{server}"
                found = await guard.open_session(
                    agent=ctx.agent,
                    session_id=sid,
                    detail={"transport": "http", "protocol": ctx.session.protocol_version},
                )
                self._by_session[key] = found
            # Rules see the roles and claims of the token on *this* request: a session opened
            # with more privileges must not keep them once the agent's token no longer has them.
            found.agent = ctx.agent
            return found
        skey = (_identity(ctx.agent), server)
        found = self._stateless.get(skey)
        if found is None:
            found = await guard.open_session(
                agent=ctx.agent, detail={"transport": "http", "protocol": "stateless"}
            )
            if len(self._stateless) >= _MAX_STATELESS:
                self._stateless.pop(next(iter(self._stateless)))
            self._stateless[skey] = found
        return found

    async def filter_tools(self, ctx: CallContext, server: str, result: Raw) -> Raw:
        session = await self._guard_session(ctx, server)
        pins = self.pins.get(server)
        if pins is not None:
            result = await pins.on_tools_list(result)
        filtered: Raw = session.filter_tools(result)
        return filtered

    async def call(self, ctx: CallContext, server: str, request: Raw, forward: Forward) -> Raw:
        gsession = await self._guard_session(ctx, server)
        session = ctx.session
        if ctx.modern:
            verdict = await gsession.check(
                request, era="modern", can_elicit=client_can_elicit_modern(request.get("params"))
            )
        else:
            verdict = await gsession.check(
                request,
                era="handshake",
                can_elicit=session is not None and session.supports("elicitation"),
                ask=lambda call, decision: self._ask(ctx, call, decision),
            )
        ctx.decision = verdict.decision  # the endpoint records it with the response
        if verdict.forward is None:
            if (pending := self._later(gsession.finish(verdict))) is not None:
                await pending
            assert verdict.response is not None
            return verdict.response
        try:
            params = verdict.forward.get("params")
            response = await forward(params if isinstance(params, dict) else None)
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await gsession.finish(verdict, outcome=Outcome.CANCELLED, detail="client went away")
            raise
        if ctx.modern:
            response = gsession.rewrite_response(verdict, response)
        error = response.get("error")
        timed_out = isinstance(error, dict) and error.get("code") == TIMEOUT_ERROR
        outcome = Outcome.TIMEOUT if timed_out else None
        if (
            pending := self._later(gsession.finish(verdict, response, outcome=outcome))
        ) is not None:
            await pending
        return response

    async def _ask(self, ctx: CallContext, call: ToolCall, decision: Decision) -> AskAnswer:
        if ctx.session is None:
            return "unsupported"
        reply = await ctx.exchange.client_request(
            "elicitation/create", elicit_params(call, decision)
        )
        result = reply.get("result")
        action = result.get("action") if isinstance(result, dict) else None
        if action in ("accept", "decline", "cancel"):
            return action  # type: ignore[no-any-return]
        log.warning("ask: the agent answered elicitation with %s", reply.get("error"))
        return "cancel"

    async def session_closed(self, session: AgentSession, reason: str) -> None:
        """Record the end of every guard session of an agent session."""
        if self.recordings is not None:
            await self.recordings.session_closed(session.id, reason)
        for key in [k for k in self._by_session if k[0] == id(session)]:
            await self._by_session.pop(key).close(reason)

    async def aclose(self) -> None:
        for gsession in [*self._by_session.values(), *self._stateless.values()]:
            await gsession.close("firewall shutting down")
        self._by_session.clear()
        self._stateless.clear()
