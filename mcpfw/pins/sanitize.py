"""Strip characters that hide text from humans out of the descriptions passed to the client.

Only human-language text is rewritten: every string under a `description` or `title` key, at
any depth of the tool definition (top level, annotations, input and output schemas). Names,
enum values, defaults and property keys are left alone: changing them would break calls.
Pins and findings are always computed on what the upstream sent, before sanitising.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mcpfw.pins.chars import ANSI, BIDI, is_control, is_invisible, is_tag, suspect

__all__ = ["sanitize_text", "sanitize_tool", "sanitize_tools"]

_TEXT_KEYS = frozenset({"description", "title"})
_CR = re.compile(r"\r\n?")


def sanitize_text(text: str) -> str:
    """`text` without ANSI escapes, control, bidirectional, invisible or tag characters."""
    if "\r" not in text and not suspect(text):
        return text  # the common case: nothing to strip
    text = _CR.sub("\n", ANSI.sub("", text))
    out: list[str] = []
    prev = ""
    for ch in text:
        if ch in BIDI or is_tag(ch) or is_control(ch) or is_invisible(ch, prev):
            continue
        out.append(ch)
        prev = ch
    return "".join(out)


def _clean(value: Any, depth: int) -> Any:
    if depth > 64:
        return value
    if isinstance(value, Mapping):
        return {
            key: (
                sanitize_text(item)
                if key in _TEXT_KEYS and isinstance(item, str)
                else _clean(item, depth + 1)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_clean(item, depth + 1) for item in value]
    return value


def sanitize_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of one tool definition with its descriptions and titles sanitised."""
    cleaned = _clean(tool, 0)
    assert isinstance(cleaned, dict)
    return cleaned


def sanitize_tools(tools: list[Any]) -> tuple[list[Any], bool]:
    """Sanitised copies of a `tools/list` page's tools, and whether anything changed."""
    out = [sanitize_tool(t) if isinstance(t, Mapping) else t for t in tools]
    return out, out != tools
