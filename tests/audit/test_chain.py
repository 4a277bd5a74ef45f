"""Tamper evidence of the hash chain, as property tests over the pure verifier.

`verify_rows` is exactly what `AuditStore.verify()` runs over the rows it streams from the
database (see test_store.py for the same tampering done with SQL on both backends).
Hypothesis builds random chains and applies one random edit, deletion, swap or insertion:
every one is caught and classified; untouched chains are never flagged.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcpfw.audit.chain import (
    GENESIS,
    I_HASH,
    I_ID,
    I_PREV,
    I_SEQ,
    ChainStart,
    canonical,
    event_hash,
    verify_rows,
)
from mcpfw.audit.schema import HASHED_COLUMNS

Row = list[Any]
EXAMPLES = settings(max_examples=120, deadline=None)
TEXT = st.text(max_size=12)


@st.composite
def contents(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "kind": draw(st.sampled_from(["decision", "outcome", "session_start", "session_end"])),
        "agent_id": draw(TEXT),
        "tool": draw(TEXT),
        "effect": draw(st.sampled_from([None, "allow", "deny", "ask"])),
        "enforced": draw(st.sampled_from([None, 0, 1])),
        "data": json.dumps(draw(st.dictionaries(TEXT, TEXT | st.integers(), max_size=3))),
    }


def build_chain(items: list[dict[str, Any]], instance: str = "fw") -> list[Row]:
    rows: list[Row] = []
    prev = GENESIS
    for seq, item in enumerate(items, start=1):
        values = {name: None for name in HASHED_COLUMNS}
        values.update(session_id="s", server="srv", time=f"2026-01-01T00:00:{seq % 60:02d}.0Z")
        values.update(item, id=f"{instance}-ev{seq}", instance=instance, seq=seq)
        hashed = [values[name] for name in HASHED_COLUMNS]
        digest = event_hash(prev, hashed)
        rows.append([*hashed, prev, digest])
        prev = digest
    return rows


def rehash(row: Row) -> Row:
    """The row with its hash recomputed (what an attacker who knows the scheme can do)."""
    out = list(row)
    out[I_HASH] = event_hash(out[I_PREV], out[: len(HASHED_COLUMNS)])
    return out


def head_of(rows: list[Row]) -> dict[str, ChainStart]:
    return {"fw": ChainStart(head_seq=rows[-1][I_SEQ], head_hash=rows[-1][I_HASH])}


def broken(rows: list[Row], starts: dict[str, ChainStart]) -> tuple[str, str | None]:
    report = verify_rows(sorted(rows, key=lambda r: (r[1], r[I_SEQ])), starts)
    assert not report.ok, "tampering went unnoticed"
    (chain,) = report.breaks
    assert chain.broken is not None
    return chain.broken.kind, chain.broken.event_id


chains = st.lists(contents(), min_size=2, max_size=25)
EDITABLE = [c for c in HASHED_COLUMNS if c not in ("instance", "seq")] + ["prev_hash", "hash"]


def test_the_canonical_encoding_is_compact_json_of_the_hashed_columns() -> None:
    assert canonical(["a", 1, None, "é"]) == '["a",1,null,"é"]'
    assert event_hash(GENESIS, ["a"]) == event_hash(GENESIS, ("a",))
    assert event_hash(GENESIS, ["a"]) != event_hash("1" * 64, ["a"])


@settings(max_examples=50, deadline=None)
@given(st.lists(chains, min_size=1, max_size=3))
def test_untouched_chains_always_verify(groups: list[list[dict[str, Any]]]) -> None:
    rows = [row for i, items in enumerate(groups) for row in build_chain(items, f"fw{i}")]
    starts = {
        f"fw{i}": ChainStart(
            head_seq=len(items), head_hash=build_chain(items, f"fw{i}")[-1][I_HASH]
        )
        for i, items in enumerate(groups)
    }
    report = verify_rows(rows, starts)
    assert report.ok
    assert report.events == sum(len(g) for g in groups)


@EXAMPLES
@given(chains, st.data())
def test_any_single_edit_is_caught_and_named(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(items)
    starts = head_of(rows)
    pos = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.sampled_from(EDITABLE))
    index = (
        HASHED_COLUMNS.index(column)
        if column in HASHED_COLUMNS
        else (I_PREV if column == "prev_hash" else I_HASH)
    )
    old = rows[pos][index]
    new = data.draw(
        (
            st.text(max_size=64) if index != HASHED_COLUMNS.index("enforced") else st.integers(0, 9)
        ).filter(lambda v: v != old)
    )
    rows[pos] = list(rows[pos])
    rows[pos][index] = new
    if data.draw(st.booleans()) and column not in ("hash", "prev_hash"):
        rows[pos] = rehash(rows[pos])  # edited and re-hashed: the next link (or head) breaks
    kind, event_id = broken(rows, starts)
    assert kind == "edited"
    assert event_id == rows[pos][I_ID]  # the edited event, under whatever id it now has


@EXAMPLES
@given(chains, st.data())
def test_any_deletion_is_caught(items: list[dict[str, Any]], data: st.DataObject) -> None:
    rows = build_chain(items)
    starts = head_of(rows)
    pos = data.draw(st.integers(0, len(rows) - 1))
    del rows[pos]
    kind, _ = broken(rows, starts)
    assert kind == "deleted"


@EXAMPLES
@given(chains, st.data())
def test_any_swap_of_two_events_is_caught_as_reordering(
    items: list[dict[str, Any]], data: st.DataObject
) -> None:
    rows = build_chain(items)
    starts = head_of(rows)
    i = data.draw(st.integers(0, len(rows) - 2))
    j = data.draw(st.integers(i + 1, len(rows) - 1))
    first, second = list(rows[i]), list(rows[j])
    first[I_SEQ], second[I_SEQ] = second[I_SEQ], first[I_SEQ]  # exchange their places
    rows[i], rows[j] = second, first
    kind, event_id = broken(rows, starts)
    assert kind == "reordered"
    assert event_id == second[I_ID]


@EXAMPLES
@given(chains, contents(), st.data())
def test_any_insertion_is_caught(
    items: list[dict[str, Any]], forged_item: dict[str, Any], data: st.DataObject
) -> None:
    rows = build_chain(items)
    starts = head_of(rows)
    pos = data.draw(st.integers(0, len(rows)))
    style = data.draw(st.sampled_from(["garbage", "linked", "linked-rehash-rest"]))
    prev = rows[pos - 1][I_HASH] if pos else GENESIS
    forged_values = {name: None for name in HASHED_COLUMNS}
    forged_values.update(forged_item, id="forged", instance="fw", seq=pos + 1, time="x")
    hashed = [forged_values[name] for name in HASHED_COLUMNS]
    if style == "garbage":
        forged = [*hashed, "f" * 64, "e" * 64]
    else:
        forged = [*hashed, prev, event_hash(prev, hashed)]
    after = []
    top = forged[I_HASH]
    for row in rows[pos:]:  # the attacker renumbers everything after the forged event
        moved = list(row)
        moved[I_SEQ] += 1
        if style == "linked-rehash-rest":
            moved[I_PREV] = top
            moved = rehash(moved)
            top = moved[I_HASH]
        after.append(moved)
    tampered = [*rows[:pos], forged, *after]
    kind, event_id = broken(tampered, starts)
    assert kind == "inserted"
    if style != "linked-rehash-rest" or pos == len(rows):
        assert event_id == "forged"


def test_a_checkpoint_is_where_verification_starts() -> None:
    rows = build_chain([{"kind": "decision", "data": "{}"} for _ in range(6)])
    kept = rows[3:]
    start = ChainStart(seq=3, hash=rows[2][I_HASH], head_seq=6, head_hash=rows[-1][I_HASH])
    assert verify_rows(kept, {"fw": start}).ok
    wrong = ChainStart(seq=3, hash=GENESIS, head_seq=6, head_hash=rows[-1][I_HASH])
    assert not verify_rows(kept, {"fw": wrong}).ok


def test_a_chain_whose_head_record_is_missing_is_flagged() -> None:
    rows = build_chain([{"kind": "decision", "data": "{}"} for _ in range(3)])
    report = verify_rows(rows, {})
    assert not report.ok
    assert report.breaks[0].broken is not None
    assert report.breaks[0].broken.kind == "deleted"


@pytest.mark.parametrize("n", [1, 2])
def test_a_head_record_without_events_means_they_were_all_deleted(n: int) -> None:
    rows = build_chain([{"kind": "decision", "data": "{}"} for _ in range(n)])
    report = verify_rows([], {"fw": ChainStart(head_seq=n, head_hash=rows[-1][I_HASH])})
    assert report.breaks[0].broken is not None
    assert report.breaks[0].broken.kind == "deleted"
