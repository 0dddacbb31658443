"""Runs one scheduled batch through the model: flattens it into tensors and returns logits.

Pure decode batches replay a captured CUDA/HIP graph (``cuda_graph.DecodeGraphs``) when the device
is a GPU and the attention backend is capture-safe; everything else (prefill, mixed batches, batches
larger than the biggest graph, and steps that must wait per layer for KV still landing) runs eagerly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from context_forge.attention.base import AttentionMetadata
from context_forge.prefetch.gate import wait_all

from .cuda_graph import DecodeGraphs, batch_buckets
from context_forge.kv.buffer import DeviceKVBuffer

if TYPE_CHECKING:
    from context_forge.prefetch.meter import TransferMeter

    from .scheduler import ScheduledSeq

DEFAULT_GRAPH_MAX_BATCH = 64


class ModelRunner:
    """Owns the model and its device KV buffer; ``forward`` computes one step.

    Each sequence feeds ``all_ids[computed : computed + num_tokens]``; its K/V lands in its own
    pages (slots derived from its page table), and the logits of its last fed token come back.

    CUDA graphs: ``cuda_graph=None`` (auto) enables them on a GPU with a backend that
    ``supports_cuda_graph`` unless ``config.disable_cuda_graph`` is set; ``True`` demands them
    (``ValueError`` naming what is missing); ``False`` disables them. Graphs cover decode batches up
    to ``graph_max_batch`` rows (default ``config.cuda_graph_max_bs``, else ``min(64,
    config.max_running_requests)``) and sequences up to the context length; they are captured here,
    at construction.
    """

    def __init__(self, model: torch.nn.Module, kv: DeviceKVBuffer, page_size: int,
                 config: Any = None, *, cuda_graph: bool | None = None,
                 graph_max_batch: int | None = None) -> None:
        self.model = model
        self.kv = kv
        self.meter: TransferMeter | None = None
        """Brackets every step that decodes (prefetch bandwidth during decode, ``prefetch.meter``)."""
        self.page_size = page_size
        self.device = kv.device
        self.graphs: DecodeGraphs | None = None
        if self._want_graphs(config, cuda_graph):
            max_batch = (graph_max_batch or getattr(config, "cuda_graph_max_bs", None)
                         or min(DEFAULT_GRAPH_MAX_BATCH,
                                getattr(config, "max_running_requests", None) or DEFAULT_GRAPH_MAX_BATCH))
            context = int(getattr(config, "context_length", None) or getattr(model, "config").context_len)  # noqa: B009
            max_pages = min(-(-context // page_size), kv.num_pages)
            self.graphs = DecodeGraphs(model, kv, page_size, batch_buckets(max_batch), max_pages)
            self.graphs.capture()

    def _want_graphs(self, config: Any, cuda_graph: bool | None) -> bool:
        if cuda_graph is False or (cuda_graph is None and getattr(config, "disable_cuda_graph", False)):
            return False
        backend = getattr(self.model, "backend", None)
        missing = None
        if self.device.type != "cuda":
            missing = f"a CUDA/ROCm device (the KV buffer is on {self.device})"
        elif not getattr(backend, "supports_cuda_graph", False):
            missing = (f"a capture-safe attention backend (got "
                       f"{getattr(backend, 'name', type(backend).__name__)!r}; use 'triton')")
        if missing is not None and cuda_graph:
            raise ValueError(f"cuda_graph=True needs {missing}")
        return missing is None

    @property
    def uses_cuda_graph(self) -> bool:
        return self.graphs is not None

    def forward(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` (fp32) of each sequence's last fed token."""
        ps = self.page_size
        ids: list[int] = []
        q_lens: list[int] = []
        kv_lens: list[int] = []
        tables: list[list[int]] = []
        gates: list = []
        for s in seqs:
            st, n = s.state, s.num_tokens
            start = st.computed
            ids.extend(st.all_ids[start:start + n])
            q_lens.append(n)
            kv_lens.append(start + n)
            tables.append(st.page_table[:-(-(start + n) // ps)])
            if st.kv_gates:
                gates.extend(g for g in st.kv_gates if g not in gates)
                st.kv_gates = []
        meter = self.meter if any(s.is_decode for s in seqs) else None
        if meter is not None:
            meter.decode_begin()
        out = self.forward_tokens(ids, q_lens, kv_lens, tables, layer_wait=wait_all(gates) if gates else None)
        if meter is not None:
            meter.decode_end()
        return out

    @torch.inference_mode()
    def forward_tokens(self, token_ids: Sequence[int], seq_lens_q: Sequence[int],
                       seq_lens_kv: Sequence[int], page_tables: Sequence[Sequence[int]],
                       use_graph: bool = True,
                       layer_wait: Callable[[int], None] | None = None) -> torch.Tensor:
        """One step over a flat batch in ``AttentionMetadata`` terms; ``use_graph=False`` forces
        the eager path (benchmarks compare the two). ``layer_wait(i)`` runs before layer ``i``
        (KV still landing, ``prefetch_wait_mode: layer``); such a step runs eagerly."""
        graphs = self.graphs
        if (use_graph and layer_wait is None and graphs is not None and seq_lens_q and all(n == 1 for n in seq_lens_q)
                and graphs.fits(len(seq_lens_q), max(seq_lens_kv))):
            return graphs.run(token_ids, seq_lens_kv, page_tables)
        meta = AttentionMetadata.build(seq_lens_q, seq_lens_kv, page_tables, self.page_size,
                                       self.device)
        meta.layer_wait = layer_wait
        input_ids = torch.tensor(token_ids, dtype=torch.long, device=self.device)
        assert meta.positions is not None
        return self.model.forward(input_ids, meta.positions, meta, self.kv)
