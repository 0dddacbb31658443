"""Builds the engine's parts from a ``ServerConfig``: model, tokenizer, KV tiers, cache, scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from context_forge.cache.node import RadixNode
from context_forge.cache.policy import (
    EvictionPolicy,
    PolicyContext,
    build_policy,
    policy_class,
)
from context_forge.kv.pool import PagePool
from context_forge.cache.tiered import RadixCache
from context_forge.config import ServerConfig
from context_forge.memory.monitors import MemoryMonitor, auto_monitor, get_monitor
from context_forge.memory.pressure import PressureController
from context_forge.model.config import ModelConfig
from context_forge.model.loader import load_model
from context_forge.model.tokenizer import get_tokenizer
from context_forge.prefetch.controller import ControllerConfig
from context_forge.prefetch.copier import DEFAULT_LAYER_GROUPS
from context_forge.prefetch.factory import make_copier
from context_forge.prefetch.ledger import ObservedPagePool
from context_forge.prefetch.meter import TransferMeter
from context_forge.prefetch.planner import PlannerConfig
from context_forge.prefetch.service import WorkflowPrefetcher
from context_forge.workflow.predictor import MarkovPredictor
from context_forge.workflow.live import LiveWorkflows

from context_forge.kv.buffer import DeviceKVBuffer, HostKVBuffer
from .kv_manager import KVManager
from context_forge.kv.buffer_transfer import BufferTransfer
from .req_state import ReqState
from .runner import ModelRunner
from .scheduler import Scheduler
from .workflows import SharedWorkflows


@dataclass
class EngineParts:
    config: ServerConfig
    model_config: ModelConfig
    tokenizer: Any
    runner: ModelRunner
    device_kv: DeviceKVBuffer
    host_kv: HostKVBuffer | None
    device_pool: PagePool
    host_pool: PagePool | None
    cache: RadixCache | None
    kv: KVManager
    scheduler: Scheduler
    workflows: SharedWorkflows
    pressure: PressureController
    lock: threading.RLock
    transfer: BufferTransfer | None = None
    prefetch: WorkflowPrefetcher | None = None
    """The loader: present whenever the radix cache has the host tier, for every policy (lru's
    on-demand loads take the same batched copier); it plans prefetches only where the policy
    prefetches and ``enable_prefetch`` is on (``prefetch.plans``). Not started yet."""


def build(config: ServerConfig) -> EngineParts:
    """Everything the engine owns, sized from ``config`` (resolved here for this machine)."""
    cfg = config.resolved()
    model, mcfg = load_model(cfg.model_path, load_format=cfg.load_format, dtype=cfg.dtype,
                             device=cfg.device, seed=cfg.random_seed,
                             attention_backend=cfg.attention_backend)
    tokenizer = get_tokenizer(cfg.tokenizer_path)
    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    ps = cfg.page_size
    shape = (mcfg.num_hidden_layers, ps, mcfg.num_key_value_heads, mcfg.head_dim)
    page_bytes = mcfg.num_hidden_layers * 2 * ps * mcfg.num_key_value_heads * mcfg.head_dim * dtype.itemsize
    n_dev = device_pages(cfg, page_bytes, device)
    device_kv = DeviceKVBuffer(shape[0], n_dev, ps, shape[2], shape[3], dtype, device)
    use_loader = not cfg.disable_radix_cache and cfg.enable_hierarchical_cache
    device_pool = ObservedPagePool(n_dev, "device") if use_loader else PagePool(n_dev, "device")
    lock = threading.RLock()
    workflows = SharedWorkflows(lock, _predictor(cfg), weight=cfg.blend_weight)
    host_kv = host_pool = cache = transfer = prefetch = None
    if not cfg.disable_radix_cache:
        if cfg.enable_hierarchical_cache:
            n_host = host_pages(cfg, n_dev, page_bytes)
            host_kv = HostKVBuffer(shape[0], n_host, ps, shape[2], shape[3], dtype)
            host_pool = PagePool(n_host, "host")
            transfer = BufferTransfer(device_kv, host_kv,
                                      async_write_back=device.type == "cuda" and host_kv.pinned)
        cache = RadixCache(ps, device_pool, host_pool, _policy(cfg, workflows), transfer,
                           write_policy=cfg.hicache_write_policy)
        workflows.add_finish_listener(cache.forget_workflow)
    if use_loader:
        assert cache is not None and host_kv is not None and transfer is not None
        prefetch = _prefetcher(cfg, cache, workflows, device_kv, host_kv, transfer, lock)
    kv = KVManager(ps, device_pool, cache, loader=prefetch,
                   on_insert=_insert_hook(prefetch, ps) if prefetch is not None else None,
                   layer_wait=prefetch is not None and cfg.prefetch_wait_mode == "layer")
    max_running = cfg.max_running_requests or max(n_dev, 1)
    scheduler = Scheduler(kv, cfg.chunked_prefill_size, max_running, cfg.max_prefill_tokens)
    if prefetch is not None:
        prefetch.protection.backlog = scheduler
    pressure = PressureController(cfg.pressure_thresholds, cfg.pressure_hysteresis, _monitor(cfg, device),
                                  load_ahead_step=cfg.load_ahead_step, evict_pri_level=cfg.evict_pri_level)
    if cache is not None:
        pressure.attach(cache)  # the cache evicts to the mode's target before the prefetcher plans
        if prefetch is not None:
            pressure.attach(prefetch)
    runner = ModelRunner(model, device_kv, ps, cfg)
    if prefetch is not None:
        runner.meter = prefetch.controller.copier.meter
    return EngineParts(cfg, mcfg, tokenizer, runner, device_kv, host_kv, device_pool, host_pool,
                       cache, kv, scheduler, workflows, pressure, lock, transfer, prefetch)


def _prefetcher(cfg: ServerConfig, cache: RadixCache, workflows: SharedWorkflows, device_kv: DeviceKVBuffer,
                host_kv: HostKVBuffer, transfer: BufferTransfer, lock: threading.RLock) -> WorkflowPrefetcher:
    """The loader of every policy: one batched copier (``hicache_io_backend``, ``auto`` = the
    copy-engine ``direct`` one, in layer groups with layer waiting), planning only where the
    policy prefetches and ``enable_prefetch`` is on."""
    io_backend = "direct" if cfg.hicache_io_backend == "auto" else cfg.hicache_io_backend
    layered = cfg.prefetch_wait_mode == "layer"
    copier = make_copier(device_kv, host_kv, fence=transfer.fence, io_backend=io_backend,
                         layer_groups=DEFAULT_LAYER_GROUPS if layered else 1)
    policy = policy_class(cfg.radix_eviction_policy)
    plans = cfg.enable_prefetch and policy.prefetches
    planner = PlannerConfig(load_ahead_step=cfg.load_ahead_step, use_predictor=policy.plans_undeclared)
    controller = ControllerConfig(layer_gates=layered, plan=plans)
    prefetcher = WorkflowPrefetcher(cache, workflows, copier, lock, planner, controller,
                                    budget_pages=int(cfg.prefetch_budget * cache.device_pool.capacity))
    copier.meter = TransferMeter(prefetcher.stats, device_kv.device)
    return prefetcher


def _insert_hook(prefetch: WorkflowPrefetcher, page_size: int) -> Callable[[ReqState, RadixNode], None]:
    def note(st: ReqState, node: RadixNode) -> None:
        own = -(-len(st.all_ids) // page_size) - st.cached_tokens // page_size
        prefetch.note_insert(st.req.workflow_id, st.req.agent_id, node, max(own, 0))
    return note


def device_pages(cfg: ServerConfig, page_bytes: int, device: torch.device) -> int:
    """Pages of the device pool: ``max_total_tokens / page_size``, or on a GPU what is left of
    ``mem_fraction_static`` of its memory once the weights are loaded."""
    if cfg.max_total_tokens is not None:
        return max(cfg.max_total_tokens // cfg.page_size, 1)
    if device.type != "cuda":
        raise ValueError("max_total_tokens must be set when the model is not on a GPU")
    free, total = torch.cuda.mem_get_info(device)
    budget = free - total * (1.0 - cfg.mem_fraction_static)
    pages = int(budget // page_bytes)
    if pages < 1:
        raise ValueError(
            f"mem_fraction_static {cfg.mem_fraction_static} leaves no room for the KV pool: "
            f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB after loading the weights")
    return pages


def host_pages(cfg: ServerConfig, n_device: int, page_bytes: int) -> int:
    """Pages of the host pool: ``hicache_size`` GB when set, else ``hicache_ratio`` x device pages."""
    if cfg.hicache_size > 0:
        pages = int(cfg.hicache_size * 1e9 // page_bytes)
        if pages < 1:
            raise ValueError(f"hicache_size {cfg.hicache_size} GB holds no page of {page_bytes} bytes")
        return pages
    return max(int(n_device * cfg.hicache_ratio), 1)


def _policy(cfg: ServerConfig, workflows: LiveWorkflows) -> EvictionPolicy:
    return build_policy(cfg.radix_eviction_policy, PolicyContext(workflows, cfg.evict_pri_level))


def _predictor(cfg: ServerConfig) -> MarkovPredictor:
    if cfg.predictor_path:
        return MarkovPredictor.load(cfg.predictor_path, smoothing=cfg.predictor_smoothing)
    return MarkovPredictor(smoothing=cfg.predictor_smoothing)


def _monitor(cfg: ServerConfig, device: torch.device) -> MemoryMonitor:
    if cfg.memory_monitor == "auto":
        return auto_monitor(device)
    return get_monitor(cfg.memory_monitor, device.index or 0)
