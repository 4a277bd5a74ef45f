"""Hot reload of rules, and the newline framing of stdio."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mcpfw.proxy.messages import InvalidMessage
from mcpfw.proxy.reload import RuleHolder
from mcpfw.proxy.stdio import LineSplitter

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
