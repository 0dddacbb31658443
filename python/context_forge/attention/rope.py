"""Rotary position embedding in the "rotate half" layout used by Hugging Face Llama checkpoints.

Feature ``i`` of the first half of a head is paired with feature ``i + head_dim / 2``. Frequencies are
computed in fp32 once per model; cos/sin are computed per forward for the positions in the batch
(shared by all layers), so there is no length limit and no large cache.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """fp32 ``[head_dim / 2]`` inverse frequencies after the config's rope scaling."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    if scaling is None:
        return inv_freq
    rope_type = scaling["rope_type"]
    factor = float(scaling["factor"])
    if rope_type == "linear":
        return inv_freq / factor
    if rope_type == "llama3":
        return _llama3(inv_freq, factor, float(scaling["low_freq_factor"]),
                       float(scaling["high_freq_factor"]),
                       float(scaling["original_max_position_embeddings"]))
    raise ValueError(f"rope scaling type {rope_type!r} is not supported")


def _llama3(inv_freq: torch.Tensor, factor: float, low: float, high: float,
            original_len: float) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths are divided by ``factor``, short ones kept, and the band
    between ``original_len / high`` and ``original_len / low`` interpolated linearly in
    ``original_len / wavelength``."""
    wavelen = 2 * math.pi / inv_freq
    long_wave = wavelen > original_len / low
    short_wave = wavelen < original_len / high
    scaled = torch.where(long_wave, inv_freq / factor, inv_freq)
    smooth = (original_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    return torch.where(~long_wave & ~short_wave, blended, scaled)


class RotaryEmbedding:
    """``RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)``. Holds the inverse frequencies (a plain object, not a module buffer, so building a model on the
    meta device never leaves it uninitialised); ``cos_sin(positions)`` gives ``[T, head_dim]`` tables."""

    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> None:
        self._inv_freq = inverse_frequencies(head_dim, theta, scaling)
        self._per_device: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        cached = self._per_device.get(device)
        if cached is None:
            cached = self._per_device[device] = self._inv_freq.to(device)
        return cached

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos`` and sign-folded ``sin`` tables ``[T, head_dim]`` for ``apply_rotary``: the first
        half of ``sin`` is negated so that rotating half the features becomes a plain ``roll``."""
        freqs = positions.float()[:, None] * self.inv_freq(positions.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : freqs.shape[1]].neg_()
        return emb.cos().to(dtype), sin.to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` by per-token tables from ``RotaryEmbedding.cos_sin``:
    ``x * cos + [-x2, x1] * sin`` with ``x = [x1, x2]``, written as ``roll(x) * signed_sin``."""
    rolled = torch.roll(x, shifts=x.shape[-1] // 2, dims=-1)
    return torch.addcmul(x * cos[:, None, :], rolled, sin[:, None, :])
