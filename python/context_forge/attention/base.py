"""Attention over a paged KV cache: the per-batch metadata, the backend interface and its registry
(``factory.get_attention_backend`` picks a registered backend by name).

A batch is a flat list of new tokens (``input_ids``) made of consecutive runs, one per sequence, in the
order of ``seq_lens_q``. Sequence ``i`` already has ``seq_lens_kv[i] - seq_lens_q[i]`` tokens of KV in
the cache; its new tokens sit at positions ``seq_lens_kv[i] - seq_lens_q[i] ... seq_lens_kv[i] - 1``.
``page_tables[i]`` lists the device pages that hold positions ``0 .. seq_lens_kv[i] - 1`` in order
(token at position ``p`` lives in page ``page_tables[i][p // page_size]`` at offset ``p % page_size``).
"""
from __future__ import annotations

import array
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence, TypeVar

import torch

from context_forge.attention.rope import apply_rotary
from context_forge.registry import Registry

if TYPE_CHECKING:
    from context_forge.kv.buffer import DeviceKVBuffer


@dataclass
class DecodePlan:
    """Sequences with one new token, attended in one padded call.

    ``token_index`` selects their tokens from the flat batch (``None`` when the whole batch is these
    tokens, in order); ``pages`` is ``[B, max_pages]`` (padding points at a real page and is masked);
    ``mask`` is ``[B, 1, 1, max_pages * page_size]``, True where a key may be attended (``None`` in a
    static plan, where backends derive it from ``kv_lens``); ``kv_lens`` ``[B]`` (long) counts each
    sequence's keys, 0 for a padding row of a static plan."""

    token_index: torch.Tensor | None
    pages: torch.Tensor
    mask: torch.Tensor | None
    kv_lens: torch.Tensor


@dataclass
class PrefillPlan:
    """One sequence with several new tokens: its slice of the flat batch, its pages, and the causal
    mask ``[q_len, kv_len]`` (``None`` when there is no cached prefix, so plain causal applies)."""

    start: int
    q_len: int
    kv_len: int
    pages: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class AttentionPlan:
    """Tensors derived once per batch and shared by every layer."""

    page_size: int
    device: torch.device
    last_token_index: torch.Tensor
    decode: DecodePlan | None
    prefills: list[PrefillPlan]
    padded: bool = False
    """Static decode plan (``AttentionMetadata.static_decode``): rows whose ``kv_lens`` is 0 are
    padding; their ``out_slots`` are negative (nothing is written) and their output is ignored."""


