"""JSON-RPC messages as plain dicts: decoding, encoding, classification and protocol eras.

The firewall relays messages as the `dict`s `json.loads` gives, never through typed models, so
unknown fields, `_meta` and extension methods survive unchanged in both directions. Importing
this module costs nothing beyond the standard library (mcpfw starts fast: agents launch ten
firewalls at once).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CLIENT_CAPABILITIES_KEY",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "MODERN_VERSION",
    "PARSE_ERROR",
    "PROTOCOL_VERSION_KEY",
    "UPSTREAM_UNAVAILABLE",
    "Era",
    "InvalidMessage",
    "Kind",
    "Message",
    "classify",
    "decode",
    "encode",
    "error_response",
    "is_modern_version",
    "result_response",
    "valid_id",
]

Message = dict[str, Any]
Era = Literal["handshake", "modern"]
Kind = Literal["request", "notification", "response", "invalid"]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Implementation-defined band (-32000..-32019): the upstream is gone or never answered.
UPSTREAM_UNAVAILABLE = -32003

MODERN_VERSION = "2026-07-28"
PROTOCOL_VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CLIENT_CAPABILITIES_KEY = "io.modelcontextprotocol/clientCapabilities"


@dataclass(frozen=True, kw_only=True, slots=True)
class InvalidMessage:
    """A line that is not a JSON object: what came in and why it was refused."""

    text: str
    error: str
    code: int = PARSE_ERROR


def decode(line: bytes | str) -> Message | InvalidMessage:
    """One newline-delimited JSON-RPC message, or an `InvalidMessage` saying why not."""
    try:
        value = json.loads(line)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        return InvalidMessage(text=text[:200], error=f"invalid JSON: {exc}")
    if isinstance(value, dict):
        return value
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    if isinstance(value, list):
        # Batches left MCP in 2025-06-18; relaying one unexamined would let tools/call bypass
        # the guard, so they are refused (fail closed).
        return InvalidMessage(
            text=text[:200], error="JSON-RPC batches are not supported", code=INVALID_REQUEST
        )
    return InvalidMessage(text=text[:200], error="not a JSON object", code=INVALID_REQUEST)


def encode(message: Message) -> bytes:
    """The wire form of a message: compact JSON, UTF-8, one line."""
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode() + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (the peer sent a `\ud800` escape) has no UTF-8 form: keep it escaped,
        # which is lossless, instead of letting the writer die.
        return json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def classify(message: Message) -> Kind:
    """Request, notification, response, or something JSON-RPC does not allow."""
    if "id" in message and not valid_id(message["id"]):
        return "invalid"  # an object or array id would also break every id-keyed table
    method = message.get("method")
    if method is not None:
        if not isinstance(method, str):
            return "invalid"
        return "request" if "id" in message else "notification"
    if "id" in message and ("result" in message or "error" in message):
        return "response"
    return "invalid"


def valid_id(value: object) -> bool:
    """JSON-RPC ids are strings, numbers or null."""
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def result_response(request_id: Any, result: dict[str, Any]) -> Message:
    """A successful JSON-RPC response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> Message:
    """A JSON-RPC error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def is_modern_version(version: object) -> bool:
    """True for a stateless-era protocol revision (2026-07-28 and later)."""
    return isinstance(version, str) and version >= MODERN_VERSION
