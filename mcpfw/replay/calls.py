"""Turning recordings into `ReplayCall`s: rebuild each `tools/call` as the policy saw it.

The rebuilt `ToolCall` carries the recorded agent, server, tool, (redacted) arguments,
session id and count of earlier calls, the tool's annotations from the last recorded
`tools/list`, and the original time, so rules on `request.time` or `session.calls` see
what they saw then.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mcpfw.model import ToolCall
from mcpfw.recording.format import Direction, RecordedMessage, Recording
from mcpfw.replay.core import ReplayCall

__all__ = ["argument_pointers", "calls_from_recording"]

_ARGS_PREFIX = "/params/arguments"
AGGREGATE = "*"  # the server of a recording made on `mcpfw serve`'s aggregate endpoint


def argument_pointers(message_pointers: tuple[str, ...]) -> tuple[str, ...]:
    """The masked pointers of a tools/call request, relative to its arguments."""
    out: list[str] = []
    for p in message_pointers:
        if p == _ARGS_PREFIX:
            out.append("")
        elif p.startswith(_ARGS_PREFIX + "/"):
            out.append(p[len(_ARGS_PREFIX) :])
    return tuple(out)


def _key(rid: Any) -> tuple[str, str]:
    return (type(rid).__name__, str(rid))


def _responses(rec: Recording) -> dict[int, RecordedMessage]:
    """For each c2s request (by seq), the first s2c response with its id that follows it
    (ids may be reused once a request is answered)."""
    pending: dict[tuple[str, str], int] = {}
    out: dict[int, RecordedMessage] = {}
    for msg in rec.messages:
        key = _key(msg.message.get("id"))
        if msg.direction is Direction.CLIENT_TO_SERVER and msg.is_request:
            pending[key] = msg.seq
        elif msg.direction is Direction.SERVER_TO_CLIENT and msg.is_response and key in pending:
            out[pending.pop(key)] = msg
    return out


def calls_from_recording(rec: Recording) -> Iterator[ReplayCall]:
    """Every recorded tools/call that has an original decision, in session order."""
    annotations: dict[str, Mapping[str, Any]] = {}
    responses = _responses(rec)
    pending_lists: set[tuple[str, str]] = set()
    count = 0
    for msg in rec.messages:
        method = msg.method
        rid = msg.message.get("id")
        key = _key(rid)
        if msg.direction is Direction.CLIENT_TO_SERVER and method == "tools/list":
            pending_lists.add(key)
            continue
        if msg.direction is Direction.SERVER_TO_CLIENT and key in pending_lists and msg.is_response:
            pending_lists.discard(key)
            _read_annotations(msg.message.get("result"), annotations)
            continue
        if msg.direction is not Direction.CLIENT_TO_SERVER or method != "tools/call":
            continue
        if not msg.is_request:
            continue
        params = msg.message.get("params")
        if not isinstance(params, Mapping):
            continue
        name = params.get("name")
        arguments = params.get("arguments") or {}
        if not isinstance(name, str) or not isinstance(arguments, Mapping):
            continue
        server, listed = rec.header.server, name
        if server == AGGREGATE and "__" in name:
            server, name = name.split("__", 1)  # `<server>__<tool>` on an aggregate endpoint
        original = rec.decisions.get(msg.decision_id or "")
        earlier = count
        count += 1
        if original is None:
            continue  # relayed without a decision (never happens live): nothing to compare
        response = responses.get(msg.seq)
        result = error = None
        if response is not None and response.source != "firewall":
            raw_result = response.message.get("result")
            raw_error = response.message.get("error")
            result = raw_result if isinstance(raw_result, Mapping) else None
            error = raw_error if isinstance(raw_error, Mapping) else None
        header = rec.header
        yield ReplayCall(
            call=ToolCall(
                agent=header.agent,
                tool=name,
                server=server,
                arguments=arguments,
                session_id=header.session_id,
                session_calls=earlier,
                request_id=rid if isinstance(rid, (str, int)) else None,
                annotations=annotations.get(listed, {}),
                time=msg.time,
            ),
            original=original,
            redacted=argument_pointers(msg.redacted),
            where=f"session {header.session_id} seq {msg.seq}",
            params=params,
            result=result,
            error=error,
        )


def _read_annotations(result: Any, into: dict[str, Mapping[str, Any]]) -> None:
    if not isinstance(result, Mapping):
        return
    tools = result.get("tools")
    if not isinstance(tools, list):
        return
    for tool in tools:
        if isinstance(tool, Mapping) and isinstance(tool.get("name"), str):
            ann = tool.get("annotations")
            into[tool["name"]] = ann if isinstance(ann, Mapping) else {}
