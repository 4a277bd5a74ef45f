"""Glob matching: semantics, and linear time on hostile input."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mcpfw.policy.glob import glob_match, is_glob

PIECES = {"a": "a", "b": "b", "/": "/", ".": r"\.", "*": "[^/]*", "**": ".*", "?": "[^/]",
          "[ab]": "[ab]", "[!a]": "[^a/]", "[a-b]": "[a-b]", "\\*": r"\*"}  # fmt: skip


def oracle(text: str, pieces: list[str]) -> bool:
    """The backtracking regex the glob stands for (fine on tiny inputs)."""
    return re.fullmatch("".join(PIECES[p] for p in pieces), text, re.DOTALL) is not None


@settings(max_examples=400)
@given(
    st.lists(st.sampled_from(sorted(PIECES)), max_size=7),
    st.text(alphabet="ab/.*", max_size=10),
)
def test_the_linear_matcher_agrees_with_a_regex_translation(pieces: list[str], text: str) -> None:
    pattern = "".join(pieces)
    # "*" then "*" reads as "**", which the oracle would not know.
    assume(not any(a == "*" and b.startswith("*") for a, b in itertools.pairwise(pieces)))
    assert glob_match(text, pattern) is oracle(text, pieces)


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("*.*.*.com", "a." * 50_000 + "x"),
        ("**/**/**/x", "/" + "a/" * 50_000),
        ("a*a*a*b", "a" * 100_000),
    ],
)
def test_hostile_text_does_not_backtrack(pattern: str, text: str) -> None:
    # A backtracking regex takes minutes here; the NFA finishes in well under a second.
    assert glob_match(text, pattern) is False


def test_literal_patterns_compare_for_equality() -> None:
    assert not is_glob("read_file") and glob_match("read_file", "read_file")
    assert not glob_match("read_files", "read_file")
    assert is_glob("read_*") and is_glob("a\\b")


def test_a_class_never_matches_a_slash() -> None:
    assert not glob_match("/", "[!a]") and glob_match("b", "[!a]")
