"""Model shape and hyper-parameters, read from a Hugging Face ``config.json`` or a named preset.

One dataclass covers the whole Llama family that the runner supports; architecture differences are
flags (``attention_bias``, ``o_proj_bias``, ``qk_norm``, ``mlp_bias``, ``tie_word_embeddings``).

Sliding-window attention is not implemented. When a config declares a window that is actually used
(Mistral's ``sliding_window``; Qwen's only with ``use_sliding_window``), ``max_position_embeddings``
is clamped to the window so that no sequence ever gets long enough for the window to matter.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")

_MODEL_TYPE_TO_ARCH = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a Llama-family decoder. ``rope_scaling`` is ``None`` for plain RoPE, else a dict with
    ``rope_type`` ("linear" or "llama3") and that type's parameters."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    attention_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: list[int] = field(default_factory=list)
    o_proj_bias: bool = False
    mlp_bias: bool = False
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"ModelConfig: num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if not self.rms_norm_eps > 0:
            raise ValueError(f"ModelConfig.rms_norm_eps must be > 0, got {self.rms_norm_eps!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"ModelConfig.rope_theta must be > 0, got {self.rope_theta!r}")
        _check_rope_scaling(self.rope_scaling)

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @property
    def context_len(self) -> int:
        return self.max_position_embeddings

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> "ModelConfig":
        """Build from the dict of a Hugging Face ``config.json``; accepts both the legacy
        ``rope_theta`` + ``rope_scaling`` keys and transformers 5's ``rope_parameters``."""
        if not isinstance(config, Mapping):
            raise ValueError(f"ModelConfig.from_hf expects a dict, got {type(config).__name__}")
        arch = _architecture(config)
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.json: hidden_act {act!r} is not supported (only 'silu')")
        try:
            hidden = int(config["hidden_size"])
            heads = int(config["num_attention_heads"])
            cfg = dict(
                vocab_size=int(config["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(config["intermediate_size"]),
                num_hidden_layers=int(config["num_hidden_layers"]),
                num_attention_heads=heads,
            )
        except KeyError as e:
            raise ValueError(f"config.json is missing required key {e.args[0]!r}") from None
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or hidden // heads
        theta, scaling = _rope(config)
        max_pos = int(config.get("max_position_embeddings") or 4096)
        window = _sliding_window(config, arch)
        if window is not None and window < max_pos:
            max_pos = window
        is_qwen2 = arch == "Qwen2ForCausalLM"
        attention_bias = True if is_qwen2 else bool(config.get("attention_bias", False))
        return cls(
            architecture=arch,
            num_key_value_heads=int(kv_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=max_pos,
            attention_bias=attention_bias,
            o_proj_bias=False if is_qwen2 else attention_bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            qk_norm=arch == "Qwen3ForCausalLM",
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            bos_token_id=_opt_int(config.get("bos_token_id")),
            eos_token_id=_int_list(config.get("eos_token_id")),
            sliding_window=window,
            **cfg,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        """Read ``config.json`` (or ``<dir>/config.json``)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"model config not found: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: invalid JSON ({e})") from None
        return cls.from_hf(data)

    @classmethod
    def preset(cls, name: str) -> "ModelConfig":
        """A named dummy shape: ``tiny-llama`` (byte-tokenizer vocabulary) or ``llama3-8b``
        (Llama-3.1-8B: 131,072 tokens of context, llama3 rope scaling)."""
        try:
            return copy.deepcopy(PRESETS[name])
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}") from None


def _architecture(config: Mapping[str, Any]) -> str:
    archs = config.get("architectures")
    if archs:
        return str(archs[0])
    model_type = config.get("model_type")
    if model_type in _MODEL_TYPE_TO_ARCH:
        return _MODEL_TYPE_TO_ARCH[model_type]
    raise ValueError(
        f"config.json has no 'architectures' and model_type {model_type!r} is not one of "
        f"{sorted(_MODEL_TYPE_TO_ARCH)}")


def _rope(config: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = config.get("rope_theta") or params.pop("rope_theta", None) or 10000.0
    params.pop("rope_theta", None)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type == "default":
        return float(theta), None
    scaling = {"rope_type": rope_type, **params}
    _check_rope_scaling(scaling)
    return float(theta), scaling


def _check_rope_scaling(scaling: dict[str, Any] | None) -> None:
    if scaling is None:
        return
    rope_type = scaling.get("rope_type")
    if rope_type not in SUPPORTED_ROPE_TYPES or rope_type == "default":
        raise ValueError(
            f"rope scaling type {rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}")
    needed = ("factor",) if rope_type == "linear" else _LLAMA3_KEYS
    missing = [k for k in needed if k not in scaling]
    if missing:
        raise ValueError(f"rope scaling {rope_type!r} is missing {missing}")
    if not float(scaling["factor"]) > 0:
        raise ValueError(f"rope scaling factor must be > 0, got {scaling['factor']!r}")
    if rope_type == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ValueError("llama3 rope scaling needs high_freq_factor > low_freq_factor")


def _sliding_window(config: Mapping[str, Any], arch: str) -> int | None:
    window = config.get("sliding_window")
    if window is None:
        return None
    if arch.startswith("Qwen") and not config.get("use_sliding_window", False):
        return None
    return int(window)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _int_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


PRESETS: dict[str, ModelConfig] = {
    "tiny-llama": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=259, hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=4096,
        bos_token_id=256, eos_token_id=[257]),
    # Llama-3.1-8B's shape: 128k context with llama3 rope scaling (config.json of
    # meta-llama/Llama-3.1-8B-Instruct). Nothing is sized by the context length up front: RoPE is
    # computed per step for the batch's positions, and the decode graphs' page tables hold
    # min(context / page_size, device pages) ids per row (8192 x 8 bytes at page size 16).
    "llama3-8b": ModelConfig(
        architecture="LlamaForCausalLM", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
}
