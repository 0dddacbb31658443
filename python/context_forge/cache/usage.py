"""Who will use a cached node next: the user tags the radix tree keeps on its nodes.

A request of agent ``a`` in workflow ``w`` reports its path (the nodes from the root down to the
end of its match or insert) with the scoped key ``w<US>a`` (``workflow.scope``). The tags a node
carries name the users a policy should rank it by:

1. **Latest path.** A scoped key stays on the path of its latest request only. When the key's new
   path leaves the old one, the old tail loses the key: an agent's next prompt extends its latest
   one, so an older branch (a previous request's own input) is no longer that agent's.
2. **Cross-instance nodes.** A node that agent ``a`` used in two different workflows is ``a``'s
   shared KV (its system prompt, a team preamble, a persona). It carries the bare key ``a``, which
   a policy ranks by ``a``'s next call by *any* instance, live or not yet started. The bare key
   stays on the cross-instance prefix of ``a``'s latest path (rule 1 again, for the agent).
3. **Carried state.** An agent whose cross-instance prefix keeps growing from one workflow to the
   next (a simulation persona whose memory carries from round to round) carries its whole latest
   path with the bare key: its next workflow is expected to extend it. Decided per agent from the
   growth seen at each first request of a new workflow (more growths than not, with a prior).
4. **Dropped suffix.** Agents often send a next prompt that keeps their latest one only up to
   some point (a fresh tool result or input replaces the last one): per agent, the upper quartile of
   the tokens its last few next requests dropped from the end of their previous ones is learned
   (every agent's, until it has two of its own), and an insert leaves its last that many tokens
   (never more than the tokens new to this key: beyond its previous path, or this request's own) without
   the request's tags, splitting the node at the page boundary where needed, so that suffix is
   evicted first while the prefix the next request will extend stays ranked.
5. **Finished workflows** lose their scoped keys on every node (`forget_workflow`); an agent seen
   in that workflow only keeps its path under its bare key (cut to the prefix other agents shared
   across instances, when some did).
6. **Resets.** A next request that keeps far less of the key's path than the agent usually drops
   (more than a quarter of the path and more than twice the expected drop: a history compacted
   past a length limit, a conversation restarted from the system prompt) is a *reset*; it does
   not count towards rule 4's drop. Per agent the last resets and non-resets are remembered with
   the path length they came at; :meth:`UsageIndex.expected_keep` says, for the key's current
   path, whether most earlier next requests from paths at least that long were resets, and how
   much of the path they kept. An agent with no reset of its own is judged by its workflow's
   evidence (every agent's of that instance: a team's histories are compacted together, so the
   first reset of one agent announces the others'). The prefetch planner then loads only that
   prefix (a compacted history is new KV anyway); eviction ranks are unchanged.

Tags without a workflow (plain agent names) are added to the path and never removed; so are all
tags while ``rules`` is off (the cache turns the rules off for policies that rank by no user, such
as lru, whose behaviour then does not depend on them).

Every rule keeps a node's tags a superset of its children's (a key sits on a path from the root),
which `RadixCache.check` asserts. Each node also remembers, per agent, the last workflow that used
it (``RadixNode.seen``), which is how rule 2 tells a second instance from the first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from context_forge.cache.node import RadixNode
from context_forge.workflow.scope import split_scope


class TaggedTree(Protocol):
    """The parts of a radix tree the usage index edits (``cache.radix.RadixTree`` is one)."""

    page_size: int

    def agent_nodes(self, agent_id: str) -> set[RadixNode]: ...

    def _add_agent(self, node: RadixNode, agent_id: str | None) -> None: ...

    def _remove_agent(self, node: RadixNode, agent_id: str) -> None: ...

    def _split(self, node: RadixNode, pages: int) -> RadixNode: ...


__all__ = ["UsageIndex"]


@dataclass
class _Drop:
    """The tokens an agent's recent next requests dropped from their previous ones; the upper
    quartile of the last five, so that a one-off reset (a compacted history) does not count while
    inputs of varying length are mostly covered."""

    recent: list[int] = field(default_factory=list)

    def add(self, tokens: int) -> None:
        self.recent.append(tokens)
        if len(self.recent) > 5:
            del self.recent[0]

    @property
    def expected(self) -> int:
        if len(self.recent) < 2:
            return 0
        ordered = sorted(self.recent)
        return ordered[3 * (len(ordered) - 1) // 4]


@dataclass
class _Carry:
    """How often the prefix an agent's first prompt in a new workflow shares with its previous
    workflow's path grew (``grew`` of ``seen``), the latest such prefix (tokens), and the keys of
    the previous path (references to the nodes' token lists, not copies)."""

    grew: int = 0
    seen: int = 0
    shared: int = 0
    compared: bool = False
    previous: list[list[int]] = field(default_factory=list)

    @property
    def carries(self) -> bool:
        return (self.grew + 0.5) / (self.seen + 1.0) > 0.5


@dataclass
class _Resets:
    """Rule 6's evidence for one agent: ``(path tokens, tokens kept, reset?)`` of its last next
    requests."""

    seen: list[tuple[int, int, bool]] = field(default_factory=list)

    def add(self, length: int, kept: int, reset: bool) -> None:
        self.seen.append((length, kept, reset))
        if len(self.seen) > 16:
            del self.seen[0]

    @property
    def any_reset(self) -> bool:
        return any(r for _, _, r in self.seen)

    def expected_keep(self, length: int) -> int | None:
        """Tokens a next request from a path of ``length`` tokens is expected to keep when it is
        expected to reset (None: it is not). Judged by the observations from paths at least as
        long (the longest one when there are none), with one non-reset as a prior: resets come
        once a path grows past a limit."""
        if not self.any_reset:
            return None
        longer = [o for o in self.seen if o[0] >= length] or [max(self.seen)]
        resets = [kept for _, kept, r in longer if r]
        if 2 * len(resets) < len(longer) + 1:
            return None
        return min(resets)


class UsageIndex:
    """Maintains the user tags of one radix tree (see the module docstring)."""

    def __init__(self, tree: TaggedTree, rules: bool = True) -> None:
        self.tree = tree
        self.rules = rules
        self._workflow_keys: dict[str, set[str]] = {}
        self._last_workflow: dict[str, str] = {}
        self._carry: dict[str, _Carry] = {}
        self._median_share: int | None = None
        self._drop: dict[str, _Drop] = {}
        self._any_drop = _Drop()
        self._resets: dict[str, _Resets] = {}
        self._workflow_resets: dict[str, _Resets] = {}
        self._inserted: set[str] = set()
        self._matched: dict[str, int] = {}

    def on_path(self, path: Sequence[RadixNode], tag: str | None, insert: bool = False) -> None:
        """A request tagged ``tag`` matched (``insert`` False) or inserted ``path`` (root child
        first, deepest last)."""
        if tag is None or not path:
            return
        for node in path:
            node.touched = True
        tree = self.tree
        workflow, agent = split_scope(tag)
        if workflow is None or not self.rules:
            for node in path:
                tree._add_agent(node, tag)
            return
        self._workflow_keys.setdefault(workflow, set()).add(tag)
        if not insert:
            if tag in self._inserted:
                self._inserted.discard(tag)
                keep = set(path)
                old = tree.agent_nodes(tag)
                length = sum(len(n.key) for n in old)
                dropped = sum(len(n.key) for n in old if n not in keep)
                drop = self._drop.setdefault(agent, _Drop())
                reset = 4 * dropped > length and dropped > 2 * max(drop.expected, tree.page_size)
                self._resets.setdefault(agent, _Resets()).add(length, length - dropped, reset)
                self._workflow_resets.setdefault(workflow, _Resets()).add(length, length - dropped, reset)
                if not reset:
                    drop.add(dropped)
                    self._any_drop.add(dropped)
            self._matched[tag] = sum(len(n.key) for n in path)
        carry = None
        if insert:
            self._inserted.add(tag)
            full = path
            total = sum(len(n.key) for n in path)
            new_tokens = total - self._matched.get(tag, 0)
            old = tree.agent_nodes(tag)
            if old:
                # Also beyond what the key's previous request kept: a part another agent of the
                # instance inserted moments ago (the round's plan all workers read) is new to it.
                on_path = set(path)
                new_tokens = max(new_tokens, total - sum(len(n.key) for n in old if n in on_path))
            path = self._without_dropped(path, agent, new_tokens)
            carry = self._carry_evidence(agent, workflow, full, path)
        self._retag(tag, path)
        cross_end = -1
        for i, node in enumerate(path):
            before = node.seen.get(agent)
            if (before is not None and before != workflow) or agent in node.agents:
                cross_end = i
            node.seen[agent] = workflow
        if carry is None:
            carry = self._carry.get(agent)
        if carry is not None and carry.carries:
            self._retag(agent, path)
            return
        shared = path[:cross_end + 1]
        if insert and carry is not None and carry.compared:
            by_tokens = self._prefix(path, carry.shared)
            if len(by_tokens) > len(shared):
                shared = by_tokens
        if shared:
            self._retag(agent, shared)

    def _prefix(self, path: Sequence[RadixNode], tokens: int) -> list[RadixNode]:
        """The nodes of ``path`` covering its first ``tokens`` tokens (whole pages), the last one
        split where the prefix ends inside it."""
        ps = self.tree.page_size
        left = tokens // ps * ps
        out: list[RadixNode] = []
        for node in path:
            if left <= 0:
                break
            if len(node.key) > left:
                out.append(self.tree._split(node, left // ps))
                break
            out.append(node)
            left -= len(node.key)
        return out

    def _carry_evidence(self, agent: str, workflow: str, full: Sequence[RadixNode],
                        kept: Sequence[RadixNode]) -> _Carry:
        """Rule 3's evidence, at the first insert of the agent in a new workflow: the prefix the new
        prompt shares with the agent's previous kept path, compared by tokens (so that eviction of
        the old path does not hide it). Growth against the previous such prefix is a carry (the
        first comparison only sets the baseline: any second instance shares its system prompt)."""
        carry = self._carry.setdefault(agent, _Carry())
        if self._last_workflow.get(agent) != workflow:
            self._last_workflow[agent] = workflow
            if carry.previous:
                shared = _common_prefix(carry.previous, [n.key for n in full])
                if carry.compared:
                    carry.seen += 1
                    carry.grew += shared > carry.shared
                carry.compared = True
                carry.shared = shared
                self._median_share = None
        carry.previous = [n.key for n in kept]
        return carry

    def _drops_of(self, agent: str) -> _Drop:
        """Rule 4's evidence for ``agent``: its own drops once it has two, else every agent's."""
        drop = self._drop.get(agent)
        return self._any_drop if drop is None or len(drop.recent) < 2 else drop

    def _without_dropped(self, path: Sequence[RadixNode], agent: str, new_tokens: int) -> list[RadixNode]:
        """``path`` less the suffix the agent's next request is expected to drop (rule 4)."""
        drop = self._drops_of(agent)
        ps = self.tree.page_size
        cut = min(drop.expected, new_tokens) // ps * ps
        out = list(path)
        while cut > 0 and out:
            last = out[-1]
            if len(last.key) <= cut:
                cut -= len(last.key)
                out.pop()
            else:
                out[-1] = self.tree._split(last, (len(last.key) - cut) // ps)
                cut = 0
        return out

    def forget_workflow(self, workflow_id: str) -> None:
        """The workflow ended: drop its scoped keys from every node. An agent no other workflow has
        shared a prefix with yet keeps its latest path under its bare key, so that a later
        workflow calling it again (as the next round of a simulation calls its personas) finds it
        ranked by the agent's recurrence rather than dropped; where other agents were seen in two
        workflows, only as much of it as they shared (``first_share``: its system prompt, not the
        instance's task; in ``benchmarks/rank_sweep.py`` ``tickets`` defaults 20 % pbkv 1.175 ->
        1.188 x Belady's hits, now equal to kvflow's, 40 % kvflow 0.928 -> 0.938 and pbkv 0.969 ->
        0.979, held-out tickets-40-noisy 40 % up by 0.3-0.5 %, no other cell moved)."""
        tree = self.tree
        self._workflow_resets.pop(workflow_id, None)
        for key in self._workflow_keys.pop(workflow_id, ()):
            self._inserted.discard(key)
            self._matched.pop(key, None)
            nodes = list(tree.agent_nodes(key))
            _, agent = split_scope(key)
            carry = self._carry.get(agent)
            if nodes and (carry is None or carry.seen == 0) and not tree.agent_nodes(agent):
                path = sorted(nodes, key=_depth)
                share = self.first_share(agent)
                if share is not None:
                    path = self._prefix(path, share)
                self._retag(agent, path)
            for node in list(tree.agent_nodes(key)):
                tree._remove_agent(node, key)

    def carries(self, agent_id: str) -> bool:
        """Whether the agent's state is seen to carry over from one workflow to the next."""
        carry = self._carry.get(agent_id)
        return carry is not None and carry.carries

    def expected_keep(self, key: str) -> int | None:
        """Rule 6: tokens of scoped ``key``'s current path that its next request is expected to
        keep, when that request is expected to reset the path; None otherwise. The agent's own
        evidence once it has reset, else its workflow's."""
        workflow, agent = split_scope(key)
        if workflow is None:
            return None
        resets = self._resets.get(agent)
        if resets is None or not resets.any_reset:
            resets = self._workflow_resets.get(workflow)
        if resets is None:
            return None
        return resets.expected_keep(sum(len(n.key) for n in self.tree.agent_nodes(key)))

    def has_drop_evidence(self, agent_id: str) -> bool:
        """Whether rule 4 has seen enough next requests (the agent's or any agent's) to say how
        much of a path a next request keeps."""
        return len(self._drops_of(agent_id).recent) >= 2

    def drop_spread(self, key: str) -> int:
        """Tokens by which the largest of the agent's recent drops exceeds the expected one
        (rule 4's upper quartile): the part of an untagged-suffix estimate a next request may
        still drop."""
        drop = self._drops_of(split_scope(key)[1])
        if len(drop.recent) < 2:
            return 0
        return max(drop.recent) - drop.expected

    def first_share(self, agent_id: str) -> int | None:
        """For an agent seen in one workflow only (its bare key holds that workflow's whole path):
        the tokens a next workflow is expected to share with it, the median cross-instance prefix
        of the agents seen in two or more; None when the agent has its own evidence or no agent
        has any."""
        carry = self._carry.get(agent_id)
        if carry is not None and carry.compared:
            return None
        if self._median_share is None:
            shares = sorted(c.shared for c in self._carry.values() if c.compared)
            self._median_share = shares[len(shares) // 2] if shares else -1
        return None if self._median_share < 0 else self._median_share

    def deepest(self, key: str) -> RadixNode | None:
        """The deepest node tagged ``key`` (the end of its latest path), if any."""
        best, best_depth = None, -1
        for node in self.tree.agent_nodes(key):
            depth = _depth(node)
            if depth > best_depth:
                best, best_depth = node, depth
        return best

    def _retag(self, key: str, path: Sequence[RadixNode]) -> None:
        """Move ``key`` onto exactly ``path`` (a path from the root)."""
        tree = self.tree
        old = tree.agent_nodes(key)
        if old:
            keep = set(path)
            for node in [n for n in old if n not in keep]:
                tree._remove_agent(node, key)
        for node in path:
            tree._add_agent(node, key)


def _common_prefix(left: list[list[int]], right: list[list[int]]) -> int:
    """Tokens the concatenations of two lists of token chunks share from their start."""
    a = b = 0
    i = j = 0
    shared = 0
    while i < len(left) and j < len(right):
        x, y = left[i], right[j]
        n = min(len(x) - a, len(y) - b)
        if x[a:a + n] != y[b:b + n]:
            k = 0
            while x[a + k] == y[b + k]:
                k += 1
            return shared + k
        shared += n
        a += n
        b += n
        if a == len(x):
            i, a = i + 1, 0
        if b == len(y):
            j, b = j + 1, 0
    return shared


def _depth(node: RadixNode) -> int:
    n = 0
    while node.parent is not None:
        n += 1
        node = node.parent
    return n
