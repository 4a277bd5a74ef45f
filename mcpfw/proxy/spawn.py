"""Starting a stdio upstream: standard library only, so `mcpfw run` can spawn it first thing.

The upstream (often `npx ...`, a second or more to start) then starts while mcpfw imports its
own modules and compiles the rules, instead of after.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence

__all__ = ["UpstreamStartError", "spawn"]


class UpstreamStartError(Exception):
    """The upstream could not be started or reached; the message says what to fix."""


def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the upstream now, before anything else (it usually starts slower than we do)."""
    if not command:
        raise UpstreamStartError("no upstream command given (put it after `--`)")
    try:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # inherited: the upstream's stderr is mcpfw's stderr
            env=dict(os.environ if env is None else env),
            cwd=cwd,
            start_new_session=True,  # its own process group, so shutdown reaches grandchildren
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UpstreamStartError(f"could not be started: {command[0]}: {reason}") from exc
