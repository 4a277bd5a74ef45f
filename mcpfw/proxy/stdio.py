"""Newline-delimited JSON-RPC over file descriptors: the stdio front and its framing.

`stdio_front()` serves the agent on the process's stdin/stdout. While it runs, fd 0 reads
/dev/null and fd 1 points at stderr, so nothing in this process (a stray print, a library's
warning) can corrupt the protocol stream; the wire lives on private duplicates. Reads and writes
on pipes and sockets are non-blocking through the event loop (reads from a readiness callback
registered once, not per message); other file types (a regular file redirected to stdin) fall
back to a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from mcpfw.proxy.messages import INVALID_REQUEST, InvalidMessage, Message, decode, encode

__all__ = ["MAX_LINE_BYTES", "Channel", "LineSplitter", "stdio_front"]

log = logging.getLogger("mcpfw.stdio")

MAX_LINE_BYTES = 64 * 1024 * 1024  # one message; a longer line is refused, not buffered forever
STREAM_BUFFER = 64


@dataclass(slots=True)
class Channel:
    """One side of the relay: messages in, messages out, and what to say when it ends."""

    read: ObjectReceiveStream[Message | InvalidMessage]
    write: ObjectSendStream[Message]
    name: str = "peer"
    gone_reason: str = ""  # set by the connector when the peer exits (e.g. "exited with code 1")


class LineSplitter:
    """Splits a byte stream into decoded messages, bounding the length of one line."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[Message | InvalidMessage]:
        """The complete messages in `chunk` (plus what was buffered before it)."""
        out: list[Message | InvalidMessage] = []
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                break
            piece = chunk[start:nl]
            start = nl + 1
            if self._skipping:
                self._skipping = False
                self._buf.clear()
                continue
            if self._buf:
                self._buf += piece
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = piece
            if line.strip():
                out.append(decode(line))
        rest = chunk[start:]
        if rest and not self._skipping:
            self._buf += rest
            if len(self._buf) > self.max_bytes:
                self._buf.clear()
                self._skipping = True
                out.append(
                    InvalidMessage(
                        text="",
                        error=f"message longer than {self.max_bytes} bytes",
                        code=INVALID_REQUEST,
                    )
                )
        return out

    def tail(self) -> list[Message | InvalidMessage]:
        """A last message not followed by a newline."""
        if self._skipping or not self._buf.strip():
            return []
        line = bytes(self._buf)
        self._buf.clear()
        return [decode(line)]


def _pollable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def read_fd(fd: int, send: ObjectSendStream[Message | InvalidMessage]) -> None:
    """Read messages from `fd` into `send` until EOF (the caller closes `send`)."""
    splitter = LineSplitter()
    if _pollable(fd):
        await _read_pollable(fd, send, splitter)
        return
    while True:
        data = await anyio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
        if not data:
            break
        for message in splitter.feed(data):
            await send.send(message)
    for message in splitter.tail():
        await send.send(message)


class _Readable:
    """Reads a non-blocking fd from the event loop's own readiness callback (registered once,
    not per message): the data waits here until the reading task takes it. Bounded: past
    `_READ_AHEAD` unread chunks the callback is removed until the task has caught up."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        self.chunks: collections.deque[bytes] = collections.deque()
        self.ready = asyncio.Event()
        self.eof = False
        self.error: OSError | None = None
        self.watching = False

    def watch(self) -> None:
        if not self.watching and not self.eof and self.error is None:
            self.loop.add_reader(self.fd, self._on_readable)
            self.watching = True

    def unwatch(self) -> None:
        if self.watching:
            self.loop.remove_reader(self.fd)
            self.watching = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = exc
            self.unwatch()
        else:
            if data:
                self.chunks.append(data)
                if len(self.chunks) >= _READ_AHEAD:
                    self.unwatch()
            else:
                self.eof = True
                self.unwatch()
        self.ready.set()


_READ_AHEAD = 16  # chunks of up to 64 KiB read before the reading task takes them


async def _read_pollable(
    fd: int, send: ObjectSendStream[Message | InvalidMessage], splitter: LineSplitter
) -> None:
    os.set_blocking(fd, False)
    source = _Readable(fd)
    source.watch()
    try:
        while True:
            await source.ready.wait()
            source.ready.clear()
            while source.chunks:
                for message in splitter.feed(source.chunks.popleft()):
                    await send.send(message)
            if source.error is not None:
                raise source.error
            if source.eof:
                break
            source.watch()  # after a pause for read-ahead; a no-op otherwise
    finally:
        source.unwatch()
    for message in splitter.tail():
        await send.send(message)


async def write_fd(fd: int, receive: ObjectReceiveStream[Message]) -> None:
    """Write every message from `receive` to `fd` (stops quietly when the reader went away)."""
    pollable = _pollable(fd)
    if pollable:
        os.set_blocking(fd, False)
    async with receive:
        async for message in receive:
            view = memoryview(encode(message))
            try:
                while view:
                    if pollable:
                        try:
                            written = os.write(fd, view)
                        except BlockingIOError:
                            await anyio.wait_writable(fd)
                            continue
                    else:
                        written = await anyio.to_thread.run_sync(os.write, fd, view)
                    view = view[written:]
            except (BrokenPipeError, ConnectionResetError):
                log.info("the client closed its end of stdout")
                return


@contextlib.asynccontextmanager
async def stdio_front(stdin_fd: int = 0, stdout_fd: int = 1) -> AsyncIterator[Channel]:
    """Serve the agent on stdin/stdout; yields the client-side `Channel` of the relay."""
    wire_in = os.dup(stdin_fd)
    wire_out = os.dup(stdout_fd)
    saved_in, saved_out = os.dup(stdin_fd), os.dup(stdout_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, stdin_fd)
    os.close(devnull)
    os.dup2(2, stdout_fd)  # stray writes to fd 1 land on stderr, never on the wire
    in_send, in_recv = anyio.create_memory_object_stream[Message | InvalidMessage](STREAM_BUFFER)
    out_send, out_recv = anyio.create_memory_object_stream[Message](STREAM_BUFFER)
    try:
        written = anyio.Event()

        async def writer() -> None:
            try:
                await write_fd(wire_out, out_recv)
            finally:
                written.set()

        async def reader() -> None:
            async with in_send:
                await read_fd(wire_in, in_send)

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(writer)
            try:
                yield Channel(read=in_recv, write=out_send, name="client")
            finally:
                await out_send.aclose()  # the writer flushes what is queued, then ends
                with anyio.move_on_after(5, shield=True):
                    await written.wait()
                tg.cancel_scope.cancel()
    finally:
        for saved, fd in ((saved_in, stdin_fd), (saved_out, stdout_fd)):
            with contextlib.suppress(OSError):
                os.dup2(saved, fd)
                os.close(saved)
        for fd in (wire_in, wire_out):
            with contextlib.suppress(OSError):
                os.close(fd)
