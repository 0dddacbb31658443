"""Paged attention on ``torch.nn.functional.scaled_dot_product_attention`` (CPU, CUDA and ROCm).

Decode tokens (one new token per sequence) are attended in a single padded call. Their query heads are
grouped by the KV head they share, ``[B, kv_heads, group, head_dim]``, so grouped-query attention
needs neither copied K/V heads nor ``enable_gqa``. Sequences with several new tokens are attended one
by one: plain causal when nothing is cached before them, else with an explicit mask (the query at
position ``p`` sees keys ``0..p``), K/V heads expanded so memory-efficient kernels can take the mask.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from context_forge.attention.base import (
    AttentionBackend, AttentionMetadata, DecodePlan, PrefillPlan, register_attention_backend)

if TYPE_CHECKING:
    from context_forge.engine.kv_buffer import DeviceKVBuffer

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
        kv.write(layer_id, meta.out_slots, k, v)
        layer_kv = kv.buffer[layer_id]
        decode = plan.decode
        if decode is not None and decode.token_index is None:
            return _decode(q, decode, layer_kv)
        out = torch.empty_like(q)
        if decode is not None:
            idx = decode.token_index
            out.index_copy_(0, idx, _decode(q.index_select(0, idx), decode, layer_kv))
        for p in plan.prefills:
            out[p.start: p.start + p.q_len] = _prefill(q[p.start: p.start + p.q_len], p, layer_kv)
        return out


def _gather(layer_kv: torch.Tensor, pages: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of ``pages`` in one gather: ``layer_kv`` ``[2, P, page_size, H, D]`` ->
    two ``[*pages.shape[:-1], pages.shape[-1] * page_size, H, D]`` views."""
    got = layer_kv.index_select(1, pages.reshape(-1))
    _, _, page_size, heads, dim = layer_kv.shape
    got = got.view(2, *pages.shape[:-1], pages.shape[-1] * page_size, heads, dim)
    return got[0], got[1]


def _decode(q: torch.Tensor, plan: DecodePlan, layer_kv: torch.Tensor) -> torch.Tensor:
    batch, num_heads, dim = q.shape
    kv_heads = layer_kv.shape[3]
    keys, values = _gather(layer_kv, plan.pages)
    grouped = q.view(batch, kv_heads, num_heads // kv_heads, dim)
    out = F.scaled_dot_product_attention(grouped, keys.transpose(1, 2), values.transpose(1, 2),
                                         attn_mask=plan.mask)
    return out.reshape(batch, num_heads, dim)


def _prefill(q: torch.Tensor, plan: PrefillPlan, layer_kv: torch.Tensor) -> torch.Tensor:
    group = q.shape[1] // layer_kv.shape[3]
    keys, values = _gather(layer_kv, plan.pages)
    keys = keys[: plan.kv_len].transpose(0, 1).unsqueeze(0)
    values = values[: plan.kv_len].transpose(0, 1).unsqueeze(0)
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
