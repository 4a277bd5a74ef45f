"""Assemble and run `mcpfw serve` from a `Config`: rules, audit store, guards, upstreams, app.

    async with open_http_firewall(config) as firewall:
        await run_uvicorn(firewall.app(), host="127.0.0.1", port=8765)

Everything is validated before anything listens: rules compile, the auth section works, the
audit store opens. Problems raise `ServeError` with a message saying what to fix.
"""

from __future__ import annotations

import gc
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import anyio

from mcpfw.config import Config
from mcpfw.proxy.auth import AuthConfigError, Authenticator
from mcpfw.proxy.guard import Guard, GuardSettings
from mcpfw.proxy.http_checks import OriginPolicy
from mcpfw.proxy.http_front import FrontLimits, HttpFirewall
from mcpfw.proxy.http_gate import HttpGate
from mcpfw.proxy.http_pins import pin_checkers
from mcpfw.proxy.reload import RuleHolder
from mcpfw.proxy.serve_upstreams import connector_for
from mcpfw.proxy.shared_upstream import SharedUpstream

__all__ = ["ServeError", "open_http_firewall", "run_uvicorn"]

log = logging.getLogger("mcpfw.serve")


class ServeError(Exception):
    """`mcpfw serve` cannot start; the message says what to fix."""


def _authenticator(config: Config) -> Authenticator:
    try:
        authenticator = Authenticator(auth=config.server.auth, agents=config.agents)
    except AuthConfigError as exc:
        raise ServeError(str(exc)) from None
    if not authenticator.enabled:
        raise ServeError(
            "server.auth configures no credentials: add server.auth.jwt or server.auth.api_keys "
            "(mcpfw serve never serves anonymous agents)"
        )
    return authenticator


@asynccontextmanager
async def open_http_firewall(
    config: Config,
    *,
    host: str | None = None,
    instance: str | None = None,
    audit_url: str | None = None,
    reload_interval_s: float = 1.0,
    store: Any = None,
) -> AsyncIterator[HttpFirewall]:
    """Build the firewall (rules loaded, store open); upstreams connect in the app's lifespan."""
    from mcpfw.policy import ArgLimits, RuleSetError

    if not config.upstreams:
        raise ServeError("the config names no upstreams: add an `upstreams:` section")
    if not config.rules:
        raise ServeError("the config names no rules: add `rules: <file or directory>`")
    authenticator = _authenticator(config)
    limits = config.limits
    holder = RuleHolder(
        config.rules,
        engine=config.engine,
        limits=ArgLimits(
            max_depth=limits.max_depth, max_bytes=limits.max_bytes, max_items=limits.max_items
        ),
    )
    try:
        holder.load()
    except RuleSetError as exc:
        raise ServeError(
            "the rules do not load:\n" + "\n".join(f"  {e}" for e in exc.errors)
        ) from None
    async with AsyncExitStack() as stack:
        if store is None:  # tests may pass an open store
            from mcpfw.audit import RedactionConfig, open_store

            redaction = RedactionConfig(
                pointers=tuple(config.audit.redact), detect_secrets=config.audit.detect_secrets
            )
            url = audit_url or config.audit.url
            store = await stack.enter_async_context(
                open_store(url, instance=instance, redaction=redaction)
            )
        upstreams = {
            name: SharedUpstream(
                name, connector_for(conf), timeout_s=conf.timeout_s, sessions=conf.sessions
            )
            for name, conf in config.upstreams.items()
        }
        pins = pin_checkers(config, store, upstreams)
        guards = {
            name: Guard(
                rules=holder,
                store=store,
                settings=GuardSettings(
                    server=name,
                    monitor=config.mode == "monitor",
                    audit_failure="allow" if config.audit.on_failure == "allow" else "deny",
                    audit_timeout_s=config.audit.timeout_s,
                    ask_timeout_s=config.ask_timeout_s,
                    hide_denied=config.hide_denied,
                    # Outcomes are written after the answer is sent; lingering lets each ride
                    # along with the next decision's commit instead of starting its own.
                    outcome_linger_s=0.02,
                ),
                pins=pins[name],
            )
            for name in config.upstreams
        }
        server = config.server
        gate = HttpGate(guards, pins=pins)
        if config.record or any(a.record for a in config.agents.values()):
            from mcpfw.recording.http import HttpRecordings
            from mcpfw.recording.writer import message_redactor

            gate.recordings = HttpRecordings(
                store.engine,
                redact=message_redactor(store.redactor),
                records=config.records,
                instance=store.instance,
            )
        firewall = HttpFirewall(
            upstreams=upstreams,
            gate=gate,
            authenticator=authenticator,
            auth=server.auth,
            origin=OriginPolicy.build(
                host or server.host, server.allowed_origins, server.public_url
            ),
            limits=FrontLimits(
                max_body_bytes=server.max_body_bytes,
                max_json_depth=server.max_json_depth,
                read_timeout_s=server.read_timeout_s,
            ),
            public_url=server.public_url,
        )
        firewall.audit_store = store
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder.watch, reload_interval_s)
            if gate.recordings is not None:
                await tg.start(gate.recordings.run)
            try:
                yield firewall
            finally:
                tg.cancel_scope.cancel()


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0 picks a free one); raises ServeError when taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP (proto 0 would leave Nagle on: 40 ms stalls per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def uvicorn_server(app: Any, *, read_timeout_s: float = 30.0, log_level: str = "warning") -> Any:
    """A uvicorn server for `app` (h11; request headers due within `read_timeout_s`)."""
    import uvicorn

    from mcpfw.proxy.http_deadline import header_deadline_protocol

    config = uvicorn.Config(
        app,
        http=header_deadline_protocol(read_timeout_s),  # idle and slowloris connections close
        lifespan="on",
        log_level=log_level,
        access_log=False,
        timeout_keep_alive=max(5, int(read_timeout_s)),
        timeout_graceful_shutdown=5,
        limit_concurrency=4096,
        server_header=False,
    )
    return uvicorn.Server(config)


async def run_uvicorn(app: Any, sock: socket.socket, *, read_timeout_s: float = 30.0,
                      log_level: str = "warning") -> None:  # fmt: skip
    """Serve `app` on an already bound socket until cancelled or signalled."""
    from mcpfw.proxy.http_limits import raise_open_files_limit

    raise_open_files_limit()  # each connected agent holds a socket
    server = uvicorn_server(app, read_timeout_s=read_timeout_s, log_level=log_level)
    threshold = _tune_gc()
    try:
        await server.serve(sockets=[sock])
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _tune_gc() -> tuple[int, int, int]:
    """Fewer, cheaper cyclic garbage collections while serving.

    Every call allocates a few hundred short-lived objects (dicts, coroutines, futures), so
    CPython's default generation-0 threshold (700) runs a collection every call or two, and
    each full collection walks every object loaded at start-up (rules, SDK, SQLAlchemy).
    Start-up objects are frozen out of collections, and the young generation collects every
    50 000 allocations instead: reference cycles are still collected, just in larger batches.
    Returns the previous thresholds (restored when serving ends).
    """
    threshold = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return threshold
