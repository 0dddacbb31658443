"""Llama-family decoder (Llama 2/3/3.1, Mistral, Qwen2/2.5, Qwen3) over a paged KV cache.

One implementation; the config's flags select the variants: q/k/v bias (Qwen2), o_proj bias and MLP
bias (Llama ``attention_bias`` / ``mlp_bias``), per-head q/k RMSNorm before RoPE (Qwen3), tied
embeddings. q/k/v and gate/up projections are fused into one matmul each; ``load_weights`` maps Hugging
Face parameter names onto the fused slices.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from context_forge.attention.base import AttentionBackend, AttentionMetadata
from context_forge.attention.factory import get_attention_backend
from context_forge.model.config import ModelConfig
from context_forge.attention.rope import RotaryEmbedding

if TYPE_CHECKING:
    from context_forge.kv.buffer import DeviceKVBuffer

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
_FUSED = {"q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
          "gate_proj": ("gate_up_proj", "gate"), "up_proj": ("gate_up_proj", "up")}
_SHARDS = {"qkv_proj": ("q", "k", "v"), "gate_up_proj": ("gate", "up")}
_UNFUSED = {fused_shard: hf for hf, fused_shard in _FUSED.items()}


def _hf_name(name: str, shard: str) -> str:
    """The Hugging Face name of a (possibly fused) parameter slice."""
    if not shard:
        return name
    parts = name.split(".")
    return ".".join(parts[:-2] + [_UNFUSED[(parts[-2], shard)], parts[-1]])


_FUSED_RMS_NORM = hasattr(F, "rms_norm")


class RMSNorm(nn.Module):
    """Root-mean-square norm with fp32 statistics (one fused kernel where torch has ``rms_norm``)."""

    def __init__(self, dim: int, eps: float, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _FUSED_RMS_NORM:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, backend: AttentionBackend,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.layer_id = layer_id
        self.backend = backend
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, config.q_size + 2 * config.kv_size,
                                  bias=config.attention_bias, **kw)
        self.o_proj = nn.Linear(config.q_size, config.hidden_size, bias=config.o_proj_bias, **kw)
        self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps, **kw) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps, **kw) if config.qk_norm else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                meta: AttentionMetadata, kv: "DeviceKVBuffer") -> torch.Tensor:
        tokens = x.shape[0]
        qkv = self.qkv_proj(x).view(tokens, self.num_heads + 2 * self.num_kv_heads, self.head_dim)
        qk, v = qkv.split([self.num_heads + self.num_kv_heads, self.num_kv_heads], dim=1)
        if self.q_norm is not None and self.k_norm is not None:
            qk = torch.cat((self.q_norm(qk[:, : self.num_heads]),
                            self.k_norm(qk[:, self.num_heads:])), dim=1)
        q, k = self.backend.rotary(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)
        out = self.backend.forward(q, k, v, self.layer_id, meta, kv)
        return self.o_proj(out.reshape(tokens, -1))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, device: torch.device | str, dtype: torch.dtype) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size,
                                      bias=config.mlp_bias, **kw)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size,
                                   bias=config.mlp_bias, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, backend: AttentionBackend,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, device, dtype)
        self.self_attn = Attention(config, layer_id, backend, device, dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, device, dtype)
        self.mlp = MLP(config, device, dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                meta: AttentionMetadata, kv: "DeviceKVBuffer") -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, meta, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class DecoderStack(nn.Module):
    def __init__(self, config: ModelConfig, backend: AttentionBackend, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, device=device,
                                         dtype=dtype)
        self.layers = nn.ModuleList(DecoderLayer(config, i, backend, device, dtype)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, device, dtype)


class LlamaFamilyForCausalLM(nn.Module):
    """The model runner's network. Build it on ``device="meta"`` and let the loader materialise it."""

    def __init__(self, config: ModelConfig, attention_backend: AttentionBackend | str = "torch_sdpa",
                 device: torch.device | str = "meta", dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.config = config
        self.backend = (get_attention_backend(attention_backend)
                        if isinstance(attention_backend, str) else attention_backend)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.model = DecoderStack(config, self.backend, device, dtype)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False, device=device,
                                 dtype=dtype)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding with the output head when the config says so (call again after
        ``to_empty``, which replaces parameters one module at a time)."""
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv: "DeviceKVBuffer", all_logits: bool = False) -> torch.Tensor:
        """fp32 logits ``[num_seqs, vocab]`` of each sequence's last new token (``[T, vocab]`` for
        every new token when ``all_logits``). Writes the new tokens' K/V into ``kv``."""
        self._check_inputs(input_ids, positions, kv)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary.cos_sin(positions, x.dtype)
        wait = meta.layer_wait
        for i, layer in enumerate(self.model.layers):
            if wait is not None:
                wait(i)
            x = layer(x, cos, sin, meta, kv)
        if not all_logits:
            x = x.index_select(0, meta.plan(kv.page_size, kv.buffer.device).last_token_index)
        return self.lm_head(self.model.norm(x)).float()

    def _check_inputs(self, input_ids: torch.Tensor, positions: torch.Tensor,
                      kv: "DeviceKVBuffer") -> None:
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(f"model.forward: input_ids and positions must be 1-D of equal length, got "
                             f"{tuple(input_ids.shape)} and {tuple(positions.shape)}")
        c = self.config
        if (kv.num_layers, kv.num_kv_heads, kv.head_dim) != (
                c.num_hidden_layers, c.num_key_value_heads, c.head_dim):
            raise ValueError(
                f"model.forward: KV buffer shape (layers={kv.num_layers}, kv_heads={kv.num_kv_heads}, "
                f"head_dim={kv.head_dim}) does not match the model (layers={c.num_hidden_layers}, "
                f"kv_heads={c.num_key_value_heads}, head_dim={c.head_dim})")

    @torch.no_grad()
    def init_dummy_weights(self, seed: int = 0) -> None:
        """Random weights in place on the parameters' device and dtype, deterministic for ``seed``:
        norms 1, every other parameter normal with std 0.02."""
        device = self.lm_head.weight.device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        for name, param in self.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy Hugging Face-named tensors into the (fused) parameters, converting dtype and device.
        Raises ``ValueError`` naming unknown names, wrong shapes, or parameters left unloaded."""
        params = dict(self.named_parameters())
        needed = {_slot for name in params for _slot in self._slots(name)}
        unexpected: list[str] = []
        for hf_name, tensor in weights:
            if hf_name.endswith(_IGNORED_SUFFIXES):
                continue
            if hf_name == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            target = self._target(hf_name)
            if target is None or target[0] not in params:
                unexpected.append(hf_name)
                continue
            name, shard = target
            dest = self._shard_view(params[name], name, shard)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {hf_name!r}: checkpoint shape {tuple(tensor.shape)} does not "
                                 f"match the model's {tuple(dest.shape)}")
            dest.copy_(tensor)
            needed.discard((name, shard))
        if unexpected:
            raise ValueError(f"checkpoint has {len(unexpected)} tensors this model does not know, "
                             f"e.g. {sorted(unexpected)[:5]}")
        if needed:
            missing = sorted(_hf_name(n, s) for n, s in needed)
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:5]}")

    @staticmethod
    def _target(hf_name: str) -> tuple[str, str] | None:
        parts = hf_name.split(".")
        if len(parts) >= 2 and parts[-2] in _FUSED:
            fused, shard = _FUSED[parts[-2]]
            return ".".join(parts[:-2] + [fused, parts[-1]]), shard
        return hf_name, ""

    @staticmethod
    def _slots(name: str) -> list[tuple[str, str]]:
        parts = name.split(".")
        if len(parts) >= 2 and parts[-2] in _SHARDS:
            return [(name, s) for s in _SHARDS[parts[-2]]]
        return [(name, "")]

    def _shard_view(self, param: torch.Tensor, name: str, shard: str) -> torch.Tensor:
        if not shard:
            return param
        c = self.config
        if shard in ("gate", "up"):
            start, size = (0 if shard == "gate" else c.intermediate_size), c.intermediate_size
        else:
            start = {"q": 0, "k": c.q_size, "v": c.q_size + c.kv_size}[shard]
            size = c.q_size if shard == "q" else c.kv_size
        return param.narrow(0, start, size)
