"""Paged attention metadata and the torch SDPA backend against a direct softmax(QK^T)V reference."""
from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.attention import (
    AttentionBackend, AttentionMetadata, available_attention_backends, get_attention_backend)
from context_forge.kv.buffer import DeviceKVBuffer

HEADS, KV_HEADS, DIM, PAGE = 6, 2, 8, 4


def _slots(table: list[int], start: int, stop: int) -> torch.Tensor:
    return torch.tensor([table[p // PAGE] * PAGE + p % PAGE for p in range(start, stop)],
                        dtype=torch.long)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q ``[n, HEADS, DIM]`` are the last n positions of k/v ``[L, KV_HEADS, DIM]``."""
    n, length = q.shape[0], k.shape[0]
    group = HEADS // KV_HEADS
    out = torch.empty_like(q)
    for h in range(HEADS):
        scores = q[:, h] @ k[:, h // group].T / math.sqrt(DIM)
        allowed = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
        out[:, h] = scores.masked_fill(~allowed, -math.inf).softmax(-1) @ v[:, h // group]
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 13), st.integers(1, 9)), min_size=1, max_size=6),
       st.integers(0, 2**16))
def test_backend_matches_reference(seqs: list[tuple[int, int]], seed: int) -> None:
    """Random batches mixing decode, fresh prefill and chunked prefill over scattered pages."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    kv = DeviceKVBuffer(1, 64, PAGE, KV_HEADS, DIM, torch.float32)
    free = list(range(64))
    rng.shuffle(free)
    q_lens, kv_lens, tables, full_k, full_v = [], [], [], [], []
    for prefix, new in seqs:
        total = prefix + new
        table = [free.pop() for _ in range(-(-total // PAGE))]
        k, v = torch.randn(total, KV_HEADS, DIM), torch.randn(total, KV_HEADS, DIM)
        kv.write(0, _slots(table, 0, prefix), k[:prefix], v[:prefix])
        q_lens.append(new)
        kv_lens.append(total)
        tables.append(table)
        full_k.append(k)
        full_v.append(v)
    meta = AttentionMetadata.build(q_lens, kv_lens, tables, PAGE)
    q = torch.randn(sum(q_lens), HEADS, DIM)
    new_k = torch.cat([k[-n:] for k, n in zip(full_k, q_lens)])
    new_v = torch.cat([v[-n:] for v, n in zip(full_v, q_lens)])
    out = get_attention_backend("torch_sdpa").forward(q, new_k, new_v, 0, meta, kv)
    start = 0
    for n, k, v in zip(q_lens, full_k, full_v):
        expected = _reference(q[start: start + n], k, v)
        torch.testing.assert_close(out[start: start + n], expected, atol=1e-5, rtol=1e-5)
        start += n


def test_build_computes_slots_positions_and_last_tokens() -> None:
    meta = AttentionMetadata.build([3, 1, 2], [5, 9, 2], [[4, 0], [3, 8, 6], [1]], PAGE)
    assert meta.positions.tolist() == [2, 3, 4, 8, 0, 1]
    assert meta.out_slots.tolist() == [18, 19, 0, 24, 4, 5]
    plan = meta.plan(PAGE, torch.device("cpu"))
    assert plan.last_token_index.tolist() == [2, 3, 5]
    assert plan.decode is not None and plan.decode.token_index.tolist() == [3]
    assert [(p.start, p.q_len, p.kv_len) for p in plan.prefills] == [(0, 3, 5), (4, 2, 2)]
    assert plan.prefills[1].mask is None and plan.prefills[0].mask.shape == (3, 5)


def test_metadata_built_by_hand_plans_lazily() -> None:
    meta = AttentionMetadata([1, 1], [2, 5], [[3], [0, 1]], torch.tensor([13, 4]))
    plan = meta.plan(PAGE, torch.device("cpu"))
    assert plan.decode is not None and plan.decode.token_index is None
    assert plan.decode.mask[:, 0, 0].sum(-1).tolist() == [2, 5]
    with pytest.raises(ValueError, match="out_slots has 1 entries"):
        AttentionMetadata([2], [2], [[0]], torch.tensor([0])).plan(PAGE, torch.device("cpu"))


@pytest.mark.parametrize("args, message", [
    (([], [], []), "empty batch"),
    (([1, 1], [1], [[0]]), "one entry per sequence"),
    (([3], [2], [[0]]), "sequence 0 needs 1 <= seq_lens_q <= seq_lens_kv"),
    (([0], [2], [[0]]), "q=0"),
    (([1, 2], [1, 9], [[0], [1, 2]]), "sequence 1 has 9 tokens but its page table covers only 2"),
    (([1], [1], [[-2]]), "negative page id"),
])
def test_build_rejects_bad_batches(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AttentionMetadata.build(*args, page_size=PAGE)


def test_backend_registry() -> None:
    assert "torch_sdpa" in available_attention_backends()
    backend = get_attention_backend("torch_sdpa")
    assert isinstance(backend, AttentionBackend) and backend.name == "torch_sdpa"
    with pytest.raises(ValueError, match="unknown attention backend 'flash'.*torch_sdpa"):
        get_attention_backend("flash")
