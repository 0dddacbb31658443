"""How many rounds a looping (``repeat``) workflow runs, learned from the instances that ended.

A declared repeat graph says that an instance loops, not for how long: a planner/executor cycle
may run four rounds and stop. Without that knowledge every agent of the final round looks due
again, and its KV is kept for a round that never comes. `RoundsModel` counts, per graph and over
all repeat graphs, how many rounds finished instances ran; ``continues(graph, r)`` says whether an
instance that has begun round ``r`` (1-based) is more likely than not to begin another one:
``#(ran > r) / #(ran >= r) > 1/2``, judged on the instances of the same graph when at least
``min_samples`` ended, else on every repeat instance; with no such instance, yes.
"""
from __future__ import annotations

from collections import Counter

from context_forge.workflow.graph import WorkflowGraph

__all__ = ["RoundsModel"]


class RoundsModel:
    """Rounds run by ended repeat instances, per graph and overall."""

    def __init__(self, min_samples: int = 2) -> None:
        self.min_samples = min_samples
        self._by_graph: dict[WorkflowGraph, Counter[int]] = {}
        self._all: Counter[int] = Counter()

    def record(self, graph: WorkflowGraph, rounds: int) -> None:
        """An instance of ``graph`` ended after beginning ``rounds`` rounds."""
        if not graph.repeat or rounds < 1:
            return
        self._by_graph.setdefault(graph, Counter())[rounds] += 1
        self._all[rounds] += 1

    def known(self) -> bool:
        """Whether any repeat instance has ended (``continues`` then rests on evidence)."""
        return bool(self._all)

    def continues(self, graph: WorkflowGraph, round_index: int) -> bool:
        """Whether an instance in round ``round_index`` is expected to begin another round."""
        counts = self._by_graph.get(graph)
        if counts is None or sum(counts.values()) < self.min_samples:
            counts = self._all
        reached = sum(n for r, n in counts.items() if r >= round_index)
        if reached == 0:
            return True
        beyond = sum(n for r, n in counts.items() if r > round_index)
        return 2 * beyond > reached
