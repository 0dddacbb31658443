"""A real ``WorkflowRadixCache`` with HiCache on CPU, and a driver that runs requests through it
the way SGLang's scheduler does (match, load back, allocate, compute, release).

The scheduler itself needs a GPU and a model, so `RequestDriver` plays its part with SGLang's
own objects and functions: ``Req``, ``MatchPrefixParams``, ``init_load_back`` and
``release_kv_cache``. "Computing" a token writes a marker (the token id) into every layer's K and
V, so tests can check that KV which went to host and came back is intact.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Any

import torch
from context_forge.sglang.plugin import build_workflow_cache
from context_forge.sglang.registry import WorkflowRegistry, set_registry
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InitLoadBackParams, MatchPrefixParams
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.common import release_kv_cache
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglang.srt.mem_cache.radix_cache import RadixKey
from sglang.srt.mem_cache.registry import TreeCacheBuildContext
from sglang.srt.plugins import load_plugins
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs, set_global_server_args_for_scheduler

__all__ = ["BenchConfig", "CacheBench", "RequestDriver", "TpWorkerStandIn"]


@dataclass(frozen=True)
class BenchConfig:
    page_size: int = 4
    device_tokens: int = 64
    hicache_ratio: float = 4.0
    num_layers: int = 2
    head_num: int = 1
    head_dim: int = 2
    max_requests: int = 16
    max_context: int = 256
    eviction_policy: str = "workflow"
    write_policy: str = "write_through"


class TpWorkerStandIn:
    """What ``create_unified_radix_cache`` needs of the model worker (no model runs on CPU):
    the HiCache layer counter goes to the KV pool, as the real worker's model runner does."""

    def __init__(self, kv_pool: MHATokenToKVPool) -> None:
        self.kv_pool = kv_pool
        self.counters: list[Any] = []

    def register_hicache_layer_transfer_counter(self, counter: Any) -> None:
        self.counters.append(counter)
        self.kv_pool.register_layer_transfer_counter(counter)


class CacheBench:
    """Pools, server args and the cache, built through the plugin's real factory (with the
    plugin loaded by SGLang's ``load_plugins``, as every SGLang process does)."""

    def __init__(self, config: BenchConfig = BenchConfig(), registry: WorkflowRegistry | None = None) -> None:
        load_plugins()
        set_registry(registry if registry is not None else WorkflowRegistry())
        self.config = config
        self.server_args = ServerArgs(
            model_path="dummy",
            page_size=config.page_size,
            enable_hierarchical_cache=True,
            hicache_ratio=config.hicache_ratio,
            hicache_io_backend="direct",
            hicache_mem_layout="layer_first",
            hicache_write_policy=config.write_policy,
            radix_cache_backend="workflow",
        )
        set_global_server_args_for_scheduler(self.server_args)
        self.req_to_token = ReqToTokenPool(
            size=config.max_requests, max_context_len=config.max_context, device="cpu", enable_memory_saver=False
        )
        self.kv = MHATokenToKVPool(
            size=config.device_tokens,
            page_size=config.page_size,
            dtype=torch.float32,
            head_num=config.head_num,
            head_dim=config.head_dim,
            layer_num=config.num_layers,
            device="cpu",
            enable_memory_saver=False,
        )
        self.allocator = TokenToKVPoolAllocator(
            size=config.device_tokens, dtype=torch.float32, device="cpu", kvcache=self.kv, need_sort=False
        )
        self.params = CacheInitParams(
            disable=False,
            req_to_token_pool=self.req_to_token,
            token_to_kv_pool_allocator=self.allocator,
            page_size=config.page_size,
            eviction_policy=config.eviction_policy,
        )
        self.worker = TpWorkerStandIn(self.kv)
        ctx = TreeCacheBuildContext(
            server_args=self.server_args,
            params=self.params,
            is_hybrid_swa=False,
            is_hybrid_ssm=False,
            enable_hierarchical_cache=True,
            disable_radix_cache=False,
            tp_worker=self.worker,
            model_config=None,
            tp_size=1,
            tp_rank=0,
            tp_group=None,
        )
        self.cache = build_workflow_cache(ctx)
        self.cache.load_back_threshold = 0

    def close(self) -> None:
        import atexit

        atexit.unregister(self.cache.shutdown)
        self.cache.release_host_resources()

    # ----- inspection -------------------------------------------------------------------------
    def write_marker(self, indices: torch.Tensor, tokens: list[int]) -> None:
        values = torch.tensor(tokens, dtype=torch.float32).view(-1, 1, 1)
        for layer in range(self.config.num_layers):
            self.kv.get_key_buffer(layer)[indices] = values
            self.kv.get_value_buffer(layer)[indices] = -values

    def read_marker(self, indices: torch.Tensor) -> list[list[float]]:
        """Per layer, the K marker of each index (and V must be its negation)."""
        out = []
        for layer in range(self.config.num_layers):
            k = self.kv.get_key_buffer(layer)[indices][:, 0, 0]
            v = self.kv.get_value_buffer(layer)[indices][:, 0, 0]
            assert torch.equal(v, -k), "V no longer matches K"
            out.append(k.tolist())
        return out

    def match(self, tokens: list[int]) -> Any:
        return self.cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens))))

    def device_len(self, tokens: list[int]) -> int:
        return self.match(tokens).device_prefix_len

    def settle(self) -> None:
        """Finish all HiCache transfers (CPU copies are synchronous) and reap their acks."""
        self.cache.check_hicache_events()


