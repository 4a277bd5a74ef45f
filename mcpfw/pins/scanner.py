"""The description scanner: tool definitions that carry instructions meant for the model.

Tool poisoning hides instructions in text the model reads but the user rarely does: the
description, parameter descriptions, titles, enum values and defaults. The scanner walks a tool
definition and reports each suspicious thing as a `Finding` (code, severity, JSON pointer of the
string it was found in, a printable excerpt). Checks are small, separate and ordered:

- characters: ANSI escapes, control characters, bidirectional controls, invisible characters,
  Unicode tag characters (whose hidden ASCII payload is decoded and scanned too);
- phrases: hidden-instruction tags (`<IMPORTANT>`), overriding earlier instructions, hiding
  things from the user, secret files (`~/.ssh`, `.env`, `id_rsa` …), exfiltration into
  parameters, instructions aimed at other tools or servers, coercion;
- names: tool names outside the MCP name alphabet (homoglyph lookalikes).

Phrases are matched on a normalised copy of each string (NFKC, invisible characters removed,
whitespace collapsed) so `ig<U+200B>nore previous instructions` is still caught. Everything
here is pure and never raises on odd input.
"""

from __future__ import annotations

import enum
import json
import re
import unicodedata
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcpfw.pins.chars import ANSI, BIDI, is_control, is_invisible, is_tag, printable, suspect
from mcpfw.pins.phrases import PHRASES, SECRET, SECRET_SENTENCE_VERB, TRIGGER_RE, WORD

__all__ = [
    "CODES",
    "Finding",
    "Severity",
    "finding_codes",
    "finding_dict",
    "scan_text",
    "scan_tool",
    "scan_tools",
]


