"""Cost model for the trace-driven simulator: how long prefill, decode and KV transfers take.

Default figures are for a Llama-3-8B-shaped model in bf16 on one H100, measured on this
project's lent H100 on 2026-11-24 with torch 2.11+cu130 (shared/design-notes.md, "Measured on
the lent H100"):

- Prefill (32 layers, SDPA): 12.5 ms @ 512, 45 ms @ 2k, 202 ms @ 8k prompt tokens. Fitted as
  ``prefill_fixed_s + prefill_per_token_s * n + prefill_attn_s * n * (ctx + n / 2)`` where ``ctx``
  is the cached prefix the new tokens attend to: 1.5 ms + 20.5 us/token + 0.97 ns/token^2
  reproduces 12.1 / 45.5 / 202 ms.
- Decode step (eager torch): batch 1: 8.4 / 8.9 ms at context 1k / 4k; batch 32: 8.2 / 12.0;
  batch 64: 9.5 / 17.8. Fitted as ``decode_fixed_s + decode_per_ctx_token_s * sum(ctx)``:
  8.0 ms + 38 ns per context token in the batch.
- Host->device pinned copy 44 GB/s, device->host 53 GB/s (512 MiB copies).
- KV bytes per token: 32 layers x 8 KV heads x 128 dims x 2 (K and V) x 2 bytes = 128 KiB.

``--cost-model FILE`` (JSON or YAML with any of these keys) overrides the defaults.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class CostModel:
    prefill_fixed_s: float = 1.5e-3
    prefill_per_token_s: float = 20.5e-6
    prefill_attn_s: float = 0.97e-9
    decode_fixed_s: float = 8.0e-3
    decode_per_ctx_token_s: float = 38e-9
    h2d_bytes_per_s: float = 44e9
    d2h_bytes_per_s: float = 53e9
    kv_bytes_per_token: int = 131072

    def prefill_time(self, new_tokens: int, cached_tokens: int) -> float:
        """Seconds to prefill ``new_tokens`` that attend to ``cached_tokens`` already in KV."""
        if new_tokens <= 0:
            return 0.0
        return (self.prefill_fixed_s + self.prefill_per_token_s * new_tokens
                + self.prefill_attn_s * new_tokens * (cached_tokens + new_tokens / 2))

    def decode_step_time(self, batch: int, total_context: int) -> float:
        """Seconds for one decode step of ``batch`` sequences holding ``total_context`` tokens of KV."""
        if batch <= 0:
            return 0.0
        return self.decode_fixed_s + self.decode_per_ctx_token_s * total_context

    def load_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.h2d_bytes_per_s

    def store_time(self, tokens: int) -> float:
        return tokens * self.kv_bytes_per_token / self.d2h_bytes_per_s

    @classmethod
    def from_file(cls, path: str | Path) -> "CostModel":
        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: cost model must be a mapping of field -> number")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown cost model field(s) {unknown}; known: {sorted(known)}")
        for k, v in data.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{path}: field {k!r} must be a non-negative number, got {v!r}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
