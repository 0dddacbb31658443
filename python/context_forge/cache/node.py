"""Radix tree node: a run of whole pages with its device and/or host page ids and annotations."""

from __future__ import annotations

import itertools
from typing import Optional

_ids = itertools.count()


class LoadTicket:
    """An in-flight host->device load, shared by the nodes it fills.

    A node split while loading shares the ticket with its new upper half, so marking the ticket
    done releases both. ``ready_at`` is an estimated completion time (the simulator's clock);
    ``event`` is whatever a real loader waits on (e.g. a device event); ``gate``, when the loader
    lets requests start before the load lands, its per-layer readiness
    (``prefetch.gate.LayerGate``).
    """

    __slots__ = ("done", "ready_at", "event", "gate")

    def __init__(self, ready_at: float = 0.0, event: object | None = None) -> None:
        self.done = False
        self.ready_at = ready_at
        self.event = event
        self.gate: object | None = None


class RadixNode:
    """One edge of the radix tree.

    ``key`` holds ``len(key) == num_pages * page_size`` token ids. ``device_pages`` /
    ``host_pages`` hold one page id per page of the key, or ``None`` when the node has no copy
    in that tier (every non-root node has at least one). ``agents`` are the user tags of the node:
    who is expected to use it next (``cache.usage`` keeps them); a tag sits on a path from the
    root, so an ancestor's tags contain its descendants' tags. ``touched``: a request carrying a
    tag has used the node (an untouched one is anonymous, `cache.policy.anonymous_key`).
    """

    __slots__ = (
        "id", "key", "parent", "children", "device_pages", "host_pages", "lock_ref",
        "agents", "seen", "touched", "last_access", "hit_count", "loading", "queued",
    )

    def __init__(self, key: list[int], parent: Optional["RadixNode"]) -> None:
        self.id = next(_ids)
        self.key = key
        self.parent = parent
        self.children: dict[tuple[int, ...], RadixNode] = {}
        self.device_pages: list[int] | None = None
        self.host_pages: list[int] | None = None
        self.lock_ref = 0
        self.agents: set[str] = set()
        self.seen: dict[str, str] = {}
        self.touched = False
        """Agent -> the last workflow whose request of that agent used this node (``cache.usage``)."""
        self.last_access = 0.0
        self.hit_count = 0
        self.loading: LoadTicket | None = None
        self.queued: tuple[bool, tuple] | None = None
        """(on the device heap?, key) of this node's live eviction-heap entry, if any."""

    def __hash__(self) -> int:
        """By creation order, not address: sets of nodes iterate the same way in every run."""
        return self.id

    @property
    def on_device(self) -> bool:
        return self.device_pages is not None

    @property
    def on_host(self) -> bool:
        return self.host_pages is not None

    @property
    def is_loading(self) -> bool:
        return self.loading is not None and not self.loading.done

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def num_pages(self, page_size: int) -> int:
        return len(self.key) // page_size

    def is_device_leaf(self) -> bool:
        """On device and no child on device: the only device nodes that may be evicted."""
        if self.device_pages is None:
            return False
        for child in self.children.values():
            if child.device_pages is not None:
                return False
        return True

    def __lt__(self, other: "RadixNode") -> bool:
        return self.id < other.id

    def __repr__(self) -> str:
        tiers = ("D" if self.on_device else "") + ("H" if self.on_host else "")
        return f"RadixNode(id={self.id}, tokens={len(self.key)}, {tiers or '-'}, lock={self.lock_ref})"
