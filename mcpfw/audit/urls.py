"""Where the audit log lives: the default SQLite file, URL normalisation, SQLite file checks.

Nothing here imports SQLAlchemy: `mcpfw run` opens a SQLite audit file without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from mcpfw.audit.errors import AuditError

__all__ = [
    "SYNC_LEVELS",
    "EngineInfo",
    "default_audit_url",
    "normalize_audit_url",
    "sqlite_file",
    "sqlite_file_info",
    "sqlite_path",
    "sync_level",
]

SYNC_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineInfo:
    """What kind of database an engine talks to."""

    url: str  # normalised, without our own options, password hidden
    is_postgres: bool
    sqlite_file: str | None  # None for PostgreSQL, "" for in-memory SQLite
    schema: str | None = None
    synchronous: str = "NORMAL"


_SQLITE = "sqlite+aiosqlite://"
_POSTGRES = "postgresql+asyncpg://"


def default_audit_url() -> str:
    """The default log: `$XDG_DATA_HOME/mcpfw/audit.db` (`~/.local/share/mcpfw/audit.db`)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return normalize_audit_url(str(Path(base) / "mcpfw" / "audit.db"))


def normalize_audit_url(s: str) -> str:
    """A SQLAlchemy async URL for `s`: a file path, a `sqlite:` or a `postgresql:` URL."""
    text = s.strip()
    if not text:
        raise AuditError("empty audit URL: give a file path or a postgresql:// URL")
    if text == ":memory:":
        return _SQLITE
    if "://" not in text:
        path = Path(text).expanduser()
        return _SQLITE + "/" + str(path if path.is_absolute() else path.absolute())
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme in ("sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"):
        return _SQLITE + rest
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg") or scheme.startswith(
        "postgresql+"
    ):
        return _POSTGRES + rest
    raise AuditError(
        f"unsupported audit URL scheme {scheme!r} in {s!r}: use a file path, "
        "sqlite:///PATH or postgresql://USER@HOST/DB"
    )


def sqlite_path(url: str) -> str | None:
    """The file of a normalised SQLite URL; "" for in-memory; None for other databases.
    Percent-escapes in the path are decoded, as SQLAlchemy does."""
    if not url.startswith(_SQLITE):
        return None
    rest = url[len(_SQLITE) :].partition("?")[0]
    database = unquote(rest[1:] if rest.startswith("/") else rest)
    return "" if database == ":memory:" else database


def sqlite_file(raw: str) -> tuple[str, dict[str, list[str]]] | None:
    """The file path and query options of a SQLite file URL (or path); None for anything else
    (PostgreSQL, in-memory SQLite)."""
    url = normalize_audit_url(raw)
    database = sqlite_path(url)
    if not database:
        return None
    return database, parse_qs(url.partition("?")[2], keep_blank_values=True)


def sync_level(value: object) -> str:
    """The `?synchronous=` option of a SQLite URL, checked (default NORMAL)."""
    level = (value if isinstance(value, str) else "NORMAL").upper()
    if level not in SYNC_LEVELS:
        raise AuditError(
            f"invalid synchronous level {value!r}: use one of {', '.join(SYNC_LEVELS)}"
        )
    return level


def sqlite_file_info(database: str, synchronous: object, *, create: bool) -> EngineInfo:
    """Check a SQLite audit file (and its `synchronous` option) before opening it: with create,
    make its directory; without, it must exist and be readable. Raises `AuditError`."""
    level = sync_level(synchronous)
    if create:
        parent = os.path.dirname(os.path.abspath(database))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create the audit directory {parent}: {exc}") from exc
    elif not os.path.exists(database):
        raise AuditError(
            f"no audit database at {database}: nothing has been recorded there yet "
            "(pass --audit PATH_OR_URL, or check the audit url in the config)"
        )
    elif not os.access(database, os.R_OK):
        raise AuditError(f"the audit database {database} is not readable (permissions)")
    return EngineInfo(
        url=_SQLITE + "/" + database, is_postgres=False, sqlite_file=database, synchronous=level
    )
