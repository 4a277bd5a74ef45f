"""The canonical form and digest of a tool definition.

A pin is a digest of what the model and the user are told about a tool. Two listings of the
same definition must give the same digest whatever the key order, the order of tools in the
list, or the JSON serialiser, and any change a model could act on must change it.

Pinned fields: `name`, `title`, `description`, `inputSchema`, `outputSchema`, `annotations`,
`execution`. `title` is pinned because clients show it to users and some pass it to models.
`execution` (2025-11-25 task support) is pinned because it changes how a call runs.
Not pinned: `icons` (display-only URLs that CDNs rotate) and `_meta` (free-form, often volatile
server metadata; never shown to the model), and any unknown top-level field.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "PINNED_FIELDS",
    "canonical_definition",
    "canonical_digest",
    "canonical_json",
    "definition_digest",
]

PINNED_FIELDS: tuple[str, ...] = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
    "execution",
)

_SCHEMA_FIELDS = ("inputSchema", "outputSchema")


def _normalise(value: Any, *, schema: bool) -> Any:
    """Drop nulls in maps, turn integral floats into ints, sort JSON Schema `required` sets."""
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if item is None:
                continue
            if (
                schema
                and key == "required"
                and isinstance(item, list)
                and all(isinstance(x, str) for x in item)
            ):
                out[str(key)] = sorted(set(item))  # `required` is a set in JSON Schema
            else:
                out[str(key)] = _normalise(item, schema=schema)
        return out
    if isinstance(value, list | tuple):
        return [_normalise(item, schema=schema) for item in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def canonical_definition(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The pinned fields of one tool definition, normalised (absent and null are the same)."""
    out: dict[str, Any] = {}
    for key in PINNED_FIELDS:
        value = tool.get(key)
        if value is None:
            continue
        out[key] = _normalise(value, schema=key in _SCHEMA_FIELDS)
    return out


def canonical_json(value: Any) -> str:
    """Deterministic JSON text: sorted keys, no whitespace, UTF-8 (not \\u-escaped)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True
    )


def canonical_digest(canonical: Mapping[str, Any]) -> str:
    """The sha256 hex digest of an already canonical definition."""
    text = canonical_json(canonical)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def definition_digest(tool: Mapping[str, Any]) -> str:
    """The sha256 hex digest of the canonical definition; what a pin stores."""
    return canonical_digest(canonical_definition(tool))
