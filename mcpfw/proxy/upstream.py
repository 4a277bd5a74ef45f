"""Upstream connectors: each yields the upstream-side `Channel` of the relay.

- `stdio_upstream(command)`: spawns the command with the user's full environment (unlike the
  SDK's `stdio_client`, which passes only six variables), its stderr inherited so it lands on
  mcpfw's stderr, and speaks newline-delimited JSON-RPC on its stdin/stdout. When the process
  exits the channel's read side ends and `gone_reason` says how ("exited with code 1").
  Shutdown follows the MCP sequence: close stdin, wait, SIGTERM the process group, SIGKILL.
- `http_upstream(url, headers)`: a streamable-HTTP upstream through the SDK's client transport
  (imported only when used), messages converted to and from plain dicts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import anyio
import anyio.to_thread

from mcpfw.proxy.messages import (
    PROTOCOL_VERSION_KEY,
    InvalidMessage,
    Message,
    is_modern_version,
)
from mcpfw.proxy.spawn import UpstreamStartError, spawn
from mcpfw.proxy.stdio import STREAM_BUFFER, Channel, read_fd, write_fd

__all__ = ["UpstreamStartError", "describe_exit", "http_upstream", "spawn", "stdio_upstream"]

log = logging.getLogger("mcpfw.upstream")

CLOSE_GRACE_S = 2.0
TERM_GRACE_S = 2.0


def describe_exit(returncode: int | None) -> str:
    """How a process ended, in words."""
    if returncode is None:
        return "closed its stdout"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with code {returncode}"


async def _exited(process: subprocess.Popen[bytes], within_s: float) -> bool:
    """Wait (in a worker thread) up to `within_s` for the process to exit."""
    try:
        await anyio.to_thread.run_sync(
            functools.partial(process.wait, timeout=within_s), abandon_on_cancel=True
        )
    except subprocess.TimeoutExpired:
        return False
    return True


async def _stop(process: subprocess.Popen[bytes]) -> None:
    """Close stdin, then escalate: wait, SIGTERM the group, wait, SIGKILL."""
    with contextlib.suppress(OSError):
        if process.stdin is not None:
            process.stdin.close()
    if await _exited(process, CLOSE_GRACE_S):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        if await _exited(process, TERM_GRACE_S):
            return
    log.error("upstream process %d did not exit after SIGKILL", process.pid)


@contextlib.asynccontextmanager
async def stdio_upstream(
    command: Sequence[str] | subprocess.Popen[bytes],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    name: str = "upstream",
) -> AsyncIterator[Channel]:
    """Relay JSON-RPC over a process's stdio: a command to spawn, or one `spawn()` started.

    Raises `UpstreamStartError` when the command cannot be started.
    """
    process = command if isinstance(command, subprocess.Popen) else spawn(command, env=env, cwd=cwd)
    assert process.stdin is not None and process.stdout is not None
    stdin_fd, stdout_fd = process.stdin.fileno(), process.stdout.fileno()
    to_relay, from_upstream = anyio.create_memory_object_stream[Message | InvalidMessage](
        STREAM_BUFFER
    )
    to_upstream, from_relay = anyio.create_memory_object_stream[Message](STREAM_BUFFER)
    channel = Channel(read=from_upstream, write=to_upstream, name=name)
    log.info("upstream %s: pid %d", name, process.pid)

    async def reader() -> None:
        async with to_relay:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await read_fd(stdout_fd, to_relay)
            await _exited(process, CLOSE_GRACE_S)
            channel.gone_reason = describe_exit(process.returncode)

    async def writer() -> None:
        try:
            await write_fd(stdin_fd, from_relay)
        except OSError as exc:
            log.info("upstream %s stopped reading its stdin: %s", name, exc)
        # The relay is done sending: EOF on the upstream's stdin is its cue to exit.
        with contextlib.suppress(OSError):
            assert process.stdin is not None
            process.stdin.close()

    async with anyio.create_task_group() as tg:
        tg.start_soon(reader)
        tg.start_soon(writer)
        try:
            yield channel
        finally:
            await to_upstream.aclose()
            with anyio.CancelScope(shield=True):
                await _stop(process)
                with contextlib.suppress(OSError):
                    assert process.stdout is not None
                    process.stdout.close()
            tg.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def http_upstream(
    url: str, *, headers: Mapping[str, str] | None = None, name: str = "upstream"
) -> AsyncIterator[Channel]:
    """Connect to a streamable-HTTP upstream through the SDK's client transport."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.inbound import (
        MCP_METHOD_HEADER,
        MCP_NAME_HEADER,
        MCP_PROTOCOL_VERSION_HEADER,
        NAME_BEARING_METHODS,
        encode_header_value,
    )
    from mcp.shared.message import ClientMessageMetadata, SessionMessage
    from mcp_types import jsonrpc_message_adapter

    to_relay, from_upstream = anyio.create_memory_object_stream[Message | InvalidMessage](
        STREAM_BUFFER
    )
    to_upstream, from_relay = anyio.create_memory_object_stream[Message](STREAM_BUFFER)
    channel = Channel(read=from_upstream, write=to_upstream, name=name)
    client = httpx2.AsyncClient(headers=dict(headers or {}), timeout=httpx2.Timeout(30, read=300))

    async def reader(read: Any) -> None:
        async with to_relay:
            async for item in read:
                if isinstance(item, Exception):
                    log.error("upstream %s: %s", name, item)
                    continue
                await to_relay.send(item.message.model_dump(by_alias=True, exclude_unset=True))
        channel.gone_reason = "closed the HTTP connection"

    def routing(message: Message) -> ClientMessageMetadata | None:
        # A 2026-07-28 request travels with Mcp-Method/Mcp-Name headers that mirror its body.
        params = message.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        version = meta.get(PROTOCOL_VERSION_KEY) if isinstance(meta, dict) else None
        method = message.get("method")
        if not is_modern_version(version) or not isinstance(method, str):
            return None
        assert isinstance(params, dict) and isinstance(version, str)
        headers = {MCP_PROTOCOL_VERSION_HEADER: version, MCP_METHOD_HEADER: method}
        key = NAME_BEARING_METHODS.get(method)
        if key is not None and isinstance(params.get(key), str):
            headers[MCP_NAME_HEADER] = encode_header_value(params[key])
        return ClientMessageMetadata(headers=headers)

    async def writer(write: Any) -> None:
        async with from_relay:
            async for message in from_relay:
                try:
                    parsed = jsonrpc_message_adapter.validate_python(message)
                except ValueError as exc:
                    log.error("upstream %s: cannot send %s: %s", name, message.get("method"), exc)
                    continue
                await write.send(SessionMessage(parsed, metadata=routing(message)))

    try:
        async with (
            client,
            streamable_http_client(url, http_client=client) as streams,
            anyio.create_task_group() as tg,
        ):
            read, write = streams[0], streams[1]
            tg.start_soon(reader, read)
            tg.start_soon(writer, write)
            try:
                yield channel
            finally:
                await to_upstream.aclose()
                tg.cancel_scope.cancel()
    except httpx2.HTTPError as exc:
        raise UpstreamStartError(f"upstream {url} cannot be reached: {exc}") from exc
