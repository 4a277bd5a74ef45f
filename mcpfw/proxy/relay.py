"""The message relay: client channel <-> upstream channel, with `tools/call` intercepted.

Every message passes through unchanged (dicts in, the same dicts out) except:

- `tools/call` requests, which go through the `GuardSession` (each in its own task, so a call
  waiting for a human does not hold up the others); a denial is answered here and never reaches
  the upstream;
- `tools/list` results, which the session reads (annotations for rules) and, with
  `hide_denied`, filters; further hooks (tool pinning) can rewrite them too;
- our own `elicitation/create` requests to the client (handshake-era `ask`), whose ids are
  firewall-owned and whose replies we consume. An upstream request that happens to reuse one of
  our in-flight ids is renamed on the way to the client and restored on the way back;
- `notifications/cancelled` for a call the guard still holds: the call is dropped (never
  forwarded) and recorded as cancelled.

When the upstream goes away, every pending request gets a JSON-RPC error naming why (`exited
with code 1`) and later requests get the same, immediately: the client never hangs. When the
client goes away, the upstream's stdin is closed and it gets a grace period to finish.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
from anyio.abc import TaskGroup

from mcpfw.model import Decision, Outcome, ToolCall, new_id
from mcpfw.proxy.guard import (
    AskAnswer,
    GuardSession,
    Verdict,
    client_can_elicit_modern,
    elicit_params,
)
from mcpfw.proxy.messages import (
    INVALID_REQUEST,
    PROTOCOL_VERSION_KEY,
    UPSTREAM_UNAVAILABLE,
    Era,
    InvalidMessage,
    Message,
    classify,
    error_response,
    is_modern_version,
    valid_id,
)
from mcpfw.proxy.stdio import Channel

__all__ = ["Direction", "PinHook", "Relay"]

log = logging.getLogger("mcpfw.relay")

Direction = Literal["client", "upstream"]  # where a message is going
Observer = Callable[[Direction, Message], None]
ToolsListHook = Callable[[Any], Any]
SessionSource = Callable[[], Awaitable[GuardSession]]

TIMEOUT_CODE = -32001  # same band the SDK uses for a request that timed out


class Recorder(Protocol):
    """Session recording (`mcpfw.recording.SessionRecorder`): never blocks the relay."""

    def record(
        self, direction: str, message: Any, *, decision: Decision | None = ..., source: str = ...
    ) -> int: ...

    def attach(self, seq: int, decision: Decision) -> None: ...


class PinHook(Protocol):
    """Tool pinning (`mcpfw.pins.PinChecker`): sees every tools/list result first."""

    async def on_tools_list(self, result: dict[str, Any]) -> dict[str, Any]: ...

    def on_list_changed(self) -> None: ...


OWN_TOOLS_LIST = "mcpfw/tools/list"  # our own tools/list to the upstream (pin re-check)


@dataclass(slots=True)
class _Pending:
    method: str
    verdict: Verdict | None = None
    done: anyio.Event = field(default_factory=anyio.Event)
    response: Message | None = None
    cancelled: bool = False
    gone: str = ""


@dataclass(slots=True)
class _Ask:
    done: anyio.Event = field(default_factory=anyio.Event)
    answer: AskAnswer = "cancel"


class Relay:
    """Relays one client session to one upstream until the client leaves."""

    def __init__(
        self,
        *,
        client: Channel,
        upstream: Channel,
        session: SessionSource,
        call_timeout_s: float = 300.0,
        shutdown_grace_s: float = 10.0,
        observers: tuple[Observer, ...] = (),
        tools_list_hooks: tuple[ToolsListHook, ...] = (),
        recorder: Recorder | None = None,
        pins: PinHook | None = None,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self._session_source = session
        self.call_timeout_s = call_timeout_s
        self.shutdown_grace_s = shutdown_grace_s
        self.observers = observers
        self.tools_list_hooks = tools_list_hooks
        self.recorder = recorder  # records what the client sent and received, in order
        self.pins = pins
        self._list_meta: dict[str, Any] | None = None  # _meta of the client's last tools/list
        self._call_seq: dict[Any, int] = {}  # tools/call id -> its recorded seq (for the link)
        self.dead = ""  # why the upstream is unusable, once it is
        self.client_caps: dict[str, Any] = {}
        self.negotiated_version: str | None = None
        self._pending: dict[Any, _Pending] = {}  # client request id -> waiting for upstream
        self._guarding: set[Any] = set()  # tools/call ids still inside the guard
        self._cancelled: set[Any] = set()  # ... of which the client cancelled these
        self._own: dict[str, _Ask] = {}  # our elicitation ids -> waiting for the client
        self._asking: dict[Any, str] = {}  # tools/call id -> our elicitation id
        self._aliases: dict[str, Any] = {}  # renamed upstream request id -> original id
        self._tg: TaskGroup | None = None
        self._upstream_done = anyio.Event()

    # -- plumbing ---------------------------------------------------------------------------

    async def _session(self) -> GuardSession:
        return await self._session_source()

    async def _to_client(
        self, message: Message, *, source: str = "firewall", decision: Decision | None = None
    ) -> None:
        # source "": relayed from the upstream; "firewall": mcpfw's own answer or request.
        if self.recorder is not None:
            self.recorder.record("s2c", message, decision=decision, source=source)
        for observe in self.observers:
            observe("client", message)
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.client.write.send(message)

    async def _to_upstream(self, message: Message) -> bool:
        if self.dead:
            return False
        for observe in self.observers:
            observe("upstream", message)
        try:
            # An upstream that stops reading its input would otherwise block this call (and,
            # for requests relayed by the client pump, every later message) forever.
            with anyio.fail_after(self.call_timeout_s):
                await self.upstream.write.send(message)
        except TimeoutError:
            if not self.dead:
                self.dead = (
                    f"stopped reading its input (nothing taken for {self.call_timeout_s:g} s)"
                )
                log.error("upstream '%s' %s: treating it as gone", self.upstream.name, self.dead)
            return False
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True

    def _gone_text(self) -> str:
        return f"mcpfw: the upstream server '{self.upstream.name}' {self.dead}"

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until the client closes its side; then let the upstream finish and stop."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._upstream_pump)
            await self._client_pump()
            # The client is gone: nobody can answer our questions any more.
            for ask in self._own.values():
                ask.answer = "cancel"
                ask.done.set()
            with anyio.move_on_after(self.shutdown_grace_s):
                while self._guarding:
                    await anyio.sleep(0.01)  # calls finishing their audit write, bounded
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await self.upstream.write.aclose()  # EOF to the upstream, as a direct client would
            with anyio.move_on_after(self.shutdown_grace_s):
                await self._upstream_done.wait()
            for pending in self._pending.values():
                pending.cancelled = True
                pending.done.set()
            self._pending.clear()
            tg.cancel_scope.cancel()

    async def _client_pump(self) -> None:
        async with self.client.read:
            async for item in self.client.read:
                if isinstance(item, InvalidMessage):
                    log.warning("client sent an invalid message: %s", item.error)
                    await self._to_client(error_response(None, item.code, item.error))
                    continue
                if self.recorder is not None:
                    seq = self.recorder.record("c2s", item)
                    if item.get("method") == "tools/call" and "id" in item:
                        self._call_seq[item["id"]] = seq
                kind = classify(item)
                if kind == "request":
                    await self._client_request(item)
                elif kind == "notification":
                    await self._client_notification(item)
                elif kind == "response":
                    await self._client_response(item)
                else:
                    rid = item.get("id")
                    rid = rid if valid_id(rid) else None  # never echo an object or array id
                    await self._to_client(
                        error_response(rid, INVALID_REQUEST, "not a JSON-RPC 2.0 request")
                    )

    async def _client_request(self, message: Message) -> None:
        rid = message["id"]
        method = message["method"]
        if rid in self._pending or rid in self._guarding:
            # A second request under an id in flight would take over the first one's answer
            # (and its audit outcome): refuse it, the first one carries on undisturbed.
            text = f"request id {rid!r} is already in use by a request in flight"
            await self._to_client(error_response(rid, INVALID_REQUEST, text))
            return
        if method == "tools/call":  # decided and recorded even when the upstream is gone
            assert self._tg is not None
            self._guarding.add(rid)
            self._tg.start_soon(self._call, message)
            return
        if self.dead:
            await self._to_client(error_response(rid, UPSTREAM_UNAVAILABLE, self._gone_text()))
            return
        if method == "tools/list":
            params = message.get("params")
            meta = params.get("_meta") if isinstance(params, dict) else None
            if isinstance(meta, dict):
                self._list_meta = {k: v for k, v in meta.items() if k != "progressToken"}
        if method == "initialize":
            params = message.get("params")
            caps = params.get("capabilities") if isinstance(params, dict) else None
            self.client_caps = caps if isinstance(caps, dict) else {}
        self._pending[rid] = _Pending(method)
        if not await self._to_upstream(message):
            self._pending.pop(rid, None)
            await self._to_client(error_response(rid, UPSTREAM_UNAVAILABLE, self._gone_text()))

    async def _client_notification(self, message: Message) -> None:
        if message["method"] == "tools/call":
            # A tools/call without an id cannot be decided and answered: never relay it unchecked
            # (well-behaved servers ignore it, a hand-rolled one might run the tool).
            log.warning("dropped a tools/call sent as a notification (it has no id)")
            return
        if message["method"] == "notifications/cancelled":
            params = message.get("params")
            rid = params.get("requestId") if isinstance(params, dict) else None
            if not isinstance(rid, str | int | float):
                rid = None  # an object or array is no request id (and is unhashable)
            if rid in self._guarding:
                # Never forwarded: the upstream must not hear of it. Stop any pending question.
                self._cancelled.add(rid)
                own = self._asking.get(rid)
                if own is not None and own in self._own:
                    self._own[own].answer = "cancel"
                    self._own[own].done.set()
                return
            pending = self._pending.get(rid)
            if pending is not None and pending.verdict is not None:
                pending.cancelled = True
                self._pending.pop(rid, None)
                pending.done.set()
        await self._to_upstream(message)

    async def _client_response(self, message: Message) -> None:
        rid = message["id"]
        ask = self._own.get(rid) if isinstance(rid, str) else None
        if ask is not None:
            result = message.get("result")
            action = result.get("action") if isinstance(result, dict) else None
            if action in ("accept", "decline", "cancel"):
                ask.answer = action
            else:
                log.warning("the client could not ask the user: %s", message.get("error"))
                ask.answer = "cancel"
            ask.done.set()
            return
        if isinstance(rid, str) and rid in self._aliases:
            message = {**message, "id": self._aliases.pop(rid)}
        await self._to_upstream(message)

    async def _upstream_pump(self) -> None:
        try:
            async with self.upstream.read:
                async for item in self.upstream.read:
                    if isinstance(item, InvalidMessage):
                        log.warning(
                            "upstream '%s' sent an invalid message (%s): %s",
                            self.upstream.name,
                            item.error,
                            item.text,
                        )
                        continue
                    kind = classify(item)
                    if kind == "response":
                        await self._upstream_response(item)
                    elif kind == "request" and item["id"] in self._own:
                        alias = f"mcpfw-up-{new_id()}"
                        self._aliases[alias] = item["id"]
                        await self._to_client({**item, "id": alias}, source="")
                    else:
                        if self.pins is not None and item.get("method") == (
                            "notifications/tools/list_changed"
                        ):
                            self.pins.on_list_changed()
                        await self._to_client(item, source="")
        finally:
            with anyio.CancelScope(shield=True):
                await self._upstream_gone()

    async def _upstream_response(self, message: Message) -> None:
        pending = self._pending.pop(message["id"], None)
        if pending is not None and pending.method == OWN_TOOLS_LIST:
            pending.response = message  # our own listing: never shown to the client
            pending.done.set()
            return
        if pending is not None:
            result = message.get("result")
            if pending.method == "initialize" and isinstance(result, dict):
                version = result.get("protocolVersion")
                self.negotiated_version = version if isinstance(version, str) else None
            elif pending.method == "tools/list" and isinstance(result, dict):
                session = await self._session()
                checked = await self.pins.on_tools_list(result) if self.pins else result
                filtered = session.filter_tools(checked)
                for hook in self.tools_list_hooks:
                    filtered = hook(filtered)
                if filtered is not result:
                    message = {**message, "result": filtered}
            elif pending.verdict is not None:
                session = await self._session()
                message = session.rewrite_response(pending.verdict, message)
        decision = pending.verdict.decision if pending is not None and pending.verdict else None
        await self._to_client(message, source="", decision=decision)
        if pending is not None:
            pending.response = message
            pending.done.set()

    async def _upstream_gone(self) -> None:
        self.dead = self.upstream.gone_reason or "closed the connection"
        self._upstream_done.set()
        if not self._pending:
            log.info("upstream '%s' %s", self.upstream.name, self.dead)
            return
        log.error(
            "upstream '%s' %s with %d request(s) pending; answering them with an error",
            self.upstream.name,
            self.dead,
            len(self._pending),
        )
        pending, self._pending = self._pending, {}
        for rid, entry in pending.items():
            entry.gone = self.dead
            if entry.method != OWN_TOOLS_LIST:
                await self._to_client(error_response(rid, UPSTREAM_UNAVAILABLE, self._gone_text()))
            entry.done.set()

    async def list_upstream_tools(self, max_pages: int = 100) -> list[dict[str, Any]]:
        """Every tool the upstream offers now, asked by the firewall itself (pin re-checks).

        Raises OSError when the upstream is gone or answers with an error.
        """
        tools: list[dict[str, Any]] = []
        cursor: Any = None
        for _ in range(max_pages):
            own_id = f"mcpfw-list-{new_id()}"
            params: dict[str, Any] = {}
            if cursor is not None:
                params["cursor"] = cursor
            if self._list_meta:
                params["_meta"] = dict(self._list_meta)
            pending = _Pending(OWN_TOOLS_LIST)
            self._pending[own_id] = pending
            request = {"jsonrpc": "2.0", "id": own_id, "method": "tools/list", "params": params}
            if not await self._to_upstream(request):
                self._pending.pop(own_id, None)
                raise OSError(f"the upstream {self.dead or 'is gone'}")
            try:
                await pending.done.wait()
            finally:
                self._pending.pop(own_id, None)
            result = pending.response.get("result") if pending.response else None
            if pending.gone or not isinstance(result, dict):
                raise OSError(f"the upstream did not list its tools ({pending.gone or 'error'})")
            page = result.get("tools")
            if isinstance(page, list):
                tools.extend(t for t in page if isinstance(t, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                return tools
        raise OSError(f"the upstream's tool list has more than {max_pages} pages")

    # -- tools/call -------------------------------------------------------------------------

    def _era(self, message: Message) -> tuple[Era, bool]:
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and is_modern_version(meta.get(PROTOCOL_VERSION_KEY)):
            return "modern", client_can_elicit_modern(params)
        return "handshake", isinstance(self.client_caps.get("elicitation"), dict)

    async def _call(self, message: Message) -> None:
        # The id stays in `_guarding` until the call is answered or handed to the upstream, so
        # a client that leaves meanwhile does not get the upstream closed under a decided call.
        try:
            await self._guarded_call(message)
        finally:
            self._guarding.discard(message["id"])

    async def _guarded_call(self, message: Message) -> None:
        rid = message["id"]
        try:
            session = await self._session()
            era, can_elicit = self._era(message)
            verdict = await session.check(message, era=era, can_elicit=can_elicit, ask=self._ask)
        finally:
            seq = self._call_seq.pop(rid, 0)
        if self.recorder is not None and verdict.decision is not None:
            self.recorder.attach(seq, verdict.decision)
        cancelled = rid in self._cancelled
        self._cancelled.discard(rid)
        if cancelled:
            with anyio.move_on_after(2, shield=True):
                await session.finish(
                    verdict, outcome=Outcome.CANCELLED, detail="cancelled by the client"
                )
            return
        if verdict.forward is None:
            assert verdict.response is not None
            with anyio.move_on_after(5, shield=True):  # answered and recorded even when stopping
                await self._to_client(verdict.response, decision=verdict.decision)
                await session.finish(verdict)
            return
        pending = _Pending("tools/call", verdict=verdict)
        self._pending[rid] = pending
        try:
            sent = await self._to_upstream(verdict.forward)
            self._guarding.discard(rid)  # handed over: shutdown now waits on the upstream
            if sent:
                with anyio.move_on_after(self.call_timeout_s):
                    await pending.done.wait()
        except anyio.get_cancelled_exc_class():  # mcpfw is stopping (SIGTERM) mid-call
            self._pending.pop(rid, None)
            with anyio.move_on_after(2, shield=True):
                await session.finish(
                    verdict, outcome=Outcome.CANCELLED, detail="mcpfw stopped during the call"
                )
            raise
        # Whatever ends the call is answered and recorded even when mcpfw is stopping (SIGTERM
        # may arrive with the upstream's own exit): a decided call never loses its outcome.
        with anyio.move_on_after(5, shield=True):
            if not sent:
                self._pending.pop(rid, None)
                await self._to_client(error_response(rid, UPSTREAM_UNAVAILABLE, self._gone_text()))
                await session.finish(verdict, outcome=Outcome.UPSTREAM_ERROR, detail=self.dead)
                return
            if not pending.done.is_set():
                self._pending.pop(rid, None)
                text = f"mcpfw: the upstream did not answer within {self.call_timeout_s:g} s"
                await self._to_client(error_response(rid, TIMEOUT_CODE, text))
                await session.finish(verdict, outcome=Outcome.TIMEOUT, detail=text)
                await self._to_upstream(
                    {
                        "jsonrpc": "2.0",
                        "method": "notifications/cancelled",
                        "params": {"requestId": rid, "reason": "mcpfw: timed out"},
                    }
                )
            elif pending.cancelled:
                await session.finish(verdict, outcome=Outcome.CANCELLED, detail="cancelled")
            elif pending.gone:
                await session.finish(verdict, outcome=Outcome.UPSTREAM_ERROR, detail=pending.gone)
            else:
                await session.finish(verdict, pending.response)

    async def _ask(self, call: ToolCall, decision: Decision) -> AskAnswer:
        """Handshake-era ask: `elicitation/create` to the client with a firewall-owned id."""
        own_id = f"mcpfw-ask-{new_id()}"
        ask = _Ask()
        self._own[own_id] = ask
        self._asking[call.request_id] = own_id
        try:
            await self._to_client(
                {
                    "jsonrpc": "2.0",
                    "id": own_id,
                    "method": "elicitation/create",
                    "params": elicit_params(call, decision),
                }
            )
            await ask.done.wait()
            return ask.answer
        finally:
            self._own.pop(own_id, None)
            self._asking.pop(call.request_id, None)
            if not ask.done.is_set():  # timed out: withdraw the question
                with anyio.CancelScope(shield=True):
                    await self._to_client(
                        {
                            "jsonrpc": "2.0",
                            "method": "notifications/cancelled",
                            "params": {"requestId": own_id, "reason": "mcpfw: no answer in time"},
                        }
                    )
