"""Entry point of the ``sglang.srt.plugins`` group: SGLang calls `register` in every process.

It registers the ``workflow`` radix-cache backend (``--radix-cache-backend workflow``) and the
``workflow`` eviction policy (``--radix-eviction-policy workflow``). SGLang 0.5.23 keeps its
eviction strategies in a private table, so the policy is added with an ``around`` hook on
``get_eviction_strategy`` through SGLang's public ``HookRegistry``.
"""
from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from context_forge.sglang.version import UnsupportedSGLangVersion, check_sglang_version

__all__ = ["BACKEND_NAME", "POLICY_NAME", "build_workflow_cache", "register", "requested_in_argv"]

logger = logging.getLogger(__name__)

BACKEND_NAME = "workflow"
POLICY_NAME = "workflow"
EVICTION_HOOK_TARGET = "sglang.srt.mem_cache.utils.get_eviction_strategy"

_registered = False


def requested_in_argv(argv: Sequence[str]) -> bool:
    """Whether a command line asks SGLang for the plugin's backend or policy."""
    flags = ("--radix-cache-backend", "--radix-eviction-policy")
    for i, token in enumerate(argv):
        for flag in flags:
            if token == flag and i + 1 < len(argv) and argv[i + 1] == BACKEND_NAME:
                return True
            if token == f"{flag}={BACKEND_NAME}":
                return True
    return False


def build_workflow_cache(ctx: Any) -> Any:
    """Radix-cache factory for ``--radix-cache-backend workflow``.

    Forces the Python tree core (the Rust core only knows SGLang's built-in eviction policies)
    and lets SGLang build the cache, so HiCache and the layer-transfer counter are wired as usual.
    """
    from sglang.srt.mem_cache.registry import create_unified_radix_cache

    from context_forge.sglang.cache import WorkflowRadixCache

    ctx.params.tree_core_backend = "python"
    cache = create_unified_radix_cache(ctx, cache_class=WorkflowRadixCache)
    settings = cache.workflows.settings
    logger.info(
        "Context Forge workflow radix cache: eviction=%s priority=%s load_ahead_step=%d evict_pri_level=%d "
        "prefetch=%s hicache=%s",
        ctx.params.eviction_policy, settings.priority, settings.load_ahead_step, settings.evict_pri_level,
        settings.enable_prefetch, cache.cache_controller is not None,
    )
    if settings.enable_prefetch and cache.cache_controller is None:
        logger.warning("Context Forge: prefetch needs --enable-hierarchical-cache; it stays off")
    return cache


def _eviction_strategy_hook(original: Any, eviction_policy: str, config: dict[str, Any] | None = None) -> Any:
    if isinstance(eviction_policy, str) and eviction_policy.lower() == POLICY_NAME:
        from context_forge.sglang.strategy import WorkflowStrategy

        try:
            return WorkflowStrategy(**(config or {}))
        except TypeError as exc:
            raise ValueError(
                f"--radix-eviction-policy-config for the workflow policy accepts only evict_pri_level: {exc}"
            ) from None
    return original(eviction_policy, config)


def register() -> None:
    """Register the backend, the policy choice and the eviction hook (idempotent)."""
    global _registered
    if _registered:
        return
    try:
        check_sglang_version()
    except UnsupportedSGLangVersion as exc:
        if requested_in_argv(sys.argv):
            raise SystemExit(f"error: {exc}") from None
        logger.error("Context Forge plugin disabled: %s", exc)
        raise
    from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES, add_radix_eviction_policy_choices
    from sglang.srt.mem_cache.registry import register_radix_cache_backend, registered_radix_cache_backends
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    if POLICY_NAME not in RADIX_EVICTION_POLICY_CHOICES:
        add_radix_eviction_policy_choices([POLICY_NAME])
    if BACKEND_NAME not in registered_radix_cache_backends():
        register_radix_cache_backend(BACKEND_NAME, build_workflow_cache)
    HookRegistry.register(EVICTION_HOOK_TARGET, _eviction_strategy_hook, HookType.AROUND)
    _registered = True
