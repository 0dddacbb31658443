"""Attention backends over the paged KV cache (``get_attention_backend("torch_sdpa")``)."""
from context_forge.attention.base import AttentionBackend, AttentionMetadata, register_attention_backend
from context_forge.attention.factory import (
    available_attention_backends, default_attention_backend, get_attention_backend)

__all__ = ["AttentionBackend", "AttentionMetadata", "available_attention_backends",
           "default_attention_backend", "get_attention_backend", "register_attention_backend"]
