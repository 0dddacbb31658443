"""The plugin as SGLang loads it: entry point, registries, eviction-policy hook, version pin."""
from __future__ import annotations

import argparse
from importlib import metadata

import pytest
import sglang_support  # noqa: F401  (imports SGLang's cache layer; fails if SGLang is missing)
from context_forge.sglang import plugin, version
from context_forge.sglang.strategy import WorkflowStrategy
from sglang.srt.arg_groups.choices import RADIX_EVICTION_POLICY_CHOICES
from sglang.srt.mem_cache import utils as cache_utils
from sglang.srt.mem_cache.evict_policy import LRUStrategy
from sglang.srt.mem_cache.registry import get_radix_cache_factory, registered_radix_cache_backends
from sglang.srt.plugins import load_plugins
from sglang.srt.server_args import ServerArgs


@pytest.fixture(scope="module", autouse=True)
def loaded() -> None:
    load_plugins()


def test_entry_point_is_declared() -> None:
    (entry,) = [ep for ep in metadata.entry_points(group="sglang.srt.plugins") if ep.name == "context_forge"]
    assert entry.load() is plugin.register


def test_backend_and_policy_are_registered() -> None:
    assert "workflow" in registered_radix_cache_backends()
    assert get_radix_cache_factory("workflow") is plugin.build_workflow_cache
    assert "workflow" in RADIX_EVICTION_POLICY_CHOICES


def test_eviction_policy_hook() -> None:
    strategy = cache_utils.get_eviction_strategy("workflow", {"evict_pri_level": 3})
    assert isinstance(strategy, WorkflowStrategy) and strategy.evict_pri_level == 3
    assert isinstance(cache_utils.get_eviction_strategy("lru"), LRUStrategy)
    with pytest.raises(ValueError, match="accepts only evict_pri_level"):
        cache_utils.get_eviction_strategy("workflow", {"protected_threshold": 2})
    with pytest.raises(ValueError, match="evict_pri_level must be an integer >= 0"):
        cache_utils.get_eviction_strategy("workflow", {"evict_pri_level": -1})


def test_the_tree_core_sees_the_hooked_function() -> None:
    from sglang.srt.mem_cache.unified_cache import unified_tree_core

    assert unified_tree_core.get_eviction_strategy is cache_utils.get_eviction_strategy


def test_register_is_idempotent() -> None:
    plugin.register()
    assert registered_radix_cache_backends().count("workflow") == 1
    assert RADIX_EVICTION_POLICY_CHOICES.count("workflow") == 1


def test_sglang_command_line_accepts_the_plugin_flags() -> None:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ns = parser.parse_args(
        ["--model-path", "m", "--radix-cache-backend", "workflow", "--radix-eviction-policy", "workflow"]
    )
    assert (ns.radix_cache_backend, ns.radix_eviction_policy) == ("workflow", "workflow")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["x", "--radix-cache-backend", "workflow"], True),
        (["x", "--radix-eviction-policy=workflow"], True),
        (["x", "--radix-eviction-policy", "lru"], False),
        (["x", "--radix-cache-backend"], False),
        ([], False),
    ],
)
def test_requested_in_argv(argv: list[str], expected: bool) -> None:
    assert plugin.requested_in_argv(argv) is expected


@pytest.mark.parametrize(
    ("text", "ok"),
    [("0.5.23", True), ("0.5.23.post2", True), ("v0.5.23rc0", True), ("0.5.24", False), ("0.5.22", False),
     ("0.6.0", False), ("1.0", False), ("dev", False)],
)
def test_supported_range(text: str, ok: bool) -> None:
    assert version.is_supported(text) is ok


def test_installed_sglang_is_supported() -> None:
    assert version.check_sglang_version() == metadata.version("sglang")


def test_other_version_fails_with_a_clear_message() -> None:
    with pytest.raises(version.UnsupportedSGLangVersion) as info:
        version.check_sglang_version("0.5.22")
    text = str(info.value)
    assert "SGLang 0.5.22 is not supported" in text and ">=0.5.23,<0.5.24" in text


def test_unsupported_sglang_stops_startup_when_the_plugin_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another SGLang release cannot be installed beside the real one; pretend one is.
    monkeypatch.setattr(version, "installed_sglang_version", lambda: "0.6.1")
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr("sys.argv", ["sglang", "--radix-cache-backend", "workflow"])
    with pytest.raises(SystemExit) as info:
        plugin.register()
    assert "SGLang 0.6.1 is not supported" in str(info.value.code)
    monkeypatch.setattr("sys.argv", ["sglang", "--model-path", "m"])
    with pytest.raises(version.UnsupportedSGLangVersion):
        plugin.register()


def test_missing_sglang_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(version, "installed_sglang_version", lambda: None)
    with pytest.raises(version.UnsupportedSGLangVersion, match="SGLang is not installed"):
        version.check_sglang_version()
