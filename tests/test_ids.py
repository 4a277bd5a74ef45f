"""Ids: 26 Crockford base32 characters, a millisecond timestamp then 80 random bits."""

from __future__ import annotations

import time

from mcpfw.model import new_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _decode(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + ALPHABET.index(char)
    return value


def test_an_id_encodes_its_creation_time_and_sorts_by_it() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(2000)]
    after = time.time_ns() // 1_000_000
    assert all(len(i) == 26 and set(i) <= set(ALPHABET) for i in ids)
    stamps = [_decode(i) >> 80 for i in ids]
    assert before <= stamps[0] <= stamps[-1] <= after
    assert stamps == sorted(stamps)
    assert len(set(ids)) == len(ids)
    randoms = {_decode(i) & (2**80 - 1) for i in ids}
    assert len(randoms) == len(ids) and max(randoms).bit_length() > 70  # the random part is used