@dataclass
class AttentionMetadata:
    """What attention needs to know about a batch (see the module docstring for the layout).

    ``out_slots[t] = page * page_size + offset`` is where token ``t``'s K/V is written. Build it with
    ``AttentionMetadata.build``, which also fills ``positions`` and the shared plan; constructing it
    directly with the four contract fields also works (the plan is then derived on first use)."""

    seq_lens_q: list[int]
    seq_lens_kv: list[int]
    page_tables: list[list[int]]
    out_slots: torch.Tensor
    positions: torch.Tensor | None = None
    layer_wait: Callable[[int], None] | None = field(default=None, repr=False, compare=False)
    """Called by the model before layer ``i`` (KV of that layer still landing from the host)."""
    _plan: AttentionPlan | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_q)

    @property
    def num_tokens(self) -> int:
        return sum(self.seq_lens_q)

    @classmethod
    def build(cls, seq_lens_q: Sequence[int], seq_lens_kv: Sequence[int],
              page_tables: Sequence[Sequence[int]], page_size: int,
              device: torch.device | str = "cpu") -> "AttentionMetadata":
        """Validate the batch, then compute ``out_slots``, ``positions`` and the plan on ``device``."""
        q, kv, tables = _validate(seq_lens_q, seq_lens_kv, page_tables, page_size)
        dev = _concrete(torch.device(device))
        table = _padded_tables(tables).to(dev)
        q_t = torch.tensor(q, dtype=torch.long, device=dev)
        kv_t = torch.tensor(kv, dtype=torch.long, device=dev)
        seq_of_token = torch.repeat_interleave(torch.arange(len(q), device=dev), q_t)
        q_start = torch.cumsum(q_t, 0) - q_t
        offset = torch.arange(int(sum(q)), device=dev) - q_start[seq_of_token]
        positions = (kv_t - q_t)[seq_of_token] + offset
        slots = table[seq_of_token, positions // page_size] * page_size + positions % page_size
        meta = cls(list(q), list(kv), tables, slots, positions)
        meta._plan = _make_plan(q, kv, table, page_size, dev)
        return meta

    @classmethod
    def static_decode(cls, positions: torch.Tensor, out_slots: torch.Tensor,
                      pages: torch.Tensor, kv_lens: torch.Tensor, page_size: int) -> "AttentionMetadata":
        """A decode batch (one new token per row) over caller-owned device tensors whose contents
        may change between forwards without a new plan, as CUDA graph replay needs.

        ``pages`` ``[B, width]``, ``kv_lens`` ``[B]``, ``out_slots`` and ``positions`` ``[B]``,
        all long on one device. A row with ``kv_lens == 0`` is padding: its ``out_slots`` entry must be
        negative (nothing is written). The list fields only record the batch size (their per-row
        values are not known on the host); backends must read the plan. Any backend accepts it;
        only those with ``supports_cuda_graph`` run it without host synchronisation."""
        rows = out_slots.shape[0]
        tensors = {"positions": positions, "out_slots": out_slots, "kv_lens": kv_lens}
        for name, t in tensors.items():
            if t.dim() != 1 or t.shape[0] != rows or t.dtype != torch.long:
                raise ValueError(f"AttentionMetadata.static_decode: {name} must be a 1-D long tensor "
                                 f"of {rows} rows, got {tuple(t.shape)} {t.dtype}")
        if pages.dim() != 2 or pages.shape[0] != rows or pages.dtype != torch.long:
            raise ValueError(f"AttentionMetadata.static_decode: pages must be a [{rows}, width] long "
                             f"tensor, got {tuple(pages.shape)} {pages.dtype}")
        if not isinstance(page_size, int) or page_size <= 0:
            raise ValueError(f"AttentionMetadata: page_size must be a positive int, got {page_size!r}")
        device = _concrete(out_slots.device)
        meta = cls([1] * rows, [1] * rows, [[] for _ in range(rows)], out_slots, positions)
        last = torch.arange(rows, device=device)
        meta._plan = AttentionPlan(page_size, device, last, DecodePlan(None, pages, None, kv_lens),
                                   [], padded=True)
        return meta

    def plan(self, page_size: int, device: torch.device) -> AttentionPlan:
        """The shared per-batch tensors for a cache with ``page_size`` on ``device`` (cached)."""
        device = _concrete(device)
        p = self._plan
        if p is not None and p.page_size == page_size and p.device == device:
            return p
        if p is not None and p.padded:
            raise ValueError(f"AttentionMetadata: static decode metadata was built for page_size "
                             f"{p.page_size} on {p.device}, not {page_size} on {device}")
        q, kv, tables = _validate(self.seq_lens_q, self.seq_lens_kv, self.page_tables, page_size)
        if self.out_slots.numel() != sum(q):
            raise ValueError(f"AttentionMetadata: out_slots has {self.out_slots.numel()} entries "
                             f"but seq_lens_q sums to {sum(q)}")
        self._plan = _make_plan(q, kv, _padded_tables(tables).to(device), page_size, device)
        return self._plan


def _concrete(device: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>`` so that plans built for either compare equal."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _validate(seq_lens_q: Sequence[int], seq_lens_kv: Sequence[int],
              page_tables: Sequence[Sequence[int]], page_size: int
              ) -> tuple[list[int], list[int], list[list[int]]]:
    if not isinstance(page_size, int) or page_size <= 0:
        raise ValueError(f"AttentionMetadata: page_size must be a positive int, got {page_size!r}")
    q, kv, tables = list(seq_lens_q), list(seq_lens_kv), [list(t) for t in page_tables]
    if not q:
        raise ValueError("AttentionMetadata: empty batch (seq_lens_q is empty)")
    if not len(q) == len(kv) == len(tables):
        raise ValueError(f"AttentionMetadata: seq_lens_q ({len(q)}), seq_lens_kv ({len(kv)}) and "
                         f"page_tables ({len(tables)}) must have one entry per sequence")
    for i, (nq, nkv, table) in enumerate(zip(q, kv, tables)):
        if nq < 1 or nq > nkv:
            raise ValueError(f"AttentionMetadata: sequence {i} needs 1 <= seq_lens_q <= seq_lens_kv, "
                             f"got q={nq}, kv={nkv}")
        if len(table) * page_size < nkv:
            raise ValueError(f"AttentionMetadata: sequence {i} has {nkv} tokens but its page table "
                             f"covers only {len(table)} pages of {page_size}")
        if table and min(table) < 0:
            raise ValueError(f"AttentionMetadata: sequence {i} has a negative page id")
    return q, kv, tables


def _padded_tables(tables: list[list[int]]) -> torch.Tensor:
    """``[num_seqs, longest]`` long, rows padded with page 0 (built through ``array``: several times
    faster than ``torch.tensor`` on nested lists for long tables)."""
    width = max(len(t) for t in tables)
    flat: list[int] = []
    for t in tables:
        flat += t
        if len(t) < width:
            flat += [0] * (width - len(t))
    return torch.frombuffer(array.array("q", flat), dtype=torch.long).view(len(tables), width)


def _make_plan(q: list[int], kv: list[int], table: torch.Tensor, page_size: int,
               device: torch.device) -> AttentionPlan:
    starts = [0] * len(q)
    for i in range(1, len(q)):
        starts[i] = starts[i - 1] + q[i - 1]
    last = torch.tensor([s + n - 1 for s, n in zip(starts, q)], dtype=torch.long, device=device)
    decode_seqs = [i for i, n in enumerate(q) if n == 1]
    decode = None
    if decode_seqs:
        max_pages = -(-max(kv[i] for i in decode_seqs) // page_size)
        seq_idx = torch.tensor(decode_seqs, dtype=torch.long, device=device)
        kv_lens = torch.tensor([kv[i] for i in decode_seqs], dtype=torch.long, device=device)
        key_pos = torch.arange(max_pages * page_size, device=device)
        key_mask = (key_pos[None, :] < kv_lens[:, None])[:, None, None, :]
        pure = len(decode_seqs) == len(q)
        token_index = None if pure else torch.tensor(
            [starts[i] for i in decode_seqs], dtype=torch.long, device=device)
        decode = DecodePlan(token_index, table[seq_idx, :max_pages], key_mask, kv_lens)
    prefills = []
    for i, (n, nkv) in enumerate(zip(q, kv)):
        if n == 1:
            continue
        pages = table[i, : -(-nkv // page_size)]
        mask = None
        if nkv > n:
            q_pos = torch.arange(nkv - n, nkv, device=device)
            mask = torch.arange(nkv, device=device)[None, :] <= q_pos[:, None]
        prefills.append(PrefillPlan(starts[i], n, nkv, pages, mask))
    return AttentionPlan(page_size, device, last, decode, prefills)


class AttentionBackend(ABC):
    """Computes attention for one layer: first stores the new tokens' K/V at ``meta.out_slots`` in
    ``kv``, then attends each new query causally over its sequence's cached keys (prefix + new)."""

    name: ClassVar[str] = ""
    supports_cuda_graph: ClassVar[bool] = False
    """True when ``forward`` on a static decode plan issues no host synchronisation and allocates
    only fixed-shape tensors, so it can be captured into a CUDA/HIP graph."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_id: int,
                meta: AttentionMetadata, kv: "DeviceKVBuffer") -> torch.Tensor:
        """``q`` ``[T, num_heads, head_dim]``, ``k``/``v`` ``[T, num_kv_heads, head_dim]`` (RoPE
        already applied) -> ``[T, num_heads, head_dim]``. Softmax scale is ``head_dim ** -0.5``."""

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE of the model's q and k heads ``x`` ``[T, heads, head_dim]`` by the tables of
        ``RotaryEmbedding.cos_sin``; the model calls it before ``forward``. Default:
        ``attention.rope.apply_rotary`` (a new tensor); a backend may fuse it and rotate ``x`` in place."""
        return apply_rotary(x, cos, sin)


_B = TypeVar("_B", bound=type[AttentionBackend])
_BACKENDS: Registry[type[AttentionBackend]] = Registry("attention backend", allow_same_class=True)


def register_attention_backend(name: str) -> Callable[[_B], _B]:
    """Class decorator: make a backend available to ``get_attention_backend(name)``."""
    return _BACKENDS.register(name)  # type: ignore[return-value]
