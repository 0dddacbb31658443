"""The decode-graph machinery that is plain Python or runs on any device: batch buckets, host packing
of padded decode batches, and the static-buffer decode path run eagerly (``use_graphs=False``)
against the ordinary runner on CPU.

Capturing and replaying CUDA graphs needs a GPU; ``benchmarks/engine_perf.py`` checks graph logits
against the eager path there. Here the static path is exactly what a graph would replay, minus
the capture.
"""
from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from context_forge.attention import AttentionMetadata, get_attention_backend
from context_forge.attention.factory import default_attention_backend
from context_forge.engine.cuda_graph import DecodeGraphs, batch_buckets, bucket_for, pack_decode
from context_forge.kv.buffer import DeviceKVBuffer
from context_forge.engine.runner import ModelRunner
from context_forge.model import load_model

PAGE = 4
NUM_PAGES = 96


@given(st.integers(1, 1200), st.data())
def test_buckets_cover_every_batch_with_bounded_padding(max_batch: int, data: st.DataObject) -> None:
    buckets = batch_buckets(max_batch)
    assert buckets[0] == 1 and buckets[-1] == max_batch
    assert list(buckets) == sorted(set(buckets))
    n = data.draw(st.integers(1, max_batch))
    b = bucket_for(n, buckets)
    assert b is not None and b >= n
    assert all(x < n for x in buckets if x < b)
    step = 4 if n <= 8 else 8 if n <= 64 else 16 if n <= 256 else 32
    assert b - n < step
    assert bucket_for(max_batch + 1, buckets) is None


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_buckets_reject_bad_max_batch(bad: object) -> None:
    with pytest.raises(ValueError, match="max batch must be a positive int"):
        batch_buckets(bad)  # type: ignore[arg-type]


