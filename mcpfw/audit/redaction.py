"""Masking secrets before anything is stored.

Two sources: JSON pointers from the config (RFC 6901, plus `*` for "any key or index at this
level"), and built-in detectors — secret-looking key names (password, secret, token, api key …)
whose whole value is masked, and secret-shaped text (cloud keys, GitHub/GitLab/Slack tokens,
JWTs, PEM private keys, bearer/basic credentials, `user:pass@` in URLs, `password=…`) masked
where it appears inside a string. A masked value becomes `[REDACTED:<kind>]`; every mask is
reported as `(pointer, kind)` so the event can list what was hidden.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mcpfw.audit.errors import AuditError

__all__ = ["MAX_DEPTH", "Redacted", "RedactionConfig", "Redactor", "marker"]

MAX_DEPTH = 64  # deeper values are not stored (the policy denies them anyway)


def marker(kind: str) -> str:
    """The text that replaces a masked value."""
    return f"[REDACTED:{kind}]"


@dataclass(frozen=True, kw_only=True, slots=True)
class RedactionConfig:
    """What to mask: JSON pointers into the arguments, and whether to run the detectors."""

    pointers: tuple[str, ...] = ()
    detect_secrets: bool = True

    def __post_init__(self) -> None:
        for pointer in self.pointers:
            _parse_pointer(pointer)


@dataclass(frozen=True, kw_only=True, slots=True)
class Redacted:
    """A value with its secrets masked, and where they were."""

    value: Any
    masked: tuple[tuple[str, str], ...] = field(default=())  # (JSON pointer, kind)

    @property
    def paths(self) -> tuple[str, ...]:
        """The masked JSON pointers, in the order found."""
        return tuple(path for path, _ in self.masked)


def _parse_pointer(pointer: str) -> tuple[str, ...]:
    if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
        raise AuditError(
            f"redaction pointer {pointer!r} is not a JSON pointer: it must start with '/' "
            "(for example /headers/Authorization or /items/*/token)"
        )
    if pointer == "":
        return ()
    return tuple(seg.replace("~1", "/").replace("~0", "~") for seg in pointer[1:].split("/"))


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


# Key names whose values are secrets. Normalised: lower case, without - _ . and spaces.
_SECRET_KEY_ANYWHERE = re.compile(
    r"password|passwd|passphrase|secret|apikey|accesskey|privatekey|credential|clientkey"
)
_SECRET_KEY_SUFFIX = re.compile(
    r"(?:token|auth|authorization|pwd|pass|cookie|sessionid|signature|bearer|jwt)$"
)
_KEY_STRIP = str.maketrans("", "", "-_. ")


def clean_text(text: str) -> str:
    """`text` as storable UTF-8: lone surrogates (legal in JSON escapes, not in UTF-8) become
    U+FFFD instead of making the write fail."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a mapping key names a secret (its whole value is masked)."""
    norm = key.lower().translate(_KEY_STRIP)
    return bool(_SECRET_KEY_ANYWHERE.search(norm) or _SECRET_KEY_SUFFIX.search(norm))


# (kind, trigger substrings of the lower-cased text, pattern). A pattern may have groups "pre"
# and "post" that are kept around the mask. Python's `re` has no fast multi-pattern scan, so a
# pattern runs only when one of its literal triggers occurs in the text (plain `in` checks).
_DETECTORS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "pem-private-key",
        ("private key",),
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        r"(?:.*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
    ),
    ("jwt", ("eyj",), r"\beyJ[A-Za-z0-9_-]{2,}\.eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),
    (
        "aws-access-key",
        ("akia", "asia", "abia", "acca", "agpa", "aida", "aroa", "aipa", "anpa", "anva", "apka"),
        r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b",
    ),
    (
        "aws-secret-key",
        ("aws",),
        r"(?P<pre>(?i:aws)[A-Za-z0-9_.-]{0,20}(?i:secret)[A-Za-z0-9_.-]{0,20}[\"']?\s*[:=]\s*[\"']?)"
        r"[A-Za-z0-9/+=]{40}",
    ),
    (
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})",
    ),
    (
        "gitlab-token",
        ("gl",),
        r"\bgl(?:pat|dt|rt|ptt|ft|cbt|imt|oas|soat|agent)-[A-Za-z0-9_-]{20,}",
    ),
    ("slack-token", ("xox",), r"\bxox[abposre]-[A-Za-z0-9-]{10,}"),
    (
        "slack-webhook",
        ("hooks.slack.com",),
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]+",
    ),
    ("bearer", ("bearer",), r"(?P<pre>\b(?i:bearer)\s+)[A-Za-z0-9\-._~+/]{8,}=*"),
    ("basic", ("basic",), r"(?P<pre>\b(?i:basic)\s+)[A-Za-z0-9+/]{8,}={0,2}"),
    ("url-credentials", ("://",), r"(?P<pre>://[^/\s:@]{1,256}:)[^/\s@]{1,256}(?P<post>@)"),
    (
        "assignment",
        ("pass", "pwd", "secret", "token", "api", "access", "private"),
        r"(?P<pre>(?i:(?:password|passwd|pwd|secret|token|api[_-]?key"
        r"|access[_-]?key|private[_-]?key)[A-Za-z0-9_.-]{0,40})[\"']?\s*[:=]\s*)"
        r"(?:\"[^\"]{1,512}\"|'[^']{1,512}'|[^\s\"',;&]{1,512})",
    ),
)

