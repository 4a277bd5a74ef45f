"""`mcpfw run`'s engine: wire the stdio front, an upstream, the guard and the audit store.

Startup is ordered for the time to the agent's first answer (agents start many firewalls at
once): the rules are compiled first (a broken rule file must stop us before anything starts),
then the upstream is spawned and the relay starts at once, while the audit store (SQLAlchemy,
the heaviest import) is imported in a worker thread and opened in the background. `initialize`
and `server/discover` never wait for it; the first `tools/call` does. If the store cannot be
opened, every call is denied with the reason (fail closed) unless `audit_failure` is `allow`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.to_thread

from mcpfw.model import Agent, new_id
from mcpfw.proxy.guard import Guard, GuardSession, GuardSettings
from mcpfw.proxy.messages import InvalidMessage, Message
from mcpfw.proxy.relay import Relay
from mcpfw.proxy.reload import RuleHolder
from mcpfw.proxy.stdio import Channel, stdio_front
from mcpfw.proxy.upstream import UpstreamStartError, http_upstream, stdio_upstream

if TYPE_CHECKING:
    from mcpfw.audit import AuditStore, AuditWriter

__all__ = ["RunOptions", "dead_upstream", "run_stdio"]

log = logging.getLogger("mcpfw.run")
FIRST_ANSWER_WAIT_S = 1.0  # the audit store opens after the first answer, or after this
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class RunOptions:
    """Everything `mcpfw run` needs, resolved from flags and the config file."""

    agent: Agent
    rules: RuleHolder  # already loaded
    settings: GuardSettings
    audit_url: str | None = None  # None: the default SQLite file
    redact: tuple[str, ...] = ()
    detect_secrets: bool = True
    command: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None  # None: this process's environment
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    call_timeout_s: float = 300.0
    reload_interval_s: float = 1.0
    process: subprocess.Popen[bytes] | None = None  # the upstream, if already spawned
    start_error: str = ""  # why spawning it failed, if it did
    record: bool = False  # record every message of the session (mcpfw.recording)
    pins: str = "warn"  # off | warn | block (tool-definition pinning, mcpfw.pins)
    sanitize_descriptions: bool = True  # strip hidden characters from tool descriptions
    pins_trust_on_first_use: bool = True  # pin the upstream's first listing without approval


class Later(Generic[T]):
    """A value that arrives later; `get()` waits for it."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._value: T | None = None

    def set(self, value: T) -> None:
        self._value = value
        self._event.set()

    async def get(self) -> T:
        await self._event.wait()
        assert self._value is not None
        return self._value


@contextlib.asynccontextmanager
async def dead_upstream(name: str, reason: str) -> AsyncIterator[Channel]:
    """A channel to an upstream that is already gone: every request is answered with `reason`."""
    send, recv = anyio.create_memory_object_stream[Message | InvalidMessage](0)
    out_send, out_recv = anyio.create_memory_object_stream[Message](0)
    await send.aclose()
    channel = Channel(read=recv, write=out_send, name=name, gone_reason=reason)
    try:
        yield channel
    finally:
        await out_recv.aclose()


def _connector(options: RunOptions) -> contextlib.AbstractAsyncContextManager[Channel]:
    name = options.settings.server or "upstream"
    if options.start_error:
        raise UpstreamStartError(options.start_error)
    if options.url:
        return http_upstream(options.url, headers=options.headers, name=name)
    command = options.process if options.process is not None else options.command
    return stdio_upstream(command, env=options.env, cwd=options.cwd, name=name)


async def _keep_store(
    options: RunOptions,
    ready: Later[tuple[AuditWriter | None, str]],
    stop: anyio.Event,
    closed: anyio.Event,
    after: anyio.Event,
) -> None:
    """Open the audit store in the background and keep it open until `stop`."""
    try:
        # The heaviest work of startup waits until the agent has its first answer (or a
        # moment has passed), so it does not compete with the upstream's own start for CPU.
        with anyio.move_on_after(FIRST_ANSWER_WAIT_S):
            await after.wait()
        audit: Any = await anyio.to_thread.run_sync(importlib.import_module, "mcpfw.audit")
        redaction = audit.RedactionConfig(
            pointers=options.redact, detect_secrets=options.detect_secrets
        )
        # Recording needs the full store (its engine); the firewall alone needs only a writer,
        # which on a SQLite file leaves SQLAlchemy unimported (~20 MB less per process).
        opener = audit.open_store if options.record else audit.open_writer
        async with opener(options.audit_url, redaction=redaction) as store:
            ready.set((store, ""))
            await stop.wait()
    except Exception as exc:  # boundary: whatever stops the store, calls fail closed with why
        reason = f"{type(exc).__name__}: {exc}"
        log.error("the audit log cannot be opened (%s): tool calls will be denied", reason)
        if not ready._event.is_set():
            ready.set((None, reason))
    finally:
        closed.set()


