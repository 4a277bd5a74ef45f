"""Where the audit log lives: the default file and URL normalisation."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcpfw.audit import AuditError, default_audit_url, normalize_audit_url, open_store
from tests.audit.conftest import make_call, make_decision


def test_the_default_is_a_sqlite_file_under_xdg_data_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_audit_url() == f"sqlite+aiosqlite:///{tmp_path}/mcpfw/audit.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_audit_url() == f"sqlite+aiosqlite:///{tmp_path}/.local/share/mcpfw/audit.db"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/var/log/a.db", "sqlite+aiosqlite:////var/log/a.db"),
        ("sqlite:////var/log/a.db", "sqlite+aiosqlite:////var/log/a.db"),
        ("sqlite+aiosqlite:///rel.db", "sqlite+aiosqlite:///rel.db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgres://u@h/db?schema=x", "postgresql+asyncpg://u@h/db?schema=x"),
        ("postgresql+psycopg://u@h/db", "postgresql+asyncpg://u@h/db"),
        (":memory:", "sqlite+aiosqlite://"),
    ],
)
def test_paths_and_urls_are_normalised_to_async_drivers(given: str, expected: str) -> None:
    assert normalize_audit_url(given) == expected


def test_a_relative_path_becomes_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_audit_url("audit.db") == f"sqlite+aiosqlite:///{tmp_path}/audit.db"


@pytest.mark.parametrize("bad", ["", "mysql://u@h/db"])
def test_unsupported_urls_are_clear_errors(bad: str) -> None:
    with pytest.raises(AuditError, match="audit URL"):
        normalize_audit_url(bad)


@pytest.mark.anyio
async def test_the_directory_of_a_new_database_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "audit.db"
    with anyio.fail_after(20):
        async with open_store(str(path)) as store:
            await store.record_decision(make_call(), make_decision())
    assert path.exists()


@pytest.mark.anyio
async def test_an_in_memory_store_works_for_tests(tmp_path: Path) -> None:
    with anyio.fail_after(20):
        async with open_store(":memory:", instance="m") as store:
            await store.record_decision(make_call(), make_decision())
            report = await store.verify()
    assert report.ok and report.events == 1


@pytest.mark.anyio
async def test_a_bad_synchronous_level_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="synchronous"):
        async with open_store(f"sqlite:///{tmp_path}/a.db?synchronous=sometimes"):
            pass


@pytest.mark.anyio
@pytest.mark.parametrize(("option", "level"), [("", 1), ("?synchronous=full", 2)])
async def test_sqlite_runs_in_wal_mode_with_the_chosen_synchronous_level(
    tmp_path: Path, option: str, level: int
) -> None:
    with anyio.fail_after(20):
        async with open_store(f"sqlite:///{tmp_path}/a.db{option}") as store:
            await store.record_decision(make_call(), make_decision())
            assert store._sqlite is not None and store._sqlite.connection is not None
            conn = store._sqlite.connection
            modes = (
                conn.execute("PRAGMA journal_mode").fetchone()[0],
                conn.execute("PRAGMA synchronous").fetchone()[0],
            )
    assert modes == ("wal", level)
