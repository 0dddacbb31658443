"""Triton kernels of the ``triton`` attention backend, run on the CPU by Triton's interpreter.

The kernels target GPUs. ``TRITON_INTERPRET=1`` makes Triton execute them in NumPy instead, but it
must be set before a kernel is defined, so each test re-runs this file in a subprocess with it set
(the ``__main__`` block). The interpreter checks the kernels' logic (indexing through page tables,
grouped heads, split merging, padding rows, in-place RoPE on strided views); GPU compilation and
speed are checked by ``benchmarks/engine_perf.py`` on the device. The interpreter has no bfloat16,
so fp32/fp16 here.
"""
from __future__ import annotations

import math
import os
import random
import subprocess
import sys

import pytest
import torch


def _run_interpreted(case: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, __file__, case], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert done.returncode == 0, f"{case} failed:\n{done.stdout}\n{done.stderr}"
    assert f"ok {case}" in done.stdout


@pytest.mark.parametrize("case", ["decode", "store", "rope", "errors"])
def test_kernel_under_interpreter(case: str) -> None:
    _run_interpreted(case)


def _reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pages: torch.Tensor,
               kv_lens: list[int]) -> torch.Tensor:
    """softmax(q K^T / sqrt(d)) V per row over the row's first ``kv_lens`` cached tokens (fp64)."""
    batch, heads, dim = q.shape
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = heads // kv_heads
    out = torch.zeros(batch, heads, dim, dtype=torch.float64)
    for b, length in enumerate(kv_lens):
        pos = torch.arange(length)
        slots = pages[b, pos // page_size] * page_size + pos % page_size
        keys = k_cache.reshape(-1, kv_heads, dim)[slots].double()
        values = v_cache.reshape(-1, kv_heads, dim)[slots].double()
        for h in range(heads):
            scores = q[b, h].double() @ keys[:, h // group].T / math.sqrt(dim)
            out[b, h] = scores.softmax(-1) @ values[:, h // group]
    return out


def _check_decode() -> None:
    from context_forge.attention import triton_kernels as tk

    shapes = [(4, 8, 2, 16, torch.float32), (1, 4, 4, 32, torch.float32),
              (16, 6, 2, 8, torch.float32), (3, 12, 2, 64, torch.float16)]
    for seed, (page, heads, kv_heads, dim, dtype) in enumerate(shapes):
        rng = random.Random(seed)
        torch.manual_seed(seed)
        num_pages = 80
        k_cache = torch.randn(num_pages, page, kv_heads, dim).to(dtype)
        v_cache = torch.randn(num_pages, page, kv_heads, dim).to(dtype)
        kv_lens = [0, 1, rng.randint(2, 3 * page), rng.randint(3 * page, 6 * page), 70]
        width = max(-(-n // page) for n in kv_lens)
        pages = torch.tensor([rng.sample(range(num_pages), width) for _ in kv_lens])
        q = torch.randn(len(kv_lens), heads + kv_heads, dim).to(dtype)[:, :heads]
        expected = _reference(q, k_cache, v_cache, pages, kv_lens)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        for splits in (None, 1, 3, 8):
            got = tk.paged_decode_attention(q, k_cache, v_cache, pages, torch.tensor(kv_lens),
                                            dim ** -0.5, num_splits=splits)
            assert got.dtype == dtype and got.shape == q.shape
            torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)
            assert torch.equal(got[0], torch.zeros_like(got[0])), "kv_len 0 must give zeros"


def _check_store() -> None:
    from context_forge.attention import triton_kernels as tk

    for dtype, heads in ((torch.float32, 2), (torch.float16, 3)):
        k_cache = torch.randn(10, 4, heads, 16).to(dtype)
        v_cache = torch.randn(10, 4, heads, 16).to(dtype)
        k = torch.randn(5, heads + 2, 16)[:, :heads]
        v = torch.randn(5, heads, 16)
        slots = torch.tensor([7, -1, 0, 39, -5])
        expect_k, expect_v = k_cache.clone().view(-1, heads, 16), v_cache.clone().view(-1, heads, 16)
        for t, s in enumerate(slots.tolist()):
            if s >= 0:
                expect_k[s], expect_v[s] = k[t].to(dtype), v[t].to(dtype)
        tk.store_kv(k_cache, v_cache, slots, k, v)
        assert torch.equal(k_cache.view(-1, heads, 16), expect_k)
        assert torch.equal(v_cache.view(-1, heads, 16), expect_v)


def _check_rope() -> None:
    """In-place RoPE on a strided q/k view equals ``apply_rotary``; other heads stay untouched."""
    from context_forge.attention import triton_kernels as tk
    from context_forge.model.config import ModelConfig
    from context_forge.attention.rope import RotaryEmbedding, apply_rotary

    for head_dim, heads, scaling in ((16, 6, None), (64, 3, None), (24, 5, {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64})):
        config = ModelConfig.preset("tiny-llama").replace(head_dim=head_dim, rope_scaling=scaling)
        cos, sin = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling).cos_sin(torch.tensor([0, 5, 17, 4000, 9]), torch.float32)
        qkv = torch.randn(5, heads + 2, head_dim)
        before = qkv.clone()
        expected = apply_rotary(qkv[:, :heads], cos, sin)
        assert tk.rope_inplace(qkv[:, :heads], cos, sin).data_ptr() == qkv.data_ptr()
        torch.testing.assert_close(qkv[:, :heads], expected, atol=1e-6, rtol=1e-6)
        assert torch.equal(qkv[:, heads:], before[:, heads:])
    try:
        tk.rope_inplace(torch.zeros(2, 3, 8), torch.zeros(2, 6), torch.zeros(2, 8))
    except ValueError as e:
        assert "cos/sin of shape (2, 8)" in str(e)
    else:
        raise AssertionError("no ValueError for mismatched cos")


def _check_errors() -> None:
    from context_forge.attention import triton_kernels as tk

    cache = torch.zeros(4, 2, 2, 16)
    q = torch.zeros(3, 4, 16)
    cases = [
        (lambda: tk.paged_decode_attention(q, cache, cache, torch.zeros(2, 1, dtype=torch.long),
                                           torch.ones(3, dtype=torch.long), 1.0), "one row per query"),
        (lambda: tk.paged_decode_attention(torch.zeros(3, 3, 16), cache, cache,
                                           torch.zeros(3, 1, dtype=torch.long),
                                           torch.ones(3, dtype=torch.long), 1.0), "does not fit"),
        (lambda: tk.paged_decode_attention(q, cache, torch.zeros(4, 2, 2, 8), None, None, 1.0),
         "views of one layout"),
        (lambda: tk.store_kv(cache, cache, torch.zeros(2, dtype=torch.long), torch.zeros(3, 2, 16),
                             torch.zeros(3, 2, 16)), "do not fit"),
        (lambda: tk.store_kv(cache.transpose(0, 1), cache.transpose(0, 1),
                             torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 16),
                             torch.zeros(1, 2, 16)), "contiguous per slot"),
    ]
    for call, message in cases:
        try:
            call()
        except ValueError as e:
            assert message in str(e), (message, str(e))
        else:
            raise AssertionError(f"no ValueError for {message!r}")


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run through the tests (needs TRITON_INTERPRET=1)"
    name = sys.argv[1]
    {"decode": _check_decode, "store": _check_store, "rope": _check_rope,
     "errors": _check_errors}[name]()
    print(f"ok {name}")
