"""ModelConfig parsing, the architecture registry and the loader's formats, dtypes and errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from context_forge.attention import AttentionMetadata
from context_forge.kv.buffer import DeviceKVBuffer
from context_forge.model import ModelConfig, get_model_class, load_model, supported_architectures
from context_forge.model.llama import LlamaFamilyForCausalLM
from context_forge.model.loader import resolve_dtype

HF_LLAMA = {
    "architectures": ["LlamaForCausalLM"], "vocab_size": 300, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0, "bos_token_id": 1, "eos_token_id": [2, 3],
}


def _write_dir(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_from_hf_legacy_keys() -> None:
    cfg = ModelConfig.from_hf(dict(HF_LLAMA, rope_scaling={
        "type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}))
    assert cfg.architecture == "LlamaForCausalLM"
    assert cfg.head_dim == 16 and cfg.num_key_value_heads == 2
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert cfg.eos_token_id == [2, 3] and cfg.bos_token_id == 1
    assert not cfg.qk_norm and not cfg.attention_bias


def test_from_hf_rope_parameters_and_model_type_fallback() -> None:
    raw = {k: v for k, v in HF_LLAMA.items() if k not in ("architectures", "rope_theta")}
    cfg = ModelConfig.from_hf(dict(raw, model_type="qwen3", head_dim=32, eos_token_id=7,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1e6}))
    assert cfg.architecture == "Qwen3ForCausalLM" and cfg.qk_norm and cfg.head_dim == 32
    assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None and cfg.eos_token_id == [7]


def test_qwen2_gets_qkv_bias_without_o_bias() -> None:
    cfg = ModelConfig.from_hf(dict(HF_LLAMA, architectures=["Qwen2ForCausalLM"], sliding_window=128,
                                   use_sliding_window=False))
    assert cfg.attention_bias and not cfg.o_proj_bias
    assert cfg.max_position_embeddings == 2048, "Qwen's window is off unless use_sliding_window"


def test_mistral_sliding_window_caps_context() -> None:
    cfg = ModelConfig.from_hf(dict(HF_LLAMA, architectures=["MistralForCausalLM"], sliding_window=512))
    assert cfg.sliding_window == 512 and cfg.max_position_embeddings == 512 == cfg.context_len
    wide = ModelConfig.from_hf(dict(HF_LLAMA, architectures=["MistralForCausalLM"], sliding_window=None))
    assert wide.max_position_embeddings == 2048


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "multiple"),
    ({"vocab_size": 0}, "vocab_size"),
])
def test_from_hf_rejects_bad_configs(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf(dict(HF_LLAMA, **change))


def test_from_hf_missing_key_is_named() -> None:
    raw = dict(HF_LLAMA)
    del raw["intermediate_size"]
    with pytest.raises(ValueError, match="intermediate_size"):
        ModelConfig.from_hf(raw)


def test_presets() -> None:
    tiny = ModelConfig.preset("tiny-llama")
    assert (tiny.vocab_size, tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads,
            tiny.num_key_value_heads, tiny.intermediate_size, tiny.max_position_embeddings) == (
        259, 64, 2, 4, 2, 128, 4096)
    big = ModelConfig.preset("llama3-8b")
    assert (big.vocab_size, big.hidden_size, big.num_hidden_layers, big.num_attention_heads,
            big.num_key_value_heads, big.intermediate_size, big.rope_theta,
            big.max_position_embeddings, big.head_dim) == (
        128256, 4096, 32, 32, 8, 14336, 500000.0, 131072, 128)
    assert big.rope_scaling == {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    tiny.eos_token_id.append(99)
    assert ModelConfig.preset("tiny-llama").eos_token_id == [257], "presets are copies"
    with pytest.raises(ValueError, match="tiny-llama"):
        ModelConfig.preset("nope")


def test_registry_maps_all_four_architectures_and_rejects_others() -> None:
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert get_model_class(arch) is LlamaFamilyForCausalLM
    with pytest.raises(ValueError, match="GPT2LMHeadModel.*supported.*LlamaForCausalLM"):
        get_model_class("GPT2LMHeadModel")
    assert "Qwen3ForCausalLM" in supported_architectures()


def test_unknown_architecture_in_model_dir(tmp_path: Path) -> None:
    path = _write_dir(tmp_path, dict(HF_LLAMA, architectures=["FalconForCausalLM"]))
    with pytest.raises(ValueError, match="FalconForCausalLM"):
        load_model(path, "dummy")


def test_dummy_load_is_deterministic_per_seed() -> None:
    a, _ = load_model("tiny-llama", "dummy", "float32", "cpu", seed=3)
    b, _ = load_model(None, "dummy", "float32", "cpu", seed=3)
    c, _ = load_model("tiny-llama", "dummy", "float32", "cpu", seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.self_attn.qkv_proj.weight"],
                           sc["model.layers.0.self_attn.qkv_proj.weight"])
    assert torch.equal(sa["model.norm.weight"], torch.ones(64))
    assert 0.015 < sa["model.embed_tokens.weight"].std().item() < 0.025


def test_dummy_model_from_config_dir_runs_in_bf16(tmp_path: Path) -> None:
    path = _write_dir(tmp_path, HF_LLAMA)
    model, cfg = load_model(path, "dummy", "bfloat16", "cpu")
    assert cfg.vocab_size == 300 and model.lm_head.weight.dtype == torch.bfloat16
    kv = DeviceKVBuffer(2, 8, 4, 2, 16, torch.bfloat16)
    meta = AttentionMetadata.build([6], [6], [[5, 2]], 4)
    logits = model(torch.arange(6), meta.positions, meta, kv)
    assert logits.shape == (1, 300) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_dtype_resolution() -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype("int8", "cpu")


def test_loader_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="load_format"):
        load_model(None, "pickle")
    with pytest.raises(ValueError, match="needs a model directory"):
        load_model(None, "auto")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(tmp_path / "missing", "safetensors")
    with pytest.raises(FileNotFoundError, match="config"):
        load_model(tmp_path, "dummy")
    path = _write_dir(tmp_path, HF_LLAMA)
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_model(path, "auto")
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="model-00001-of-00002"):
        load_model(path, "safetensors")
    with pytest.raises(ValueError, match="device"):
        load_model(None, "dummy", device="tpu")


def test_checkpoint_with_wrong_or_missing_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = _write_dir(tmp_path, HF_LLAMA)
    save_file({"model.embed_tokens.weight": torch.zeros(300, 64)}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing 20 tensors.*lm_head.weight.*mlp.down_proj.weight"):
        load_model(path, "safetensors")
    save_file({"model.embed_tokens.weight": torch.zeros(301, 64)}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="embed_tokens.*shape"):
        load_model(path, "safetensors")
    save_file({"transformer.wte.weight": torch.zeros(2, 2)}, str(path / "model.safetensors"))
    with pytest.raises(ValueError, match="transformer.wte.weight"):
        load_model(path, "safetensors")


def test_forward_rejects_mismatched_kv_buffer() -> None:
    model, _ = load_model(None, "dummy")
    kv = DeviceKVBuffer(3, 8, 4, 2, 16)
    meta = AttentionMetadata.build([2], [2], [[0]], 4)
    with pytest.raises(ValueError, match="layers=3"):
        model(torch.tensor([1, 2]), meta.positions, meta, kv)
