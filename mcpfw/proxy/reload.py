"""The rule set in force, reloaded when its files change.

`RuleHolder.current` is read once per call. `watch()` polls the rule files' metadata (no extra
dependency, works on every filesystem including network mounts); when it changes the rules are
recompiled in a worker thread and swapped in atomically. A broken edit keeps the old rule set in
force and logs every error as `file:line:column: [rule] message`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

if TYPE_CHECKING:
    from mcpfw.policy import ArgLimits, RuleSet

__all__ = ["RuleHolder"]

log = logging.getLogger("mcpfw.rules")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def _fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """Name, inode, size and mtime of every rule file the paths name (missing ones too)."""
    entries: list[tuple[str, int, int, int]] = []
    for path in paths:
        files = [path]
        if path.is_dir():
            files = sorted(
                p
                for p in path.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.stem.endswith("_test")
            )
        for file in files:
            try:
                st = os.stat(file)
            except OSError:
                entries.append((str(file), -1, -1, -1))
                continue
            entries.append((str(file), st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(entries)


class RuleHolder:
    """Holds the current `RuleSet` and reloads it from its sources."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        engine: str = "auto",
        limits: ArgLimits | None = None,
    ) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.engine = engine
        self.limits = limits
        self._current: RuleSet | None = None
        self._seen: Fingerprint = ()
        self.reloads = 0
        self.failed_reloads = 0

    @property
    def current(self) -> RuleSet:
        """The rule set in force."""
        if self._current is None:
            raise RuntimeError("RuleHolder.load() was not called")
        return self._current

    def load(self) -> RuleSet:
        """Load the rules now; raises `RuleSetError` (the caller reports it and exits)."""
        from mcpfw.policy import load_ruleset

        seen = _fingerprint(self.paths)
        ruleset = load_ruleset(self.paths, engine=self.engine, limits=self.limits)
        self._current, self._seen = ruleset, seen
        return ruleset

    async def reload_if_changed(self, *, force: bool = False) -> bool:
        """Reload when the files changed; True when a new rule set is now in force."""
        from mcpfw.policy import RuleSetError, load_ruleset

        seen = _fingerprint(self.paths)
        if not force and seen == self._seen:
            return False
        self._seen = seen
        try:
            ruleset = await anyio.to_thread.run_sync(
                lambda: load_ruleset(self.paths, engine=self.engine, limits=self.limits)
            )
        except RuleSetError as exc:
            self.failed_reloads += 1
            revision = self._current.revision[:12] if self._current else "none"
            log.error(
                "rules changed but do not load; keeping revision %s in force:\n%s",
                revision,
                "\n".join(f"  {e}" for e in exc.errors),
            )
            return False
        except OSError as exc:
            self.failed_reloads += 1
            log.error("rules changed but cannot be read (%s); keeping the old rule set", exc)
            return False
        except Exception as exc:  # boundary: the watcher must outlive any bad edit
            self.failed_reloads += 1
            log.error(
                "rules changed but failed to load (%s: %s); keeping the old rule set",
                type(exc).__name__,
                exc,
            )
            return False
        if self._current is not None and ruleset.revision == self._current.revision:
            return False
        old = self._current.revision[:12] if self._current else "none"
        self._current = ruleset
        self.reloads += 1
        log.warning(
            "rules reloaded: revision %s -> %s (%d rules)",
            old,
            ruleset.revision[:12],
            len(ruleset.rules),
        )
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll for changes forever (run it in a task group and cancel it to stop)."""
        while True:
            await anyio.sleep(interval_s)
            await self.reload_if_changed()
