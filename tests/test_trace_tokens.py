"""Segment token ids against an independent, straightforward reading of the trace spec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.trace import tokens as tok
from context_forge.trace.tokens import (
    fnv1a_64,
    prompt_tokens,
    segment_tokens,
    segment_tokens_array,
    splitmix64,
)

M = 2**64


def ref_fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) % M
    return h


def ref_splitmix(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) % M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % M
    return z ^ (z >> 31)


def ref_segment(name: str, length: int, vocab: int) -> list[int]:
    h = ref_fnv1a(name)
    return [ref_splitmix((h + i) % M) % vocab for i in range(length)]


def test_published_vectors() -> None:
    assert ref_fnv1a("") == 0xCBF29CE484222325
    assert ref_fnv1a("a") == 0xAF63DC4C8601EC8C
    assert ref_splitmix(0) == 0xE220A8397B1DCDAF
    assert fnv1a_64("a") == 0xAF63DC4C8601EC8C
    assert splitmix64(0) == 0xE220A8397B1DCDAF


def test_known_answers() -> None:
    tok.clear_token_cache()
    for name in ["sys/coder", "wf-3/history", "wf-3/coder/0/input", "", "é/ünïcode/段"]:
        for vocab in [32000, 128256, 2, 1, 2**32]:
            assert segment_tokens(name, 300, vocab) == ref_segment(name, 300, vocab), (name, vocab)


def test_wraparound_near_two_to_the_64() -> None:
    """A hash just below 2^64 exercises the (h + i) mod 2^64 wrap of the vectorised core."""
    base = M - 50
    got = tok._generate(base, 0, 120, 32000).tolist()
    assert got == [ref_splitmix((base + i) % M) % 32000 for i in range(120)]


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(max_size=12),
    lengths=st.lists(st.integers(0, 700), min_size=1, max_size=5),
    vocab=st.integers(1, 2**32),
)
def test_cached_slices_match_reference_in_any_order(name: str, lengths: list[int], vocab: int) -> None:
    longest = ref_segment(name, max(lengths), vocab)
    for n in lengths:
        ids = segment_tokens(name, n, vocab)
        assert ids == longest[:n]
        assert all(0 <= t < vocab for t in ids)


def test_prompt_tokens_concatenates_segments() -> None:
    segs = [("sys/a", 40), ("wf/history", 7), ("wf/a/0/input", 3)]
    expected = sum((ref_segment(n, k, 500) for n, k in segs), [])
    assert prompt_tokens(segs, 500) == expected
    assert prompt_tokens([], 500) == []


def test_array_is_read_only() -> None:
    arr = segment_tokens_array("sys/x", 10, 32000)
    with pytest.raises(ValueError):
        arr[0] = 1


def test_cache_budget_evicts_least_recently_used() -> None:
    cache = tok._SegmentCache(max_tokens=1000)
    a = cache.get("a", 400, 32000).tolist()
    cache.get("b", 400, 32000)
    cache.get("a", 10, 32000)
    cache.get("c", 400, 32000)
    assert set(k for k, _ in cache._entries) == {"a", "c"}
    assert cache._held <= 1000 + 400
    assert cache.get("b", 400, 32000).tolist() == ref_segment("b", 400, 32000)
    assert cache.get("a", 400, 32000).tolist() == a


@pytest.mark.parametrize(
    ("args", "exc", "word"),
    [
        ((3, 10, 100), TypeError, "name"),
        (("s", -1, 100), ValueError, "length"),
        (("s", 2.5, 100), ValueError, "length"),
        (("s", 10, 0), ValueError, "vocab_size"),
        (("s", 10, 2**32 + 1), ValueError, "vocab_size"),
        (("s", 10, True), ValueError, "vocab_size"),
    ],
)
def test_bad_arguments_name_the_problem(args: tuple, exc: type, word: str) -> None:
    with pytest.raises(exc, match=word):
        segment_tokens(*args)
