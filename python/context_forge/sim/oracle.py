"""Future knowledge for the ``belady`` policy: when will a cached prefix be used next?

A closed-loop replay has no fixed future order (it depends on timing), so the oracle orders
requests by their *ideal send time*: a root's ``arrival_s``, else the latest ideal finish among its
``after`` requests plus its ``delay_s``, where a request's ideal finish is its send time plus its
service time alone on the GPU with nothing cached (the cost model's prefill + decode). Ties keep
file order. A node's next use is the ideal
time of the earliest request not yet admitted whose prompt contains the node's first page (any
request using a later page of the node uses the first page too).

Prefixes are identified by a chained hash over whole pages: ``h_0 = 0``,
``h_k = hash((h_{k-1}, page_k))``; a node's hash chains the pages from the root to its first page.
"""

from __future__ import annotations

import bisect
import math
from typing import Iterable, Sequence

from context_forge.cache.node import RadixNode


def ideal_times(after: Sequence[Sequence[int]], delay: Sequence[float], arrival: Sequence[float],
                service: Sequence[float]) -> list[float]:
    """Ideal send time of each request; ``after`` holds indices of earlier requests."""
    out: list[float] = []
    for i, deps in enumerate(after):
        if deps:
            out.append(max(out[d] + service[d] for d in deps) + delay[i])
        else:
            out.append(arrival[i])
    return out


class BeladyOracle:
    """Next-use times of radix nodes, for :class:`context_forge.cache.policy.BeladyPolicy`."""

    def __init__(self, prompts: Iterable[Sequence[int]], times: Sequence[float], page_size: int) -> None:
        self.page_size = page_size
        uses: dict[int, list[tuple[float, int]]] = {}
        ps = page_size
        count = 0
        for idx, tokens in enumerate(prompts):
            count += 1
            h = 0
            t = times[idx]
            for k in range(len(tokens) // ps):
                h = hash((h, tuple(tokens[k * ps:(k + 1) * ps])))
                uses.setdefault(h, []).append((t, idx))
        for lst in uses.values():
            lst.sort()
        self._uses = uses
        self._ptr: dict[int, int] = {}
        self._started = bytearray(count)
        self.times = list(times)
        self._end: dict[int, tuple[int, int, int]] = {}
        self.frontier = -math.inf
        """The latest ideal send time of any request admitted so far: the replay's "now" on the
        oracle's clock (for policies told the future only up to a horizon past it)."""

    def started(self, idx: int) -> None:
        """Request ``idx`` is being admitted: it no longer counts as a future use. Call before its
        match, so that the nodes the match re-queues get their next use after this one."""
        self._started[idx] = 1
        self.frontier = max(self.frontier, self.times[idx])

    def unstart(self, idx: int, tokens: Sequence[int], time: float) -> None:
        """Admission of ``idx`` failed after :meth:`started`: it is a future use again."""
        self._started[idx] = 0
        ps = self.page_size
        h = 0
        for k in range(len(tokens) // ps):
            h = hash((h, tuple(tokens[k * ps:(k + 1) * ps])))
            lst = self._uses.get(h)
            if lst is not None:
                pos = bisect.bisect_left(lst, (time, idx))
                if pos < self._ptr.get(h, 0):
                    self._ptr[h] = pos

    def _end_hash(self, node: RadixNode) -> int:
        if node.parent is None:
            return 0
        cached = self._end.get(node.id)
        if cached is not None and cached[0] == len(node.key) and cached[1] == node.parent.id:
            return cached[2]
        h = self._end_hash(node.parent)
        ps = self.page_size
        key = node.key
        for k in range(len(key) // ps):
            h = hash((h, tuple(key[k * ps:(k + 1) * ps])))
        self._end[node.id] = (len(key), node.parent.id, h)
        return h

    def next_request(self, node: RadixNode) -> int | None:
        """Index of the earliest request not yet admitted that uses ``node`` (None: none will)."""
        if node.parent is None:
            return None
        h = hash((self._end_hash(node.parent), tuple(node.key[:self.page_size])))
        lst = self._uses.get(h)
        if not lst:
            return None
        i = self._ptr.get(h, 0)
        started = self._started
        while i < len(lst) and started[lst[i][1]]:
            i += 1
        self._ptr[h] = i
        return lst[i][1] if i < len(lst) else None

    def is_started(self, idx: int) -> bool:
        """Whether request ``idx`` has been admitted."""
        return bool(self._started[idx])

    def next_use(self, node: RadixNode) -> float:
        idx = self.next_request(node)
        return math.inf if idx is None else self.times[idx]

    __call__ = next_use
