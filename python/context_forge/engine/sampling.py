"""Batched next-token sampling: greedy, temperature, top-k, top-p, per-request seeds.

Randomness comes from one uniform draw per request per token, taken from the request's own
CPU ``torch.Generator``; the draw picks a token by inverse-CDF over the filtered distribution.
A seeded request therefore samples the same tokens whatever it is batched with and whatever the
device, and the batch is filtered and sampled with a handful of vectorised tensor ops.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from .request import SamplingParams


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator for one request; unseeded requests get a fresh random seed."""
    g = torch.Generator(device="cpu")
    g.manual_seed((seed if seed is not None else random.getrandbits(63)) % 2**64)
    return g


@dataclass
class SampleSlot:
    """What sampling needs from one sequence of the batch."""

    params: SamplingParams
    generator: torch.Generator


def sample(logits: torch.Tensor, slots: list[SampleSlot]) -> list[int]:
    """Pick one token per row of ``logits`` (``[B, V]``, any float dtype) following ``slots[row]``."""
    if logits.dim() != 2 or logits.shape[0] != len(slots):
        raise ValueError(f"sample: logits shape {tuple(logits.shape)} does not match {len(slots)} slots")
    logits = logits.float()
    out = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(slots) if not s.params.greedy]
    if rows:
        picked = _sample_rows(logits[rows], [slots[i] for i in rows])
        out[rows] = picked
    return out.tolist()


def _sample_rows(logits: torch.Tensor, slots: list[SampleSlot]) -> torch.Tensor:
    device = logits.device
    vocab = logits.shape[-1]
    temps = torch.tensor([s.params.temperature for s in slots], dtype=torch.float32, device=device)
    top_p = torch.tensor([s.params.top_p for s in slots], dtype=torch.float32, device=device)
    top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else vocab for s in slots], device=device)
    u = torch.cat([torch.rand(1, generator=s.generator) for s in slots]).to(device)

    probs = torch.softmax(logits / temps[:, None], dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=device)[None, :]
    mass_before = sorted_p.cumsum(dim=-1) - sorted_p
    drop = (ranks >= top_k[:, None]) | (mass_before >= top_p[:, None])
    drop[:, 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    cdf = sorted_p.cumsum(dim=-1)
    target = u[:, None] * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=vocab - 1)
    kept = (~drop).sum(dim=-1, keepdim=True) - 1
    choice = torch.minimum(choice, kept)
    return order.gather(-1, choice).squeeze(-1)
