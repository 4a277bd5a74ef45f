"""Bounding call arguments before they reach a CEL engine.

cel-expr-python can crash on input nested thousands deep, and any engine is slow on huge
input, so arguments are checked (depth, item count, approximate JSON size) and converted to
plain JSON-shaped values (string keys, 64-bit ints, lists instead of tuples) in one pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ArgLimits", "LimitExceeded", "bound_json"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True, kw_only=True, slots=True)
class ArgLimits:
    """Bounds on a call's arguments; a call over any of them is denied without evaluation."""

    max_depth: int = 32  # nesting of objects/arrays (the arguments object itself is depth 1)
    max_bytes: int = 262144  # approximate JSON-encoded size
    max_items: int = 10000  # total number of values (object members + array elements)


class LimitExceeded(Exception):
    """The arguments are over one of the `ArgLimits`; the message says which."""


class _Walker:
    __slots__ = ("bytes", "items", "limits")

    def __init__(self, limits: ArgLimits) -> None:
        self.limits = limits
        self.items = 0
        self.bytes = 0

    def value(self, v: Any, depth: int) -> Any:
        # bool before int: bool is a subclass of int.
        if v is None or v is True or v is False:
            self.bytes += 5
            return v
        if isinstance(v, str):
            self.bytes += len(v) + 2
            self._check_bytes()
            return _clean_str(v)
        if isinstance(v, int):
            self.bytes += 8
            if _INT64_MIN <= v <= _INT64_MAX:
                return int(v)
            return float(v)
        if isinstance(v, float):
            self.bytes += 8
            return v
        if isinstance(v, Mapping):
            return self.mapping(v, depth + 1)
        if isinstance(v, list | tuple):
            return self.sequence(v, depth + 1)
        if isinstance(v, bytes | bytearray):
            return self.value(bytes(v).decode("utf-8", "replace"), depth)
        return self.value(str(v), depth)  # anything else is judged by its text

    def mapping(self, m: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        self._enter(depth, len(m))
        out: dict[str, Any] = {}
        for k, v in m.items():
            key = _clean_str(k) if isinstance(k, str) else str(k)
            self.bytes += len(key) + 4
            out[key] = self.value(v, depth)
        return out

    def sequence(self, s: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
        self._enter(depth, len(s))
        return [self.value(v, depth) for v in s]

    def _enter(self, depth: int, count: int) -> None:
        if depth > self.limits.max_depth:
            raise LimitExceeded(
                f"arguments are nested deeper than the limit of {self.limits.max_depth} levels"
            )
        self.items += count
        if self.items > self.limits.max_items:
            raise LimitExceeded(
                f"arguments hold more than the limit of {self.limits.max_items} values"
            )
        self.bytes += 2

    def _check_bytes(self) -> None:
        if self.bytes > self.limits.max_bytes:
            raise LimitExceeded(
                f"arguments are larger than the limit of {self.limits.max_bytes} bytes"
            )


def _clean_str(s: str) -> str:
    # cel-expr-python cuts strings at a NUL byte, so a rule would see "/w/a.txt" for
    # "/w/a.txt\0.png": refuse such input rather than let rules judge a different string.
    if "\x00" in s:
        raise LimitExceeded("arguments contain a NUL character; denied unevaluated")
    # Lone surrogates (JSON "\ud800") are not valid UTF-8; CEL engines reject or mangle them.
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return s


def bound_json(value: Mapping[str, Any], limits: ArgLimits) -> dict[str, Any]:
    """A plain-JSON copy of `value`, or `LimitExceeded` when it is over `limits`."""
    walker = _Walker(limits)
    out = walker.mapping(value, 1)
    walker._check_bytes()
    return out
