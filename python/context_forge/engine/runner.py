"""Runs one scheduled batch through the model: flattens it into tensors and returns logits."""

from __future__ import annotations

import torch

from context_forge.attention.base import AttentionMetadata

from .kv_buffer import DeviceKVBuffer
from .scheduler import ScheduledSeq


class ModelRunner:
    """Owns the model and its device KV buffer; ``forward`` computes one step.

    Each sequence feeds ``all_ids[computed : computed + num_tokens]``; its K/V lands in its own
    pages (slots derived from its page table), and the logits of its last fed token come back.
    """

    def __init__(self, model: torch.nn.Module, kv: DeviceKVBuffer, page_size: int) -> None:
        self.model = model
        self.kv = kv
        self.page_size = page_size
        self.device = kv.device

    @torch.inference_mode()
    def forward(self, seqs: list[ScheduledSeq]) -> torch.Tensor:
        """Logits ``[len(seqs), vocab]`` (fp32) of each sequence's last fed token."""
        ps = self.page_size
        ids: list[int] = []
        q_lens: list[int] = []
        kv_lens: list[int] = []
        tables: list[list[int]] = []
        for s in seqs:
            st, n = s.state, s.num_tokens
            start = st.computed
            ids.extend(st.all_ids[start:start + n])
            q_lens.append(n)
            kv_lens.append(start + n)
            tables.append(st.page_table[:-(-(start + n) // ps)])
        meta = AttentionMetadata.build(q_lens, kv_lens, tables, ps, self.device)
        input_ids = torch.tensor(ids, dtype=torch.long, device=self.device)
        assert meta.positions is not None
        return self.model.forward(input_ids, meta.positions, meta, self.kv)
