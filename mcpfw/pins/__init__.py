"""Tool-definition pinning and poisoning checks (rug pulls, shadowing, poisoned descriptions).

- `definition_digest(tool)`: the canonical digest a pin stores (see `canonical.py` for which
  fields count).
- `scan_tool(tool)` / `scan_tools(tools)`: the description scanner's `Finding`s.
- `sanitize_tool(tool)`: descriptions without ANSI, control, invisible or bidi characters.
- `compare(pins, tools)`: pure drift detection; `PinStore`: pins in the audit database.
- `PinChecker`: the runtime hook used by the relay (`tools/list`) and the guard (`tools/call`).

`PinStore`, `PinEvent` and `open_pin_store` are imported on first use (`open_pin_store` pulls
in SQLAlchemy, which `mcpfw run` never loads on SQLite).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpfw.lazy import lazy_attributes
from mcpfw.pins.canonical import (
    PINNED_FIELDS,
    canonical_definition,
    canonical_json,
    definition_digest,
)
from mcpfw.pins.checker import PinChecker, PinOptions, PinVerdict
from mcpfw.pins.drift import Pin, PinMode, PinStatus, ToolCheck, compare, definition_diff
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.sanitize import sanitize_text, sanitize_tool, sanitize_tools
from mcpfw.pins.scanner import (
    CODES,
    Finding,
    Severity,
    finding_codes,
    finding_dict,
    scan_text,
    scan_tool,
    scan_tools,
)

if TYPE_CHECKING:
    from mcpfw.pins.open import open_pin_store
    from mcpfw.pins.store import PinEvent, PinStore

__all__ = [
    "CODES",
    "PINNED_FIELDS",
    "Finding",
    "Pin",
    "PinChecker",
    "PinEvent",
    "PinMode",
    "PinOptions",
    "PinStatus",
    "PinStore",
    "PinStoreError",
    "PinVerdict",
    "Severity",
    "ToolCheck",
    "canonical_definition",
    "canonical_json",
    "compare",
    "definition_diff",
    "definition_digest",
    "finding_codes",
    "finding_dict",
    "open_pin_store",
    "sanitize_text",
    "sanitize_tool",
    "sanitize_tools",
    "scan_text",
    "scan_tool",
    "scan_tools",
]

_LAZY = {"PinStore": "store", "PinEvent": "store", "open_pin_store": "open"}


__getattr__ = lazy_attributes(__name__, _LAZY)
