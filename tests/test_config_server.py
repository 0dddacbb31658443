"""ServerConfig: YAML + command line, precedence, errors that name the key, resolution, output."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from context_forge.config import ConfigError, ServerConfig
from context_forge.memory.monitors import monitor_names
from hypothesis import given, settings
from hypothesis import strategies as st

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "server.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_resolve_on_cpu() -> None:
    config = ServerConfig().resolved(cuda_available=False)
    assert (config.device, config.dtype, config.load_format) == ("cpu", "float32", "dummy")
    assert config.max_total_tokens == 65536 and config.served_model_name == "tiny-llama"
    assert config.resolved(cuda_available=False) == config


def test_defaults_resolve_on_gpu_machine() -> None:
    config = ServerConfig().resolved(cuda_available=True)
    assert (config.device, config.dtype, config.max_total_tokens) == ("cuda", "bfloat16", None)


def test_cuda_requested_without_gpu_is_an_error() -> None:
    assert not torch.cuda.is_available()
    with pytest.raises(ConfigError, match="device: 'cuda'"):
        ServerConfig(device="cuda").resolved()


def test_cli_overrides_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "page_size: 8\nport: 31000\npressure_thresholds: [0.5, 0.6, 0.7, 0.8]\n")
    config = ServerConfig.from_sources(path, ["--page-size", "32"])
    assert (config.page_size, config.port) == (32, 31000)
    assert config.pressure_thresholds == (0.5, 0.6, 0.7, 0.8)
    config = ServerConfig.from_sources(None, ["--config", path, "--page_size=2", "--port", "8080"])
    assert (config.page_size, config.port) == (2, 8080)


def test_spellings(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "page-size: 8\nlog_level: WARNING\n")
    config = ServerConfig.from_sources(path, ["--max_total_tokens", "1024", "--pressure-thresholds", "0.5,0.6", "0.7", "0.8"])
    assert (config.page_size, config.log_level, config.max_total_tokens) == (8, "warning", 1024)
    assert config.pressure_thresholds == (0.5, 0.6, 0.7, 0.8)


def test_booleans_and_null() -> None:
    assert ServerConfig.from_sources(None, ["--enable-hierarchical-cache"]).enable_hierarchical_cache
    assert not ServerConfig.from_sources(None, ["--no-enable-metrics"]).enable_metrics
    assert not ServerConfig.from_sources(None, ["--enable-prefetch", "off"]).enable_prefetch
    assert ServerConfig.from_sources(None, ["--max-total-tokens", "4096", "--max-total-tokens", "null"]).max_total_tokens is None


def test_unknown_yaml_key_is_named(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "page_sise: 8\n")
    with pytest.raises(ConfigError, match=r"unknown key 'page_sise' in .*server\.yaml; did you mean 'page_size'"):
        ServerConfig.from_sources(path, [])


def test_unknown_cli_option_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown option '--chunked-prefil-size'.*did you mean '--chunked-prefill-size'"):
        ServerConfig.from_sources(None, ["--chunked-prefil-size", "4"])
    with pytest.raises(ConfigError, match="unknown option '--frobnicate'"):
        ServerConfig.from_sources(None, ["--frobnicate=1"])


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--port", "http"], "port (from the command line): expected an integer, got 'http'"),
        (["--port", "70000"], "port: must be in 1..65535, got 70000"),
        (["--page-size", "0"], "page_size: must be >= 1, got 0"),
        (["--page-size", "64", "--chunked-prefill-size", "32"], "chunked_prefill_size: must be >= page_size (64), got 32"),
        (["--mem-fraction-static", "1.5"], "mem_fraction_static: must be in (0, 1), got 1.5"),
        (["--mem-fraction-static", "nan"], "mem_fraction_static (from the command line): expected a finite number"),
        (["--dtype", "fp8"], "dtype (from the command line): expected one of auto, float32, bfloat16, float16, got 'fp8'"),
        (["--enable-metrics", "maybe"], "enable_metrics (from the command line): expected true or false, got 'maybe'"),
        (["--radix-eviction-policy", "belady"], "simulator-only"),
        (["--enable-hierarchical-cache", "--hicache-ratio", "1.0"], "hicache_ratio: must be > 1"),
        (["--disable-radix-cache", "--enable-hierarchical-cache"], "enable_hierarchical_cache: needs the radix cache"),
        (["--pressure-thresholds", "0.7", "0.6", "0.9", "0.95"], "pressure_thresholds: thresholds must be strictly increasing"),
        (["--pressure-thresholds", "0.7", "0.8", "0.9"], "pressure_thresholds: thresholds must have 4 values"),
        (["--pressure-hysteresis", "0.8"], "pressure_hysteresis: hysteresis must be in"),
        (["--load-ahead-step", "5", "--evict-pri-level", "4"], "evict_pri_level: must be >= load_ahead_step (5)"),
        (["--blend-weight", "1.2"], "blend_weight: must be in [0, 1], got 1.2"),
        (["--attention-backend", "flash"], "attention_backend: must be one of auto, torch_sdpa, triton"),
        (["--memory-monitor", "smi"], "memory_monitor (from the command line): expected one of"),
        (["--hicache-io-backend", "dma"], "hicache_io_backend (from the command line): expected one of auto, kernel, direct, got 'dma'"),
        (["--prefetch-wait-mode", "token"], "prefetch_wait_mode (from the command line): expected one of request, layer"),
        (["--port", "null"], "port (from the command line): expected a value (this key cannot be null)"),
        (["--model-path", "/no/such/model"], "model_path: '/no/such/model' is neither a preset"),
        (["--load-format", "safetensors"], "load_format: preset 'tiny-llama' has no weights"),
        (["--predictor-path", "/no/such.jsonl"], "predictor_path: is not an existing file"),
        (["--api-key", " "], "api_key: must not be empty"),
        (["--port"], "option --port needs a value"),
        (["--port", "1", "2"], "option --port takes one value"),
        (["page_size", "4"], "unexpected argument 'page_size'"),
        (["--no-enable-metrics", "yes"], "--no-enable-metrics takes no value"),
    ],
)
def test_bad_values_name_key_and_value(argv: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig.from_sources(None, argv)
    assert fragment in str(info.value)


def test_bad_yaml_value_names_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "page_size: [16]\n")
    with pytest.raises(ConfigError, match=r"page_size \(from .*server\.yaml\): expected an integer, got \[16\]"):
        ServerConfig.from_sources(path, [])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- page_size\n", "expected a mapping"),
        ("page_size: [\n", "not valid YAML"),
        ("page_size: 8\npage-size: 16\n", "'page_size' appears twice"),
        ("enable_metrics: 1.5\n", "enable_metrics"),
    ],
)
def test_bad_yaml_files(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        ServerConfig.from_sources(write_yaml(tmp_path, text), [])


def test_missing_and_doubled_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        ServerConfig.from_sources(str(tmp_path / "absent.yaml"), [])
    path = write_yaml(tmp_path, "")
    assert ServerConfig.from_sources(path, []) == ServerConfig()
    with pytest.raises(ConfigError, match="config file given twice"):
        ServerConfig.from_sources(path, ["--config", path])


def test_programmatic_construction_is_checked() -> None:
    assert ServerConfig(port="8000").port == 8000  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="hicache_size"):
        ServerConfig(hicache_size=-1)
    with pytest.raises(ConfigError, match="page_size"):
        dataclasses.replace(ServerConfig(), page_size=-4)


def test_model_directory(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        ServerConfig(model_path=str(model))
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    config = ServerConfig(model_path=str(model) + "/").resolved(cuda_available=False)
    assert config.served_model_name == "my-model"
    assert config.tokenizer_path == str(model) + "/" and config.load_format == "auto"


def test_sglang_backend_accepts_hub_ids() -> None:
    assert ServerConfig(backend="sglang", model_path="meta-llama/Llama-3.1-8B").model_path == "meta-llama/Llama-3.1-8B"


def test_hicache_ratio_only_checked_when_enabled() -> None:
    assert ServerConfig(hicache_ratio=0.5).hicache_ratio == 0.5
    assert ServerConfig(enable_hierarchical_cache=True, hicache_ratio=0.5, hicache_size=64).hicache_size == 64.0


def test_predictor_path_must_exist(tmp_path: Path) -> None:
    counts = tmp_path / "counts.jsonl"
    counts.write_text("")
    assert ServerConfig(predictor_path=str(counts)).predictor_path == str(counts)


def test_tiny_cpu_config() -> None:
    config = ServerConfig.from_sources(str(CONFIGS / "tiny-cpu.yaml"), []).resolved()
    assert (config.model_path, config.device, config.dtype, config.load_format) == ("tiny-llama", "cpu", "float32", "dummy")
    assert config.enable_hierarchical_cache and config.radix_eviction_policy in ("kvflow", "pbkv")
    assert (config.host, config.port, config.max_total_tokens) == ("127.0.0.1", 30000, 16384)


def test_llama3_h100_config() -> None:
    config = ServerConfig.from_sources(str(CONFIGS / "llama3-8b-h100.yaml"), [])
    assert (config.model_path, config.device, config.dtype, config.page_size) == ("llama3-8b", "cuda", "bfloat16", 16)
    assert config.enable_hierarchical_cache and config.radix_eviction_policy == "pbkv"
    assert config.chunked_prefill_size == 8192
    assert config.resolved(cuda_available=True).load_format == "dummy"
    with pytest.raises(ConfigError, match="device: 'cuda'"):
        config.resolved()


def test_reference_lists_every_key() -> None:
    text = ServerConfig.reference_markdown()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ServerConfig.field_names()
    assert "| `pressure_thresholds` | list of floats | `[0.7, 0.85, 0.92, 0.96]` |" in text
    assert "| `tokenizer_path` | string or null | `null` |" in text


def test_monitor_choices_match_registry() -> None:
    with pytest.raises(ConfigError) as info:
        ServerConfig(memory_monitor="x")  # type: ignore[arg-type]
    listed = str(info.value).split("one of ")[1].split(", got")[0].split(", ")
    assert set(listed) == set(monitor_names()) | {"auto"}


overrides = st.fixed_dictionaries(
    {
        "page_size": st.integers(1, 64),
        "port": st.integers(1, 65535),
        "enable_metrics": st.booleans(),
        "max_total_tokens": st.one_of(st.none(), st.integers(64, 1 << 20)),
        "pressure_hysteresis": st.floats(0.0, 0.1),
        "blend_weight": st.floats(0.0, 1.0),
        "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
        "api_key": st.one_of(st.none(), st.text("abcdef0123456789", min_size=1, max_size=12)),
    }
)


@settings(max_examples=50, deadline=None)
@given(values=overrides)
def test_yaml_round_trip(values: dict) -> None:
    config = ServerConfig(**values)
    assert ServerConfig.from_dict(config.to_dict()) == config
    import yaml

    assert ServerConfig.from_dict(yaml.safe_load(config.dump_yaml())) == config


@settings(max_examples=50, deadline=None)
@given(values=overrides)
def test_cli_equals_yaml(values: dict) -> None:
    argv: list[str] = []
    for key, value in values.items():
        text = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)
        argv += ["--" + key.replace("_", "-"), text]
    assert ServerConfig.from_sources(None, argv) == ServerConfig.from_dict(values)
