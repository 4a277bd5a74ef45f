"""Glob matching in linear time, for prefilters and the `globMatch` CEL function.

`*` matches any run of characters except `/`, `**` any run at all, `?` one character except
`/`, `[abc]` / `[a-z]` / `[!abc]` one character (never `/`) from a class, `\\x` a literal x.

A regex translation backtracks: `*.*.*.com` against 8 000 characters of attacker-chosen
text took over a minute. This runs the pattern as an NFA over a bit set instead, so a match
costs O(len(text) x len(pattern)) at worst, with per-character transitions cached.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["Glob", "glob_match", "is_glob"]

_LIT, _ONE, _CLASS, _STAR, _DSTAR = range(5)
_Class = tuple[bool, frozenset[str], tuple[tuple[str, str], ...]]
_Token = tuple[int, Any]  # (kind, a literal character or a _Class or None)


class Glob:
    """A compiled glob pattern."""

    __slots__ = ("_accept", "_cache", "_literal", "_star_bits", "_tokens")

    def __init__(self, pattern: str) -> None:
        self._literal = None if is_glob(pattern) else pattern
        self._tokens = _parse(pattern)
        self._accept = 1 << len(self._tokens)
        self._star_bits = [i for i, (kind, _) in enumerate(self._tokens) if kind in (_STAR, _DSTAR)]
        self._cache: dict[str, tuple[int, int]] = {}

    def match(self, text: str) -> bool:
        """True when the whole of `text` matches."""
        if self._literal is not None:
            return text == self._literal
        state = self._closure(1)
        cache = self._cache
        for c in text:
            masks = cache.get(c)
            if masks is None:
                masks = self._masks(c)
                if len(cache) < 512:
                    cache[c] = masks
            advance, stay = masks
            state = ((state & advance) << 1) | (state & stay)
            if not state:
                return False
            state = self._closure(state)
        return bool(state & self._accept)

    def _closure(self, state: int) -> int:
        # A star may match nothing: from a star's position, the next position is reachable.
        for i in self._star_bits:
            if state >> i & 1:
                state |= 1 << (i + 1)
        return state

    def _masks(self, c: str) -> tuple[int, int]:
        advance = stay = 0
        for i, (kind, data) in enumerate(self._tokens):
            if kind == _LIT:
                if c == data:
                    advance |= 1 << i
            elif kind == _ONE:
                if c != "/":
                    advance |= 1 << i
            elif kind == _CLASS:
                negate, chars, ranges = data
                inside = c in chars or any(lo <= c <= hi for lo, hi in ranges)
                if c != "/" and inside != negate:
                    advance |= 1 << i
            elif kind == _STAR:
                if c != "/":
                    stay |= 1 << i
            else:
                stay |= 1 << i
        return advance, stay


def _parse(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                while i < n and pattern[i] == "*":
                    i += 1
                tokens.append((_DSTAR, None))
                continue
            if not tokens or tokens[-1][0] not in (_STAR, _DSTAR):
                tokens.append((_STAR, None))
        elif c == "?":
            tokens.append((_ONE, None))
        elif c == "\\" and i + 1 < n:
            i += 1
            tokens.append((_LIT, pattern[i]))
        elif c == "[":
            start = i + 2 if pattern[i + 1 : i + 2] in ("!", "^") else i + 1
            end = pattern.find("]", start + 1)  # a "]" right after "[" is a member
            if end == -1:
                tokens.append((_LIT, c))
            else:
                tokens.append((_CLASS, _parse_class(pattern[i + 1 : end])))
                i = end
        else:
            tokens.append((_LIT, c))
        i += 1
    return tokens


def _parse_class(body: str) -> _Class:
    negate = body[:1] in ("!", "^")
    if negate:
        body = body[1:]
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    j = 0
    while j < len(body):
        if j + 2 < len(body) and body[j + 1] == "-":
            ranges.append((body[j], body[j + 2]))
            j += 3
        else:
            chars.add(body[j])
            j += 1
    return negate, frozenset(chars), tuple(ranges)


@functools.lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> Glob:
    """The compiled form of `pattern` (cached)."""
    return Glob(pattern)


def glob_match(text: str, pattern: str) -> bool:
    """True when the whole of `text` matches the glob `pattern` (case-sensitive)."""
    return compile_glob(pattern).match(text)


def is_glob(pattern: str) -> bool:
    """True when `pattern` has glob syntax (otherwise it matches only itself)."""
    return any(c in pattern for c in "*?[\\")
