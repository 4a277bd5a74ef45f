"""One long-lived upstream MCP session shared by many agents (the `mcpfw serve` side).

`mcpfw serve` never opens an upstream process or connection per request. Each configured
upstream gets one `SharedUpstream`: one connection, one `initialize` handshake done by the
firewall, and a multiplexer that carries every agent's requests over it.

Multiplexing, message by message (all relayed as raw JSON dicts, nothing re-modelled):

- agent request → a fresh upstream id (`int`); the response is mapped back to the agent's own
  id. A `progressToken` in `_meta` is rewritten the same way and mapped back on
  `notifications/progress`.
- agent `notifications/cancelled`, an agent that disconnects, or a per-call timeout → a
  `notifications/cancelled` for the upstream id.
- upstream → client request (sampling, elicitation, roots): sent to the agent whose requests
  are in flight when exactly one agent's are; otherwise there is no way to know whom the
  upstream means (the protocol carries no link on stdio), and the upstream gets a JSON-RPC
  error. `notifications/message` (logging) and unknown notifications follow the same rule and
  are dropped when ambiguous, so one agent never sees another's traffic.
- `notifications/*/list_changed` go to every agent session using this upstream;
  `notifications/resources/updated` only to sessions that subscribed to that URI.

If the connection ends, every pending request fails with a clear JSON-RPC error and the
upstream is reconnected on a backoff; `ready` says whether it is usable right now.

An upstream can be reached through several such sessions (`sessions:` in the config, default 4
for a URL). Servers such as the MCP SDK's handle one session's messages in order, so 50 agents
on one upstream session queue behind each other (measured with the SDK server: about 30 %
fewer calls/s than 50 sessions). Each agent session sticks to one upstream session, so its
subscriptions, log level and server→client requests stay on one connection, and each upstream
session carries fewer agents, which also makes server→client requests routable more often.
"""

from __future__ import annotations

import itertools
import logging
import math
import weakref
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, Protocol

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream, TaskStatus
from mcp_types.version import LATEST_HANDSHAKE_VERSION

__all__ = [
    "Connector",
    "Downstream",
    "SharedUpstream",
    "UpstreamSession",
    "UpstreamUnavailable",
    "error_message",
]

log = logging.getLogger("mcpfw.serve")

Raw = dict[str, Any]
RawRead = ObjectReceiveStream[Any]  # raw dicts; anything else is logged and skipped
RawWrite = ObjectSendStream[Raw]
# A connector opens the upstream and yields a (read, write) pair of raw-dict streams.
Connector = Callable[[], AbstractAsyncContextManager[tuple[RawRead, RawWrite]]]

UPSTREAM_ERROR = -32603  # internal error: the upstream failed or went away
TIMEOUT_ERROR = -32001  # the SDKs' request-timeout code
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class UpstreamUnavailable(Exception):
    """The upstream is not connected (starting, crashed, or being reconnected)."""


class Downstream(Protocol):
    """Where upstream traffic for one agent request goes (its HTTP exchange and session)."""

    @property
    def route_key(self) -> object:
        """Requests with the same key belong to the same agent session."""
        ...

    def notify(self, message: Raw) -> None:
        """Deliver a notification related to this request (never blocks; may drop)."""
        ...

    async def client_request(self, method: str, params: Raw | None) -> Raw:
        """Send a server→client request to the agent; returns its response message."""
        ...


class Subscriber(Protocol):
    """An agent session that receives this upstream's broadcast notifications."""

    def broadcast(self, server: str, message: Raw) -> None: ...

    def subscribed(self, server: str, uri: str) -> bool: ...


def error_message(request_id: Any, code: int, message: str, data: Any = None) -> Raw:
    """A JSON-RPC error response as a raw dict."""
    error: Raw = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


@dataclass(eq=False)
class _Pending:
    downstream: Downstream
    done: anyio.Event = field(default_factory=anyio.Event)
    response: Raw | None = None
    progress_token: Any = None
    upstream_token: str | None = None


