"""Hot reload of rules, and the newline framing of stdio."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from mcpfw.proxy import stdio
from mcpfw.proxy.messages import InvalidMessage, Message
from mcpfw.proxy.reload import RuleHolder
from mcpfw.proxy.stdio import LineSplitter, read_fd

pytestmark = pytest.mark.anyio

ALLOW = "default: deny\nrules:\n  - id: open\n    effect: allow\n    tools: [echo]\n"
DENY = "default: deny\nrules:\n  - id: shut\n    effect: deny\n    tools: [echo]\n"
BROKEN = "default: deny\nrules:\n  - id: shut\n    effect: deny\n    when: 'args.x ==='\n"


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


async def test_edited_rules_are_swapped_in(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(ALLOW)
    holder = RuleHolder([rules])
    before = holder.load().revision
    assert await holder.reload_if_changed() is False  # nothing changed
    rules.write_text(DENY)
    _touch_later(rules)
    assert await holder.reload_if_changed() is True
    assert holder.current.revision != before
    assert [r.id for r in holder.current.rules] == ["shut"]


async def test_broken_edit_keeps_the_old_rules_and_logs_file_line_column(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(ALLOW)
    holder = RuleHolder([rules])
    before = holder.load().revision
    rules.write_text(BROKEN)
    _touch_later(rules)
    with caplog.at_level(logging.ERROR, logger="mcpfw.rules"):
        assert await holder.reload_if_changed() is False
    assert holder.current.revision == before
    assert f"{rules}:5:" in caplog.text and "keeping revision" in caplog.text
    assert holder.failed_reloads == 1


async def test_a_new_file_in_a_rules_directory_is_noticed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(ALLOW)
    holder = RuleHolder([tmp_path])
    holder.load()
    (tmp_path / "b_test.yaml").write_text("cases: []\n")  # rule tests are not rules
    assert await holder.reload_if_changed() is False
    (tmp_path / "b.yaml").write_text("rules:\n  - id: extra\n    effect: deny\n    tools: [rm]\n")
    assert await holder.reload_if_changed() is True
    assert {r.id for r in holder.current.rules} == {"open", "extra"}


def test_messages_split_across_chunks_are_reassembled() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b'{"jsonrpc":"2.0","me') == []
    got = splitter.feed(b'thod":"a"}\n\n{"id":1,"result":{}}\r\n{"x"')
    assert got == [{"jsonrpc": "2.0", "method": "a"}, {"id": 1, "result": {}}]
    (tail,) = splitter.tail()  # a last line without its newline is still delivered
    assert isinstance(tail, InvalidMessage) and tail.code == -32700 and tail.text == '{"x"'


def test_an_oversized_line_is_refused_and_the_next_one_still_parses() -> None:
    splitter = LineSplitter(max_bytes=10)
    got = splitter.feed(b'{"a":"' + b"x" * 50)
    assert len(got) == 1 and isinstance(got[0], InvalidMessage) and "longer than" in got[0].error
    assert splitter.feed(b'xxx"}\n{"b":1}\n') == [{"b": 1}]


async def test_a_pipe_read_faster_than_it_is_consumed_loses_and_reorders_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 4 000 messages (~1.3 MB) written at once into a pipe whose reader takes one at a time:
    # with a read-ahead of 2 chunks the readiness callback is paused and resumed many times.
    monkeypatch.setattr(stdio, "_READ_AHEAD", 2)
    pauses = 0
    unwatch = stdio._Readable.unwatch

    def counting(self: Any) -> None:
        nonlocal pauses
        pauses += self.watching and not self.eof and self.error is None
        unwatch(self)

    monkeypatch.setattr(stdio._Readable, "unwatch", counting)
    read_end, write_end = os.pipe()
    lines = [json.dumps({"jsonrpc": "2.0", "id": i, "method": "x", "params": {"p": "a" * 300}})
             for i in range(4000)]  # fmt: skip
    payload = ("\n".join(lines) + "\n").encode()
    send, receive = anyio.create_memory_object_stream[Message | InvalidMessage](1)
    got: list[Any] = []

    def feed() -> None:
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)

    async def consume() -> None:
        async with receive:
            async for message in receive:
                assert not isinstance(message, InvalidMessage)
                got.append(message["id"])
                if len(got) % 500 == 0:
                    await anyio.sleep(0.01)  # a slow consumer now and then

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            tg.start_soon(anyio.to_thread.run_sync, feed)
            async with send:
                await read_fd(read_end, send)
    os.close(read_end)
    assert got == list(range(4000))
    assert pauses >= 2
