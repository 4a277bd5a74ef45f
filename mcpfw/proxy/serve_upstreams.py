"""Connectors for `mcpfw serve`: one configured upstream as a (read, write) pair of raw dicts.

They reuse the stdio firewall's connectors (`mcpfw.proxy.upstream`): a stdio command is
spawned once with the firewall's environment plus the upstream's own `env` from the config.
An HTTP upstream is reached through the lean client of `http_upstream_client` (it is on the
hot path of every agent's call) with only the upstream's own `headers` from the config (its
credentials; an agent's token is never among them).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcpfw.config import UpstreamConfig
from mcpfw.proxy.http_upstream_client import http_session
from mcpfw.proxy.shared_upstream import Connector
from mcpfw.proxy.upstream import stdio_upstream

__all__ = ["connector_for"]


def connector_for(conf: UpstreamConfig) -> Connector:
    """The connector for one `upstreams:` entry."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[tuple[Any, Any]]:
        if conf.url is not None:
            async with http_session(conf.url, dict(conf.headers)) as (read, write):
                yield read, write
        else:
            command = [conf.command or "", *conf.args]
            env = {**os.environ, **conf.env}
            async with stdio_upstream(command, env=env, cwd=conf.cwd, name=conf.name) as ch:
                yield ch.read, ch.write

    return connect
