"""The SQLAlchemy-free writer `mcpfw run` uses: schema creation, fallbacks, pins beside it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from mcpfw.audit import AuditError, AuditStore, AuditWriter, open_store, open_writer, sqlite_ddl
from mcpfw.audit.migrations import latest_version, render_sqlite_ddl
from mcpfw.audit.sql import DuplicateKey, SqlError, SqliteDatabase
from mcpfw.audit.sqlite_schema import SCHEMA_VERSION, prepare_sqlite, schema_version
from mcpfw.audit.urls import EngineInfo, sqlite_file, sqlite_file_info
from mcpfw.model import Outcome
from mcpfw.pins.store import PinStore

from .conftest import make_call, make_decision

pytestmark = pytest.mark.anyio

TOOL = {"name": "read_file", "description": "Read a file.", "inputSchema": {"type": "object"}}


def _info(path: Path) -> EngineInfo:
    return sqlite_file_info(str(path), None, create=True)


def _schema(path: Path) -> tuple[list[tuple[str, str, str]], list[tuple[int, str]]]:
    conn = sqlite3.connect(path)
    try:
        master = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
        ).fetchall()
        versions = conn.execute(
            "SELECT version, description FROM schema_version ORDER BY version"
        ).fetchall()
    finally:
        conn.close()
    return master, versions


def test_the_generated_sqlite_ddl_matches_the_migrations() -> None:
    # Fails after a new migration until `python -m mcpfw.audit.migrations` regenerates it.
    assert Path(sqlite_ddl.__file__).read_text() == render_sqlite_ddl()
    assert latest_version() == SCHEMA_VERSION


async def test_a_new_file_gets_exactly_the_schema_the_migrations_build(tmp_path: Path) -> None:
    light, full = tmp_path / "light.db", tmp_path / "full.db"
    assert prepare_sqlite(_info(light))
    async with open_store(str(full)):
        pass
    assert _schema(light) == _schema(full)
    assert _schema(light)[1][-1][0] == SCHEMA_VERSION
    conn = sqlite3.connect(light)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_two_processes_creating_one_new_file_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    code = (
        "import sys; from mcpfw.audit.sqlite_schema import prepare_sqlite; "
        "from mcpfw.audit.urls import sqlite_file_info; "
        "print(prepare_sqlite(sqlite_file_info(sys.argv[1], None, create=True)))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    assert outputs == ["True"] * 4
    versions = _schema(path)[1]
    assert [v for v, _ in versions] == list(range(1, SCHEMA_VERSION + 1))  # no duplicates


async def test_an_older_schema_is_left_to_the_migrations(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with open_store(str(path)):
        pass
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM schema_version WHERE version = ?", (SCHEMA_VERSION,))
    conn.commit()
    conn.close()
    assert prepare_sqlite(_info(path)) is False
    async with open_writer(str(path)) as writer:
        assert isinstance(writer, AuditStore)  # the full store migrates it
    conn = sqlite3.connect(path)
    assert schema_version(conn) == SCHEMA_VERSION
    conn.close()


async def test_a_database_with_other_tables_is_left_to_the_migrations(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE theirs (x INTEGER)")
    conn.close()
    assert prepare_sqlite(_info(path)) is False
    async with open_writer(str(path)) as writer:
        assert isinstance(writer, AuditStore)
    master = [name for _, name, _ in _schema(path)[0]]
    assert "theirs" in master and "audit_events" in master


async def test_a_newer_schema_or_a_file_that_is_no_database_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    async with open_writer(str(newer)):
        pass
    conn = sqlite3.connect(newer)
    conn.execute("INSERT INTO schema_version VALUES (?, 'future', '')", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    with pytest.raises(AuditError, match="newer than this mcpfw understands"):
        async with open_writer(str(newer)):
            pass
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(AuditError, match=r"cannot open the audit database .*junk\.db"):
        async with open_writer(str(junk)):
            pass


@pytest.mark.parametrize(
    ("url", "light"),
    [
        ("{dir}/a.db", True),
        ("sqlite:///{dir}/a.db?synchronous=full", True),
        ("sqlite+aiosqlite:///{dir}/a%20b.db", True),
        (":memory:", False),
        ("sqlite:///{dir}/a.db?timeout=3", False),  # an option only SQLAlchemy knows
    ],
)
async def test_open_writer_is_light_exactly_for_sqlite_files(
    tmp_path: Path, url: str, light: bool
) -> None:
    async with open_writer(url.format(dir=tmp_path)) as writer:
        assert isinstance(writer, AuditWriter)
        assert isinstance(writer, AuditStore) is not light
        await writer.record_decision(make_call(), make_decision())
    if "%20" in url:
        assert (tmp_path / "a b.db").exists()


async def test_open_writer_on_postgres_is_the_full_store(audit_url: str) -> None:
    async with open_writer(audit_url) as writer:
        assert isinstance(writer, AuditStore) == audit_url.startswith("postgresql")


def test_sqlite_file_parses_paths_and_options_like_sqlalchemy() -> None:
    assert sqlite_file("sqlite:////tmp/a%20b.db?synchronous=full") == (
        "/tmp/a b.db",
        {"synchronous": ["full"]},
    )
    assert sqlite_file("postgresql://u@h/db") is None
    assert sqlite_file(":memory:") is None
    with pytest.raises(AuditError, match="invalid synchronous level"):
        sqlite_file_info("/tmp/x.db", "sometimes", create=False)


async def test_what_the_light_writer_writes_verifies_and_reads_back(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.db")
    async with open_writer(f"sqlite:///{path}?synchronous=full") as writer:
        assert writer._sqlite is not None and writer._sqlite.synchronous == "FULL"
        decision = make_decision()
        await writer.record_decision(make_call(), decision)
        await writer.record_outcome(decision.id, Outcome.FORWARDED, latency_ms=1.0, result={})
        pins = PinStore(writer.database())
        checks = await pins.observe("fs", [TOOL])
        assert [c.tool for c in checks] == ["read_file"]
    async with open_store(path, create=False) as store:
        events = sorted(await store.list_events(), key=lambda e: e.seq)
        assert [e.kind for e in events] == ["decision", "outcome"]
        assert events[1].decision_id == decision.id and events[1].tool == "read_file"
        assert (await store.verify()).ok
        pinned = await PinStore(store.engine).pin("fs", "read_file")
        assert pinned is not None and pinned.approved_by == "tofu"


async def test_sqlite_database_maps_errors_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER)")
    conn.close()
    db = SqliteDatabase(str(path))
    try:
        async with db.transaction(write=True) as tx:
            assert await tx.execute("INSERT INTO t VALUES (:k, :v)", {"k": "a", "v": 1}) == 1
        with pytest.raises(DuplicateKey):
            async with db.transaction(write=True) as tx:
                await tx.execute("INSERT INTO t VALUES (:k, :v)", {"k": "b", "v": 2})
                await tx.execute("INSERT INTO t VALUES (:k, :v)", {"k": "a", "v": 3})
        with pytest.raises(RuntimeError):
            async with db.transaction(write=True) as tx:
                await tx.execute("UPDATE t SET v = 9")
                raise RuntimeError("the caller failed half way")
        with pytest.raises(SqlError, match="no such table"):
            async with db.transaction() as tx:
                await tx.rows("SELECT * FROM missing")
        async with db.transaction() as tx:
            assert await tx.rows("SELECT k, v FROM t ORDER BY k") == [{"k": "a", "v": 1}]
    finally:
        await db.aclose()


async def test_pin_errors_on_the_light_database_name_what_failed(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    db = SqliteDatabase(str(path))
    try:
        from mcpfw.pins.errors import PinStoreError

        with pytest.raises(PinStoreError, match="cannot read pins: no such table: tool_pins"):
            await PinStore(db).pins()
        with anyio.fail_after(10), pytest.raises(PinStoreError, match="needs an engine"):
            await PinStore(db).create_tables()
    finally:
        await db.aclose()
