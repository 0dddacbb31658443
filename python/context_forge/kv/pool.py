"""Fixed-capacity page pools (free lists) for the device and host KV tiers."""

from __future__ import annotations


class PoolExhausted(RuntimeError):
    """Raised by :meth:`PagePool.alloc_or_raise` when not enough pages are free."""


class PagePool:
    """A free list of page ids ``0 .. capacity-1``.

    Allocation is all-or-nothing. Every page is either free or held by exactly one owner
    (a radix node or a running request); :meth:`check` verifies ``free + held == capacity``
    and that no page is free twice.
    """

    def __init__(self, capacity: int, name: str = "pool") -> None:
        if capacity < 0:
            raise ValueError(f"{name}: capacity must be >= 0, got {capacity}")
        self.name = name
        self.capacity = capacity
        # Pop from the end; reversed so that ids are handed out in increasing order.
        self._free: list[int] = list(range(capacity - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * capacity

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.capacity - len(self._free)

    def alloc(self, n: int) -> list[int] | None:
        """Take ``n`` pages, or return ``None`` (taking nothing) if fewer are free."""
        if n < 0:
            raise ValueError(f"{self.name}: cannot allocate {n} pages")
        if n > len(self._free):
            return None
        if n == 0:
            return []
        pages = self._free[-n:]
        del self._free[-n:]
        pages.reverse()
        flags = self._is_free
        for p in pages:
            flags[p] = 0
        return pages

    def alloc_or_raise(self, n: int) -> list[int]:
        pages = self.alloc(n)
        if pages is None:
            raise PoolExhausted(f"{self.name}: need {n} pages, {self.num_free} free")
        return pages

    def free(self, pages: list[int]) -> None:
        """Return pages to the pool. Freeing a free or unknown page is a bug and raises."""
        flags = self._is_free
        for p in pages:
            if not 0 <= p < self.capacity:
                raise ValueError(f"{self.name}: page id {p} out of range [0, {self.capacity})")
            if flags[p]:
                raise ValueError(f"{self.name}: double free of page {p}")
            flags[p] = 1
        self._free.extend(pages)

    def is_free(self, page: int) -> bool:
        return bool(self._is_free[page])

    def check(self) -> None:
        """Assert the free list is consistent: no duplicates, flags agree, free + held == capacity."""
        assert len(set(self._free)) == len(self._free), f"{self.name}: duplicate page in free list"
        assert sum(self._is_free) == len(self._free), f"{self.name}: free flags disagree with free list"
        held = self.capacity - len(self._free)
        assert len(self._free) + held == self.capacity
