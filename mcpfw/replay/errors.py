"""Errors replay raises for problems a user can fix (bad rules, bad file, unknown session,
unreachable upstream). The CLI prints them and exits 2."""

from __future__ import annotations

__all__ = ["ReplayError"]


class ReplayError(Exception):
    """Replay cannot run; the message says where and what to do."""
