"""Which KV to prefetch: agents due soon in each live workflow, and the radix node each one needs.

Pure bookkeeping over :class:`~context_forge.workflow.live.LiveWorkflows` and the radix tree
(no torch, no engine), so the engine and the simulator share it.

Due agents of a workflow, for a look-ahead of ``k`` steps:

- declared graph: agents whose steps-to-execution in that instance (``tracker.instance_steps``)
  are ``<= k``, most urgent first (ties by agent id). In a ``repeat`` graph an agent already
  done in the current round is due only if the instance begins another round; until some repeat instance has ended (``LiveWorkflows.rounds``), nothing
  says it will, and such an agent gets ``prob`` ``UNPROVEN_ROUND_PROB`` (the guard then loads it
  only when it is due at the next step, in less room). Measured with ``benchmarks/rank_sweep.py``:
  ``wide-16-overlap`` wasted 44 % -> 33 % of its prefetched tokens at 20 %, 26 % -> 17 % at 40 %
  (the first instance's final round had its next round's planner and workers loaded), wasted
  prefetch over all cells 9.6 % -> 8.6 %, no makespan longer by more than 0.1 %;
- dynamic workflow (no graph; only with ``use_predictor``): agents whose probability of being
  called within the next ``k`` calls (``predictor.prob_within``), times the predictor's measured
  ``trust`` in predictions from contexts as well seen as the workflow's, is ``>= min_prob``. Their
  ``steps`` is one less than the smallest horizon ``j <= k`` at which that probability reaches
  ``min_prob`` (the next call is step 0, like a ready agent of a graph); ties by probability.
  Trust (measured with ``benchmarks/rank_sweep.py``): ``tickets`` defaults 20 % wasted 40 % -> 25 %
  of its prefetched tokens, 40 % 24 % -> 22 %, no hit or makespan moved by 0.05 %. An earlier
  variant that also scaled pbkv's eviction ranks by it lost hits on held-out
  ``tickets-40-noisy`` (0.926 -> 0.914 of Belady's at 20 %), so ranks do not use it.

An agent's target node comes from the same tags the eviction rank reads (`cache.usage`): the end
of the path its scoped key ``(workflow, agent)`` holds (the prefix its next request in this
instance extends), else the end of the path its bare key holds (the KV the agent shares across
instances: a system prompt, a team preamble, a persona's carried memory), so that a due agent of
a new instance gets its shared prompt loaded. When the usage index expects the agent's next
request to reset its path (a compacted history: ``UsageIndex.expected_keep``), the target is the
ancestor within the prefix such requests kept, since the rest would be loaded for nothing.
Otherwise the target also leaves out the rest of the largest suffix the agent's recent next
requests dropped (``UsageIndex.drop_spread``: rule 4 leaves only the upper quartile untagged, and
a load of the difference is wasted whenever a request drops more), and an agent seen in one
workflow only, whose bare key holds that workflow's whole path, gets as much of it as other agents
shared across instances (``UsageIndex.first_share``: its system prompt, not the first instance's
task). Until rule 4 has seen two next requests (the agent's or any agent's), nothing says how
much of its path an agent's next request keeps, and the scoped target is cut to the part its bare
key tags, the prefix it shares across instances (``rank_sweep``: ``fanout/agentic`` 40 % wasted
26 % -> 21 %, the first round's planners kept only their system prompt; no other cell moved).
A cut inside a node splits it at a page boundary. Measured with
``benchmarks/rank_sweep.py`` (with ``guard.DEEP_HEADROOM`` 0.4): wasted prefetch 13.8 % -> 11.8 % of
prefetched tokens over all cells, no makespan longer by more than 0.07 %. Trees
without those tags (policies that rank by no user) fall back to the last node the agent's
requests inserted in this workflow, then to the top-level node of the last prompt the agent
inserted anywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from context_forge.cache.node import RadixNode
from context_forge.cache.radix import RadixTree
from context_forge.workflow.live import LiveWorkflows
from context_forge.workflow.scope import scope_key


DEFAULT_MIN_PROB = 0.6
"""The least probability at which a predicted agent's KV is loaded ahead. A prediction of ``p``
wastes its load ``1 - p`` of the time; measured with ``benchmarks/rank_sweep.py``
(``--prefetch-min-prob``): 0.3 -> 0.6 cut wasted prefetch from 15.1 % to 13.8 % of prefetched
tokens over all cells (``tickets`` 40 % 29 % -> 20 %) with no makespan changed by 0.05 %."""


UNPROVEN_ROUND_PROB = 0.5
"""The probability given to a repeat instance's next round while no repeat instance has ended."""


