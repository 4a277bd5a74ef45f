"""Character classes that hide or rewrite text: shared by the scanner and the sanitiser."""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ANSI",
    "BIDI",
    "is_control",
    "is_invisible",
    "is_pictograph",
    "is_tag",
    "printable",
    "suspect",
]

ANSI = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]?|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_]?)|\x9b[0-?]*[ -/]*[@-~]?"
)
BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_INVISIBLE = frozenset(
    "\u00ad\u034f\u115f\u1160\u17b4\u17b5\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063"
    "\u2064\u3164\ufe00\ufe01\ufe02\ufe03\ufe04\ufe05\ufe06\ufe07\ufe08\ufe09\ufe0a\ufe0b"
    "\ufe0c\ufe0d\ufe0e\ufe0f\ufeff\uffa0"
)
_EMOJI_JOINERS = frozenset("\u200d\ufe0e\ufe0f")  # legitimate right after a pictograph


# Every character any check above can flag, as one regex class: most strings have none, and
# one C-level search lets them skip the per-character loop.
SUSPECT = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029"
    + "".join(sorted(BIDI | _INVISIBLE))
    + "\U000e0000-\U000e007f\U000e0100-\U000e01ef]"
)


def suspect(text: str) -> bool:
    """Whether `text` holds any character a character check could flag."""
    return SUSPECT.search(text) is not None


def is_tag(ch: str) -> bool:
    """Unicode tag characters (U+E0000–E007F) can spell hidden ASCII."""
    return 0xE0000 <= ord(ch) <= 0xE007F


def is_invisible(ch: str, prev: str) -> bool:
    """Zero-width and filler characters; emoji joiners right after a pictograph are fine."""
    if ch in _EMOJI_JOINERS and prev and (is_pictograph(prev) or prev == "\ufe0f"):
        return False
    if ch in "\ufe0e\ufe0f" and prev and prev in "0123456789#*":
        return False  # keycap sequences
    code = ord(ch)
    return ch in _INVISIBLE or 0xE0100 <= code <= 0xE01EF


def is_pictograph(ch: str) -> bool:
    """A symbol or emoji that a zero-width joiner may legitimately follow."""
    code = ord(ch)
    return unicodedata.category(ch) == "So" or 0x1F000 <= code <= 0x1FAFF


def is_control(ch: str) -> bool:
    """C0/C1 controls, DEL and line/paragraph separators; tab and newlines are fine."""
    code = ord(ch)
    if ch in "\t\n\r":
        return False
    return code < 0x20 or 0x7F <= code <= 0x9F or ch in "\u2028\u2029"


def printable(text: str, limit: int | None = 160, *, backslash: bool = True) -> str:
    """`text` with every non-printable character escaped (`\\x1b`, `\\u200b`), cut to `limit`."""
    out: list[str] = []
    for ch in text:
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\\" and backslash:
            out.append("\\\\")
        elif ch.isprintable() and unicodedata.category(ch) not in ("Cf", "Co", "Cs"):
            out.append(ch)
        elif ord(ch) <= 0xFF:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    text = "".join(out)
    return text if limit is None or len(text) <= limit else text[: limit - 1] + "…"
