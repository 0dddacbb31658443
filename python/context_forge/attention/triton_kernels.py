"""Triton kernels around attention: rotary embedding of q/k, storing new K/V into the paged cache,
and split-K decode attention over it.

Both read the cache in place through flat slots (``page * page_size + offset``) and the page table,
so decode attention never gathers pages into a dense copy. Every launch has a grid fixed by tensor
shapes and reads lengths from device memory, so the kernels can be captured in CUDA/HIP graphs.

Decode attention follows flash-decoding: program ``(b, kv_head, split)`` attends the query heads that
share ``kv_head`` (grouped-query attention without copying K/V) over one contiguous chunk of sequence
``b``'s keys and writes a partial output with its log-sum-exp; a second kernel merges the splits
(a single split writes the output directly). The chunk length is derived on the device from
``kv_lens[b]``, so the split count depends only on the batch shape (chosen to fill the GPU) and a
row with ``kv_lens == 0`` produces zeros.

Rotary embedding (``rope_inplace``) replaces ``attention.rope.apply_rotary`` on GPUs: that needs a roll
and two broadcasting element-wise kernels over a strided view of the qkv projection (about 12 % of a
4k-token prefill of an 8B model); here one program per token rotates every q/k head in fp32, in place.

The kernels run on NVIDIA and AMD GPUs, and on the CPU only under Triton's interpreter
(``TRITON_INTERPRET=1`` set before this module is imported), which the CPU tests use.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_SPLITS = 32
_LOG2E = 1.4426950408889634


@triton.jit
def _rope_kernel(X, Cos, Sin, stride_xt, stride_xh, stride_ct, stride_st, HEADS: tl.constexpr,
                 HALF: tl.constexpr, H_PAD: tl.constexpr, D_PAD: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    h = tl.arange(0, H_PAD)[:, None]
    d = tl.arange(0, D_PAD)[None, :]
    mask = (h < HEADS) & (d < HALF)
    row = X + t * stride_xt + h * stride_xh + d
    x1 = tl.load(row, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(row + HALF, mask=mask, other=0.0).to(tl.float32)
    d_mask = d < HALF
    c = tl.load(Cos + t * stride_ct + d, mask=d_mask, other=0.0).to(tl.float32)
    s = tl.load(Sin + t * stride_st + HALF + d, mask=d_mask, other=0.0).to(tl.float32)
    tl.store(row, (x1 * c - x2 * s).to(X.dtype.element_ty), mask=mask)
    tl.store(row + HALF, (x2 * c + x1 * s).to(X.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(K, V, KCache, VCache, Slots, stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cs, stride_ch, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                     H_PAD: tl.constexpr, D_PAD: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(Slots + t)
    if slot >= 0:
        h = tl.arange(0, H_PAD)[:, None]
        d = tl.arange(0, D_PAD)[None, :]
        mask = (h < KV_HEADS) & (d < HEAD_DIM)
        k = tl.load(K + t * stride_kt + h * stride_kh + d, mask=mask)
        v = tl.load(V + t * stride_vt + h * stride_vh + d, mask=mask)
        dst = slot.to(tl.int64) * stride_cs + h * stride_ch + d
        tl.store(KCache + dst, k, mask=mask)
        tl.store(VCache + dst, v, mask=mask)


@triton.jit
def _decode_split_kernel(Q, KCache, VCache, Pages, KvLens, PartOut, PartLse, Out,
                         stride_qb, stride_qh, stride_cs, stride_ch, stride_pb,
                         stride_ob, stride_oh, stride_os, stride_lb, stride_lh, stride_yb, stride_yh,
                         qk_scale, num_splits,
                         PAGE_SIZE: tl.constexpr, GROUP: tl.constexpr, G_PAD: tl.constexpr,
                         HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                         IEEE: tl.constexpr, DIRECT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    kv_len = tl.load(KvLens + b).to(tl.int32)
    per_split = tl.cdiv(tl.cdiv(kv_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, kv_len)

    g = tl.arange(0, G_PAD)
    d = tl.arange(0, D_PAD)
    g_mask = g < GROUP
    d_mask = d < HEAD_DIM
    heads = kvh * GROUP + g
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=g_mask[:, None] & d_mask[None, :], other=0.0)
    m_i = tl.full([G_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([G_PAD], tl.float32)
    acc = tl.zeros([G_PAD, D_PAD], tl.float32)
    page_row = Pages + b * stride_pb
    for n0 in range(start, end, BLOCK_N):
        pos = n0 + tl.arange(0, BLOCK_N)
        valid = pos < end
        page = tl.load(page_row + pos // PAGE_SIZE, mask=valid, other=0).to(tl.int64)
        off = (page * PAGE_SIZE + pos % PAGE_SIZE)[:, None] * stride_cs + kvh * stride_ch + d[None, :]
        kv_mask = valid[:, None] & d_mask[None, :]
        k = tl.load(KCache + off, mask=kv_mask, other=0.0)
        if IEEE:
            qk = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            qk = tl.dot(q, tl.trans(k))
        qk = tl.where(valid[None, :], qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(VCache + off, mask=kv_mask, other=0.0)
        if IEEE:
            pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
        acc = acc * alpha[:, None] + pv
        m_i = m_new

    has_keys = l_i > 0
    out = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    out_mask = g_mask[:, None] & d_mask[None, :]
    if DIRECT:
        tl.store(Out + b * stride_yb + heads[:, None] * stride_yh + d[None, :],
                 out.to(Out.dtype.element_ty), mask=out_mask)
    else:
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))
        tl.store(PartOut + b * stride_ob + heads[:, None] * stride_oh + split * stride_os
                 + d[None, :], out, mask=out_mask)
        tl.store(PartLse + b * stride_lb + heads * stride_lh + split, lse, mask=g_mask)


@triton.jit
def _decode_merge_kernel(PartOut, PartLse, Out, num_splits, stride_ob, stride_oh, stride_os,
                         stride_lb, stride_lh, stride_yb, stride_yh,
                         HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, S_PAD: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, S_PAD)
    d = tl.arange(0, D_PAD)
    s_mask = s < num_splits
    d_mask = d < HEAD_DIM
    lse = tl.load(PartLse + b * stride_lb + h * stride_lh + s, mask=s_mask, other=float("-inf"))
    top = tl.max(lse, 0)
    top = tl.where(top == float("-inf"), 0.0, top)
    weight = tl.exp2(lse - top)
    total = tl.sum(weight, 0)
    part = tl.load(PartOut + b * stride_ob + h * stride_oh + s[:, None] * stride_os + d[None, :],
                   mask=s_mask[:, None] & d_mask[None, :], other=0.0)
    out = tl.sum(part * weight[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + b * stride_yb + h * stride_yh + d, out.to(Out.dtype.element_ty), mask=d_mask)


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, triton.next_power_of_2(n))


@functools.cache
def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def choose_num_splits(batch: int, kv_heads: int, device: torch.device) -> int:
    """Splits per sequence so that ``batch * kv_heads * splits`` programs fill about two waves of
    the device's multiprocessors (at most ``MAX_SPLITS``). Depends on the batch shape only."""
    target = 2 * _sm_count(device)
    return max(1, min(MAX_SPLITS, -(-target // max(batch * kv_heads, 1))))


def _check_cache(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError(f"paged KV: K and V caches must be [pages, page_size, kv_heads, head_dim] "
                         f"views of one layout, got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.stride(3) != 1 or k_cache.stride(0) != k_cache.shape[1] * k_cache.stride(1):
        raise ValueError(f"paged KV: cache pages must be contiguous per slot, got strides "
                         f"{k_cache.stride()}")


def rope_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[T, heads, head_dim]`` (contiguous last dim, any token/head strides) in place
    by the tables of ``RotaryEmbedding.cos_sin`` (``[T, head_dim]``: ``cos`` repeated over both
    halves, ``sin`` with its first half negated); returns ``x``."""
    tokens, heads, dim = x.shape
    if dim % 2 or cos.shape != (tokens, dim) or sin.shape != (tokens, dim):
        raise ValueError(f"rope_inplace: x {tuple(x.shape)} needs an even head_dim and cos/sin of "
                         f"shape ({tokens}, {dim}), got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if x.stride(2) != 1 or cos.stride(1) != 1 or sin.stride(1) != 1:
        raise ValueError("rope_inplace: x, cos and sin need a contiguous last dimension")
    if tokens:
        half = dim // 2
        _rope_kernel[(tokens,)](x, cos, sin, x.stride(0), x.stride(1), cos.stride(0), sin.stride(0),
                                HEADS=heads, HALF=half, H_PAD=_pow2(heads, 2), D_PAD=_pow2(half, 16),
                                num_warps=4)
    return x


def store_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
    """``k_cache[slot] = k[t]`` (likewise V) for every token ``t`` whose slot is >= 0.

    ``k_cache``/``v_cache`` ``[pages, page_size, kv_heads, head_dim]``; ``k``/``v`` ``[T, kv_heads,
    head_dim]`` (any token/head strides, contiguous last dim), converted to the cache dtype."""
    _check_cache(k_cache, v_cache)
    tokens, heads, dim = k.shape
    if v.shape != k.shape or (heads, dim) != tuple(k_cache.shape[2:]) or slots.shape != (tokens,):
        raise ValueError(f"store_kv: k {tuple(k.shape)}, v {tuple(v.shape)}, slots "
                         f"{tuple(slots.shape)} do not fit a cache of {tuple(k_cache.shape)}")
    if k.stride(2) != 1 or v.stride(2) != 1:
        raise ValueError("store_kv: k and v need a contiguous last dimension")
    if tokens == 0:
        return
    _store_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slots, k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(1), k_cache.stride(2), KV_HEADS=heads, HEAD_DIM=dim, H_PAD=_pow2(heads, 2),
        D_PAD=_pow2(dim, 16), num_warps=1 if heads * dim <= 1024 else 4)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           pages: torch.Tensor, kv_lens: torch.Tensor, scale: float,
                           num_splits: int | None = None, *, block_n: int | None = None,
                           num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Attention of one query token per sequence over its cached keys.

    ``q`` ``[B, heads, head_dim]``; caches ``[pages, page_size, kv_heads, head_dim]``; ``pages``
    ``[B, width]`` page ids (int32 or int64) covering ``kv_lens[b]`` tokens of row ``b``; rows with
    ``kv_lens == 0`` yield zeros. Returns ``[B, heads, head_dim]`` in ``q.dtype``. ``num_splits``
    defaults to ``choose_num_splits``; ``block_n`` (keys per iteration), ``num_warps`` and
    ``num_stages`` are tuning knobs for benchmarks."""
    _check_cache(k_cache, v_cache)
    batch, heads, dim = q.shape
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    if dim != k_cache.shape[3] or heads % kv_heads != 0:
        raise ValueError(f"paged_decode_attention: q {tuple(q.shape)} does not fit a cache with "
                         f"{kv_heads} KV heads of dim {k_cache.shape[3]}")
    if pages.dim() != 2 or pages.shape[0] != batch or kv_lens.shape != (batch,):
        raise ValueError(f"paged_decode_attention: pages {tuple(pages.shape)} and kv_lens "
                         f"{tuple(kv_lens.shape)} must have one row per query ({batch})")
    if q.stride(2) != 1 or pages.stride(1) != 1:
        raise ValueError("paged_decode_attention: q and pages need a contiguous last dimension")
    group = heads // kv_heads
    splits = num_splits or choose_num_splits(batch, kv_heads, q.device)
    out = torch.empty(batch, heads, dim, dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    direct = splits == 1
    part = torch.empty((1, 1, 1, 1) if direct else (batch, heads, splits, dim), dtype=torch.float32,
                       device=q.device)
    lse = torch.empty((1, 1, 1) if direct else (batch, heads, splits), dtype=torch.float32,
                      device=q.device)
    d_pad = _pow2(dim, 16)
    _decode_split_kernel[(batch, kv_heads, splits)](
        q, k_cache, v_cache, pages, kv_lens, part, lse, out,
        q.stride(0), q.stride(1), k_cache.stride(1), k_cache.stride(2), pages.stride(0),
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1), scale * _LOG2E, splits,
        PAGE_SIZE=page_size, GROUP=group, G_PAD=_pow2(group, 16), HEAD_DIM=dim, D_PAD=d_pad,
        BLOCK_N=block_n or (64 if d_pad <= 128 else 32), IEEE=q.dtype == torch.float32,
        DIRECT=direct, num_warps=num_warps, num_stages=num_stages)
    if direct:
        return out
    _decode_merge_kernel[(batch, heads)](
        part, lse, out, splits, part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1), out.stride(0), out.stride(1),
        HEAD_DIM=dim, D_PAD=d_pad, S_PAD=_pow2(splits, 2), num_warps=1 if splits * d_pad <= 2048 else 4)
    return out
