"""Backend fixtures: every store test runs on SQLite and on PostgreSQL.

PostgreSQL tests get a schema of their own (`?schema=t_<random>`), dropped afterwards, so
runs on the shared `test` database never see each other's rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from mcpfw.model import Agent, Decision, Effect, ToolCall


def _plain_dsn(url: str) -> str:
    _scheme, _, rest = url.partition("://")
    return "postgresql://" + rest.partition("?")[0]


async def _drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(_plain_dsn(url))
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
def audit_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty audit database URL on each backend."""
    if request.param == "sqlite":
        yield str(tmp_path / "audit.db")
        return
    base: str = request.getfixturevalue("postgres_url")
    schema = "t_audit_" + uuid.uuid4().hex[:12]
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}schema={schema}"
    asyncio.run(_drop_schema(base, schema))


AGENT = Agent(id="ci-bot", roles=("dev", "ci"), claims={"sub": "ci-bot"}, transport="stdio")


def make_call(
    *,
    tool: str = "read_file",
    server: str = "fs",
    arguments: dict[str, object] | None = None,
    session_id: str = "sess-1",
    agent: Agent = AGENT,
) -> ToolCall:
    """A ToolCall with sensible defaults."""
    return ToolCall(
        agent=agent,
        tool=tool,
        server=server,
        arguments=arguments if arguments is not None else {"path": "/workspace/a.txt"},
        session_id=session_id,
        request_id=7,
    )


def make_decision(
    effect: Effect = Effect.ALLOW, rule: str = "workspace-read", **kw: object
) -> Decision:
    """A Decision with sensible defaults."""
    return Decision(effect=effect, rule=rule, revision="abc123", eval_us=12.5, **kw)  # type: ignore[arg-type]
