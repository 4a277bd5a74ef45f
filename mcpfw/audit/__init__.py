"""The audit log: an append-only, hash-chained, redacted record of every decision.

    async with open_store(url, instance="fw-1") as store:
        await store.record_decision(call, decision)   # committed when it returns
        report = await store.verify()

`open_writer` is the write-only variant `mcpfw run` uses: on a SQLite file whose schema is
current it never imports SQLAlchemy (about 20 MB of a firewall process's memory).

See docs/audit.md for the schema, the hash chain, redaction and the query API. Names are
imported on first use, so importing this package costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpfw.lazy import lazy_attributes

if TYPE_CHECKING:
    from mcpfw.audit.chain import ChainBreak, ChainReport, VerifyReport
    from mcpfw.audit.errors import AuditError, AuditWriteError
    from mcpfw.audit.events import (
        EXPORT_FORMAT,
        EXPORT_VERSION,
        AuditEvent,
        EventFilter,
        RecordedCall,
    )
    from mcpfw.audit.queries import AuditReader, AuditStats, StatRow
    from mcpfw.audit.redaction import RedactionConfig, Redactor
    from mcpfw.audit.store import AuditStore, open_store
    from mcpfw.audit.urls import default_audit_url, normalize_audit_url
    from mcpfw.audit.verify import ChainPrune, PruneResult
    from mcpfw.audit.writer import AuditWriter, default_instance, open_writer

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "AuditError",
    "AuditEvent",
    "AuditReader",
    "AuditStats",
    "AuditStore",
    "AuditWriteError",
    "AuditWriter",
    "ChainBreak",
    "ChainPrune",
    "ChainReport",
    "EventFilter",
    "PruneResult",
    "RecordedCall",
    "RedactionConfig",
    "Redactor",
    "StatRow",
    "VerifyReport",
    "default_audit_url",
    "default_instance",
    "normalize_audit_url",
    "open_store",
    "open_writer",
]

_WHERE = {
    "ChainBreak": "chain",
    "ChainReport": "chain",
    "VerifyReport": "chain",
    "AuditError": "errors",
    "AuditWriteError": "errors",
    "EXPORT_FORMAT": "events",
    "EXPORT_VERSION": "events",
    "AuditEvent": "events",
    "EventFilter": "events",
    "RecordedCall": "events",
    "AuditReader": "queries",
    "AuditStats": "queries",
    "StatRow": "queries",
    "RedactionConfig": "redaction",
    "Redactor": "redaction",
    "AuditStore": "store",
    "open_store": "store",
    "default_audit_url": "urls",
    "normalize_audit_url": "urls",
    "ChainPrune": "verify",
    "PruneResult": "verify",
    "AuditWriter": "writer",
    "default_instance": "writer",
    "open_writer": "writer",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
