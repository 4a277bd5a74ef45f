"""Errors of the pins layer (kept apart so the runtime checker imports no SQL code)."""

from __future__ import annotations

__all__ = ["PinStoreError"]


class PinStoreError(Exception):
    """The pins could not be read or written (callers fail closed under `pins: block`)."""