@dataclass(frozen=True)
class PlannerConfig:
    """``load_ahead_step``: the largest look-ahead ``k``; ``use_predictor``: also plan dynamic
    workflows from the next-agent predictor, keeping agents with ``prob_within >= min_prob``."""

    load_ahead_step: int = 2
    use_predictor: bool = True
    min_prob: float = DEFAULT_MIN_PROB

    def __post_init__(self) -> None:
        if isinstance(self.load_ahead_step, bool) or not isinstance(self.load_ahead_step, int) \
                or self.load_ahead_step < 0:
            raise ValueError(f"PlannerConfig.load_ahead_step must be an int >= 0, got {self.load_ahead_step!r}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise ValueError(f"PlannerConfig.min_prob must be in [0, 1], got {self.min_prob!r}")


@dataclass(frozen=True)
class DueAgent:
    """An agent expected to run in ``steps`` steps (0 = next) with probability ``prob``."""

    agent_id: str
    steps: float
    prob: float = 1.0


@dataclass(frozen=True, eq=False)
class PrefetchTarget:
    """Load the host-only part of the path to ``node`` for ``agent_id`` of ``workflow_id``."""

    workflow_id: str
    agent_id: str
    node: RadixNode
    steps: float
    prob: float = 1.0

    @property
    def urgency(self) -> tuple[float, float]:
        """Sort key: sooner first, then likelier first."""
        return (self.steps, -self.prob)


def node_is_live(node: RadixNode, page_size: int) -> bool:
    """Whether ``node`` is still attached to its tree (not deleted by an eviction)."""
    parent = node.parent
    if parent is None or len(node.key) < page_size:
        return False
    return parent.children.get(tuple(node.key[:page_size])) is node


def host_only_pages(node: RadixNode) -> int:
    """Pages on the path to ``node`` that are on the host only (what a load must move)."""
    n = 0
    while node.parent is not None and node.device_pages is None:
        n += len(node.host_pages or ())
        node = node.parent
    return n


def due_footprint(target: RadixNode, others: Iterable[RadixNode], page_size: int) -> int:
    """Device pages the prompts ending at ``others`` (the expected prefixes of other agents due as
    soon as ``target``'s) will take when their requests come, beyond what is already held: on each
    path, the host-only pages (loaded then) and the device pages that no request or prefetch
    locks (evictable now, pinned then), each node once; nodes on the path to ``target`` are left
    out (the prefetch itself counts them). A node no longer in its tree counts nothing."""
    mine: set[int] = set()
    node: RadixNode | None = target
    while node is not None and node.parent is not None:
        mine.add(node.id)
        node = node.parent
    seen: set[int] = set()
    total = 0
    for node in others:
        if not node_is_live(node, page_size):
            continue
        while node.parent is not None and node.id not in seen and node.id not in mine:
            seen.add(node.id)
            if node.device_pages is not None:
                if not node.lock_ref:
                    total += len(node.device_pages)
            else:
                total += len(node.host_pages or ())
            node = node.parent
    return total


def _tokens(node: RadixNode) -> int:
    depth = 0
    while node.parent is not None:
        depth += len(node.key)
        node = node.parent
    return depth


def _within(node: RadixNode, tokens: int, tree: RadixTree | None = None) -> RadixNode | None:
    """The deepest node on the path to ``node`` that ends within its first ``tokens`` tokens;
    with ``tree``, the node the boundary falls in is split at the page boundary below it."""
    depth = _tokens(node)
    while node.parent is not None and depth > tokens:
        if tree is not None and depth - len(node.key) < tokens:
            pages = (tokens - (depth - len(node.key))) // tree.page_size
            if pages > 0:
                return tree._split(node, pages)
        depth -= len(node.key)
        node = node.parent
    return node if node.parent is not None else None


def _shared_part(node: RadixNode, agent_id: str) -> RadixNode | None:
    """The deepest node on the path to ``node`` that ``agent_id``'s bare key tags (the prefix it
    shares across instances), when that is above ``node``."""
    shared = node
    while shared.parent is not None and agent_id not in shared.agents:
        shared = shared.parent
    return shared if shared.parent is not None and shared is not node else None


class PrefetchPlanner:
    """Turns workflow state into prefetch targets. Not thread-safe: call it under the lock that
    guards the workflows and the tree (the engine lock)."""

    def __init__(self, workflows: LiveWorkflows, tree: RadixTree, config: PlannerConfig | None = None) -> None:
        self.workflows = workflows
        self.tree = tree
        self.config = config or PlannerConfig()
        self._last: dict[tuple[str, str], RadixNode] = {}
        self._last_agent: dict[str, RadixNode] = {}

    # ---------------------------------------------------------------- what requests inserted
    def note_insert(self, workflow_id: str | None, agent_id: str | None, node: RadixNode) -> None:
        """A request of ``agent_id`` in ``workflow_id`` inserted its KV, ending at ``node``."""
        if agent_id is None or node.parent is None:
            return
        self._last_agent[agent_id] = node
        if workflow_id is not None:
            self._last[(workflow_id, agent_id)] = node

    def forget(self, workflow_id: str) -> None:
        """The workflow ended: drop its per-agent nodes (the cross-workflow fallback stays)."""
        for key in [k for k in self._last if k[0] == workflow_id]:
            del self._last[key]

    # ---------------------------------------------------------------- planning
    def look_ahead(self, max_steps: int | None = None) -> int:
        """The look-ahead in steps: ``load_ahead_step`` capped by ``max_steps`` (-1 = none)."""
        k = self.config.load_ahead_step
        return k if max_steps is None else min(k, max_steps)

    def due_agents(self, workflow_id: str, max_steps: int | None = None) -> list[DueAgent]:
        """Agents of ``workflow_id`` due within the look-ahead, most urgent first."""
        k = self.look_ahead(max_steps)
        if k < 0:
            return []
        wf = self.workflows
        tracker = wf.tracker
        if workflow_id in tracker:
            due = []
            graph = tracker.graph_of(workflow_id)
            unproven = graph.repeat and not wf.rounds.known()
            for spec in graph.agents:
                steps = tracker.instance_steps(workflow_id, spec.agent_id)
                if steps <= k:
                    again = unproven and tracker.done_in_round(workflow_id, spec.agent_id)
                    prob = UNPROVEN_ROUND_PROB if again else 1.0
                    due.append(DueAgent(spec.agent_id, steps, prob))
            due.sort(key=lambda d: (d.steps, d.agent_id))
            return due
        if not self.config.use_predictor or not wf.is_dynamic(workflow_id) or k == 0:
            return []
        return self._likely(workflow_id, k)

    def _likely(self, workflow_id: str, k: int) -> list[DueAgent]:
        predictor = self.workflows.predictor
        floor = self.config.min_prob
        trust = predictor.trust(workflow_id)
        final = {a: p * trust for a, p in predictor.prob_within(workflow_id, k).items()}
        keep = {a: p for a, p in final.items() if p >= floor}
        steps: dict[str, float] = {}
        for j in range(1, k + 1):
            if len(steps) == len(keep):
                break
            probs = final if j == k else predictor.prob_within(workflow_id, j)
            scale = 1.0 if j == k else trust
            for a in keep:
                if a not in steps and probs.get(a, 0.0) * scale >= floor:
                    steps[a] = float(j - 1)
        due = [DueAgent(a, steps.get(a, float(k - 1)), p) for a, p in keep.items()]
        due.sort(key=lambda d: (d.steps, -d.prob, d.agent_id))
        return due

    def target_node(self, workflow_id: str, agent_id: str) -> RadixNode | None:
        """The node to load for ``agent_id`` in ``workflow_id`` (see the module docstring)."""
        usage = getattr(self.tree, "usage", None)
        if usage is not None and usage.rules:
            for key in (scope_key(workflow_id, agent_id), agent_id):
                node = usage.deepest(key)
                if node is not None and node_is_live(node, self.tree.page_size):
                    keep = usage.expected_keep(key) if key != agent_id else usage.first_share(agent_id)
                    if keep is None and key != agent_id and not usage.has_drop_evidence(agent_id):
                        shared = _shared_part(node, agent_id)
                        if shared is not None:
                            return shared
                    if keep is None:
                        spread = usage.drop_spread(key)
                        if not spread:
                            return node
                        return _within(node, _tokens(node) - spread, self.tree)
                    return _within(node, keep, self.tree)
        node = self._last.get((workflow_id, agent_id))
        if node is not None and node_is_live(node, self.tree.page_size):
            return node
        node = self._last_agent.get(agent_id)
        if node is None:
            return None
        while node.parent is not None and node.parent.parent is not None:
            node = node.parent
        return node if node_is_live(node, self.tree.page_size) else None

    def due_targets(self, workflow_id: str, max_steps: int | None = None) -> list[PrefetchTarget]:
        """Every due agent with a target node, most urgent first, whether or not anything of it
        is on the host only (what `due_footprint` reads)."""
        out: list[PrefetchTarget] = []
        for due in self.due_agents(workflow_id, max_steps):
            node = self.target_node(workflow_id, due.agent_id)
            if node is not None:
                out.append(PrefetchTarget(workflow_id, due.agent_id, node, due.steps, due.prob))
        return out

    def targets(self, workflow_id: str, max_steps: int | None = None,
                due: Sequence[PrefetchTarget] | None = None) -> list[PrefetchTarget]:
        """Due agents whose target node has a host-only part, most urgent first, one per node
        (from ``due``, the workflow's `due_targets`, when given)."""
        out: list[PrefetchTarget] = []
        seen: set[int] = set()
        for t in self.due_targets(workflow_id, max_steps) if due is None else due:
            if t.node.id in seen or host_only_pages(t.node) == 0:
                continue
            seen.add(t.node.id)
            out.append(t)
        return out

    def all_targets(self, workflow_ids: Iterable[str] | None = None,
                    max_steps: int | None = None) -> list[PrefetchTarget]:
        """Targets of several workflows (default: every live one), most urgent first."""
        ids = self.workflows.live_workflows() if workflow_ids is None else list(workflow_ids)
        out = [t for wf in ids for t in self.targets(wf, max_steps)]
        out.sort(key=lambda t: t.urgency)
        return out

