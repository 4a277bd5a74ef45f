"""A recorded session served back as an MCP server: `mcpfw serve-recording`.

`RecordedUpstream.answer(message)` is pure: it maps an incoming JSON-RPC request to the
response the upstream gave when the session was recorded. Requests are matched on their
method and their params as canonical JSON (without `_meta`, which carries per-request
client data such as progress tokens and, in the 2026-07-28 era, the client's identity and
version). `initialize`, `server/discover` and an un-paginated `tools/list` are matched on
the method alone, since any client can connect. A request that was recorded several times
gets its recorded answers in order, then the last one again.

A request that was never recorded gets a JSON-RPC error that names what was not recorded:
-32601 when the method never appears in the recording, -32602 when the method does but not
with these params (a call the firewall denied at recording time never reached the
upstream, and the error says so). `serve_stdio` runs it over stdin/stdout.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from mcpfw.recording.format import Direction, RecordedMessage, Recording, canonical_json

__all__ = ["NOT_RECORDED_METHOD", "NOT_RECORDED_PARAMS", "RecordedUpstream", "serve_stdio"]

NOT_RECORDED_METHOD = -32601
NOT_RECORDED_PARAMS = -32602
_BY_METHOD_ONLY = frozenset({"initialize", "server/discover"})

Redactor = Callable[[Any], Any]  # a whole JSON-RPC message -> the same message, redacted


def _key(method: str, params: Any) -> str:
    if isinstance(params, Mapping):
        params = {k: v for k, v in params.items() if k != "_meta"}
        if method == "tools/call":
            params = {"name": params.get("name"), "arguments": params.get("arguments") or {}}
    return canonical_json([method, params or {}])


class RecordedUpstream:
    """Answers requests from one recording."""

    def __init__(self, recording: Recording, *, redact: Redactor | None = None) -> None:
        self.recording = recording
        self._redact = redact
        self._answers: dict[str, deque[Mapping[str, Any]]] = {}
        self._last: dict[str, Mapping[str, Any]] = {}
        self._by_method: dict[str, Mapping[str, Any]] = {}
        self._denied: set[str] = set()
        self._methods: set[str] = set()
        self._calls: dict[str, list[Any]] = {}
        self._index()

    def _index(self) -> None:
        requests: dict[tuple[str, str], RecordedMessage] = {}
        for msg in self.recording.messages:
            rid = msg.message.get("id")
            rkey = (type(rid).__name__, str(rid))
            if msg.direction is Direction.CLIENT_TO_SERVER and msg.is_request and msg.method:
                requests[rkey] = msg
                self._methods.add(msg.method)
                continue
            if msg.direction is not Direction.SERVER_TO_CLIENT or not msg.is_response:
                continue
            request = requests.pop(rkey, None)
            if request is None or request.method is None:
                continue
            method = request.method
            params = request.message.get("params")
            key = _key(method, params)
            if msg.source == "firewall":
                self._denied.add(key)
                continue
            answer = {k: v for k, v in msg.message.items() if k in ("result", "error")}
            self._answers.setdefault(key, deque()).append(answer)
            self._last[key] = answer
            if method in _BY_METHOD_ONLY or (method == "tools/list" and not _cursor(params)):
                self._by_method.setdefault(method, answer)
            if method == "tools/call" and isinstance(params, Mapping):
                self._calls.setdefault(str(params.get("name")), []).append(
                    params.get("arguments") or {}
                )

    @property
    def methods(self) -> frozenset[str]:
        """Every request method the recording holds."""
        return frozenset(self._methods)

    def answer(self, message: Mapping[str, Any]) -> dict[str, Any] | None:
        """The response to one incoming message (None for notifications and responses)."""
        method = message.get("method")
        if not isinstance(method, str) or "id" not in message:
            return None
        rid = message["id"]
        body = self._lookup(method, message.get("params"))
        return {"jsonrpc": "2.0", "id": rid, **body}

    def _lookup(self, method: str, params: Any) -> Mapping[str, Any]:
        if method == "ping":
            return {"result": {}}
        if self._redact is not None and params is not None:
            # redact the request as the recorder did (pointers apply to a call's arguments)
            redacted = self._redact({"jsonrpc": "2.0", "id": 0, "method": method, "params": params})
            params = redacted.get("params") if isinstance(redacted, Mapping) else params
        key = _key(method, params)
        queue = self._answers.get(key)
        if queue:
            return queue.popleft() if len(queue) > 1 else queue[0]
        if key in self._last:
            return self._last[key]
        if method in self._by_method and (method != "tools/list" or not _cursor(params)):
            return self._by_method[method]
        return {"error": self._not_recorded(method, params, key)}

    def _not_recorded(self, method: str, params: Any, key: str) -> dict[str, Any]:
        where = self.recording.source or f"session {self.recording.header.session_id}"
        if method not in self._methods:
            return {
                "code": NOT_RECORDED_METHOD,
                "message": f"{method} was never recorded in {where}",
                "data": {"method": method, "recorded_methods": sorted(self._methods)},
            }
        if method == "tools/call" and isinstance(params, Mapping):
            name = str(params.get("name"))
            text = canonical_json(params.get("arguments") or {})
            if key in self._denied:
                message = (
                    f"tools/call {name} with arguments {text} was denied by the firewall when "
                    f"{where} was recorded, so the upstream never answered it"
                )
            else:
                message = f"tools/call {name} with arguments {text} was not recorded in {where}"
            return {
                "code": NOT_RECORDED_PARAMS,
                "message": message,
                "data": {"tool": name, "recorded_arguments": self._calls.get(name, [])[:10]},
            }
        shown = canonical_json({k: v for k, v in (params or {}).items() if k != "_meta"})
        return {
            "code": NOT_RECORDED_PARAMS,
            "message": f"{method} with params {shown} was not recorded in {where}",
            "data": {"method": method},
        }


def _cursor(params: Any) -> bool:
    return isinstance(params, Mapping) and params.get("cursor") is not None


async def serve_stdio(upstream: RecordedUpstream) -> None:
    """Serve the recording over this process's stdin/stdout until stdin closes."""
    import mcp_types
    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage

    async with stdio_server() as (read, write):
        async for item in read:
            if isinstance(item, Exception):
                await write.send(
                    SessionMessage(
                        mcp_types.JSONRPCError(
                            jsonrpc="2.0",
                            id=None,
                            error=mcp_types.ErrorData(code=-32700, message=f"parse error: {item}"),
                        )
                    )
                )
                continue
            incoming = item.message.model_dump(by_alias=True, exclude_unset=True, mode="json")
            response = upstream.answer(incoming)
            if response is None:
                continue
            await write.send(
                SessionMessage(mcp_types.jsonrpc_message_adapter.validate_python(response))
            )
        await write.aclose()
