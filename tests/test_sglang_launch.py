"""``backend: sglang``: our configuration turned into SGLang's flags and environment, checked with
SGLang's own command-line parser; starting SGLang itself needs a GPU, so the exec is captured."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import sglang_support  # noqa: F401  (imports SGLang's cache layer; fails if SGLang is missing)
from context_forge.config import ConfigError, ServerConfig
from context_forge.sglang import launch as launch_mod
from context_forge.sglang import version
from context_forge.sglang.launch import (
    SGLangLaunchError,
    build_sglang_args,
    launch,
    plugin_environment,
    plugin_settings,
)
from context_forge.sglang.settings import ENV_VAR, PluginSettings, SettingsError
from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import ServerArgs

ROOT = Path(__file__).resolve().parent.parent


def config(**overrides: object) -> ServerConfig:
    values: dict[str, object] = {
        "backend": "sglang", "model_path": "meta-llama/Meta-Llama-3-8B-Instruct", "device": "cuda",
        "enable_hierarchical_cache": True,
    }
    values.update(overrides)
    return ServerConfig.from_dict(values).resolved(cuda_available=True)


def sglang_parse(args: list[str]) -> argparse.Namespace:
    load_plugins()
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return parser.parse_args(args)


def test_shipped_config_parses_with_sglangs_parser() -> None:
    cfg = ServerConfig.from_yaml(str(ROOT / "configs/sglang-llama3-8b.yaml")).resolved(cuda_available=True)
    ns = sglang_parse(build_sglang_args(cfg))
    assert ns.model_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert (ns.radix_cache_backend, ns.radix_eviction_policy) == ("workflow", "workflow")
    assert ns.enable_hierarchical_cache and ns.hicache_ratio == 2.0 and ns.hicache_write_policy == "write_through"
    assert (ns.page_size, ns.chunked_prefill_size, ns.max_prefill_tokens) == (16, 8192, 16384)
    assert ns.dtype == "bfloat16" and ns.device == "cuda" and ns.port == 30000 and ns.enable_metrics
    assert ns.max_total_tokens is None and ns.mem_fraction_static == 0.85


def test_every_optional_key_reaches_sglang() -> None:
    cfg = config(
        tokenizer_path="tok", context_length=4096, max_total_tokens=100000, max_running_requests=64,
        max_queued_requests=9, api_key="secret", hicache_size=3.0, stream_interval=2, log_level="debug",
        enable_metrics=False,
    )
    ns = sglang_parse(build_sglang_args(cfg, ["--tp-size", "4"]))
    assert (ns.tokenizer_path, ns.context_length, ns.max_total_tokens) == ("tok", 4096, 100000)
    assert (ns.max_running_requests, ns.max_queued_requests, ns.api_key) == (64, 9, "secret")
    assert (ns.hicache_size, ns.stream_interval, ns.log_level, ns.tp_size) == (3, 2, "debug", 4)
    assert not ns.enable_metrics


@pytest.mark.parametrize(
    ("policy", "sglang_policy", "priority"), [("lru", "lru", "steps"), ("kvflow", "workflow", "steps"), ("pbkv", "workflow", "blended")]
)
def test_eviction_policy_mapping(policy: str, sglang_policy: str, priority: str) -> None:
    cfg = config(radix_eviction_policy=policy)
    ns = sglang_parse(build_sglang_args(cfg))
    assert ns.radix_cache_backend == "workflow" and ns.radix_eviction_policy == sglang_policy
    assert plugin_settings(cfg).priority == priority


def test_disabled_radix_cache_drops_the_plugin_flags() -> None:
    args = build_sglang_args(config(disable_radix_cache=True, enable_hierarchical_cache=False))
    assert "--radix-cache-backend" not in args and sglang_parse(args).disable_radix_cache


def test_prefetch_needs_the_host_tier() -> None:
    assert not plugin_settings(config(enable_hierarchical_cache=False)).enable_prefetch
    assert plugin_settings(config()).enable_prefetch


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "cpu"}, "device: the sglang backend runs on GPUs"),
        ({"model_path": "llama3-8b"}, "model_path: SGLang needs a model directory"),
        ({"hicache_size": 2.5}, "hicache_size: SGLang takes whole gigabytes, got 2.5"),
    ],
)
def test_configurations_sglang_cannot_run(overrides: dict[str, object], message: str) -> None:
    cfg = ServerConfig.from_dict(
        {"backend": "sglang", "model_path": "m", "device": "cuda", "enable_hierarchical_cache": True, **overrides}
    )
    cfg = cfg.resolved(cuda_available=True)
    with pytest.raises(SGLangLaunchError, match=message) as info:
        build_sglang_args(cfg)
    assert isinstance(info.value, ConfigError)


def test_environment_carries_the_plugin_settings() -> None:
    cfg = config(load_ahead_step=3, evict_pri_level=5, blend_weight=0.25, predictor_smoothing=0.5)
    env = plugin_environment(cfg, {"PATH": "/bin"})
    assert env["PATH"] == "/bin" and "SGLANG_PLUGINS" not in env
    settings = PluginSettings.from_env(env)
    assert settings == plugin_settings(cfg)
    assert (settings.load_ahead_step, settings.evict_pri_level, settings.blend_weight) == (3, 5, 0.25)
    assert plugin_environment(cfg, {"SGLANG_PLUGINS": "other"})["SGLANG_PLUGINS"] == "other,context_forge"
    assert plugin_environment(cfg, {"SGLANG_PLUGINS": "context_forge"})["SGLANG_PLUGINS"] == "context_forge"


def test_launch_execs_sglang_with_the_plugin() -> None:
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    with pytest.raises(SystemExit):
        launch(config(), ["--tp-size", "2"], exec_fn=lambda path, argv, env: calls.append((path, argv, env)))
    ((path, argv, env),) = calls
    assert argv[0] == path and argv[1:3] == ["-m", "sglang.launch_server"]
    assert argv[-2:] == ["--tp-size", "2"] and sglang_parse(argv[3:]).radix_cache_backend == "workflow"
    assert json.loads(env[ENV_VAR])["priority"] == "blended"


def test_launch_refuses_other_sglang_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "installed_sglang_version", lambda: "0.5.30")
    with pytest.raises(version.UnsupportedSGLangVersion, match="SGLang 0.5.30 is not supported"):
        launch(config(), exec_fn=lambda *a: pytest.fail("SGLang must not start"))


def test_launch_needs_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launch_mod.metadata, "entry_points", lambda group: [])
    with pytest.raises(SGLangLaunchError, match="pip install -e ."):
        launch(config(), exec_fn=lambda *a: pytest.fail("SGLang must not start"))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ("{bad", "CONTEXT_FORGE_SGLANG is not valid JSON"),
        ("[1]", "must hold a JSON object"),
        ('{"load_ahead": 1}', "unknown plugin setting(s) 'load_ahead'"),
        ('{"load_ahead_step": 5, "evict_pri_level": 4}', "evict_pri_level must be >= load_ahead_step"),
        ('{"priority": "graph"}', "priority must be one of steps, blended"),
        ('{"blend_weight": 2}', "blend_weight must be a number in [0.0, 1.0]"),
        ('{"prefetch_max_tokens": 0}', "prefetch_max_tokens must be an integer >= 1"),
        ('{"enable_prefetch": "yes"}', "enable_prefetch must be true or false"),
    ],
)
def test_bad_settings_are_named(env: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        PluginSettings.from_env({ENV_VAR: env})
    assert message in str(info.value)


def test_unset_environment_gives_defaults() -> None:
    assert PluginSettings.from_env({}) == PluginSettings() == PluginSettings.from_json(PluginSettings().to_json())
