"""The audit log: an append-only, hash-chained, redacted record of every decision.

    async with open_store(url, instance="fw-1") as store:
        await store.record_decision(call, decision)   # committed when it returns
        report = await store.verify()

See docs/audit.md for the schema, the hash chain, redaction and the query API.
"""

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
from mcpfw.audit.store import AuditStore, default_instance, open_store
from mcpfw.audit.urls import default_audit_url, normalize_audit_url
from mcpfw.audit.verify import ChainPrune, PruneResult

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "AuditError",
    "AuditEvent",
    "AuditReader",
    "AuditStats",
    "AuditStore",
    "AuditWriteError",
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
]
