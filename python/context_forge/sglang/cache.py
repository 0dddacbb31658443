"""``WorkflowRadixCache``: SGLang's ``UnifiedRadixCache`` driven by Context Forge's workflow state.

It adds three things to the stock cache, all through methods the scheduler already calls:

- request tracking: the first ``match_prefix`` of a request registers its ``custom_params``
  metadata; ``on_release`` of a finished request and ``release_aborted_request`` end it;
- agent tags: matched and inserted paths record the request's agent (see `tags`), read by the
  ``workflow`` eviction strategy;
- prefetch: each scheduler step's ``check_hicache_events`` calls ``load_back`` for the host-only
  nodes of agents due within ``load_ahead_step`` steps, so their KV is on the device before
  their requests arrive.
"""
from __future__ import annotations

import logging
from typing import Any

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams, MatchResult
from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache

from context_forge.sglang.metadata import MetadataError, WorkflowMeta, parse_custom_params
from context_forge.sglang.registry import WorkflowRegistry, get_registry
from context_forge.sglang.strategy import WorkflowStrategy
from context_forge.sglang.tags import AgentNodeIndex, tag_path

__all__ = ["WorkflowRadixCache"]

logger = logging.getLogger(__name__)


class WorkflowRadixCache(UnifiedRadixCache):
    """A ``UnifiedRadixCache`` (Python tree core) that knows which agents use which KV."""

    def __init__(self, params: Any, registry: WorkflowRegistry | None = None) -> None:
        super().__init__(params)
        self.workflows = registry if registry is not None else get_registry()
        self.agent_nodes = AgentNodeIndex(self.workflows.settings.nodes_per_agent)
        self.prefetched_tokens = 0
        self._rejected: set[str] = set()
        self._prefetch_ack: tuple[int, Any] | None = None
        strategy = getattr(self.tree_core, "eviction_strategy", None)
        if isinstance(strategy, WorkflowStrategy):
            strategy.bind(self.workflows)

    # ----- request lifecycle ----------------------------------------------------------------
    def request_meta(self, req: Any) -> WorkflowMeta | None:
        """The request's workflow metadata; malformed metadata is logged once and ignored."""
        params = getattr(req.sampling_params, "custom_params", None)
        try:
            return parse_custom_params(params)
        except MetadataError as exc:
            if req.rid not in self._rejected:
                self._rejected.add(req.rid)
                logger.warning("request %s: ignoring workflow metadata: %s", req.rid, exc)
            return None

    def _observe(self, req: Any) -> WorkflowMeta | None:
        meta = self.request_meta(req)
        if meta is not None:
            self.workflows.request_started(req.rid, meta)
        return meta

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        result = super().match_prefix(params)
        if params.req is not None:
            meta = self._observe(params.req)
            if meta is not None:
                self._tag(result.best_match_node, meta.agent_id, remember=False)
        return result

    def checkpoint_into_tree(self, req: Any, *, up_to: int, **kwargs: Any) -> None:
        super().checkpoint_into_tree(req, up_to=up_to, **kwargs)
        meta = self._observe(req)
        if meta is not None and req.last_node is not None:
            self._tag(req.last_node, meta.agent_id, remember=True)

    def on_release(self, req: Any, *, checkpointed: bool) -> None:
        super().on_release(req, checkpointed=checkpointed)
        if req.finished():
            self.workflows.request_finished(req.rid)
            self._rejected.discard(req.rid)

    def release_aborted_request(self, handle: Any) -> None:
        super().release_aborted_request(handle)
        self.workflows.request_finished(handle.rid)
        self._rejected.discard(handle.rid)

    def _node(self, node_id: Any) -> Any | None:
        try:
            return self.tree_core.node_by_id(node_id)
        except KeyError:
            return None

    def _tag(self, node_id: Any, agent_id: str, remember: bool) -> None:
        node = self._node(node_id)
        if node is None or node.parent is None:
            return
        tag_path(node, agent_id)
        if remember:
            self.agent_nodes.remember(agent_id, node_id)

    # ----- prefetch -------------------------------------------------------------------------
    def check_hicache_events(self) -> None:
        super().check_hicache_events()
        self.prefetch_due_agents()

    def prefetch_supported(self) -> bool:
        return (
            self.workflows.settings.enable_prefetch
            and self.cache_controller is not None
            and self.buffer_pipeline is None
            and self.linker is None
        )

    def host_only_tokens(self, node_id: Any) -> int:
        """Tokens on the path to the node that are on host only (what a load_back would move)."""
        node = self._node(node_id)
        total = 0
        while node is not None and node.parent is not None and self.tree_core.is_full_device_evicted(node.id):
            total += len(node.key)
            node = node.parent
        return total

    def room_for(self, tokens: int, steps: float) -> bool:
        """Whether ``tokens`` fit on the device without evicting KV of agents due within
        ``steps`` (free slots plus evictable leaves in a strictly farther tier)."""
        if tokens <= self.token_to_kv_pool_allocator.available_size():
            return True
        strategy = self.tree_core.eviction_strategy
        if not isinstance(strategy, WorkflowStrategy):
            return False
        cap = strategy.evict_pri_level + 1
        tier = min(steps, cap)
        spare = sum(
            len(leaf.key) for leaf in self.tree_core.evictable_device_leaves if min(strategy.steps(leaf), cap) > tier
        )
        return tokens <= self.token_to_kv_pool_allocator.available_size() + spare

    def prefetch_due_agents(self) -> int:
        """Call ``load_back`` for host-only nodes of agents due within ``load_ahead_step`` steps.

        Most urgent agents first, each agent's newest nodes first, at most ``prefetch_max_tokens``
        per call, and only into free device memory or memory of agents further from running
        (never displacing KV that is needed sooner). Returns the number of tokens queued.
        """
        if not self.prefetch_supported():
            return 0
        budget = self.workflows.settings.prefetch_max_tokens
        queued = 0
        for agent in self.workflows.due_agents(self.agent_nodes.agents()):
            steps = self.workflows.priority(agent)
            for node_id in self.agent_nodes.nodes_of(agent):
                if self._node(node_id) is None:
                    self.agent_nodes.forget(agent, node_id)
                    continue
                pending = self.host_only_tokens(node_id)
                if pending == 0 or pending > budget - queued or not self.room_for(pending, steps):
                    continue
                if self.load_back(node_id, mem_quota=budget - queued):
                    queued += pending
                    logger.debug("prefetch: loading %d tokens of agent %r (node %s)", pending, agent, node_id)
        if queued:
            self.prefetched_tokens += queued
            self._start_prefetch()
        return queued

    def _start_prefetch(self) -> None:
        """Start the queued loads now when no other load is in flight (so every transfer slot is
        free); otherwise they start with the next batch that loads, as SGLang's own loads do."""
        controller = self.cache_controller
        if controller.ack_load_queue or not controller.load_queue:
            return
        producer = super().ready_to_load_host_cache()
        if producer >= 0:
            self._prefetch_ack = (producer, controller.ack_load_queue[-1])

    def _prefetch_in_flight(self) -> int:
        if self._prefetch_ack is None:
            return -1
        producer, ack = self._prefetch_ack
        if any(a is ack for a in self.cache_controller.ack_load_queue):
            return producer
        self._prefetch_ack = None
        return -1

    def ready_to_load_host_cache(self) -> int:
        """Start queued loads for the batch being built and return the transfer it must wait for.

        A batch may use nodes that a prefetch is still loading; when it starts no load of its
        own, it waits for the prefetch's transfer instead of none. Before a new transfer takes
        a slot of SGLang's small ring of per-layer events, a prefetch still using it is awaited.
        """
        controller = self.cache_controller
        if controller is not None and controller.load_queue and self._prefetch_ack is not None:
            counter = controller.layer_done_counter
            slot = (counter.producer_index + 1) % counter.num_counters
            finish = counter.events[slot].finish_event
            if not finish.query():
                finish.synchronize()
        producer = super().ready_to_load_host_cache()
        if producer < 0 and controller is not None and self.linker is None:
            return self._prefetch_in_flight()
        return producer