class Severity(enum.StrEnum):
    """How strongly a finding suggests poisoning."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True, kw_only=True, slots=True)
class Finding:
    """One suspicious thing in one string of a tool definition."""

    code: str  # stable identifier, what rules see in `tool.findings`
    severity: Severity
    where: str  # JSON pointer into the tool definition, e.g. /inputSchema/properties/x/description
    excerpt: str  # the surrounding text, escaped so it is safe to print
    message: str  # a human explanation
    tool: str = ""


# code -> (default severity, explanation)
CODES: dict[str, tuple[Severity, str]] = {
    "ansi-escape": (Severity.HIGH, "ANSI escape sequence (can hide or rewrite text on a terminal)"),
    "control-character": (Severity.MEDIUM, "control character"),
    "bidi-control": (Severity.HIGH, "bidirectional control character (text displays reordered)"),
    "invisible-unicode": (Severity.MEDIUM, "invisible character (zero-width or filler)"),
    "unicode-tag-smuggling": (Severity.HIGH, "Unicode tag characters hiding ASCII text"),
    "hidden-instruction-tag": (Severity.HIGH, "instruction block addressed to the model"),
    "instruction-override": (Severity.HIGH, "tells the model to override its instructions"),
    "concealment": (Severity.HIGH, "tells the model to hide something from the user"),
    "secret-file-reference": (Severity.MEDIUM, "refers to a secret or credential file"),
    "exfiltration-instruction": (Severity.HIGH, "asks for data to be smuggled into a call"),
    "cross-tool-instruction": (Severity.MEDIUM, "gives instructions about other tools or servers"),
    "cross-server-reference": (Severity.MEDIUM, "names a tool of another server"),
    "coercion": (Severity.LOW, "pressure or threats aimed at the model"),
    "non-ascii-name": (Severity.MEDIUM, "tool name outside the MCP name alphabet (lookalike?)"),
    "name-collision": (Severity.MEDIUM, "same or lookalike name as a tool of another server"),
}

_SKIP_KEYS = frozenset({"_meta", "icons"})  # not shown to the model

# ---------------------------------------------------------------------------- characters


def _around(text: str, start: int, end: int, width: int = 40) -> str:
    lo, hi = max(0, start - width), min(len(text), end + width)
    return ("…" if lo else "") + printable(text[lo:hi], 200) + ("…" if hi < len(text) else "")


def _char_findings(text: str) -> Iterator[tuple[str, str, str]]:
    """(code, excerpt, detail) for suspicious characters in one raw string."""
    if not suspect(text):
        return
    ansi = ANSI.search(text)
    if ansi:
        count = len(ANSI.findall(text))
        yield "ansi-escape", _around(text, ansi.start(), ansi.end()), f"{count} sequence(s)"
    groups: dict[str, list[int]] = {}
    prev = ""
    for i, ch in enumerate(text):
        if ch == "\x1b" or ch == "\x9b":
            code = ""
        elif is_tag(ch):
            code = "unicode-tag-smuggling"
        elif ch in BIDI:
            code = "bidi-control"
        elif is_control(ch):
            code = "control-character"
        elif is_invisible(ch, prev):
            code = "invisible-unicode"
        else:
            code = ""
        if code:
            groups.setdefault(code, []).append(i)
        prev = ch
    for code, positions in groups.items():
        chars = sorted({f"U+{ord(text[i]):04X}" for i in positions})
        detail = f"{len(positions)} character(s): {', '.join(chars[:6])}"
        if code == "unicode-tag-smuggling":
            hidden = "".join(chr(ord(text[i]) - 0xE0000) for i in positions)
            detail += f"; hidden text: {printable(hidden, 120)!r}"
        first = positions[0]
        yield code, _around(text, first, first + 1), detail


# ---------------------------------------------------------------------------- phrases

_WS = re.compile(r"\s+")


def _normalise(text: str) -> str:
    """NFKC, invisible/format characters removed, ANSI removed, whitespace collapsed."""
    if text.isascii() and not suspect(text):
        return _WS.sub(" ", text)  # nothing to normalise but whitespace
    text = ANSI.sub("", text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc") or ch in "\n\t"
    )
    return _WS.sub(" ", text)


def _sentence(text: str, start: int, end: int) -> str:
    lo = max(text.rfind(".", 0, start), text.rfind("\n", 0, start)) + 1
    hi = text.find(".", end)
    return text[lo : hi if hi >= 0 else len(text)]


def scan_text(
    text: str, *, phrases: bool = True, only: Collection[str] | None = None
) -> list[tuple[str, Severity, str, str]]:
    """(code, severity, excerpt, detail) for every check that fires on one string.

    `phrases=False` runs the character checks only (for identifiers such as property names);
    `only` limits the phrase checks to these codes.
    """
    out: list[tuple[str, Severity, str, str]] = []
    for code, excerpt, detail in _char_findings(text):
        out.append((code, CODES[code][0], excerpt, detail))
    if not phrases or (only is not None and not only):
        return out
    texts = [_normalise(text)]
    hidden = "".join(chr(ord(ch) - 0xE0000) for ch in text if is_tag(ch)) if suspect(text) else ""
    if hidden.strip():
        texts.append(_normalise(hidden))
    seen: set[str] = set()
    for candidate in texts:
        lowered = candidate.lower()
        if WORD.match(candidate):  # one identifier-like word ("object", "id_rsa", ".env")
            if only is not None and "secret-file-reference" not in only:
                continue
            match = SECRET.search(candidate)
            if match is not None and "secret-file-reference" not in seen:
                seen.add("secret-file-reference")
                excerpt = _around(candidate, match.start(), match.end())
                out.append(("secret-file-reference", Severity.MEDIUM, excerpt, ""))
            continue
        for code, pattern in PHRASES:
            if code in seen or (only is not None and code not in only and candidate is texts[0]):
                continue
            if not TRIGGER_RE[code].search(lowered):
                continue
            match = pattern.search(candidate)
            if match is None:
                continue
            seen.add(code)
            severity = CODES[code][0]
            if code == "secret-file-reference" and SECRET_SENTENCE_VERB.search(
                _sentence(candidate, match.start(), match.end())
            ):
                severity = Severity.HIGH  # an instruction to do something with the secret
            out.append((code, severity, _around(candidate, match.start(), match.end()), ""))
    return out


# ---------------------------------------------------------------------------- walking a tool

_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,128}$")


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _strings(value: Any, pointer: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    """(pointer, string) for every string value and mapping key under `value`."""
    if depth > 64:
        return
    if isinstance(value, str):
        yield pointer, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            key = str(key)
            if depth == 0 and key in _SKIP_KEYS:
                continue
            child = f"{pointer}/{_escape_pointer(key)}"
            yield f"{child}#key", key
            yield from _strings(item, child, depth + 1)
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for index, item in enumerate(value):
            yield from _strings(item, f"{pointer}/{index}", depth + 1)


def _prefilter(tool: Mapping[str, Any]) -> tuple[bool, frozenset[str] | None]:
    """One pass over the whole definition as JSON text: does it hold any suspicious character
    (`chars`), and which phrase checks have a trigger word anywhere in it (`only`)? Strings
    of a tool that passes both are skipped; hidden characters disable the shortcut (tag
    characters may spell any phrase)."""
    try:
        blob = json.dumps(
            {k: v for k, v in tool.items() if k not in _SKIP_KEYS},
            ensure_ascii=False,
            default=str,
        )
    except (ValueError, TypeError, RecursionError):
        return True, None  # odd input: scan everything
    chars = suspect(blob) or "\\u" in blob
    if chars:
        return True, None
    # JSON's own quotes are not text: keep only the escaped ones (quotes inside strings)
    if not blob.isascii():
        blob = unicodedata.normalize("NFKC", blob)  # fullwidth letters spell phrases too
    lowered = blob.lower().replace('\\"', "\0").replace('"', " ").replace("\0", '"')
    return False, frozenset(code for code, trigger in TRIGGER_RE.items() if trigger.search(lowered))


def scan_tool(
    tool: Mapping[str, Any], *, foreign_tools: Collection[str] = ()
) -> tuple[Finding, ...]:
    """Every finding in one tool definition (as sent in a `tools/list` result).

    `foreign_tools` are tool names offered by other servers: a description that names one
    of them is reported as `cross-server-reference`.
    """
    name = tool.get("name")
    tool_name = name if isinstance(name, str) else ""
    findings: list[Finding] = []
    chars, only = _prefilter(tool)
    for pointer, text in _strings(tool, ""):
        if not text:
            continue
        is_key = pointer.endswith("#key")
        if not chars and (is_key or not only):
            continue  # nothing in this tool could fire on this string
        where = pointer[: -len("#key")] if is_key else pointer
        for code, severity, excerpt, detail in scan_text(text, phrases=not is_key, only=only):
            message = CODES[code][1] + (f" ({detail})" if detail else "")
            if is_key:
                message = "in a key: " + message
            findings.append(
                Finding(
                    code=code,
                    severity=severity,
                    where=where,
                    excerpt=excerpt,
                    message=message,
                    tool=tool_name,
                )
            )
    if tool_name and not _NAME.match(tool_name):
        findings.append(
            Finding(
                code="non-ascii-name",
                severity=CODES["non-ascii-name"][0],
                where="/name",
                excerpt=printable(tool_name),
                message=CODES["non-ascii-name"][1],
                tool=tool_name,
            )
        )
    findings.extend(_foreign_references(tool, tool_name, foreign_tools))
    return tuple(findings)


def _distinctive(name: str) -> bool:
    """A name unlikely to be an ordinary word: has a separator or an inner capital."""
    return len(name) >= 5 and (
        any(sep in name for sep in "_-.") or any(c.isupper() for c in name[1:])
    )


def _skeleton(name: str) -> str:
    """A name reduced to what a reader tells apart: NFKC, case-folded, no separators."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(ch for ch in folded if ch.isalnum())


