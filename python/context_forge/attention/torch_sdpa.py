"""Paged attention on ``torch.nn.functional.scaled_dot_product_attention`` (CPU, CUDA and ROCm).

Decode tokens (one new token per sequence) are attended in a single padded call. Their query heads are
grouped by the KV head they share, ``[B, kv_heads, group, head_dim]``, so grouped-query attention
needs neither copied K/V heads nor ``enable_gqa``. Sequences with several new tokens are attended one
by one. With nothing cached before them their keys are exactly the new tokens, so the step's own K/V
feed SDPA's causal fast path (flash attention on GPUs) without reading the cache back. With a cached
prefix an explicit mask applies (the query at position ``p`` sees keys ``0..p``), K/V heads expanded
so memory-efficient kernels can take the mask.

Subclasses reuse the prefill path and replace ``_write`` / ``_decode`` with their own kernels.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from context_forge.attention.base import (
    AttentionBackend, AttentionMetadata, AttentionPlan, DecodePlan, PrefillPlan,
    register_attention_backend)

if TYPE_CHECKING:
    from context_forge.kv.buffer import DeviceKVBuffer

_HAS_ENABLE_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


@register_attention_backend("torch_sdpa")
class TorchSDPABackend(AttentionBackend):
    """Reference backend: correct everywhere torch runs, no custom kernels."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                meta: AttentionMetadata, kv: "DeviceKVBuffer") -> torch.Tensor:
        if q.shape[0] != meta.out_slots.numel():
            raise ValueError(f"attention: {q.shape[0]} query tokens but metadata describes "
                             f"{meta.out_slots.numel()}")
        plan = meta.plan(kv.page_size, kv.buffer.device)
        self._write(kv, layer_id, meta.out_slots, k, v, plan)
        decode = plan.decode
        if decode is not None and decode.token_index is None:
            return self._decode(q, decode, kv, layer_id)
        layer_kv = kv.buffer[layer_id]
        if decode is None and len(plan.prefills) == 1:
            return _prefill(q, k, v, plan.prefills[0], layer_kv)
        out = torch.empty_like(q)
        if decode is not None and decode.token_index is not None:
            idx = decode.token_index
            out.index_copy_(0, idx, self._decode(q.index_select(0, idx), decode, kv, layer_id))
        for p in plan.prefills:
            rows = slice(p.start, p.start + p.q_len)
            out[rows] = _prefill(q[rows], k[rows], v[rows], p, layer_kv)
        return out

    def _write(self, kv: "DeviceKVBuffer", layer_id: int, slots: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor, plan: AttentionPlan) -> None:
        """Store the new tokens' K/V; padding rows of a static plan (negative slots) store nothing."""
        if plan.padded:
            keep = (slots >= 0).nonzero().squeeze(1)
            slots, k, v = slots[keep], k[keep], v[keep]
        kv.write(layer_id, slots, k, v)

    def _decode(self, q: torch.Tensor, plan: DecodePlan, kv: "DeviceKVBuffer",
                layer_id: int) -> torch.Tensor:
        """``q`` ``[B, heads, dim]`` of one-token sequences -> their attention output."""
        mask = plan.mask
        if mask is None:
            key_pos = torch.arange(plan.pages.shape[1] * kv.page_size, device=q.device)
            mask = (key_pos[None, :] < plan.kv_lens.clamp(min=1)[:, None])[:, None, None, :]
        return _decode(q, plan.pages, mask, kv.buffer[layer_id])


def _gather(layer_kv: torch.Tensor, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of ``pages`` in one gather: ``layer_kv`` ``[2, P, page_size, H, D]`` ->
    two ``[*pages.shape[:-1], pages.shape[-1] * page_size, H, D]`` views."""
    got = layer_kv.index_select(1, pages.reshape(-1))
    _, _, page_size, heads, dim = layer_kv.shape
    got = got.view(2, *pages.shape[:-1], pages.shape[-1] * page_size, heads, dim)
    return got[0], got[1]


def _decode(q: torch.Tensor, pages: torch.Tensor, mask: torch.Tensor,
            layer_kv: torch.Tensor) -> torch.Tensor:
    batch, num_heads, dim = q.shape
    kv_heads = layer_kv.shape[3]
    keys, values = _gather(layer_kv, pages)
    grouped = q.view(batch, kv_heads, num_heads // kv_heads, dim)
    out = F.scaled_dot_product_attention(grouped, keys.transpose(1, 2), values.transpose(1, 2),
                                         attn_mask=mask)
    return out.reshape(batch, num_heads, dim)


def _prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: PrefillPlan,
             layer_kv: torch.Tensor) -> torch.Tensor:
    """One sequence's new tokens: ``q`` ``[n, heads, dim]``, its new ``k``/``v`` ``[n, kv_heads, dim]``."""
    group = q.shape[1] // layer_kv.shape[3]
    if plan.mask is None:
        keys, values = k.to(layer_kv.dtype), v.to(layer_kv.dtype)
    else:
        keys, values = _gather(layer_kv, plan.pages)
        keys, values = keys[: plan.kv_len], values[: plan.kv_len]
    keys = keys.transpose(0, 1).unsqueeze(0)
    values = values.transpose(0, 1).unsqueeze(0)
    queries = q.transpose(0, 1).unsqueeze(0)
    if plan.mask is None and _HAS_ENABLE_GQA:
        out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True,
                                             enable_gqa=group > 1)
    else:
        if group > 1:
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
        if plan.mask is None:
            out = F.scaled_dot_product_attention(queries, keys, values, is_causal=True)
        else:
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=plan.mask)
    return out[0].transpose(0, 1)
