"""Decode steps replayed from CUDA/HIP graphs, one graph per batch-size bucket.

A decode step launches hundreds of small kernels; on a fast GPU the host cannot issue them as fast
as the GPU runs them. Capturing the whole decode forward once per bucket and replaying it costs one
launch. A graph replays fixed addresses and shapes, so every input lives in static device buffers:

- ``vectors`` ``[4, max_rows]`` long: token ids, positions, out slots and KV lengths per row;
- ``pages`` ``[max_rows, max_pages]`` long: page tables, wide enough for the longest sequence.

A live batch of ``n`` rows runs in the smallest bucket ``>= n``. Its rows are copied in (two host to
device copies); the bucket's extra rows are padding: KV length 0 and out slot -1, so they write no KV
and their logits are dropped. Only the first columns of ``pages`` that the batch needs are refreshed:
attention reads a row's table up to its KV length, never the stale entries past it.

Graphs need a backend with ``supports_cuda_graph`` (no host synchronisation, no data-dependent
shapes). With ``use_graphs=False`` the same static path runs eagerly, on any device and backend;
the CPU tests use that to check padding and packing against the plain path.
"""
from __future__ import annotations

import array
import bisect
from typing import TYPE_CHECKING, Sequence

import torch

from context_forge.attention.base import AttentionMetadata

if TYPE_CHECKING:
    from context_forge.kv.buffer import DeviceKVBuffer

IDS, POSITIONS, SLOTS, KV_LENS = range(4)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Graph batch sizes up to ``max_batch``: 1, 2, 4, 8, then multiples of 8 to 64, of 16 to 256,
    of 32 beyond, and ``max_batch`` itself. A batch pads by fewer rows than the step it falls in."""
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"cuda graph max batch must be a positive int, got {max_batch!r}")
    sizes = [1, 2, 4] + list(range(8, 65, 8)) + list(range(80, 257, 16)) + list(range(288, max_batch + 1, 32))
    return tuple(s for s in sizes if s < max_batch) + (max_batch,)


def bucket_for(rows: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket ``>= rows`` (``buckets`` sorted ascending), ``None`` when none is."""
    i = bisect.bisect_left(buckets, rows)
    return buckets[i] if i < len(buckets) else None