class UpstreamSession:
    """One upstream connection and MCP session, multiplexed across agent sessions."""

    def __init__(self, name: str, connector: Connector, *, timeout_s: float = 300.0) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._connector = connector
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._by_token: dict[str, _Pending] = {}
        self._write: RawWrite | None = None
        self._ready = anyio.Event()
        self.first_attempt = anyio.Event()  # set once the first connection attempt ended
        self._subscribers: set[Subscriber] = set()
        self._server_requests: dict[Any, Downstream] = {}  # upstream's own request ids
        self.init_result: Raw = {}
        self.last_error = "not started"

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the upstream is connected and initialized right now."""
        return self._write is not None

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the upstream is connected and initialized; raises UpstreamUnavailable."""
        with anyio.move_on_after(timeout_s):
            await self._ready.wait()
        if not self.ready:
            raise UpstreamUnavailable(f"upstream {self.name!r} is not available: {self.last_error}")

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the upstream connected until cancelled, reconnecting with a backoff."""
        task_status.started()
        for attempt in itertools.count():
            try:
                async with self._connector() as streams:
                    read, write = streams[0], streams[1]
                    await self._serve(read, write)
                self.last_error = "the upstream closed the connection"
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:  # boundary: any connector failure is reported and retried
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.first_attempt.set()
            self._disconnected()
            log.error("upstream %r unavailable: %s (reconnecting)", self.name, self.last_error)
            await anyio.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])

    async def _serve(self, read: RawRead, write: RawWrite) -> None:
        init_id = next(self._ids)
        await write.send(
            {
                "jsonrpc": "2.0",
                "id": init_id,
                "method": "initialize",
                "params": {
                    "protocolVersion": LATEST_HANDSHAKE_VERSION,
                    "capabilities": {"elicitation": {}, "sampling": {}},
                    "clientInfo": {"name": "mcpfw", "version": version("mcpfw")},
                },
            }
        )
        with anyio.fail_after(self.timeout_s):
            async for item in read:
                if not isinstance(item, dict):
                    log.warning("upstream %r sent an unreadable message: %s", self.name, item)
                    continue
                raw = item
                if raw.get("id") == init_id and "method" not in raw:
                    if "error" in raw:
                        raise UpstreamUnavailable(f"initialize failed: {raw['error']}")
                    self.init_result = raw.get("result") or {}
                    break
            else:
                raise UpstreamUnavailable("the upstream closed during initialize")
        await write.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if hasattr(write, "take_response"):  # the HTTP client hands JSON answers over directly
            write.take_response = self._take_response
        self._write = write
        self._ready.set()
        self.first_attempt.set()
        log.info("upstream %r connected (%s)", self.name, self.init_result.get("protocolVersion"))
        async with anyio.create_task_group() as tg:
            async for item in read:
                if not isinstance(item, dict):
                    log.warning("upstream %r sent an unreadable message: %s", self.name, item)
                    continue
                self._dispatch(item, tg)

    def _disconnected(self) -> None:
        self._write = None
        if self._ready.is_set():
            self._ready = anyio.Event()  # wait_ready() now waits for the reconnection
        for upstream_id, pending in list(self._pending.items()):
            pending.response = error_message(
                upstream_id, UPSTREAM_ERROR, f"upstream {self.name!r} went away: {self.last_error}"
            )
            pending.done.set()
        self._pending.clear()
        self._by_token.clear()
        self._server_requests.clear()

    # --- agent → upstream ------------------------------------------------------------------

    def subscribe(self, subscriber: Subscriber) -> None:
        """Receive this upstream's broadcast notifications (list_changed, resources/updated)."""
        self._subscribers.add(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    async def request(self, method: str, params: Raw | None, downstream: Downstream) -> Raw:
        """Send one request upstream; returns the response message (`result` or `error`).

        The returned message carries the upstream id; the caller puts its own id back.
        A timeout or a lost connection is a JSON-RPC error message, never an exception;
        cancellation of the caller cancels the upstream request too.
        """
        write = self._write
        upstream_id = next(self._ids)
        if write is None:
            return error_message(
                upstream_id,
                UPSTREAM_ERROR,
                f"upstream {self.name!r} is unavailable: {self.last_error}",
            )
        pending = _Pending(downstream=downstream)
        params = _rewrite_progress_token(params, pending, upstream_id)
        if pending.upstream_token is not None:
            self._by_token[pending.upstream_token] = pending
        self._pending[upstream_id] = pending
        message: Raw = {"jsonrpc": "2.0", "id": upstream_id, "method": method}
        if params is not None:
            message["params"] = params
        try:
            # The write is inside the deadline too: an upstream that stops reading its input
            # must not hold the call (and its agent) forever.
            with anyio.move_on_after(self.timeout_s if self.timeout_s > 0 else math.inf):
                await write.send(message)
                if pending.response is None:  # else handed over during the send
                    await pending.done.wait()
            if pending.response is None:
                await self._cancel_upstream(upstream_id, "timed out in mcpfw")
                return error_message(
                    upstream_id,
                    TIMEOUT_ERROR,
                    f"upstream {self.name!r} did not answer {method} within {self.timeout_s:g}s",
                )
            return pending.response
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            return error_message(upstream_id, UPSTREAM_ERROR, f"upstream {self.name!r} went away")
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):
                await self._cancel_upstream(upstream_id, "the client went away")
            raise
        finally:
            self._pending.pop(upstream_id, None)
            if pending.upstream_token is not None:
                self._by_token.pop(pending.upstream_token, None)

    async def notify(self, method: str, params: Raw | None) -> None:
        """Forward a client notification (already id-mapped) upstream; dropped when down."""
        write = self._write
        if write is None:
            return
        message: Raw = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        with (
            suppress(anyio.ClosedResourceError, anyio.BrokenResourceError),
            anyio.move_on_after(self.timeout_s if self.timeout_s > 0 else math.inf),
        ):
            await write.send(message)  # bounded: cancellations are sent from shielded scopes

    async def _cancel_upstream(self, upstream_id: int, reason: str) -> None:
        if self._pending.pop(upstream_id, None) is not None:
            params = {"requestId": upstream_id, "reason": reason}
            await self.notify("notifications/cancelled", params)

    # --- upstream → agent ------------------------------------------------------------------

    def _take_response(self, raw: Raw) -> bool:
        """Give a response to the request waiting for it; False if none does."""
        if "method" in raw:
            return False
        pending = self._pending.get(raw.get("id"))  # type: ignore[arg-type]
        if pending is None:
            return False
        pending.response = raw
        pending.done.set()
        return True

    def _dispatch(self, raw: Raw, tg: anyio.abc.TaskGroup) -> None:
        method = raw.get("method")
        if method is None:
            self._take_response(raw)
            return
        if "id" in raw:
            tg.start_soon(self._serve_client_request, raw)
            return
        params = raw.get("params") or {}
        if method == "notifications/progress":
            target = self._by_token.get(str(params.get("progressToken")))
            if target is not None:
                out = dict(params, progressToken=target.progress_token)
                target.downstream.notify({"jsonrpc": "2.0", "method": method, "params": out})
            return
        if method == "notifications/cancelled":
            owner = self._server_requests.get(params.get("requestId"))
            if owner is not None:
                owner.notify(raw)
            return
        if method.endswith("/list_changed"):
            for subscriber in list(self._subscribers):
                subscriber.broadcast(self.name, raw)
            return
        if method == "notifications/resources/updated":
            uri = str(params.get("uri", ""))
            for subscriber in list(self._subscribers):
                if subscriber.subscribed(self.name, uri):
                    subscriber.broadcast(self.name, raw)
            return
        only = self._only_downstream()
        if only is not None:
            only.notify(raw)
        else:
            log.debug("upstream %r: dropped %s (no single agent to route it to)", self.name, method)

    def _only_downstream(self) -> Downstream | None:
        keys = {p.downstream.route_key: p.downstream for p in self._pending.values()}
        return next(iter(keys.values())) if len(keys) == 1 else None

    async def _serve_client_request(self, raw: Raw) -> None:
        request_id, method = raw["id"], str(raw["method"])
        if method == "ping":
            await self._reply({"jsonrpc": "2.0", "id": request_id, "result": {}})
            return
        target = self._only_downstream()
        if target is None:
            await self._reply(
                error_message(
                    request_id,
                    -32601,
                    f"mcpfw cannot route {method} to a single agent: the upstream is shared and "
                    "the request is not tied to one agent's call",
                )
            )
            return
        self._server_requests[request_id] = target
        try:
            response = await target.client_request(method, raw.get("params"))
        except Exception as exc:  # boundary: a broken agent must not stall the upstream
            response = error_message(request_id, UPSTREAM_ERROR, f"the agent failed: {exc}")
        finally:
            self._server_requests.pop(request_id, None)
        await self._reply(dict(response, id=request_id))

    async def _reply(self, message: Raw) -> None:
        write = self._write
        if write is None:
            return
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await write.send(message)


