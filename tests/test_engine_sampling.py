"""Batched sampling: greedy, top-k, top-p, temperature and per-request seeds."""

from __future__ import annotations

import torch
from context_forge.engine.request import SamplingParams
from context_forge.engine.sampling import SampleSlot, make_generator, sample
from hypothesis import given, settings
from hypothesis import strategies as st


def slot(seed: int = 0, **kw) -> SampleSlot:
    return SampleSlot(SamplingParams(**kw), make_generator(seed))


def test_greedy_and_top_k_one_pick_the_argmax():
    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0))
    expected = logits.argmax(-1).tolist()
    assert sample(logits, [slot(temperature=0) for _ in range(5)]) == expected
    assert sample(logits, [slot(i, temperature=1.3, top_k=1) for i in range(5)]) == expected


def test_same_seed_same_tokens_whatever_the_batch():
    rows = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    alone = slot(42, temperature=1.0)
    seq_alone = [sample(rows[:1], [alone])[0] for _ in range(20)]
    mine = slot(42, temperature=1.0)
    seq_batched = []
    for step in range(20):
        others = [slot(step * 10 + i, temperature=0.7, top_p=0.5) for i in range(3)]
        seq_batched.append(sample(rows, [mine] + others)[0])
    assert seq_batched == seq_alone
    assert len(set(seq_alone)) > 1
    other_seed = slot(43, temperature=1.0)
    assert [sample(rows[:1], [other_seed])[0] for _ in range(20)] != seq_alone


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 1e-9]]))
    s = slot(3, temperature=1.0)
    counts = torch.bincount(torch.tensor([sample(logits, [s])[0] for _ in range(3000)]), minlength=4)
    freq = counts.float() / 3000
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.2]), atol=0.04)
    assert counts[3] == 0


@settings(max_examples=80, deadline=None)
@given(
    vocab=st.integers(2, 40),
    top_k=st.one_of(st.just(-1), st.integers(1, 40)),
    top_p=st.floats(0.05, 1.0),
    temperature=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**31),
)
def test_sampled_token_lies_in_top_k_and_nucleus(vocab, top_k, top_p, temperature, seed):
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed))
    token = sample(logits, [slot(seed, temperature=temperature, top_k=top_k, top_p=top_p)])[0]
    probs = torch.softmax(logits[0] / temperature, -1)
    order = probs.argsort(descending=True).tolist()
    rank = order.index(token)
    if top_k > 0:
        assert rank < top_k
    mass_before = probs[order[:rank]].sum().item()
    assert rank == 0 or mass_before < top_p + 1e-6


def test_shape_mismatch_is_reported():
    try:
        sample(torch.zeros(2, 5), [slot()])
    except ValueError as e:
        assert "2" in str(e) and "1 slots" in str(e)
    else:
        raise AssertionError("expected ValueError")
