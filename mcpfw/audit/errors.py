"""Errors raised by the audit store.

AuditError                 anything the audit layer cannot do (bad URL, unreadable database,
│                          schema written by a newer mcpfw, bad redaction pointer)
└── AuditWriteError        an event could not be committed; the caller denies the call
"""

from __future__ import annotations

__all__ = ["AuditError", "AuditWriteError"]


class AuditError(Exception):
    """The audit log could not be opened, read or written."""


class AuditWriteError(AuditError):
    """An event was not committed. Callers turn this into a deny (fail closed)."""
