"""Synthetic token ids of trace prompt segments (shared/workload-trace-format.md).

Token ``i`` of segment ``S`` is ``splitmix64((fnv1a_64(S) + i) mod 2^64) % vocab_size``.
A segment's ids therefore depend only on its name, so a shorter use of a name is a prefix
of a longer one and prompts that start with the same segments share a token prefix.

Generation is vectorised with numpy ``uint64`` arithmetic, which wraps modulo 2^64 exactly
like the spec's arithmetic. Generated ids are cached per ``(name, vocab_size)``: the cache
keeps the longest array produced so far and answers shorter requests by slicing it. The
cache is bounded by a total token budget and drops least recently used segments first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np

__all__ = [
    "MAX_VOCAB_SIZE",
    "fnv1a_64",
    "splitmix64",
    "segment_tokens",
    "segment_tokens_array",
    "prompt_tokens",
    "clear_token_cache",
]

MAX_VOCAB_SIZE = 1 << 32
"""Largest accepted vocabulary; ids are stored as ``uint32``."""

_MASK64 = (1 << 64) - 1
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S27, _S30, _S31 = np.uint64(27), np.uint64(30), np.uint64(31)


def fnv1a_64(name: str) -> int:
    """64-bit FNV-1a hash of the UTF-8 encoding of ``name``."""
    h = _FNV_OFFSET
    for byte in name.encode("utf-8"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def splitmix64(x: int) -> int:
    """The splitmix64 finalizer of one 64-bit value (scalar form, mod 2^64)."""
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _generate(base: int, start: int, stop: int, vocab_size: int) -> np.ndarray:
    """Ids ``start .. stop-1`` of the segment whose hash is ``base`` (vectorised)."""
    z = np.arange(start, stop, dtype=np.uint64)
    z += np.uint64(base)
    z += _GOLDEN
    z ^= z >> _S30
    z *= _MIX1
    z ^= z >> _S27
    z *= _MIX2
    z ^= z >> _S31
    z %= np.uint64(vocab_size)
    return z.astype(np.uint32)


def _check(name: object, length: object, vocab_size: object) -> None:
    if not isinstance(name, str):
        raise TypeError(f"segment name must be a str, got {type(name).__name__}")
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"segment {name!r}: length must be an integer >= 0, got {length!r}")
    if (
        isinstance(vocab_size, bool)
        or not isinstance(vocab_size, (int, np.integer))
        or not 1 <= vocab_size <= MAX_VOCAB_SIZE
    ):
        raise ValueError(f"vocab_size must be an integer in [1, 2^32], got {vocab_size!r}")


class _SegmentCache:
    """LRU map ``(name, vocab_size) -> (hash, longest generated ids)`` under a token budget."""

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self._entries: OrderedDict[tuple[str, int], tuple[int, np.ndarray]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def get(self, name: str, length: int, vocab_size: int) -> np.ndarray:
        key = (name, vocab_size)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                base, ids = entry
                if len(ids) >= length:
                    return ids[:length]
            else:
                base, ids = fnv1a_64(name), np.empty(0, dtype=np.uint32)
        # Grow geometrically so a segment that keeps getting longer (a conversation history)
        # costs amortised O(1) generation per token.
        target = max(length, len(ids) + len(ids) // 2)
        grown = np.concatenate((ids, _generate(base, len(ids), target, vocab_size)))
        grown.flags.writeable = False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= len(old[1])
                if len(old[1]) >= target:
                    grown = old[1]
            self._entries[key] = (base, grown)
            self._held += len(grown)
            while self._held > self.max_tokens and len(self._entries) > 1:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._held -= len(dropped)
        return grown[:length]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._held = 0


_CACHE = _SegmentCache(max_tokens=1 << 24)


def segment_tokens_array(name: str, length: int, vocab_size: int = 32000) -> np.ndarray:
    """Token ids of segment ``name`` as a read-only ``uint32`` array of ``length`` ids."""
    _check(name, length, vocab_size)
    return _CACHE.get(name, int(length), int(vocab_size))


def segment_tokens(name: str, length: int, vocab_size: int = 32000) -> list[int]:
    """Token ids of segment ``name`` (first ``length`` ids), as the trace spec defines them."""
    return segment_tokens_array(name, length, vocab_size).tolist()


def prompt_tokens(segments: Iterable[tuple[str, int]], vocab_size: int = 32000) -> list[int]:
    """Concatenated ids of ``(name, length)`` segments, in order."""
    parts = [segment_tokens_array(name, length, vocab_size) for name, length in segments]
    if not parts:
        return []
    return np.concatenate(parts).tolist()


def clear_token_cache() -> None:
    """Drop every cached segment (tests and memory-constrained callers)."""
    _CACHE.clear()