@settings(max_examples=60)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=9), st.integers(0, 8), st.integers(0, 2**16))
def test_pack_decode_layout(kv_lens: list[int], extra_rows: int, seed: int) -> None:
    rng = random.Random(seed)
    tables = [rng.sample(range(NUM_PAGES), -(-kv // PAGE) + rng.randint(0, 2)) for kv in kv_lens]
    ids = [rng.randrange(1000) for _ in kv_lens]
    rows = len(kv_lens) + extra_rows
    vectors, packed = pack_decode(ids, kv_lens, tables, PAGE, rows, NUM_PAGES)
    n = len(kv_lens)
    assert vectors.shape == (4, rows) and vectors.dtype == torch.long
    width = max(-(-kv // PAGE) for kv in kv_lens)
    assert packed.shape == (n, width)
    for i, (kv, table) in enumerate(zip(kv_lens, tables)):
        pos = kv - 1
        assert vectors[:, i].tolist() == [ids[i], pos, table[pos // PAGE] * PAGE + pos % PAGE, kv]
        need = -(-kv // PAGE)
        assert packed[i].tolist() == table[:need] + [0] * (width - need)
    assert vectors[:, n:].T.tolist() == [[0, 0, -1, 0]] * extra_rows


@pytest.mark.parametrize("args, message", [
    (([], [], []), "must be equal and non-zero"),
    (([1, 2], [3], [[0]]), "must be equal and non-zero"),
    (([1] * 5, [1] * 5, [[0]] * 5), "does not fit 4 rows"),
    (([1, 2], [3, 9], [[0], [1, 2]]), "sequence 1 has KV length 9 but a page table of 2 pages"),
    (([1], [0], [[0]]), "sequence 0 has KV length 0"),
    (([1, 2], [3, 5], [[0], [1, NUM_PAGES]]), "sequence 1 has a page id outside"),
    (([1], [3], [[-1]]), "sequence 0 has a page id outside"),
])
def test_pack_decode_rejects_bad_batches(args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pack_decode(*args, page_size=PAGE, rows=4, num_pages=NUM_PAGES)


def _model(backend: str = "torch_sdpa") -> tuple[torch.nn.Module, DeviceKVBuffer]:
    model, cfg = load_model(None, "dummy", "float32", "cpu", seed=3, attention_backend=backend)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.mul_(6.0)
    kv = DeviceKVBuffer(cfg.num_hidden_layers, NUM_PAGES, PAGE, cfg.num_key_value_heads,
                        cfg.head_dim)
    return model, kv


def _clone(kv: DeviceKVBuffer) -> DeviceKVBuffer:
    twin = DeviceKVBuffer(kv.num_layers, kv.num_pages, kv.page_size, kv.num_kv_heads, kv.head_dim)
    twin.buffer.copy_(kv.buffer)
    return twin


@settings(max_examples=12, deadline=None)
@given(st.lists(st.integers(1, 14), min_size=1, max_size=6), st.integers(0, 2**16),
       st.sampled_from(["torch_sdpa", "triton"]))
def test_static_decode_path_matches_eager_runner(prompts: list[int], seed: int, backend: str) -> None:
    """Prefill every sequence, then decode steps over changing subsets (so bucket rows hold stale
    data from larger steps): logits and the whole KV cache must match the plain runner. On CPU
    the ``triton`` backend falls back to SDPA, so it must give the same answers too."""
    rng = random.Random(seed)
    model, kv = _model(backend)
    runner = ModelRunner(model, kv, PAGE)
    assert not runner.uses_cuda_graph
    steps = 4
    free = list(range(NUM_PAGES))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-(n + steps) // PAGE))] for n in prompts]
    runner.forward_tokens([rng.randrange(259) for _ in range(sum(prompts))], prompts, prompts, tables)
    static_kv = _clone(kv)
    graphs = DecodeGraphs(model, static_kv, PAGE, (1, 2, 4, 8), max_pages=8, use_graphs=False)
    lens = list(prompts)
    for step in range(steps):
        live = sorted(rng.sample(range(len(prompts)), rng.randint(1, len(prompts))))
        if step == 0:
            live = list(range(len(prompts)))
        ids = [rng.randrange(259) for _ in live]
        kv_lens = [lens[i] + 1 for i in live]
        live_tables = [tables[i] for i in live]
        expected = runner.forward_tokens(ids, [1] * len(live), kv_lens, live_tables)
        got = graphs.run(ids, kv_lens, live_tables)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=2e-5)
        torch.testing.assert_close(static_kv.buffer, kv.buffer, atol=2e-5, rtol=2e-5)
        for i in live:
            lens[i] += 1


def test_runner_dispatches_pure_decode_batches_to_the_graph_path() -> None:
    model, kv = _model()
    runner = ModelRunner(model, kv, PAGE)
    runner.graphs = DecodeGraphs(model, kv, PAGE, (1, 2), max_pages=2, use_graphs=False)
    calls: list[int] = []
    run = runner.graphs.run
    runner.graphs.run = lambda *a: calls.append(len(a[0])) or run(*a)  # type: ignore[method-assign]
    runner.forward_tokens([5, 6, 7], [3], [3], [[0]])
    runner.forward_tokens([8], [1], [4], [[0]])
    assert calls == [1]
    runner.forward_tokens([9], [1], [9], [[0, 1, 2]])
    runner.forward_tokens([1, 2, 3], [1, 1, 1], [5, 1, 1], [[0, 1], [3], [4]])
    runner.forward_tokens([1, 2], [1, 1], [5, 1], [[0, 1], [3]], use_graph=False)
    assert calls == [1], "beyond max_pages, max rows, or use_graph=False must run eagerly"
    runner.forward_tokens([1, 2], [1, 1], [6, 2], [[0, 1], [3]])
    assert calls == [1, 2]


def test_runner_graph_switches() -> None:
    model, kv = _model()
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA/ROCm device"):
        ModelRunner(model, kv, PAGE, cuda_graph=True)

    class Config:
        disable_cuda_graph = True

    assert not ModelRunner(model, kv, PAGE, Config()).uses_cuda_graph
    assert not ModelRunner(model, kv, PAGE, cuda_graph=False).uses_cuda_graph
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA/ROCm device"):
        DecodeGraphs(model, kv, PAGE, (1,), max_pages=1)
    with pytest.raises(ValueError, match="ascending positive sizes"):
        DecodeGraphs(model, kv, PAGE, (4, 2), max_pages=1, use_graphs=False)


def test_static_decode_metadata_validation() -> None:
    long = torch.zeros(3, dtype=torch.long)
    pages = torch.zeros(3, 2, dtype=torch.long)
    meta = AttentionMetadata.static_decode(long, long - 1, pages, long, PAGE)
    plan = meta.plan(PAGE, torch.device("cpu"))
    assert plan.padded and plan.decode is not None and plan.decode.mask is None
    assert plan.last_token_index.tolist() == [0, 1, 2] and meta.num_tokens == 3
    with pytest.raises(ValueError, match="built for page_size 4"):
        meta.plan(8, torch.device("cpu"))
    with pytest.raises(ValueError, match="kv_lens must be a 1-D long tensor of 3 rows"):
        AttentionMetadata.static_decode(long, long, pages, long[:2], PAGE)
    with pytest.raises(ValueError, match="pages must be a \\[3, width\\] long tensor"):
        AttentionMetadata.static_decode(long, long, pages.int(), long, PAGE)


def test_auto_backend_is_sdpa_without_a_gpu() -> None:
    assert default_attention_backend() == "torch_sdpa"
    assert get_attention_backend("auto").name == "torch_sdpa"
    assert get_attention_backend("triton").supports_cuda_graph
    assert not get_attention_backend("torch_sdpa").supports_cuda_graph
