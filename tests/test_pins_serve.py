"""Pinning behind `mcpfw serve`: per-upstream pins, rug pulls blocked, aggregated names kept apart.

Two upstreams that both offer a tool named `add` (the rug-pull and the poisoning fixtures) are
served together: the aggregate endpoint keeps them apart as `rug__add` and `poison__add`, never
merged, and each is pinned under its own server.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from mcpfw.pins import PinStatus
from mcpfw.pins.open import open_pin_store

from .proxy.http_harness import Rpc, serving, token, write_config

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SERVERS = Path(__file__).resolve().parent.parent / "fixtures" / "servers"
WAIT = 60


def upstream(name: str) -> str:
    return json.dumps({"command": sys.executable, "args": [str(SERVERS / name)]})


def content(message: dict[str, Any]) -> tuple[bool, str]:
    result = message["result"]
    return bool(result.get("isError")), str(result["content"][0]["text"])


async def test_same_named_tools_stay_apart_and_a_rug_pull_is_blocked(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        upstreams={"rug": upstream("rugpull_server.py"), "poison": upstream("poisoning_server.py")},
        rules="default: allow\nrules: []\n",
        extra="pins: block\n",
    )
    with anyio.fail_after(WAIT):
        async with serving(config) as served, httpx.AsyncClient(timeout=30) as http:
            rpc = Rpc(http, served.mcp(), token("ci-bot"))
            await rpc.initialize()
            listed = (await rpc.request("tools/list"))["result"]["tools"]
            names = [t["name"] for t in listed]
            assert sorted(n for n in names if n.endswith("__add")) == ["poison__add", "rug__add"]
            assert len(names) == len(set(names)) and "add" not in names
            weather = next(t for t in listed if t["name"] == "poison__weather")
            assert "\x1b" not in weather["description"]  # sanitised on the way to the agent

            ok = await rpc.request(
                "tools/call", {"name": "rug__add", "arguments": {"a": 1, "b": 2}}
            )
            assert content(ok) == (False, "3")
            # the rug-pull server swapped `add` and announced it; the agent did not re-list
            denied = await rpc.request(
                "tools/call", {"name": "rug__add", "arguments": {"a": 1, "b": 2}}
            )
            is_error, text = content(denied)
            assert is_error and "rule 'pins'" in text and "mcpfw pins approve rug add" in text
            other = await rpc.request(
                "tools/call", {"name": "poison__clean_tool", "arguments": {"text": "ab"}}
            )
            assert content(other) == (False, "2")
            relisted = [t["name"] for t in (await rpc.request("tools/list"))["result"]["tools"]]
            assert "rug__add" not in relisted and "poison__add" in relisted
    async with open_pin_store(str(tmp_path / "audit.db")) as store:
        rug = await store.pin("rug", "add")
        poison = await store.pin("poison", "add")
    assert rug is not None and rug.status is PinStatus.DRIFTED
    assert poison is not None and poison.status is PinStatus.PINNED
    assert rug.digest != poison.digest