async def _signals(holder: RuleHolder, scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await holder.reload_if_changed(force=True)
            else:
                log.info("stopping on %s", signal.Signals(signum).name)
                scope.cancel()
                return


async def run_stdio(options: RunOptions, *, front: Any = None) -> int:
    """Serve one agent on stdio until it disconnects; returns the exit status."""
    session_ready: Later[GuardSession] = Later()
    store_ready: Later[tuple[AuditWriter | None, str]] = Later()
    stop_store, store_closed = anyio.Event(), anyio.Event()
    status = 0
    recorder = _recorder() if options.record else None
    pins = _pin_checker(options)
    async with anyio.create_task_group() as tg:
        first_answer = anyio.Event()
        tg.start_soon(_keep_store, options, store_ready, stop_store, store_closed, first_answer)
        tg.start_soon(options.rules.watch, options.reload_interval_s)

        async def start_session() -> None:
            store, error = await store_ready.get()
            if store is not None:
                await _attach_pin_store(pins, store)
            guard = Guard(
                rules=options.rules,
                store=store,
                settings=options.settings,
                store_error=error,
                pins=pins,
            )
            session = await guard.open_session(
                agent=options.agent,
                session_id=new_id(),
                detail={
                    "transport": "stdio",
                    "upstream": options.url or " ".join(options.command),
                    "rules_revision": options.rules.current.revision,
                    "mode": "monitor" if options.settings.monitor else "enforce",
                },
            )
            session_ready.set(session)
            # Everything loaded so far (modules, compiled rules, the store) lives as long as the
            # process: keep it out of the collector's full passes, which would otherwise stall a
            # call now and then for 15+ ms walking it.
            gc.collect()
            gc.freeze()
            if recorder is not None and isinstance(store, _audit_store()):
                recorder.will_start()  # a session that ends at once still gets written
                tg.start_soon(_start_recording, recorder, store, session, options)

        tg.start_soon(start_session)
        with anyio.CancelScope() as serving:
            tg.start_soon(_signals, options.rules, serving)
            async with contextlib.AsyncExitStack() as stack:
                try:
                    upstream = await stack.enter_async_context(_connector(options))
                except UpstreamStartError as exc:
                    name = options.settings.server or "upstream"
                    log.error("upstream '%s' %s", name, exc)
                    status = 1
                    upstream = await stack.enter_async_context(dead_upstream(name, str(exc)))
                client = await stack.enter_async_context(
                    front if front is not None else stdio_front()
                )
                relay = Relay(
                    client=client,
                    upstream=upstream,
                    session=session_ready.get,
                    call_timeout_s=options.call_timeout_s,
                    recorder=recorder,
                    pins=pins,
                    observers=(
                        lambda to, _message: first_answer.set() if to == "client" else None,
                    ),
                )
                pins.refresh = relay.list_upstream_tools
                await relay.run()
                if relay.dead and relay.dead != "exited with code 0":
                    status = status or 1
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(10):
                ended = await session_ready.get()
                await ended.close("client disconnected")
                if ended.guard.fail_open_count:
                    log.error(
                        "%d call(s) were forwarded without an audit record (audit_failure: allow)",
                        ended.guard.fail_open_count,
                    )
            if recorder is not None:
                with anyio.move_on_after(10):
                    await recorder.aclose(reason="client disconnected")
            stop_store.set()
            with anyio.move_on_after(10):
                await store_closed.wait()
        tg.cancel_scope.cancel()
    return status


def _pin_checker(options: RunOptions) -> Any:
    """Tool-definition pinning for this upstream; its store is attached once the audit opens."""
    from mcpfw.pins.checker import PinChecker, PinOptions
    from mcpfw.pins.drift import PinMode

    return PinChecker(
        options.settings.server or "upstream",
        store=None,
        options=PinOptions(
            mode=PinMode(options.pins),
            sanitize=options.sanitize_descriptions,
            trust_on_first_use=options.pins_trust_on_first_use,
        ),
    )


async def _attach_pin_store(pins: Any, store: AuditWriter) -> None:
    """Pins live in the audit database; other servers' tool names feed shadowing checks."""
    from mcpfw.pins.errors import PinStoreError
    from mcpfw.pins.store import PinStore

    pins.store = PinStore(store.database())
    try:
        pins.foreign_tools = await pins.store.tool_names(exclude_server=pins.server)
    except PinStoreError as exc:
        log.error("pins: %s", exc)


def _audit_store() -> type[AuditStore]:
    from mcpfw.audit.store import AuditStore  # loaded already when recording

    return AuditStore


def _recorder() -> Any:
    from mcpfw.recording.writer import SessionRecorder

    return SessionRecorder()


async def _start_recording(
    recorder: Any, store: AuditStore, session: GuardSession, options: RunOptions
) -> None:
    """Open the recorded session (messages so far are queued) and flush until closed."""
    from mcpfw.model import utcnow
    from mcpfw.recording.format import SessionHeader
    from mcpfw.recording.writer import message_redactor

    header = SessionHeader(
        session_id=session.session_id,
        agent=options.agent,
        server=options.settings.server,
        started=utcnow(),
        instance=store.instance,
        note=options.url or " ".join(options.command),
    )
    try:
        await recorder.start(store.engine, header, redact=message_redactor(store.redactor))
    except Exception as exc:  # boundary: recording is evidence, never a reason to stop serving
        log.error("recording: cannot start recording session %s: %s", session.session_id, exc)
        return
    await recorder.run()


def configure_logging(level: str = "info") -> None:
    """mcpfw's own log lines go to stderr (stdout is the protocol)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="mcpfw: %(levelname)s: %(message)s",
    )


def split_headers(values: Sequence[str]) -> dict[str, str]:
    """`K: V` strings into a dict; raises ValueError naming the bad one."""
    headers: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"--upstream-header {value!r}: expected 'Name: value'")
        headers[key.strip()] = rest.strip()
    return headers
