"""Where the audit log lives: the default SQLite file and URL normalisation."""

from __future__ import annotations

import os
from pathlib import Path

from mcpfw.audit.errors import AuditError

__all__ = ["default_audit_url", "normalize_audit_url", "sqlite_path"]

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
    """The file of a normalised SQLite URL; "" for in-memory; None for other databases."""
    if not url.startswith(_SQLITE):
        return None
    rest = url[len(_SQLITE) :]
    rest = rest.partition("?")[0]
    if rest in ("", "/", "/:memory:"):
        return ""
    return rest[1:] if rest.startswith("/") else rest