class RequestDriver:
    """Runs requests through the cache the way SGLang's scheduler does."""

    def __init__(self, bench: CacheBench) -> None:
        self.bench = bench
        self.cache = bench.cache

    def admit(self, rid: str, tokens: list[int], custom_params: dict[str, Any] | None = None) -> Req:
        """Match the prompt, load its host part back, lock it and compute the rest."""
        cache = self.cache
        req = Req(
            rid=rid,
            origin_input_text="",
            origin_input_ids=array("q", tokens),
            sampling_params=SamplingParams(max_new_tokens=1, custom_params=custom_params),
        )
        self.bench.req_to_token.alloc([req])
        match = cache.match_prefix(MatchPrefixParams(key=RadixKey(array("q", tokens)), req=req))
        last_node, prefix_len = match.last_device_node, match.device_prefix_len
        if match.host_hit_length > 0:
            req.last_node = last_node
            loaded, last_node = cache.init_load_back(
                InitLoadBackParams(best_match_node=match.best_match_node, host_hit_length=match.host_hit_length, req=req)
            )
            prefix_len += loaded
            cache.ready_to_load_host_cache()
            self.bench.settle()
        prefix = cache.path_device_indices(last_node)[:prefix_len]
        req.lock = cache.lock(last_node)
        req.last_node = last_node
        need = len(tokens) - prefix_len
        short = need - self.bench.allocator.available_size()
        if short > 0:
            cache.evict(EvictParams(num_tokens=short))
        fresh = self.bench.allocator.alloc(need)
        assert fresh is not None, "device pool exhausted"
        self.bench.write_marker(fresh, tokens[prefix_len:])
        row = torch.cat([prefix.to(torch.int64), fresh.to(torch.int64)])
        self.bench.req_to_token.write((req.kv.req_pool_idx, slice(0, len(tokens))), row.to(torch.int32))
        req.kv.cache_protected_len = prefix_len
        req.kv.kv_committed_len = req.kv.kv_allocated_len = len(tokens)
        req.prefix_len = prefix_len
        return req

    def finish(self, req: Req) -> None:
        """Release a finished request: its KV goes into the tree (``release_kv_cache``)."""
        req.finished_reason = FINISH_LENGTH(length=0)
        release_kv_cache(req, self.cache, checkpoint=True)
        self.bench.settle()

    def run(self, rid: str, tokens: list[int], custom_params: dict[str, Any] | None = None) -> Req:
        req = self.admit(rid, tokens, custom_params)
        self.finish(req)
        return req

    def evict_all(self) -> int:
        """Evict every evictable device token (to host where backed up)."""
        size = self.cache.full_evictable_size()
        return self.cache.evict(EvictParams(num_tokens=size)).num_tokens_evicted if size else 0