def pack_decode(token_ids: Sequence[int], kv_lens: Sequence[int],
                page_tables: Sequence[Sequence[int]], page_size: int, rows: int,
                num_pages: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Host tensors for a decode batch (one new token per sequence) padded to ``rows``.

    Returns ``vectors`` ``[4, rows]`` (ids, positions, out slots, KV lengths; padding rows are
    ``0, 0, -1, 0``) and ``tables`` ``[n, width]``, each sequence's first ``ceil(kv_len / page_size)``
    pages padded with 0. Raises ``ValueError`` naming the sequence when a table is too short or
    holds a page id outside ``[0, num_pages)``."""
    n = len(token_ids)
    if n == 0 or not n == len(kv_lens) == len(page_tables):
        raise ValueError(f"decode batch: {n} tokens, {len(kv_lens)} KV lengths and "
                         f"{len(page_tables)} page tables must be equal and non-zero")
    if n > rows:
        raise ValueError(f"decode batch of {n} sequences does not fit {rows} rows")
    needed = [-(-kv // page_size) for kv in kv_lens]
    width = max(needed)
    flat: list[int] = []
    positions, slots = [], []
    for i, (kv, need, table) in enumerate(zip(kv_lens, needed, page_tables)):
        if kv < 1 or len(table) < need:
            raise ValueError(f"decode batch: sequence {i} has KV length {kv} but a page table of "
                             f"{len(table)} pages of {page_size}")
        pos = kv - 1
        positions.append(pos)
        slots.append(table[pos // page_size] * page_size + pos % page_size)
        flat += table[:need]
        if need < width:
            flat += [0] * (width - need)
    tables = torch.frombuffer(array.array("q", flat), dtype=torch.long).view(n, width)
    if int(tables.min()) < 0 or int(tables.max()) >= num_pages:
        bad = next(i for i, (t, need) in enumerate(zip(page_tables, needed))
                   if any(not 0 <= p < num_pages for p in t[:need]))
        raise ValueError(f"decode batch: sequence {bad} has a page id outside [0, {num_pages})")
    pad = rows - n
    packed = [*token_ids, *[0] * pad, *positions, *[0] * pad, *slots, *[-1] * pad, *kv_lens, *[0] * pad]
    vectors = torch.frombuffer(array.array("q", packed), dtype=torch.long).view(4, rows)
    return vectors, tables


class DecodeGraphs:
    """Static decode buffers and one captured graph per bucket (``use_graphs``), or the same static
    path run eagerly. ``run`` returns fp32 logits ``[n, vocab]`` (a fresh tensor)."""

    def __init__(self, model: torch.nn.Module, kv: "DeviceKVBuffer", page_size: int,
                 buckets: Sequence[int], max_pages: int, use_graphs: bool = True) -> None:
        if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] < 1:
            raise ValueError(f"cuda graph buckets must be ascending positive sizes, got {buckets!r}")
        if max_pages < 1:
            raise ValueError(f"cuda graph max_pages must be >= 1, got {max_pages}")
        if use_graphs and kv.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA/ROCm device; the KV buffer is on {kv.device}")
        self.model = model
        self.kv = kv
        self.page_size = page_size
        self.buckets = tuple(buckets)
        self.max_pages = max_pages
        self.use_graphs = use_graphs
        rows = self.buckets[-1]
        self._vectors = torch.zeros(4, rows, dtype=torch.long, device=kv.device)
        self._vectors[SLOTS].fill_(-1)
        self._pages = torch.zeros(rows, max_pages, dtype=torch.long, device=kv.device)
        self._metas = {b: AttentionMetadata.static_decode(
            self._vectors[POSITIONS, :b], self._vectors[SLOTS, :b], self._pages[:b],
            self._vectors[KV_LENS, :b], page_size) for b in self.buckets}
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    @property
    def max_rows(self) -> int:
        return self.buckets[-1]

    def fits(self, rows: int, max_kv_len: int) -> bool:
        """Whether a decode batch of ``rows`` sequences, the longest ``max_kv_len`` tokens, fits."""
        return rows <= self.max_rows and -(-max_kv_len // self.page_size) <= self.max_pages

    def capture(self) -> None:
        """Capture every bucket's graph, largest first so that smaller ones reuse its memory pool.
        The static buffers hold padding only, so capturing writes no KV."""
        if not self.use_graphs:
            return
        pool = torch.cuda.graph_pool_handle()
        warm = torch.cuda.Stream(self.kv.device)
        for rows in reversed(self.buckets):
            ids, positions = self._vectors[IDS, :rows], self._vectors[POSITIONS, :rows]
            meta = self._metas[rows]
            warm.wait_stream(torch.cuda.current_stream(self.kv.device))
            with torch.cuda.stream(warm):
                for _ in range(2):
                    self.model.forward(ids, positions, meta, self.kv)
            torch.cuda.current_stream(self.kv.device).wait_stream(warm)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                logits = self.model.forward(ids, positions, meta, self.kv)
            self._graphs[rows] = (graph, logits)
        torch.cuda.synchronize(self.kv.device)

    def run(self, token_ids: Sequence[int], kv_lens: Sequence[int],
            page_tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits of one decode step: sequence ``i`` feeds ``token_ids[i]`` at position
        ``kv_lens[i] - 1`` over the pages of ``page_tables[i]``."""
        n = len(token_ids)
        rows = bucket_for(n, self.buckets)
        if rows is None or not self.fits(n, max(kv_lens)):
            raise ValueError(f"decode batch of {n} sequences (longest {max(kv_lens)} tokens) exceeds "
                             f"the graph limits ({self.max_rows} rows, {self.max_pages} pages)")
        vectors, tables = pack_decode(token_ids, kv_lens, page_tables, self.page_size, rows,
                                      self.kv.num_pages)
        self._vectors[:, :rows].copy_(vectors)
        self._pages[:n, : tables.shape[1]].copy_(tables)
        if self.use_graphs:
            if rows not in self._graphs:
                raise RuntimeError("DecodeGraphs.run before capture(): no graph for "
                                   f"{rows} rows")
            graph, logits = self._graphs[rows]
            graph.replay()
        else:
            logits = self.model.forward(self._vectors[IDS, :rows], self._vectors[POSITIONS, :rows],
                                        self._metas[rows], self.kv)
        return logits[:n].clone()