def _foreign_references(
    tool: Mapping[str, Any], tool_name: str, foreign_tools: Collection[str]
) -> Iterator[Finding]:
    if tool_name:
        skeleton = _skeleton(tool_name)
        twins = sorted(n for n in foreign_tools if _skeleton(n) == skeleton)
        if twins:
            yield Finding(
                code="name-collision",
                severity=CODES["name-collision"][0],
                where="/name",
                excerpt=printable(tool_name),
                message=f"{CODES['name-collision'][1]}: {', '.join(map(repr, twins[:3]))}",
                tool=tool_name,
            )
    names = sorted({n for n in foreign_tools if n != tool_name and _distinctive(n)})
    if not names:
        return
    pattern = re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(n) for n in names) + r")(?![\w-])")
    for pointer, text in _strings(tool, ""):
        if pointer.endswith("#key") or pointer == "/name":
            continue
        match = pattern.search(text)
        if match:
            yield Finding(
                code="cross-server-reference",
                severity=CODES["cross-server-reference"][0],
                where=pointer,
                excerpt=_around(text, match.start(), match.end()),
                message=f"{CODES['cross-server-reference'][1]}: {match.group(0)!r}",
                tool=tool_name,
            )
            return


def scan_tools(
    tools: Sequence[Mapping[str, Any]], *, foreign_tools: Collection[str] = ()
) -> dict[str, tuple[Finding, ...]]:
    """Findings per tool name for a whole `tools/list` page (tools without findings omitted)."""
    out: dict[str, tuple[Finding, ...]] = {}
    for tool in tools:
        if not isinstance(tool, Mapping):
            continue
        found = scan_tool(tool, foreign_tools=foreign_tools)
        if found:
            name = tool.get("name")
            out[name if isinstance(name, str) else ""] = found
    return out


def finding_codes(findings: Sequence[Finding]) -> tuple[str, ...]:
    """The distinct codes of some findings, sorted: what `ToolCall.findings` carries."""
    return tuple(sorted({f.code for f in findings}))


def finding_dict(finding: Finding) -> dict[str, Any]:
    """A finding as stored and exported."""
    return {
        "code": finding.code,
        "severity": str(finding.severity),
        "where": finding.where,
        "excerpt": finding.excerpt,
        "message": finding.message,
    }
