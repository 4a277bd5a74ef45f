"""Opening the pin store on an audit database URL (for the CLI and tests).

The firewall itself uses the engine of its open `AuditStore`; commands that only manage pins
open the same database through `open_store`, which creates or migrates its schema (the pin
tables are audit migration 2) exactly as the firewall would, PostgreSQL `?schema=` included.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from mcpfw.audit import AuditError, open_store
from mcpfw.pins.errors import PinStoreError
from mcpfw.pins.store import PinStore

__all__ = ["open_pin_store"]


@asynccontextmanager
async def open_pin_store(
    url: str | None = None, *, create: bool = False
) -> AsyncIterator[PinStore]:
    """A `PinStore` on the audit database at `url` (default: the default audit database).

    With create=False a missing database is an error. Raises `PinStoreError` with a message
    naming the database when it cannot be opened.
    """
    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(
                open_store(url, create=create, instance="mcpfw-pins-cli")
            )
        except AuditError as exc:
            raise PinStoreError(str(exc)) from None
        yield PinStore(store.engine)
