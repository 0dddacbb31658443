"""Start real SGLang with the Context Forge plugin from a `ServerConfig` (``backend: sglang``).

``build_sglang_args`` translates our keys into SGLang's flags; the workflow settings SGLang has
no flag for travel in the ``CONTEXT_FORGE_SGLANG`` environment variable (see `settings`).
``launch`` checks the SGLang version, then replaces this process with
``python -m sglang.launch_server`` (which loads the plugin in every process it spawns).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, NoReturn

from context_forge.cache.policy import policy_class
from context_forge.config import ConfigError
from context_forge.sglang.plugin import BACKEND_NAME, POLICY_NAME
from context_forge.sglang.settings import ENV_VAR, PluginSettings
from context_forge.sglang.version import check_sglang_version

__all__ = [
    "ENTRY_POINT_GROUP",
    "NATIVE_ONLY_KEYS",
    "PLUGIN_ENTRY_NAME",
    "SGLangLaunchError",
    "build_sglang_args",
    "launch",
    "plugin_environment",
    "plugin_settings",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "sglang.srt.plugins"
PLUGIN_ENTRY_NAME = "context_forge"
NATIVE_ONLY_KEYS = (
    "attention_backend",
    "prefetch_wait_mode",
    "prefetch_budget",
    "hicache_io_backend",
    "memory_monitor",
    "pressure_thresholds",
    "pressure_hysteresis",
    "max_request_bytes",
)
"""Keys that only the built-in engine reads; SGLang picks its own kernels and waits per layer, and
its HTTP server has no request-size limit to map ``max_request_bytes`` to."""



def _sglang_policy(config: Any) -> tuple[str, str]:
    """(SGLang's ``--radix-eviction-policy``, the plugin priority) for the configured policy, as
    the policy class declares it (``EvictionPolicy.sglang``)."""
    name = config.radix_eviction_policy
    mapping = policy_class(name).sglang
    if mapping is None:
        raise SGLangLaunchError(f"radix_eviction_policy: {name!r} has no SGLang backend mapping")
    return ("lru", "steps") if mapping == "lru" else (POLICY_NAME, mapping)


class SGLangLaunchError(ConfigError):
    """The configuration cannot run on SGLang; the message names the key."""


def plugin_settings(config: Any) -> PluginSettings:
    """The plugin-side settings of a `ServerConfig`."""
    _, priority = _sglang_policy(config)
    return PluginSettings(
        load_ahead_step=config.load_ahead_step,
        evict_pri_level=config.evict_pri_level,
        priority=priority,
        blend_weight=config.blend_weight,
        predictor_smoothing=config.predictor_smoothing,
        predictor_path=os.path.abspath(config.predictor_path) if config.predictor_path else None,
        enable_prefetch=config.enable_prefetch and config.enable_hierarchical_cache,
    )


def build_sglang_args(config: Any, extra_args: Sequence[str] = ()) -> list[str]:
    """SGLang command-line flags for a resolved `ServerConfig` (``extra_args`` appended verbatim,
    e.g. ``["--tp-size", "4"]``)."""
    if config.device == "cpu":
        raise SGLangLaunchError("device: the sglang backend runs on GPUs; got 'cpu' (use backend: native on CPU)")
    if config.is_preset:
        raise SGLangLaunchError(
            f"model_path: SGLang needs a model directory or Hugging Face id, not the preset {config.model_path!r} "
            "(for random weights use a real config directory with load_format: dummy)"
        )
    args = ["--model-path", config.model_path]

    def add(flag: str, value: Any) -> None:
        if value is not None:
            args.extend([flag, str(value)])

    def switch(flag: str, on: bool) -> None:
        if on:
            args.append(flag)

    add("--tokenizer-path", config.tokenizer_path)
    add("--served-model-name", config.served_model_name)
    add("--load-format", config.load_format)
    add("--dtype", config.dtype)
    add("--device", config.device if config.device != "auto" else None)
    add("--host", config.host)
    add("--port", config.port)
    add("--random-seed", config.random_seed)
    add("--context-length", config.context_length)
    add("--page-size", config.page_size)
    add("--max-total-tokens", config.max_total_tokens)
    add("--mem-fraction-static", config.mem_fraction_static)
    add("--max-running-requests", config.max_running_requests)
    add("--chunked-prefill-size", config.chunked_prefill_size)
    add("--max-prefill-tokens", config.max_prefill_tokens)
    add("--max-queued-requests", config.max_queued_requests)
    add("--stream-interval", config.stream_interval)
    add("--log-level", config.log_level)
    add("--api-key", config.api_key)
    switch("--enable-metrics", config.enable_metrics)
    if config.disable_radix_cache:
        args.append("--disable-radix-cache")
        return args + list(extra_args)

    policy, _ = _sglang_policy(config)
    args += ["--radix-cache-backend", BACKEND_NAME, "--radix-eviction-policy", policy]
    if config.enable_hierarchical_cache:
        args += ["--enable-hierarchical-cache", "--hicache-write-policy", config.hicache_write_policy]
        if config.hicache_size > 0:
            if not float(config.hicache_size).is_integer():
                raise SGLangLaunchError(f"hicache_size: SGLang takes whole gigabytes, got {config.hicache_size!r}")
            add("--hicache-size", int(config.hicache_size))
        else:
            add("--hicache-ratio", config.hicache_ratio)
    return args + list(extra_args)


def plugin_environment(config: Any, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment SGLang must start with: the plugin settings, and ``context_forge`` kept in
    an ``SGLANG_PLUGINS`` allow-list if one is set."""
    env = dict(os.environ if environ is None else environ)
    env[ENV_VAR] = plugin_settings(config).to_json()
    allowed = [p.strip() for p in env.get("SGLANG_PLUGINS", "").split(",") if p.strip()]
    if allowed and PLUGIN_ENTRY_NAME not in allowed:
        env["SGLANG_PLUGINS"] = ",".join([*allowed, PLUGIN_ENTRY_NAME])
    return env


def _check_plugin_installed() -> None:
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == PLUGIN_ENTRY_NAME]
    if not found:
        raise SGLangLaunchError(
            f"the {ENTRY_POINT_GROUP!r} entry point {PLUGIN_ENTRY_NAME!r} is missing: install Context Forge as a "
            "package (pip install -e . in the repository) so SGLang's processes can load the plugin"
        )


def launch(
    config: Any,
    extra_args: Sequence[str] = (),
    exec_fn: Callable[[str, list[str], dict[str, str]], Any] = os.execve,
) -> NoReturn:
    """Replace this process with SGLang serving ``config`` with the plugin on.

    Raises `UnsupportedSGLangVersion` or `SGLangLaunchError` before starting anything.
    """
    version = check_sglang_version()
    _check_plugin_installed()
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    ignored = [k for k in NATIVE_ONLY_KEYS if getattr(config, k) != defaults.get(k)]
    if ignored:
        logger.warning("backend sglang ignores native-engine keys: %s", ", ".join(ignored))
    argv = [sys.executable, "-m", "sglang.launch_server", *build_sglang_args(config, extra_args)]
    env = plugin_environment(config)
    logger.info("starting SGLang %s: %s", version, " ".join(argv[1:]))
    exec_fn(sys.executable, argv, env)
    raise SystemExit(0)
