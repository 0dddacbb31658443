"""The ``triton`` attention backend: Triton kernels on GPU tensors, the SDPA reference elsewhere.

On GPU tensors RoPE rotates q and k in place (one kernel per layer), new K/V are stored by one kernel
(padding rows with negative slots store nothing) and decode tokens are attended straight from the
paged cache (``triton_kernels``); sequences with several new tokens go through the inherited SDPA
prefill path (flash attention when nothing is cached before them). The decode path is capture-safe,
so the model runner can replay it from CUDA/HIP graphs. On CPU tensors every call falls back to
``TorchSDPABackend``.
"""
from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import torch

from context_forge.attention.base import AttentionPlan, DecodePlan, register_attention_backend
from context_forge.attention.torch_sdpa import TorchSDPABackend

if TYPE_CHECKING:
    from context_forge.kv.buffer import DeviceKVBuffer


def _load_kernels() -> ModuleType:
    try:
        import context_forge.attention.triton_kernels as triton_kernels
    except ImportError as e:
        raise ValueError(f"attention backend 'triton' needs the triton package ({e}); install "
                         f"triton or use attention_backend 'torch_sdpa'") from None
    return triton_kernels


@register_attention_backend("triton")
class TritonBackend(TorchSDPABackend):
    """Paged decode attention without a gather copy; capture-safe for CUDA graphs."""

    supports_cuda_graph = True

    def __init__(self) -> None:
        self._kernels = _load_kernels()

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return super().rotary(x, cos, sin)
        return self._kernels.rope_inplace(x, cos, sin)

    def _write(self, kv: "DeviceKVBuffer", layer_id: int, slots: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, plan: AttentionPlan) -> None:
        if kv.buffer.device.type == "cpu":
            super()._write(kv, layer_id, slots, k, v, plan)
            return
        self._kernels.store_kv(kv.k_pages(layer_id), kv.v_pages(layer_id), slots, k, v)

    def _decode(self, q: torch.Tensor, plan: DecodePlan, kv: "DeviceKVBuffer",
                layer_id: int) -> torch.Tensor:
        if q.device.type == "cpu":
            return super()._decode(q, plan, kv, layer_id)
        return self._kernels.paged_decode_attention(
            q, kv.k_pages(layer_id), kv.v_pages(layer_id), plan.pages, plan.kv_lens,
            q.shape[-1] ** -0.5)
