"""Opening the pin store on an audit database URL (for the CLI and tests).

The firewall itself uses the engine of its open `AuditStore`; commands that only manage pins
open the same database here, bringing its schema up to date with the audit migrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import SQLAlchemyError

from mcpfw.audit.engine import make_engine
from mcpfw.audit.errors import AuditError
from mcpfw.audit.events import time_text
from mcpfw.audit.migrations import migrate_sync
from mcpfw.audit.urls import default_audit_url
from mcpfw.model import utcnow
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.store import PinStore

__all__ = ["open_pin_store"]


@asynccontextmanager
async def open_pin_store(
    url: str | None = None, *, create: bool = False
) -> AsyncIterator[PinStore]:
    """A `PinStore` on the audit database at `url` (default: the default audit database).

    Raises `PinStoreError` with a message naming the database when it cannot be opened.
    """
    raw = url or default_audit_url()
    try:
        engine, info = make_engine(raw, create=create)
    except AuditError as exc:
        raise PinStoreError(str(exc)) from None
    try:
        try:
            async with engine.begin() as conn:
                await conn.run_sync(
                    lambda sync: migrate_sync(
                        sync, applied_at=time_text(utcnow()), is_postgres=info.is_postgres
                    )
                )
        except (SQLAlchemyError, OSError, AuditError) as exc:
            raise PinStoreError(f"cannot open the audit database {info.url}: {exc}") from None
        yield PinStore(engine)
    finally:
        await engine.dispose()
