"""Hypothesis strategies for MCP messages, generated from the MCP JSON schemas.

hypothesis-jsonschema does not work with the hypothesis this project uses, and a pin would
hold every other test back, so this is a small generator for the subset of JSON Schema the
MCP schemas use: `$ref`, `const`, `enum`, `anyOf`/`oneOf`/`allOf`, `type` (one or a list),
`properties`/`required`/`additionalProperties`, `items`. Recursion is cut at `MAX_DEPTH` with
plain JSON scalars, so deep parts may be slightly off-schema: good enough for fuzzing.

`client_messages(version)` gives well-formed client requests and notifications of one protocol
revision; `mutated(...)` breaks them the ways a hostile or buggy client would.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

SCHEMAS = Path("/work/shared/mcp-schema")
if not SCHEMAS.is_dir():  # a clone outside this machine keeps a copy beside the tests
    SCHEMAS = Path(__file__).resolve().parents[2] / "fixtures" / "mcp-schema"
VERSIONS = ("2025-06-18", "2025-11-25", "2026-07-28")
MAX_DEPTH = 5

# Any code point, lone surrogates included: JSON can carry them as `\ud800` escapes.
TEXT = st.text(st.characters(exclude_categories=()), max_size=20)
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@cache
def definitions(version: str) -> dict[str, Any]:
    doc = json.loads((SCHEMAS / f"{version}.json").read_text())
    defs: dict[str, Any] = doc.get("$defs") or doc["definitions"]
    return defs


def from_schema(version: str, schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for values valid under `schema` (a node of the `version` schema document)."""
    if depth > MAX_DEPTH:
        return JSON_SCALARS
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return st.deferred(lambda: from_schema(version, definitions(version)[name], depth + 1))
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of([from_schema(version, s, depth + 1) for s in schema[key]])
    if "allOf" in schema:
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(version, part)
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return from_schema(version, merged, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema(version, {**schema, "type": k}, depth) for k in kind])
    if kind == "string":
        return TEXT
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**53)), schema.get("maximum", 2**53))
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum"),
            max_value=schema.get("maximum"),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = schema.get("items")
        inner = from_schema(version, items, depth + 1) if isinstance(items, dict) else JSON
        return st.lists(inner, max_size=3)
    if kind == "object" or "properties" in schema:
        return _object(version, schema, depth)
    return JSON


def _resolve(version: str, schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = definitions(version)[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _object(version: str, schema: dict[str, Any], depth: int) -> st.SearchStrategy[Any]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = {k: from_schema(version, v, depth + 1) for k, v in props.items() if k in required}
    optional = {
        k: from_schema(version, v, depth + 1) for k, v in props.items() if k not in required
    }
    extra = schema.get("additionalProperties")
    base = st.fixed_dictionaries(fixed, optional=optional)
    if isinstance(extra, dict) and not props:
        return st.dictionaries(TEXT, from_schema(version, extra, depth + 1), max_size=3)
    return base


def request_ids() -> st.SearchStrategy[Any]:
    return st.integers(-(2**31), 2**31) | TEXT


def client_messages(version: str) -> st.SearchStrategy[dict[str, Any]]:
    """Client requests (with jsonrpc and id) and notifications of one protocol revision."""
    defs = definitions(version)
    requests = from_schema(version, defs["ClientRequest"])
    notifications = from_schema(version, defs["ClientNotification"])

    def as_request(body: Any, rid: Any) -> dict[str, Any]:
        return {**(body if isinstance(body, dict) else {}), "jsonrpc": "2.0", "id": rid}

    def as_notification(body: Any) -> dict[str, Any]:
        message = {**(body if isinstance(body, dict) else {}), "jsonrpc": "2.0"}
        message.pop("id", None)
        return message

    return st.builds(as_request, requests, request_ids()) | notifications.map(as_notification)


def tool_calls(version: str) -> st.SearchStrategy[dict[str, Any]]:
    """`tools/call` requests only: the messages the firewall itself decides."""
    body = from_schema(version, definitions(version)["CallToolRequest"])
    return st.builds(lambda b, rid: {**b, "jsonrpc": "2.0", "id": rid}, body, request_ids())


BREAKAGES = (
    "drop_method",
    "method_type",
    "id_object",
    "id_array",
    "id_bool",
    "params_list",
    "params_string",
    "drop_params",
    "name_type",
    "arguments_list",
    "jsonrpc_wrong",
)


def mutated(messages: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Well-formed messages broken in one of the ways in BREAKAGES."""
    return st.builds(_break, messages, st.sampled_from(BREAKAGES), JSON)


def _break(message: dict[str, Any], how: str, junk: Any) -> dict[str, Any]:
    m = dict(message)
    params = m.get("params") if isinstance(m.get("params"), dict) else {}
    if how == "drop_method":
        m.pop("method", None)
    elif how == "method_type":
        m["method"] = junk if not isinstance(junk, str) else 7
    elif how == "id_object":
        m["id"] = {"nested": junk}
    elif how == "id_array":
        m["id"] = [junk]
    elif how == "id_bool":
        m["id"] = True
    elif how == "params_list":
        m["params"] = [junk]
    elif how == "params_string":
        m["params"] = "params"
    elif how == "drop_params":
        m.pop("params", None)
    elif how == "name_type":
        m["params"] = {**params, "name": junk if not isinstance(junk, str) else 1}
    elif how == "arguments_list":
        m["params"] = {**params, "arguments": [junk]}
    elif how == "jsonrpc_wrong":
        m["jsonrpc"] = "1.0"
    return m
