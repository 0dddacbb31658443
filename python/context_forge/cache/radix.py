"""Radix tree over whole KV pages: structure, prefix matching, insertion, locking, invariants.

Tiering (eviction, write-back, load-back) lives in :mod:`context_forge.cache.tiered`, which
subclasses :class:`RadixTree`; hooks named ``_on_*`` are where it plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from .node import RadixNode
from .usage import UsageIndex


@dataclass
class MatchResult:
    """Result of :meth:`RadixTree.match`.

    The first ``device_len`` tokens are on the device (pages in ``device_pages``); the next
    ``host_len`` tokens are on the host only. ``nodes`` is the matched path from the root's
    child down to ``last_node`` (the root itself when nothing matched).
    """

    device_len: int
    host_len: int
    nodes: list[RadixNode]
    last_node: RadixNode
    device_pages: list[int] = field(default_factory=list)

    @property
    def total_len(self) -> int:
        return self.device_len + self.host_len

    @property
    def last_device_node(self) -> RadixNode | None:
        last = None
        for node in self.nodes:
            if node.device_pages is None:
                break
            last = node
        return last


@dataclass
class InsertResult:
    """Result of :meth:`RadixTree.insert`.

    ``prefix_len`` tokens of the key were already in the tree (either tier) before the call.
    ``pages`` are the tree's device pages for the cached part of the key (page-aligned, possibly
    shorter than the key when admission was refused under memory pressure). A caller page that
    differs from ``pages`` at the same index, or lies beyond it, was not adopted: the caller
    frees it (see :meth:`redundant`).
    """

    prefix_len: int
    pages: list[int]
    node: RadixNode

    def redundant(self, caller_pages: Sequence[int]) -> list[int]:
        tree = self.pages
        return [p for i, p in enumerate(caller_pages) if i >= len(tree) or tree[i] != p]


class RadixTree:
    """Prefix tree keyed by token ids, one edge per run of whole pages."""

    def __init__(self, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.root = RadixNode([], None)
        self.root.lock_ref = 1
        self._clock = 0.0
        self._agent_nodes: dict[str, set[RadixNode]] = {}
        self.num_nodes = 0
        self.device_cached_pages = 0
        self.host_cached_pages = 0
        self.usage = UsageIndex(self)

    # ---------------------------------------------------------------- helpers
    def _tick(self) -> float:
        self._clock += 1.0
        return self._clock

    def _first_page(self, tokens: Sequence[int], page: int) -> tuple[int, ...]:
        ps = self.page_size
        return tuple(tokens[page * ps:(page + 1) * ps])

    def _matching_pages(self, node: RadixNode, tokens: Sequence[int], start_page: int) -> int:
        """Whole pages of ``node.key`` equal to ``tokens`` from ``start_page`` (the first page is known equal)."""
        ps = self.page_size
        key = node.key
        base = start_page * ps
        avail = (len(tokens) - base) // ps
        n = min(len(key) // ps, avail)
        if tokens[base:base + n * ps] == key[:n * ps]:
            return n
        m = 1
        while m < n and tokens[base + m * ps:base + (m + 1) * ps] == key[m * ps:(m + 1) * ps]:
            m += 1
        return m

    def _add_agent(self, node: RadixNode, agent_id: str | None) -> None:
        if agent_id is None or agent_id in node.agents:
            return
        node.agents.add(agent_id)
        self._agent_nodes.setdefault(agent_id, set()).add(node)

    def _remove_agent(self, node: RadixNode, agent_id: str) -> None:
        node.agents.discard(agent_id)
        nodes = self._agent_nodes.get(agent_id)
        if nodes is not None:
            nodes.discard(node)
            if not nodes:
                del self._agent_nodes[agent_id]
        self._on_retag(node)

    def _forget_node(self, node: RadixNode) -> None:
        for agent in node.agents:
            nodes = self._agent_nodes.get(agent)
            if nodes is not None:
                nodes.discard(node)
                if not nodes:
                    del self._agent_nodes[agent]
        self.num_nodes -= 1

    def _split(self, node: RadixNode, pages: int) -> RadixNode:
        """Split ``node`` after ``pages`` pages; returns the new upper node. Annotations are kept on both."""
        ps = self.page_size
        cut = pages * ps
        parent = node.parent
        assert parent is not None and 0 < cut < len(node.key)
        upper = RadixNode(node.key[:cut], parent)
        upper.device_pages = None if node.device_pages is None else node.device_pages[:pages]
        upper.host_pages = None if node.host_pages is None else node.host_pages[:pages]
        upper.lock_ref = node.lock_ref
        upper.last_access = node.last_access
        upper.hit_count = node.hit_count
        upper.loading = node.loading
        upper.seen = dict(node.seen)
        upper.touched = node.touched
        for agent in node.agents:
            self._add_agent(upper, agent)
        node.key = node.key[cut:]
        if node.device_pages is not None:
            node.device_pages = node.device_pages[pages:]
        if node.host_pages is not None:
            node.host_pages = node.host_pages[pages:]
        parent.children[self._first_page(upper.key, 0)] = upper
        upper.children[self._first_page(node.key, 0)] = node
        node.parent = upper
        self.num_nodes += 1
        self._on_split(node)
        return upper

    # ---------------------------------------------------------------- public API
    def match(self, tokens: Sequence[int], agent_id: str | None = None, touch: bool = True) -> MatchResult:
        """Longest cached whole-page prefix of ``tokens``; splits a node where the match ends inside it."""
        ps = self.page_size
        n_pages = len(tokens) // ps
        node, pos = self.root, 0
        path: list[RadixNode] = []
        while pos < n_pages:
            child = node.children.get(self._first_page(tokens, pos))
            if child is None:
                break
            m = self._matching_pages(child, tokens, pos)
            if m < len(child.key) // ps:
                child = self._split(child, m)
            path.append(child)
            node = child
            pos += m
            if m < len(child.key) // ps:
                break
        device_len = host_len = 0
        device_pages: list[int] = []
        for n in path:
            if n.device_pages is not None and host_len == 0:
                device_len += len(n.key)
                device_pages.extend(n.device_pages)
            else:
                host_len += len(n.key)
        if touch and path:
            now = self._tick()
            for n in path:
                n.last_access = now
                n.hit_count += 1
            self.usage.on_path(path, agent_id)
            self._on_access(path)
        return MatchResult(device_len, host_len, path, node, device_pages)

    def insert(self, tokens: Sequence[int], device_pages: Sequence[int], agent_id: str | None = None) -> InsertResult:
        """Cache ``tokens`` whose KV sits in ``device_pages`` (one page id per whole page).

        Parts already on device keep the tree's pages; host-only parts adopt the caller's pages
        (the caller recomputed them); new parts become new nodes (unless admission is refused).
        """
        ps = self.page_size
        n_pages = min(len(tokens) // ps, len(device_pages))
        tokens = tokens[:n_pages * ps]
        node, pos, prefix_len = self.root, 0, 0
        out: list[int] = []
        now = self._tick()
        touched: list[RadixNode] = []
        while pos < n_pages:
            child = node.children.get(self._first_page(tokens, pos))
            if child is None:
                new = RadixNode(list(tokens[pos * ps:n_pages * ps]), node)
                new.device_pages = list(device_pages[pos:n_pages])
                new.last_access = now
                if agent_id is not None:
                    new.agents = {agent_id}  # for the admission check; tagged below
                if not self._admit(new):
                    break
                new.agents = set()
                node.children[self._first_page(tokens, pos)] = new
                self.num_nodes += 1
                self.device_cached_pages += n_pages - pos
                out.extend(new.device_pages)
                touched.append(new)
                node, pos = new, n_pages
                break
            m = self._matching_pages(child, tokens, pos)
            if m < len(child.key) // ps:
                child = self._split(child, m)
            prefix_len += m * ps
            if child.device_pages is None:
                child.device_pages = list(device_pages[pos:pos + m])
                self.device_cached_pages += m
            out.extend(child.device_pages)
            child.last_access = now
            touched.append(child)
            node, pos = child, pos + m
        self.usage.on_path(touched, agent_id, insert=True)
        self._on_insert(touched)
        return InsertResult(prefix_len, out, node)

    def lock(self, node: RadixNode) -> None:
        """Protect ``node`` and its ancestors from eviction (counted)."""
        while node is not None:
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: RadixNode) -> None:
        n: RadixNode | None = node
        released: list[RadixNode] = []
        while n is not None:
            if n.lock_ref <= 0:
                raise RuntimeError(f"unlock of unlocked node {n!r}")
            n.lock_ref -= 1
            if n.lock_ref == 0:
                released.append(n)
            n = n.parent
        if released:
            self._on_unlock(released)

    def nodes(self) -> Iterator[RadixNode]:
        """All non-root nodes, depth first."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def agent_nodes(self, agent_id: str) -> set[RadixNode]:
        """The nodes tagged ``agent_id`` (the live set: copy it before changing tags)."""
        return self._agent_nodes.get(agent_id, set())

    def forget_workflow(self, workflow_id: str) -> None:
        """The workflow ended: its scoped tags leave every node (``cache.usage``)."""
        self.usage.forget_workflow(workflow_id)

    # ---------------------------------------------------------------- hooks
    def _admit(self, node: RadixNode) -> bool:
        return True

    def _on_access(self, path: list[RadixNode]) -> None:
        pass

    def _on_insert(self, nodes: list[RadixNode]) -> None:
        pass

    def _on_unlock(self, nodes: list[RadixNode]) -> None:
        pass

    def _on_split(self, lower: RadixNode) -> None:
        pass

    def _on_retag(self, node: RadixNode) -> None:
        pass
