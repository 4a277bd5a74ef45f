"""Process limits for `mcpfw serve`: enough file descriptors for the agents it holds open.

Every connected agent holds a socket (and a GET stream may stay open for hours). With the
common default soft limit of 1 024 open files, a thousand idle or slow connections make
`accept()` fail with EMFILE and real agents' requests fail until the idle ones are dropped by
the read timeout. Like Go's runtime and most servers, `mcpfw serve` raises its soft limit to
the hard limit at startup.
"""

from __future__ import annotations

import logging

__all__ = ["raise_open_files_limit"]

log = logging.getLogger("mcpfw.serve")

_UNLIMITED_TARGET = 1 << 20


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not a POSIX platform
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _UNLIMITED_TARGET if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, target, exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if 0 < soft < 4096:
        log.warning(
            "open-files limit is %d: at most about that many agents can be connected at once "
            "(raise it with `ulimit -n`)",
            soft,
        )
    return soft