_COMPILED = tuple(
    (kind, triggers, re.compile(pattern, re.DOTALL)) for kind, triggers, pattern in _DETECTORS
)


_ALL_TRIGGERS = re.compile(
    "|".join(
        re.escape(t)
        for t in sorted({t for _, ts, _ in _DETECTORS for t in ts}, key=len, reverse=True)
    )
)


def redact_text(text: str) -> tuple[str, tuple[str, ...]]:
    """`text` with secret-shaped parts masked, and the kinds found."""
    lower = text.lower()
    if len(text) < 5 or not _ALL_TRIGGERS.search(lower):
        return text, ()  # the common case: one scan, nothing to do
    kinds: list[str] = []
    for kind, triggers, pattern in _COMPILED:
        for trigger in triggers:
            if trigger in lower:
                break
        else:
            continue

        def _mask(m: re.Match[str], kind: str = kind) -> str:
            groups = m.groupdict()
            return (groups.get("pre") or "") + marker(kind) + (groups.get("post") or "")

        text, count = pattern.subn(_mask, text)
        if count:
            kinds.append(kind)
            lower = text.lower()
    return text, tuple(kinds)


class _Trie:
    __slots__ = ("children", "star", "terminal")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.star: _Trie | None = None
        self.terminal = False


class Redactor:
    """Applies one `RedactionConfig` to values (arguments, claims, details)."""

    def __init__(self, config: RedactionConfig | None = None) -> None:
        self.config = config or RedactionConfig()
        self._root: _Trie | None = None
        for pointer in self.config.pointers:
            node = self._root = self._root or _Trie()
            for seg in _parse_pointer(pointer):
                if seg == "*":
                    node.star = node.star or _Trie()
                    node = node.star
                else:
                    node = node.children.setdefault(seg, _Trie())
            node.terminal = True
        self._detect = self.config.detect_secrets

    def redact(self, value: Any, *, use_pointers: bool = True) -> Redacted:
        """A JSON-safe copy of `value` with secrets masked (pointers apply from its root)."""
        if not value and isinstance(value, Mapping | list | tuple):
            return Redacted(value={} if isinstance(value, Mapping) else [])
        masked: list[tuple[str, str]] = []
        nodes = [self._root] if (use_pointers and self._root is not None) else []
        out = self._walk(value, "", nodes, masked, 0)
        return Redacted(value=out, masked=tuple(masked))

    def redact_str(self, text: str) -> str:
        """A free-text field (reason, detail) with secret-shaped parts masked."""
        text = clean_text(text)
        return redact_text(text)[0] if (self._detect and text) else text

    def _walk(
        self, value: Any, path: str, nodes: list[_Trie], masked: list[tuple[str, str]], depth: int
    ) -> Any:
        if nodes and any(n.terminal for n in nodes):
            masked.append((path, "pointer"))
            return marker("pointer")
        if depth > MAX_DEPTH:
            masked.append((path, "too-deep"))
            return "[TRUNCATED:too-deep]"
        if isinstance(value, str):
            value = clean_text(value)
            if self._detect:
                text, kinds = redact_text(value)
                if kinds:
                    masked.extend((path, kind) for kind in kinds)
                return text
            return value
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            detect = self._detect
            leaves_fast = not nodes and depth + 1 <= MAX_DEPTH
            for raw_key, item in value.items():
                if type(raw_key) is str and raw_key.isascii():
                    key = raw_key
                else:
                    key = clean_text(str(raw_key))
                if (
                    detect
                    and item is not None
                    and item is not True
                    and item is not False
                    and item != ""
                    and is_secret_key(key)
                ):
                    masked.append((path + "/" + _escape(key), "secret-key"))
                    out[key] = marker("secret-key")
                    continue
                kind = type(item)
                if leaves_fast and kind is str:  # the common leaf, without a recursive call
                    text = clean_text(item)
                    if detect:
                        text, kinds = redact_text(text)
                        if kinds:
                            sub = path + "/" + _escape(key)
                            masked.extend((sub, k) for k in kinds)
                    out[key] = text
                    continue
                if leaves_fast and (item is None or kind is int or kind is float or kind is bool):
                    out[key] = item
                    continue
                sub = path + "/" + _escape(key)
                out[key] = self._walk(item, sub, _step(nodes, key), masked, depth + 1)
            return out
        if isinstance(value, list | tuple):
            return [
                self._walk(item, f"{path}/{i}", _step(nodes, str(i)), masked, depth + 1)
                for i, item in enumerate(value)
            ]
        return self._walk(str(value), path, nodes, masked, depth)


def _step(nodes: list[_Trie], segment: str) -> list[_Trie]:
    if not nodes:
        return nodes
    nxt: list[_Trie] = []
    for node in nodes:
        child = node.children.get(segment)
        if child is not None:
            nxt.append(child)
        if node.star is not None:
            nxt.append(node.star)
    return nxt
