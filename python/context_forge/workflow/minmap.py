"""Multisets with a cheap minimum, and rate sums, kept per agent over many live workflows."""
from __future__ import annotations

import heapq
import math


class CountedMin:
    """A multiset of values stored as value -> count, with the minimum cached.

    Meant for small discrete domains (step counts): removing the minimum rescans the distinct
    values only, which are few.
    """

    __slots__ = ("_counts", "_min", "size")

    def __init__(self) -> None:
        self._counts: dict[float, int] = {}
        self._min = math.inf
        self.size = 0

    def add(self, value: float) -> None:
        self._counts[value] = self._counts.get(value, 0) + 1
        self.size += 1
        self._min = min(self._min, value)

    def remove(self, value: float) -> None:
        count = self._counts.get(value, 0)
        if count == 0:
            raise KeyError(f"value {value!r} is not in the multiset")
        self.size -= 1
        if count == 1:
            del self._counts[value]
            if value == self._min:
                self._min = min(self._counts, default=math.inf)
        else:
            self._counts[value] = count - 1

    @property
    def min(self) -> float:
        """Smallest value held, `math.inf` when empty."""
        return self._min


class KeyedMin:
    """Values keyed by owner (e.g. workflow id) with the minimum kept by a lazily cleaned heap.

    Suited to continuous values where a count table would hold one entry per owner. A heap entry
    is stale when its owner's current value differs; stale tops are popped on read and the heap is
    rebuilt when stale entries outnumber live ones.
    """

    __slots__ = ("_heap", "_values")

    def __init__(self) -> None:
        self._values: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def set(self, key: str, value: float) -> None:
        if self._values.get(key) == value:
            return
        self._values[key] = value
        heapq.heappush(self._heap, (value, key))
        if len(self._heap) > 2 * len(self._values) + 32:
            self._heap = [(v, k) for k, v in self._values.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        self._values.pop(key, None)
        if not self._values:
            self._heap.clear()

    def get(self, key: str) -> float | None:
        return self._values.get(key)

    def __len__(self) -> int:
        return len(self._values)

    @property
    def min(self) -> float:
        """Smallest current value, `math.inf` when empty."""
        heap, values = self._heap, self._values
        while heap and values.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf


class AgentMinTable:
    """Per agent, values keyed by owner (a workflow) and their minimum.

    `set` reports whether the agent's minimum changed, so a priority can publish exactly the
    agents whose value moved.
    """

    __slots__ = ("_mins",)

    def __init__(self) -> None:
        self._mins: dict[str, KeyedMin] = {}

    def set(self, agent: str, owner: str, value: float | None) -> bool:
        """Set (or, with ``None``, remove) the owner's value for the agent; True if the minimum moved."""
        m = self._mins.get(agent)
        if m is None:
            if value is None:
                return False
            m = self._mins[agent] = KeyedMin()
        before = m.min
        if value is None:
            m.discard(owner)
        else:
            m.set(owner, value)
        after = m.min
        if not len(m):
            del self._mins[agent]
        return before != after

    def min(self, agent: str) -> float:
        """The agent's smallest value over owners, `math.inf` when it has none."""
        m = self._mins.get(agent)
        return math.inf if m is None else m.min


class AgentRateSum:
    """Per agent, rates keyed by owner (a workflow) and their sum; an owner at ``math.inf`` (the
    agent runs there now) is counted apart, so the sum stays finite arithmetic.

    The sum is kept incrementally and recomputed from the owners' rates whenever an owner leaves,
    so rounding does not accumulate over a long run.
    """

    __slots__ = ("_rates", "_sums", "_now")

    def __init__(self) -> None:
        self._rates: dict[str, dict[str, float]] = {}
        self._sums: dict[str, float] = {}
        self._now: dict[str, int] = {}

    def set(self, agent: str, owner: str, rate: float | None) -> None:
        """Set (or, with ``None``, remove) the owner's rate for the agent."""
        rates = self._rates.get(agent)
        old = None if rates is None else rates.get(owner)
        if old == rate:
            return
        if rates is None:
            rates = self._rates[agent] = {}
        if old is not None:
            self._drop(agent, old)
        if rate is None:
            del rates[owner]
            if not rates:
                del self._rates[agent]
                self._sums.pop(agent, None)
                self._now.pop(agent, None)
            else:
                self._sums[agent] = math.fsum(r for r in rates.values() if r != math.inf)
            return
        rates[owner] = rate
        if rate == math.inf:
            self._now[agent] = self._now.get(agent, 0) + 1
        else:
            self._sums[agent] = self._sums.get(agent, 0.0) + rate

    def total(self, agent: str) -> float:
        """The sum of the agent's rates (``math.inf`` while an owner is at ``math.inf``, 0 with none)."""
        if self._now.get(agent):
            return math.inf
        return self._sums.get(agent, 0.0)

    def _drop(self, agent: str, rate: float) -> None:
        if rate == math.inf:
            self._now[agent] -= 1
        else:
            self._sums[agent] = self._sums.get(agent, 0.0) - rate