def _rewrite_progress_token(params: Raw | None, pending: _Pending, upstream_id: int) -> Raw | None:
    if not params:
        return params
    meta = params.get("_meta")
    if not isinstance(meta, dict) or "progressToken" not in meta:
        return params
    pending.progress_token = meta["progressToken"]
    pending.upstream_token = f"mcpfw-{upstream_id}"
    return dict(params, _meta=dict(meta, progressToken=pending.upstream_token))


class SharedUpstream:
    """One upstream for every agent session of `mcpfw serve`: `sessions` `UpstreamSession`s,
    each agent session (a request's `route_key`) always on the same one."""

    def __init__(
        self, name: str, connector: Connector, *, timeout_s: float = 300.0, sessions: int = 1
    ) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self.members = [
            UpstreamSession(name, connector, timeout_s=timeout_s) for _ in range(max(1, sessions))
        ]
        self.first_attempt = anyio.Event()  # set once every session's first attempt ended
        # agent session (route key) -> its upstream session, dealt round-robin at first sight
        self._sticky: weakref.WeakKeyDictionary[object, UpstreamSession] = (
            weakref.WeakKeyDictionary()
        )
        self._deal = itertools.cycle(self.members)

    @property
    def ready(self) -> bool:
        """Whether every upstream session is connected and initialized right now."""
        return all(member.ready for member in self.members)

    @property
    def last_error(self) -> str:
        down = [member.last_error for member in self.members if not member.ready]
        return down[0] if down else self.members[0].last_error

    @property
    def init_result(self) -> Raw:
        """The upstream's `initialize` result (the same server behind every session)."""
        for member in self.members:
            if member.ready:
                return member.init_result
        return self.members[0].init_result

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until every session is ready; raises UpstreamUnavailable."""
        deadline = anyio.current_time() + timeout_s
        for member in self.members:
            await member.wait_ready(max(0.0, deadline - anyio.current_time()))

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep every session connected until cancelled."""
        async with anyio.create_task_group() as tg:
            for member in self.members:
                await tg.start(member.run)
            task_status.started()
            for member in self.members:
                await member.first_attempt.wait()
            self.first_attempt.set()

    def member(self, route_key: object) -> UpstreamSession:
        """The session an agent session's traffic uses (the same one for as long as it lives)."""
        if len(self.members) == 1:
            return self.members[0]
        try:
            found = self._sticky.get(route_key)
            if found is None:
                found = self._sticky[route_key] = next(self._deal)
            return found
        except TypeError:  # a key that cannot be weakly referenced: spread by its hash
            mixed = (hash(route_key) * 0x9E3779B1) >> 16
            return self.members[mixed % len(self.members)]

    def subscribe(self, subscriber: Subscriber) -> None:
        """Broadcasts for an agent session come from its own upstream session; a subscriber
        without a route key (the pin checker) hears the first session's."""
        self._for(subscriber).subscribe(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._for(subscriber).unsubscribe(subscriber)

    def _for(self, subscriber: Subscriber) -> UpstreamSession:
        key = getattr(subscriber, "route_key", None)
        return self.members[0] if key is None else self.member(key)

    async def request(self, method: str, params: Raw | None, downstream: Downstream) -> Raw:
        """`UpstreamSession.request` on the session of `downstream`'s agent session."""
        return await self.member(downstream.route_key).request(method, params, downstream)

    async def notify(self, method: str, params: Raw | None, route_key: object = None) -> None:
        """Forward an agent's notification on its agent session's upstream session."""
        member = self.members[0] if route_key is None else self.member(route_key)
        await member.notify(method, params)
