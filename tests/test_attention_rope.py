"""Llama 3.1 rope scaling of the ``llama3-8b`` preset (Llama-3.1-8B's shape, 128k context).

The inverse frequencies are checked against a per-frequency reference written from the formula
(scalar float64 maths, independent of the vectorised implementation) and, when transformers is
installed, against its ``llama3`` rope init function for the same config.
"""
from __future__ import annotations

import math

import pytest
import torch

from context_forge.model.config import ModelConfig
from context_forge.attention.rope import RotaryEmbedding, apply_rotary, inverse_frequencies

LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 8192}


def reference_inv_freq(head_dim: int, theta: float, factor: float, low: float, high: float,
                       original: float) -> list[float]:
    """Llama 3.1 scaling, one frequency at a time: wavelengths shorter than ``original / high``
    are kept, longer than ``original / low`` divided by ``factor``, and in between blended with
    ``smooth = (original / wavelength - low) / (high - low)`` as
    ``(1 - smooth) * f / factor + smooth * f``."""
    out = []
    for i in range(0, head_dim, 2):
        freq = 1.0 / theta ** (i / head_dim)
        wavelength = 2.0 * math.pi / freq
        if wavelength < original / high:
            out.append(freq)
        elif wavelength > original / low:
            out.append(freq / factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            out.append((1.0 - smooth) * freq / factor + smooth * freq)
    return out


def test_llama3_8b_preset_is_llama31_8b() -> None:
    cfg = ModelConfig.preset("llama3-8b")
    assert cfg.max_position_embeddings == cfg.context_len == 131072
    assert cfg.rope_theta == 500000.0 and cfg.rope_scaling == LLAMA31
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim) == (32, 8, 128)
    cfg.rope_scaling["factor"] = 2.0  # type: ignore[index]
    assert ModelConfig.preset("llama3-8b").rope_scaling == LLAMA31, "presets are deep copies"


def test_llama3_inverse_frequencies_match_the_formula() -> None:
    cfg = ModelConfig.preset("llama3-8b")
    got = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    assert got.dtype == torch.float32 and got.shape == (cfg.head_dim // 2,)
    expected = torch.tensor(reference_inv_freq(cfg.head_dim, cfg.rope_theta, 8.0, 1.0, 4.0, 8192.0),
                            dtype=torch.float64)
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=0)
    plain = inverse_frequencies(cfg.head_dim, cfg.rope_theta, None)
    wavelength = 2 * math.pi / plain.double()
    kept, divided = wavelength < 8192 / 4.0, wavelength > 8192 / 1.0
    blended = ~kept & ~divided
    assert kept.any() and divided.any() and blended.any(), "all three bands occur at head_dim 128"
    assert torch.equal(got[kept], plain[kept])
    torch.testing.assert_close(got[divided], plain[divided] / 8.0, rtol=1e-6, atol=0)
    ratio = (got[blended] / plain[blended]).double()
    assert ((ratio > 1 / 8.0) & (ratio < 1.0)).all() and (ratio.diff() < 0).all(), \
        "along the head (falling frequency) the blend moves monotonically from kept to divided"


def test_llama3_inverse_frequencies_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    cfg = ModelConfig.preset("llama3-8b")
    hf = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters=dict(LLAMA31, rope_theta=cfg.rope_theta))
    expected, scale = rope_utils.ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    assert scale == 1.0
    torch.testing.assert_close(inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling),
                               expected.float(), rtol=1e-6, atol=0)
    assert ModelConfig.from_hf(hf.to_dict()).rope_scaling == LLAMA31


def test_positions_past_the_original_context_rotate_finitely_and_preserve_norms() -> None:
    cfg = ModelConfig.preset("llama3-8b")
    positions = torch.tensor([0, 8191, 8192, 65536, 131071])
    cos, sin = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling).cos_sin(positions, torch.float32)
    assert cos.shape == sin.shape == (5, cfg.head_dim)
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all()
    x = torch.randn(5, 2, cfg.head_dim)
    rotated = apply_rotary(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rotated[0], x[0])  # position 0 is the identity
