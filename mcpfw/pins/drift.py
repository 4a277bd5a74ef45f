"""Pins and drift: what was approved for a (server, tool), and how a new listing compares.

Pure: the store keeps `Pin`s, the checker feeds listings through `compare`. Tools are matched
by name, so the order of a `tools/list` result never matters; a definition is compared by its
canonical digest, so key order and serialisation never matter either.
"""

from __future__ import annotations

import difflib
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mcpfw.pins.canonical import (
    canonical_definition,
    canonical_digest,
    canonical_json,
    definition_digest,
)
from mcpfw.pins.chars import printable

__all__ = [
    "Pin",
    "PinMode",
    "PinStatus",
    "ToolCheck",
    "compare",
    "definition_diff",
]


class PinMode(enum.StrEnum):
    """The `pins:` setting: what a drifted tool means for calls to it."""

    OFF = "off"  # no pinning (the scanner and sanitiser still run)
    WARN = "warn"  # record drift, flag calls (`pin-drift` in tool.findings), allow them
    BLOCK = "block"  # record drift, hide the tool from listings, deny calls until approved


class PinStatus(enum.StrEnum):
    """How one listed tool compares with its pin."""

    NEW = "new"  # in the server's first listing: pinned now (trust on first use)
    PINNED = "pinned"  # identical to the approved definition
    DRIFTED = "drifted"  # differs from the approved definition
    # never approved: added after the server's first listing, or trust on first use is off
    UNAPPROVED = "unapproved"
    DUPLICATE = "duplicate"  # the same name listed twice with different definitions


@dataclass(frozen=True, kw_only=True, slots=True)
class Pin:
    """The approved definition of one (server, tool), and the latest one seen."""

    server: str
    tool: str
    digest: str  # approved digest; "" when nothing is approved yet
    definition: Mapping[str, Any] | None  # approved canonical definition
    approved_by: str = ""  # "tofu", "cli:<user>", …
    approved_at: datetime | None = None
    first_seen: datetime | None = None
    seen_digest: str = ""  # latest digest seen from the upstream
    seen_definition: Mapping[str, Any] | None = None
    seen_at: datetime | None = None
    findings: tuple[Mapping[str, Any], ...] = ()  # scanner findings on the latest definition

    @property
    def drifted(self) -> bool:
        """The upstream last offered something other than what was approved."""
        return bool(self.seen_digest) and self.seen_digest != self.digest

    @property
    def status(self) -> PinStatus:
        """PINNED, DRIFTED, or UNAPPROVED (seen, never approved)."""
        if not self.digest:
            return PinStatus.UNAPPROVED
        return PinStatus.DRIFTED if self.drifted else PinStatus.PINNED


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCheck:
    """The verdict on one tool of a listing."""

    tool: str
    status: PinStatus
    digest: str  # digest of the definition just seen
    definition: Mapping[str, Any] = field(default_factory=dict)  # its canonical form
    pinned_digest: str = ""  # the approved digest, if any

    @property
    def blocked(self) -> bool:
        """Whether `pins: block` hides this tool and denies calls to it."""
        return self.status in (PinStatus.DRIFTED, PinStatus.UNAPPROVED, PinStatus.DUPLICATE)


def compare(
    pins: Mapping[str, Pin], tools: Sequence[Mapping[str, Any]], *, trust_on_first_use: bool = True
) -> list[ToolCheck]:
    """Compare one listing with the pins of its server, one `ToolCheck` per distinct name.

    Trust on first use trusts a server's first listing only (no pins for it yet). A tool that
    appears later is UNAPPROVED until a human approves it: a rug pull can add a tool as well
    as change one.
    """
    first_listing = not pins
    by_name: dict[str, list[Mapping[str, Any]]] = {}
    for tool in tools:
        name = tool.get("name") if isinstance(tool, Mapping) else None
        if isinstance(name, str):
            by_name.setdefault(name, []).append(tool)
    checks: list[ToolCheck] = []
    for name in sorted(by_name):
        variants = by_name[name]
        canonical = canonical_definition(variants[0])
        digest = canonical_digest(canonical)
        digests = {digest} | {definition_digest(t) for t in variants[1:]}
        pin = pins.get(name)
        pinned = pin.digest if pin else ""
        if len(digests) > 1:
            status = PinStatus.DUPLICATE
        elif pin is None:
            status = PinStatus.NEW if trust_on_first_use and first_listing else PinStatus.UNAPPROVED
        elif not pin.digest:
            status = PinStatus.UNAPPROVED
        elif pin.digest == digest:
            status = PinStatus.PINNED
        else:
            status = PinStatus.DRIFTED
        checks.append(
            ToolCheck(
                tool=name,
                status=status,
                digest=digest,
                definition=canonical,
                pinned_digest=pinned,
            )
        )
    return checks


def _lines(definition: Mapping[str, Any] | None) -> list[str]:
    """A definition as diff-friendly lines: the description as prose, the rest as JSON."""
    if not definition:
        return []
    rest = {k: v for k, v in definition.items() if k != "description"}
    lines: list[str] = []
    description = definition.get("description")
    if isinstance(description, str):
        lines.append("description:")
        lines.extend("  " + line for line in description.split("\n"))
    lines.extend(json.dumps(rest, indent=2, sort_keys=True, ensure_ascii=False).splitlines())
    # hidden characters are what a rug pull may change: show them, never let them act
    return [printable(line, None, backslash=False) for line in lines]


def definition_diff(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    *,
    old_label: str = "approved",
    new_label: str = "seen",
) -> list[str]:
    """A unified diff (lines without newlines) between two canonical definitions."""
    return list(
        difflib.unified_diff(
            _lines(old), _lines(new), fromfile=old_label, tofile=new_label, lineterm="", n=3
        )
    )


def canonical_text(definition: Mapping[str, Any]) -> str:
    """The stored text of a canonical definition."""
    return canonical_json(definition)
