"""Prefetch accounting: counters, and which prefetched pages were used or wasted.

A completed prefetch's device pages are *unclaimed* until a request admits with them in its
prefix (a hit: every page of that prefetch stops being tracked) or the device pool frees them
(eviction). A prefetch all of whose pages were freed unclaimed was *wasted*. Per-page tracking
follows the pages through node splits: a request that uses the upper half of a prefetched node
claims the prefetch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from context_forge.kv.pool import PagePool


@dataclass
class PrefetchStats:
    """Cumulative counters of one controller. ``issued``: prefetches that reserved pages and
    started copying; ``completed``: landed; ``cancelled``: dropped before starting (stale, pressure,
    shutdown); ``skipped``: reached the front but had nothing to do or no room; ``wasted``: landed,
    then freed unused; ``hits``: landed and used by a request. ``demand_*``: on-demand loads.
    ``over_budget``: skipped because the guard had no room (also counted in ``skipped``);
    ``released_unused``: protections given up before their request came (replan, workflow end,
    an allocation short of room). Copy timings (measured per unit by the copier's
    ``TransferMeter``): ``demand_bytes``/``demand_seconds`` of on-demand loads, ``copy_seconds``
    of prefetches, ``decode_bytes``/``decode_seconds`` of prefetch copies while a decode step ran."""

    issued: int = 0
    completed: int = 0
    cancelled: int = 0
    skipped: int = 0
    wasted: int = 0
    hits: int = 0
    pages: int = 0
    bytes: int = 0
    demand_loads: int = 0
    demand_pages: int = 0
    interrupts: int = 0
    over_budget: int = 0
    released_unused: int = 0
    demand_bytes: int = 0
    demand_seconds: float = 0.0
    copy_seconds: float = 0.0
    decode_bytes: float = 0.0
    decode_seconds: float = 0.0


class PrefetchLedger:
    """Tracks unclaimed prefetched device pages. Call under the engine lock."""

    def __init__(self, stats: PrefetchStats) -> None:
        self.stats = stats
        self._owner: dict[int, int] = {}
        self._pages: dict[int, set[int]] = {}

    def add(self, task_id: int, pages: Iterable[int]) -> None:
        """Pages that prefetch ``task_id`` just loaded."""
        mine = set(pages)
        if not mine:
            return
        for p in mine:
            self._owner[p] = task_id
        self._pages[task_id] = mine

    def claim(self, pages: Iterable[int]) -> int:
        """A request admitted with ``pages`` in its prefix: returns how many of them were
        unclaimed prefetched pages; each prefetch they belong to counts as one hit."""
        return self.claim_tasks(pages)[0]

    def claim_tasks(self, pages: Iterable[int]) -> tuple[int, set[int]]:
        """``claim``, also returning the ids of the prefetches hit."""
        owner = self._owner
        if not owner:
            return 0, set()
        used = 0
        hit: set[int] = set()
        for p in pages:
            task = owner.get(p)
            if task is not None:
                used += 1
                hit.add(task)
        for task in hit:
            for p in self._pages.pop(task):
                del owner[p]
            self.stats.hits += 1
        return used, hit

    def freed(self, pages: Iterable[int]) -> None:
        """The device pool freed ``pages``: unclaimed prefetched ones are gone for good."""
        owner = self._owner
        if not owner:
            return
        for p in pages:
            task = owner.pop(p, None)
            if task is None:
                continue
            left = self._pages[task]
            left.discard(p)
            if not left:
                del self._pages[task]
                self.stats.wasted += 1

    @property
    def unclaimed_pages(self) -> int:
        return len(self._owner)


class ObservedPagePool(PagePool):
    """A ``PagePool`` that reports every ``free`` to listeners (prefetch waste accounting)."""

    def __init__(self, capacity: int, name: str = "pool") -> None:
        super().__init__(capacity, name)
        self._listeners: list[Callable[[list[int]], None]] = []

    def add_free_listener(self, fn: Callable[[list[int]], None]) -> None:
        self._listeners.append(fn)

    def free(self, pages: list[int]) -> None:
        super().free(pages)
        for fn in self._listeners:
            fn(pages)
